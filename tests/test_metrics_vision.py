"""Vision-language metrics on hand-made cases: caption facts, BLEU-4, VQA by type, zero-shot top-1."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tinymm.errors import InputError
from train.data.scene_dataset import generate_example
from train.data.scene_render import RenderConfig
from train.data.scene_world import COLORS, SHAPES, Scene, WorldConfig
from train.metrics_vision import (
    caption_correct,
    caption_fact_accuracy,
    caption_facts_by_kind,
    corpus_bleu,
    markdown_table,
    normalize_answer,
    vqa_accuracy,
    zero_shot_top1,
)


def _one_shape_scene() -> Scene:
    """A 64x64 scene with a single shape (not a sign), from the generator."""
    world = WorldConfig(min_objects=1, max_objects=1, sign_prob=0.0)
    for index in range(20):
        _, annotation = generate_example(world, RenderConfig(), seed=3, stream=0, index=index)
        scene = Scene.from_dict(annotation)
        if scene.objects[0].kind == "shape":
            return scene
    raise AssertionError("the generator gave no shape in 20 one-object scenes")


def test_true_caption_scores_one_and_one_false_fact_scores_zero():
    scene = _one_shape_scene()
    obj = scene.objects[0]
    other_color = next(c for c in COLORS if c != obj.color)
    other_shape = next(s for s in SHAPES if s != obj.shape)
    true_caption = f"a {obj.size} {obj.color} {obj.shape}"
    assert caption_correct(scene, true_caption)
    assert caption_correct(scene, "one object: " + true_caption)
    # Every fact true but one: a wrong colour, a wrong shape, a wrong count, a second object.
    for wrong in (f"a {obj.size} {other_color} {obj.shape}", f"a {obj.color} {other_shape}",
                  f"two objects: a {obj.color} {obj.shape} and a {other_color} {other_shape}",
                  f"{true_caption} and a {other_color} {obj.shape}"):
        assert not caption_correct(scene, wrong), wrong
    assert caption_fact_accuracy([scene, scene], [true_caption, f"a {other_color} {obj.shape}"]) == 0.5


def test_caption_stating_nothing_is_not_correct():
    scene = _one_shape_scene()
    assert not caption_correct(scene, "")
    assert not caption_correct(scene, "hello world")
    assert caption_fact_accuracy([], []) == 0.0


def test_caption_accuracy_refuses_mismatched_lengths():
    with pytest.raises(InputError, match="1 predictions for 2"):
        caption_fact_accuracy([_one_shape_scene()] * 2, ["a circle"])


def test_caption_facts_by_kind_counts_stated_and_false_facts():
    scene = _one_shape_scene()
    obj = scene.objects[0]
    other_color = next(c for c in COLORS if c != obj.color)
    captions = [f"one object: a {obj.color} {obj.shape}", f"two objects: a {other_color} {obj.shape}"]
    # One object fact per caption (the second false) and one count fact per caption (the second false).
    assert caption_facts_by_kind([scene, scene], captions) == {
        "count": {"stated": 2, "false": 1}, "object": {"stated": 2, "false": 1}}
    assert caption_facts_by_kind([], []) == {}
    with pytest.raises(InputError, match="1 predictions for 2"):
        caption_facts_by_kind([scene] * 2, ["a circle"])


def test_bleu_of_identical_text_is_one():
    refs = [["a red circle to the left of a blue square"], ["two objects: a star and a sign reading GO"]]
    assert corpus_bleu([r[0] for r in refs], refs) == pytest.approx(1.0)


def test_bleu_matches_a_hand_computed_value():
    hyp = "a red circle and a blue square"
    ref = "a red circle and a green square"
    # clipped n-gram precisions 6/7, 4/6, 3/5, 2/4; equal lengths, so no brevity penalty
    expected = (6 / 7 * 4 / 6 * 3 / 5 * 2 / 4) ** 0.25
    assert corpus_bleu([hyp], [[ref]]) == pytest.approx(expected)


def test_bleu_brevity_penalty_and_clipping():
    ref = "a b c d e f g h"
    # a correct prefix: every precision is 1, only the brevity penalty exp(1 - 8/5) remains
    assert corpus_bleu(["a b c d e"], [[ref]]) == pytest.approx(math.exp(1 - 8 / 5))
    # the closest reference length is used: with a 5-word reference there is no penalty
    assert corpus_bleu(["a b c d e"], [[ref, "a b c d e"]]) == pytest.approx(1.0)
    # repeated words are clipped to their count in the reference: no 2-gram matches -> 0
    assert corpus_bleu(["the the the the"], [["the cat"]]) == 0.0
    assert corpus_bleu([""], [["a b"]]) == 0.0


def test_bleu_refuses_a_bare_string_reference():
    with pytest.raises(InputError, match="list of reference lists"):
        corpus_bleu(["a b"], ["a b"])


def test_vqa_accuracy_per_type_and_overall():
    preds = ["Red", "blue.", "two", "three", "yes"]
    answers = ["red", "red", "two", "two", "yes"]
    types = ["color", "color", "count", "count", "exist"]
    acc = vqa_accuracy(preds, answers, types)
    assert acc == {"color": 0.5, "count": 0.5, "exist": 1.0, "overall": pytest.approx(3 / 5)}
    assert normalize_answer(" Stop! ") == "stop"


def test_zero_shot_top1_counts_any_present_label():
    similarity = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.8], [0.5, 0.4, 0.1]])
    assert zero_shot_top1(similarity, [[0], [1], [0, 1]]) == pytest.approx(2 / 3)
    with pytest.raises(InputError, match=r"\(N, L\)"):
        zero_shot_top1(np.zeros(3), [[0]])


def test_markdown_table_formats_percentages_and_counts():
    table = markdown_table({"student": {"params": 1234567, "VQA %": 0.5}}, ["params", "VQA %", "missing"])
    lines = table.splitlines()
    assert lines[0] == "| model | params | VQA % | missing |"
    assert lines[2] == "| student | 1,234,567 | 50.0 |  |"
