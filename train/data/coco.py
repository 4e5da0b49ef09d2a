"""A user's COCO-style caption data on local disk, served like the generated scenes.

Expected JSON (the COCO captions format; extra keys are ignored)::

    {"images": [{"id": 1, "file_name": "a.jpg"}, ...],
     "annotations": [{"image_id": 1, "caption": "a red ball on a table"}, ...]}

``CocoCaptions(json_path, image_dir)[i]`` gives ``(image, annotation)`` exactly as
``SceneDataset`` does: image (H, W, 3) uint8 RGB, and an annotation with ``id``, ``image``
(file_name, relative to image_dir), ``width``, ``height``, ``captions`` ([{text, facts}], facts
None because real captions come without ground truth), and empty ``qa``, ``labels`` and
``objects``. Images without any caption are skipped. The whole file is validated at
construction, so a bad file fails at once with an InputError that names the entry.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from tinymm.errors import InputError
from train.data.scene_dataset import read_image_rgb

logger = logging.getLogger(__name__)

MISSING_FILES_SHOWN = 3  # how many missing image files an error message lists


def _load(json_path: Path) -> dict[str, Any]:
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise InputError(f"COCO caption file {json_path} does not exist; pass the path of your captions JSON") from e
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"COCO caption file {json_path} is not readable JSON ({e}); check that it is the "
                         "captions file (e.g. captions_train2017.json)") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise InputError(f"COCO caption file {json_path} needs top-level lists 'images' and 'annotations'; "
                         f"found {found}")
    return data


def _safe_relative(file_name: Any, where: str) -> str:
    if not isinstance(file_name, str) or not file_name:
        raise InputError(f"{where}: file_name={file_name!r} must be a non-empty string")
    path = PurePosixPath(file_name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise InputError(f"{where}: file_name={file_name!r} must be a path inside the image directory "
                         "(no absolute paths, no '..')")
    return str(path)


class CocoCaptions:
    """COCO-style captions plus an image folder: ``len(ds)``, ``ds[i] -> (image, annotation)``."""

    def __init__(self, json_path: str | Path, image_dir: str | Path) -> None:
        self.json_path, self.image_dir = Path(json_path), Path(image_dir)
        if not self.image_dir.is_dir():
            raise InputError(f"image directory {self.image_dir} does not exist or is not a directory")
        data = _load(self.json_path)
        files: dict[Any, str] = {}
        for k, image in enumerate(data["images"]):
            where = f"{self.json_path}: images[{k}]"
            if not isinstance(image, dict) or "id" not in image:
                raise InputError(f"{where} must be an object with 'id' and 'file_name', got {image!r:.80}")
            if image["id"] in files:
                raise InputError(f"{where}: image id {image['id']!r} appears twice; ids must be unique")
            files[image["id"]] = _safe_relative(image.get("file_name"), where)
        captions: dict[Any, list[str]] = {}
        for k, ann in enumerate(data["annotations"]):
            where = f"{self.json_path}: annotations[{k}]"
            if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str):
                raise InputError(f"{where} must be an object with 'image_id' and a string 'caption', got {ann!r:.80}")
            if ann.get("image_id") not in files:
                raise InputError(f"{where}: image_id {ann.get('image_id')!r} is not the id of any entry in 'images'")
            captions.setdefault(ann["image_id"], []).append(ann["caption"].strip())
        self.items = [(image_id, files[image_id], captions[image_id]) for image_id in files if image_id in captions]
        skipped = len(files) - len(self.items)
        if skipped:
            logger.info("%s: skipped %d images without captions", self.json_path, skipped)
        if not self.items:
            raise InputError(f"{self.json_path} has no image with a caption ({len(files)} images, "
                             f"{len(data['annotations'])} annotations)")
        missing = [name for _, name, _ in self.items if not (self.image_dir / name).is_file()]
        if missing:
            raise InputError(f"{len(missing)} of {len(self.items)} images named in {self.json_path} are not in "
                             f"{self.image_dir}, e.g. {missing[:MISSING_FILES_SHOWN]}; check --image-dir")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        image_id, name, texts = self.items[index]  # IndexError past the end, as a sequence should
        image = read_image_rgb(self.image_dir / name)
        annotation = {
            "id": image_id,
            "image": name,
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "captions": [{"text": t, "facts": None} for t in texts],
            "qa": [],
            "labels": [],
            "objects": [],
        }
        return image, annotation

    def __iter__(self) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        for i in range(len(self)):
            yield self[i]
