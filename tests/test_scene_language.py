"""Scene language: captions state only true facts and parse back; QA answers are correct and unique."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tinymm.errors import InputError
from train.data.scene_language import (
    NUMBER_WORDS,
    PLURALS,
    QA_TYPES,
    all_labels,
    fact_holds,
    facts_from_json,
    facts_to_json,
    false_facts,
    make_captions,
    make_qa,
    matches,
    parse_caption_facts,
    scene_labels,
    spatial_phrase_spans,
)
from train.data.scene_world import (
    COLORS,
    COLORS_RGB,
    POSITIONS,
    SHAPES,
    SIGN_TEXTS,
    SIZES,
    UNCLEAR_POSITION,
    Background,
    Scene,
    SceneObject,
    WorldConfig,
    position_answer,
    sample_scene,
    scene_rngs,
)

N_SCENES = 300
WORLD = WorldConfig(sign_prob=0.3)
GRAY = Background("flat", (128.0, 128.0, 128.0), (128.0, 128.0, 128.0))


def _scenes(n: int = N_SCENES):
    for i in range(n):
        world_rng, _, language_rng = scene_rngs(4, 0, i)
        yield sample_scene(WORLD, world_rng), language_rng


def _shape(shape, color, size, center) -> SceneObject:
    return SceneObject(kind="shape", center=center, rotation_deg=0.0, rgb=COLORS_RGB[color], shape=shape,
                       color=color, size=size, radius=8.0)


def _fixed_scene() -> Scene:
    return Scene(64, 64, GRAY, (
        _shape("circle", "red", "large", (12.0, 32.0)),  # left
        _shape("square", "blue", "small", (52.0, 33.0)),  # right
        SceneObject(kind="sign", center=(32.0, 8.0), rotation_deg=0.0, rgb=(232, 232, 222), text="STOP",
                    plate="light", font="simplex", plate_size=(30.0, 12.0), text_height=7.0),  # top
    ))


def test_every_caption_fact_is_true_and_the_text_parses_back_to_its_facts():
    n_captions = 0
    for scene, rng in _scenes():
        captions = make_captions(scene, rng)
        assert 1 <= len(captions) <= 4 and len({c.text for c in captions}) == len(captions)
        for caption in captions:
            assert caption.facts, caption.text
            assert false_facts(scene, caption.facts) == [], caption.text
            assert parse_caption_facts(caption.text, strict=True) == caption.facts, caption.text
            assert facts_from_json(facts_to_json(caption.facts)) == caption.facts
            n_captions += 1
    assert n_captions > 2.5 * N_SCENES


def test_captions_vary_and_use_every_construction():
    texts = [c.text for scene, rng in _scenes(200) for c in make_captions(scene, rng)]
    joined = "\n".join(texts)
    for phrase in ("to the left of", "right of", "above", "below", "on the left", "at the top", "in the",
                   "objects:", "there are", "a scene with", "a sign that says", "a sign reading", "two "):
        assert phrase in joined, phrase
    kinds = Counter(f[0] for scene, rng in _scenes(200) for c in make_captions(scene, rng) for f in c.facts)
    assert set(kinds) == {"object", "count", "position", "relation"}


def test_relations_and_positions_in_captions_name_unique_objects():
    for scene, rng in _scenes(150):
        for caption in make_captions(scene, rng):
            for fact in caption.facts:
                descs = [fact[1]] if fact[0] == "position" else [fact[1], fact[3]] if fact[0] == "relation" else []
                for desc in descs:
                    assert sum(matches(o, desc) for o in scene.objects) == 1, (caption.text, desc)


def test_parser_reads_free_text_and_strict_mode_names_the_unknown_word():
    facts = parse_caption_facts("The red circle is to the left of a small blue square. There are 3 things!")
    assert facts == {
        ("object", ("shape", None, "red", "circle")),
        ("object", ("shape", "small", "blue", "square")),
        ("relation", ("shape", None, "red", "circle"), "left of", ("shape", "small", "blue", "square")),
        ("count", ("any",), 3),
    }
    assert parse_caption_facts("two crosses and a sign showing 7 at the top") == {
        ("count", ("shape", None, None, "cross"), 2),
        ("object", ("sign", "7")),
        ("position", ("sign", "7"), "top"),
    }
    assert parse_caption_facts("no objects") == {("count", ("any",), 0)}
    with pytest.raises(InputError, match="'banana'"):
        parse_caption_facts("a red banana", strict=True)


def test_fact_checker_catches_false_statements():
    scene = _fixed_scene()
    true = parse_caption_facts("three objects: a large red circle to the left of a small blue square "
                               "and a sign that says STOP at the top")
    assert len(true) == 6 and false_facts(scene, true) == []
    for wrong in ("a blue circle", "a small red circle", "two objects", "a square to the left of a circle",
                  "a red circle on the right", "a sign that says GO", "a circle above a square", "two circles"):
        assert false_facts(scene, parse_caption_facts(wrong)), wrong
    with pytest.raises(ValueError, match="unknown fact"):
        fact_holds(scene, ("colour", "red"))


def _answer_from_truth(scene: Scene, qa) -> str:
    """Recompute an answer from the objects, checking the question picks out one object."""
    shapes = [o for o in scene.objects if o.kind == "shape"]
    q = qa.question
    if qa.type == "color":
        found = [o for o in shapes if o.shape == re.fullmatch(r"what color is the (\w+)\?", q)[1]]
        assert len(found) == 1
        return found[0].color
    if qa.type == "shape":
        found = [o for o in shapes if o.color == re.fullmatch(r"what shape is the (\w+) object\?", q)[1]]
        assert len(found) == 1
        return found[0].shape
    if qa.type in ("size", "position") and q != "where is the sign?":
        color, shape = re.fullmatch(r"(?:what size|where) is the (\w+) (\w+)\?", q).groups()
        found = [o for o in shapes if (o.color, o.shape) == (color, shape)]
        assert len(found) == 1
        return found[0].size if qa.type == "size" else position_answer(found[0], scene.width, scene.height)
    if qa.type in ("sign", "position"):
        found = [o for o in scene.objects if o.kind == "sign"]
        assert len(found) == 1
        return found[0].text.lower() if qa.type == "sign" else position_answer(found[0], scene.width, scene.height)
    if qa.type == "count":
        assert q == "how many objects are there?"
        return NUMBER_WORDS[len(scene.objects)]
    if qa.type == "count_shape":
        plural = re.fullmatch(r"how many (\w+) are there\?", q)[1]
        shape = next(s for s in SHAPES if PLURALS[s] == plural)
        return NUMBER_WORDS[sum(o.shape == shape for o in shapes)]
    if qa.type == "exist":
        color, shape = re.fullmatch(r"is there an? (\w+) (\w+)\?", q).groups()
        return "yes" if any((o.color, o.shape) == (color, shape) for o in shapes) else "no"
    raise AssertionError(f"unexpected QA type {qa.type}")


def test_qa_answers_are_correct_unique_and_one_lowercase_word():
    types, unclear = Counter(), 0
    vocabulary = set(COLORS) | set(SHAPES) | set(SIZES) | set(POSITIONS) | set(NUMBER_WORDS) | {"yes", "no"} \
        | {t.lower() for t in SIGN_TEXTS} | {UNCLEAR_POSITION}
    for scene, rng in _scenes():
        qa = make_qa(scene, rng)
        assert len({x.question for x in qa}) == len(qa)
        for x in qa:
            assert x.type in QA_TYPES and x.question.endswith("?")
            assert x.answer in vocabulary and x.answer == x.answer.lower() and " " not in x.answer
            assert x.answer == _answer_from_truth(scene, x), (x, scene)
            types[x.type] += 1
            unclear += x.answer == UNCLEAR_POSITION
    assert set(types) == set(QA_TYPES)
    assert 0 < unclear < types["position"] / 4


def test_exist_questions_are_balanced_per_scene():
    yes = no = 0
    for scene, rng in _scenes():
        answers = Counter(x.answer for x in make_qa(scene, rng) if x.type == "exist")
        assert answers["yes"] == answers["no"]
        yes += answers["yes"]
        no += answers["no"]
    assert yes == no > N_SCENES


def test_qa_is_deterministic_for_a_seed():
    scene, _ = next(_scenes(1))
    assert make_qa(scene, scene_rngs(4, 0, 0)[2]) == make_qa(scene, scene_rngs(4, 0, 0)[2])


def test_labels_cover_all_combinations_and_each_scene_object():
    labels = all_labels()
    assert len(labels) == len(set(labels)) == 48 + len(SIGN_TEXTS)
    assert "a photo of an orange star" in labels and "a photo of a sign that says STOP" in labels
    assert scene_labels(_fixed_scene()) == ["a photo of a red circle", "a photo of a blue square",
                                            "a photo of a sign that says STOP"]
    for scene, _ in _scenes(100):
        assert set(scene_labels(scene)) <= set(labels)


def test_spatial_phrase_spans_follow_their_noun_phrase():
    text = "a red circle is to the left of a small blue square and a sign reading GO at the top"
    red_circle, sign = ("shape", None, "red", "circle"), ("sign", "GO")
    assert spatial_phrase_spans(text) == [(3, 8, red_circle), (17, 20, sign)]
    assert spatial_phrase_spans("a small star above a cross") == [(3, 4, ("shape", "small", None, "star"))]
    assert spatial_phrase_spans("three objects: a red circle, a star and a sign") == []
    assert spatial_phrase_spans("two circles on the left") == []  # counted phrases state no position
