"""Scene dataset on disk: writer/reader round trip, splits, determinism, CLI, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinymm.errors import InputError
from train.data.scene_dataset import (
    GENERATOR_VERSION,
    SplitSpec,
    SceneDataset,
    build_specs,
    generate_example,
    main,
    write_dataset,
    write_split,
)
from train.data.scene_language import false_facts
from train.data.scene_render import RenderConfig
from train.data.scene_world import HELDOUT_FONTS, WorldConfig

ANNOTATION_KEYS = {"id", "image", "width", "height", "captions", "qa", "labels", "objects"}


def _specs(train: int = 6, val: int = 3, test: int = 2) -> list[SplitSpec]:
    return [SplitSpec("train", train, 0), SplitSpec("val", val, 0), SplitSpec("test", test, 0)]


def test_written_splits_read_back_exactly(tmp_path):
    summary = write_dataset(tmp_path, _specs(), workers=2, progress=False, command="test")
    assert summary["scenes"] == 11 and summary["splits"] == {"train": 6, "val": 3, "test": 2}
    meta = json.loads((tmp_path / "scenes" / "meta.json").read_text())
    assert meta["generator_version"] == GENERATOR_VERSION
    assert meta["command"] == "test" and meta["channel_order"] == "RGB"
    assert set(meta["splits"]) == {"train", "val", "test"}
    for spec in _specs():
        ds = SceneDataset(tmp_path, spec.name)
        assert len(ds) == spec.count
        for i, (image, annotation) in enumerate(ds):
            expected_image, expected = generate_example(WorldConfig(), RenderConfig(), 0, spec.stream, i)
            assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
            assert np.array_equal(image, expected_image)  # PNG is lossless, and the order is RGB
            assert ANNOTATION_KEYS <= set(annotation)
            assert (tmp_path / "scenes" / spec.name / annotation["image"]).is_file()
            assert [c["text"] for c in annotation["captions"]] == [c["text"] for c in expected["captions"]]
            assert all(isinstance(c["facts"], frozenset) for c in annotation["captions"])
            assert annotation["qa"] == expected["qa"] and annotation["labels"] == expected["labels"]
            scene = ds.scene(i)
            assert all(false_facts(scene, c["facts"]) == [] for c in annotation["captions"])
        with pytest.raises(IndexError):
            ds[spec.count]
    # Splits are separate streams of the same seed.
    assert not np.array_equal(SceneDataset(tmp_path, "train")[0][0], SceneDataset(tmp_path, "val")[0][0])


def test_scene_i_is_the_same_whatever_the_split_size_and_worker_count(tmp_path):
    write_split(tmp_path / "a", SplitSpec("train", 3, 5), workers=1, progress=False)
    write_split(tmp_path / "b", SplitSpec("train", 8, 5), workers=2, progress=False)
    for i in range(3):
        name = f"scenes/train/images/{i:06d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    lines_a = (tmp_path / "a/scenes/train/annotations.jsonl").read_text().splitlines()
    lines_b = (tmp_path / "b/scenes/train/annotations.jsonl").read_text().splitlines()
    assert lines_a == lines_b[:3]


def test_existing_dataset_is_kept_unless_overwrite(tmp_path):
    write_dataset(tmp_path, _specs(2, 1, 1), workers=1, progress=False)
    with pytest.raises(InputError, match="overwrite"):
        write_dataset(tmp_path, _specs(2, 1, 1), workers=1, progress=False)
    write_dataset(tmp_path, [SplitSpec("train", 1, 1)], workers=1, overwrite=True, progress=False)
    assert len(SceneDataset(tmp_path / "scenes", "train")) == 1
    with pytest.raises(InputError, match="'val'"):
        SceneDataset(tmp_path, "val")


def test_reader_errors_are_clear(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        SceneDataset(tmp_path / "nowhere", "train")
    write_dataset(tmp_path, [SplitSpec("train", 3, 0)], workers=1, progress=False)
    path = tmp_path / "scenes" / "train" / "annotations.jsonl"
    path.write_text("\n".join(path.read_text().splitlines()[:2]) + "\n")
    with pytest.raises(InputError, match="has 2 scenes but meta.json says 3"):
        SceneDataset(tmp_path, "train")
    (tmp_path / "scenes" / "train" / "images" / "000000.png").write_bytes(b"not a png")
    meta_path = tmp_path / "scenes" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["splits"]["train"]["count"] = 2
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="000000.png"):
        SceneDataset(tmp_path, "train")[0]
    meta["generator_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="newer"):
        SceneDataset(tmp_path, "train")


def test_heldout_split_uses_heldout_fonts_other_rasterization_and_size():
    specs = {s.name: s for s in build_specs({"train": 2, "heldout": 2}, 64, 0, heldout_size=96)}
    assert set(specs) == {"train", "heldout"}
    assert specs["heldout"].world.fonts == HELDOUT_FONTS and specs["heldout"].world.width == 96
    assert specs["train"].render.render_scale == 2 and specs["heldout"].render.render_scale == 1


def test_cli_writes_a_dataset_and_reports_throughput(tmp_path, capsys):
    rc = main(["--out", str(tmp_path), "--train", "4", "--val", "2", "--test", "0", "--heldout", "2",
               "--size", "48", "--workers", "1", "--quiet", "--json", "--preview", str(tmp_path / "p.png")])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scenes"] == 8 and summary["scenes_per_second"] > 0
    assert (tmp_path / "p.png").is_file()
    image, annotation = SceneDataset(tmp_path, "heldout")[1]
    assert image.shape == (48, 48, 3) and annotation["width"] == 48
    meta = json.loads((tmp_path / "scenes" / "meta.json").read_text())
    assert meta["command"].startswith("python -m train.data.scene_dataset --out")
    assert set(meta["splits"]) == {"train", "val", "heldout"}
    assert main(["--out", str(tmp_path), "--train", "1", "--quiet"]) != 0  # refuses to overwrite
    assert "overwrite" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "x"), "--size", "8", "--quiet"]) == 2  # bad config: usage error
    assert "width=8" in capsys.readouterr().err
