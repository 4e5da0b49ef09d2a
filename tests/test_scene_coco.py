"""COCO-style caption loader: same items as the scene reader, clear errors for bad files."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from tinymm.errors import InputError
from train.data.coco import CocoCaptions
from train.data.scene_dataset import SceneDataset, SplitSpec, write_dataset


def _write_coco(tmp_path, data) -> tuple:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    red = np.zeros((12, 20, 3), np.uint8)
    red[..., 2] = 255  # OpenCV writes BGR: this is a pure red image
    cv2.imwrite(str(images / "red.png"), red)
    cv2.imwrite(str(images / "gray.jpg"), np.full((8, 8), 90, np.uint8))
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path, images


GOOD = {
    "images": [{"id": 1, "file_name": "red.png"}, {"id": 2, "file_name": "gray.jpg"}, {"id": 3, "file_name": "x.png"}],
    "annotations": [{"id": 10, "image_id": 1, "caption": "a red square "}, {"id": 11, "image_id": 2, "caption": "gray"},
                    {"id": 12, "image_id": 1, "caption": "something red"}],
}


def test_loader_gives_rgb_images_and_scene_like_annotations(tmp_path):
    ds = CocoCaptions(*_write_coco(tmp_path, GOOD))
    assert len(ds) == 2  # image 3 has no caption and is skipped
    image, annotation = ds[0]
    assert image.dtype == np.uint8 and image.shape == (12, 20, 3)
    assert image[0, 0].tolist() == [255, 0, 0]  # RGB order, like SceneDataset
    assert annotation["captions"] == [{"text": "a red square", "facts": None}, {"text": "something red", "facts": None}]
    assert (annotation["id"], annotation["image"], annotation["width"], annotation["height"]) == (1, "red.png", 20, 12)
    gray, annotation = ds[1]
    assert gray.shape == (8, 8, 3) and annotation["captions"][0]["text"] == "gray"
    assert [a["id"] for _, a in ds] == [1, 2]
    with pytest.raises(IndexError):
        ds[2]
    # One pipeline serves both: the scene reader's annotations have every key the COCO ones have.
    write_dataset(tmp_path / "gen", [SplitSpec("train", 1, 0)], workers=1, progress=False)
    assert set(annotation) <= set(SceneDataset(tmp_path / "gen", "train")[0][1])


@pytest.mark.parametrize("data, message", [
    ("{not json", "not readable JSON"),
    ([1, 2], "needs top-level lists 'images' and 'annotations'"),
    ({"images": []}, "needs top-level lists"),
    ({"images": [{"file_name": "red.png"}], "annotations": []}, r"images\[0\] must be an object with 'id'"),
    ({"images": [{"id": 1, "file_name": "red.png"}, {"id": 1, "file_name": "gray.jpg"}], "annotations": []},
     "appears twice"),
    ({"images": [{"id": 1, "file_name": "../red.png"}], "annotations": []}, "inside the image directory"),
    ({"images": [{"id": 1, "file_name": "red.png"}], "annotations": [{"image_id": 7, "caption": "x"}]},
     r"annotations\[0\]: image_id 7 is not the id"),
    ({"images": [{"id": 1, "file_name": "red.png"}], "annotations": [{"image_id": 1, "caption": 5}]},
     "string 'caption'"),
    ({"images": [{"id": 1, "file_name": "red.png"}], "annotations": []}, "no image with a caption"),
    ({"images": [{"id": 1, "file_name": "missing.png"}], "annotations": [{"image_id": 1, "caption": "x"}]},
     r"1 of 1 images .* are not in .*missing.png"),
])
def test_bad_coco_files_fail_with_a_clear_error(tmp_path, data, message):
    path, images = _write_coco(tmp_path, data)
    with pytest.raises(InputError, match=message):
        CocoCaptions(path, images)


def test_missing_json_or_image_dir_and_unreadable_image(tmp_path):
    path, images = _write_coco(tmp_path, GOOD)
    with pytest.raises(InputError, match="does not exist"):
        CocoCaptions(tmp_path / "nope.json", images)
    with pytest.raises(InputError, match="image directory"):
        CocoCaptions(path, tmp_path / "no_images")
    (images / "red.png").write_bytes(b"garbage")
    ds = CocoCaptions(path, images)
    with pytest.raises(InputError, match="red.png"):
        ds[0]
