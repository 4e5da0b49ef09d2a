"""Frames without scene objects: every kind draws, reproducibly; their annotations teach the empty
answers; they mix into the training examples; the evaluation counts claims of objects."""

from __future__ import annotations

import numpy as np
import pytest

from train.data.blank_frames import BLANK_KINDS, EMPTY_CAPTIONS, BlankFrames, SceneMix, blank_image
from train.data.scene_language import parse_caption_facts

EMPTY_ANSWERS = {"count": "zero", "count_shape": "zero", "exist": "no"}


@pytest.mark.parametrize("kind", BLANK_KINDS)
def test_every_kind_draws_a_reproducible_rgb_frame(kind: str) -> None:
    a = blank_image(kind, 48, np.random.default_rng(3))
    b = blank_image(kind, 48, np.random.default_rng(3))
    assert a.shape == (48, 48, 3) and a.dtype == np.uint8 and a.flags.c_contiguous
    np.testing.assert_array_equal(a, b)


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of"):
        blank_image("photo", 32, np.random.default_rng(0))
    with pytest.raises(ValueError, match="subset"):
        BlankFrames(2, 32, kinds=("photo",))


def test_annotations_hold_no_object_and_the_empty_answers() -> None:
    frames = BlankFrames(len(BLANK_KINDS) * 2, 32, seed=1, stream=0)
    assert [frames.kind(i) for i in range(len(BLANK_KINDS))] == list(BLANK_KINDS)
    for i in range(len(frames)):
        image, annotation = frames[i]
        assert image.shape == (32, 32, 3)
        assert annotation["objects"] == [] and annotation["labels"] == [] and annotation["relations"] == []
        assert {c["text"] for c in annotation["captions"]} == set(EMPTY_CAPTIONS)
        assert all(c["facts"] == frozenset({("count", ("any",), 0)}) for c in annotation["captions"])
        types = {qa["type"] for qa in annotation["qa"]}
        assert types == {"count", "count_shape", "exist", "size", "position", "color", "shape", "sign"}
        for qa in annotation["qa"]:
            assert qa["answer"] == EMPTY_ANSWERS.get(qa["type"], "none")
    for text in EMPTY_CAPTIONS:  # the caption parser reads each as "no objects"
        assert parse_caption_facts(text, strict=True) == frozenset({("count", ("any",), 0)})
    np.testing.assert_array_equal(frames[5][0], BlankFrames(6, 32, seed=1, stream=0)[5][0])
    assert not np.array_equal(frames[5][0], BlankFrames(6, 32, seed=1, stream=1)[5][0])


def test_a_scene_mix_puts_scenes_first_then_blank_frames() -> None:
    class Scenes:
        annotations = [{"objects": [{"kind": "shape"}]}] * 3

        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int):
            return np.ones((32, 32, 3), np.uint8), self.annotations[i]

    blanks = BlankFrames(2, 32)
    mix = SceneMix(Scenes(), blanks)
    assert len(mix) == 5 and len(mix.annotations) == 5
    assert mix[2][1]["objects"] and mix[3][1]["objects"] == [] and mix[4][1]["blank_kind"] == BLANK_KINDS[1]
    with pytest.raises(IndexError):
        mix[5]


torch = pytest.importorskip("torch", reason="the training tier needs torch (pip install 'tinymm[train]')")


def test_blank_frames_become_training_examples_without_a_label(tmp_path) -> None:
    from tiny_runs import write_tiny_checkpoints
    from train.data.scene_dataset import SceneDataset, build_specs, write_dataset
    from train.vlm_data import NO_LABEL, VLMSceneDataset, collate
    from train.vlm_tokenizer import load_tokenizer

    root = write_tiny_checkpoints(tmp_path, ["stop"])
    write_dataset(root / "data", build_specs({"train": 4}, size=32, seed=0), workers=1, progress=False)
    tokenizer = load_tokenizer(root / "vlm", 40)
    mix = SceneMix(SceneDataset(root / "data", "train"), BlankFrames(4, 32))
    dataset = VLMSceneDataset(mix, tokenizer, 32, 8)
    examples = [dataset.example(i, np.random.default_rng(i), texts=2) for i in range(len(mix))]
    assert [e["label_index"] == NO_LABEL for e in examples] == [False] * 4 + [True] * 4
    assert all(not e["label_targets"].any() and not (e["aux"] > 0).any() for e in examples[4:])
    batch = collate(examples, tokenizer.config.pad_id)
    assert batch["pixel_values"].shape == (8, 3, 32, 32) and batch["input_ids"].shape[0] == 16
    assert dataset.object_counts.tolist()[4:] == [0, 0, 0, 0]


def test_a_caption_claims_objects_unless_it_says_there_are_none() -> None:
    from train.vlm_eval_blank import caption_claims_objects

    assert not caption_claims_objects("there are no objects")
    assert not caption_claims_objects("a scene with no objects")
    assert caption_claims_objects("one object: a red circle")
    assert caption_claims_objects("a small blue star")
    assert caption_claims_objects("xxxxxxxxit")  # nothing the parser reads is no claim of emptiness
