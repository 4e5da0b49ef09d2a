"""train/data/speech_grammar.py: coverage of the command/question grammar and intent round trips."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from tinymm.robot.intent import Intent, IntentParser, phrasings
from tinymm.robot.phrases import COLORS, NUMBER_WORDS, SHAPES, affixes
from tinymm.robot.transcripts import normalize_transcript
from train.data.speech_grammar import (
    GrammarConfig,
    all_intents,
    all_transcripts,
    render,
    sample_intent,
    sample_utterance,
)


@pytest.fixture(scope="module")
def parser() -> IntentParser:
    return IntentParser()


@pytest.fixture(scope="module")
def every_transcript() -> set[str]:
    return {text for intent in all_intents() for text in all_transcripts(intent)}


REQUIRED_FORMS = [
    "stop", "go forward", "go back", "turn left", "turn right", "turn around",
    *(f"go forward {n} meter{'s' if n != 'one' else ''}" for n in NUMBER_WORDS),
    *(f"pick up the {c} {s}" for c in COLORS for s in SHAPES),
    "put it down",
    *(f"look at the {c} {s}" for c in COLORS for s in SHAPES),
    *(f"what color is the {s}" for s in SHAPES),
    *(f"what shape is the {c} object" for c in COLORS),
    "how many circles are there", "how many squares are there", "how many triangles are there",
    "how many stars are there", "how many crosses are there", "how many diamonds are there",
    "how many objects are there",
    *(f"is there {'an' if c == 'orange' else 'a'} {c} {s}" for c in COLORS for s in SHAPES),
    *(f"where is the {c} {s}" for c in COLORS for s in SHAPES),
    "what does the sign say",
    # natural variation
    "please stop", "move forward three meters", "go backward", "turn to the left", "please go forward",
    "could you please pick up the red circle", "what is the color of the star", "read the sign",
]


def test_every_listed_form_is_in_the_grammar(every_transcript):
    missing = [form for form in REQUIRED_FORMS if form not in every_transcript]
    assert not missing


def test_all_intents_are_distinct_and_cover_every_frame_and_slot():
    intents = all_intents()
    assert len(intents) == len(set(intents))
    kinds = Counter(intent.kind for intent in intents)
    assert kinds["command"] > 0 and kinds["question"] > 0
    assert {i.color for i in intents if i.color} == set(COLORS)
    assert {i.shape for i in intents if i.shape} == set(SHAPES)
    assert {i.distance_m for i in intents if i.distance_m} == set(range(1, 11))
    assert {i.question_type for i in intents if i.question_type} == {
        "color", "shape", "count", "count_shape", "exist", "position", "sign"
    }


def test_parse_of_render_is_the_intent_for_every_item_and_variation(parser):
    # Every intent x every phrasing, with the prefixes and suffixes cycled so that each one is
    # used many times (all 30k combinations take ~50 s; this covers each part in ~3 s).
    checked = 0
    for n, intent in enumerate(all_intents()):
        prefixes, suffixes = affixes(intent.kind)
        for k, phrase in enumerate(phrasings(intent)):
            prefix = ("", *prefixes)[(n + k) % (len(prefixes) + 1)]
            suffix = ("", *suffixes)[(n + 2 * k) % (len(suffixes) + 1)]
            for text in {phrase, " ".join(part for part in (prefix, phrase, suffix) if part)}:
                assert parser.parse(text) == intent, text
                checked += 1
    assert checked > 2000


@pytest.mark.parametrize("intent", [Intent("stop"), Intent("move", direction="backward", distance_m=7),
                                    Intent("question", question_type="exist", color="orange", shape="cross")])
def test_every_affix_combination_of_some_intents_parses(parser, intent):
    for text in all_transcripts(intent):
        assert parser.parse(text) == intent, text


def test_transcripts_are_canonical(every_transcript):
    assert all(normalize_transcript(text) == text for text in every_transcript)


def test_sampling_is_deterministic_and_mixes_kinds(parser):
    config = GrammarConfig()
    first = [sample_utterance(np.random.default_rng([7, i]), config) for i in range(200)]
    again = [sample_utterance(np.random.default_rng([7, i]), config) for i in range(200)]
    assert first == again
    kinds = Counter(u.kind for u in first)
    assert 0.25 < kinds["question"] / len(first) < 0.55  # question_fraction = 0.4
    assert len({u.intent.action for u in first}) == 7
    for u in first:
        assert parser.parse(u.transcript) == u.intent
        assert u.spoken_text.endswith("?" if u.kind == "question" else ".")
        assert normalize_transcript(u.spoken_text) == u.transcript
        assert not (u.transcript.startswith("please") and u.transcript.endswith("please"))


def test_config_probabilities_steer_sampling():
    only_questions = GrammarConfig(question_fraction=1.0, prefix_prob=0.0)
    rng = np.random.default_rng(0)
    utterances = [sample_utterance(rng, only_questions) for _ in range(50)]
    assert all(u.kind == "question" for u in utterances)
    assert all(u.transcript.split()[0] not in ("robot", "hey", "okay") for u in utterances)
    moves = [sample_intent(rng, GrammarConfig(question_fraction=0.0, distance_prob=1.0)) for _ in range(300)]
    assert all(i.distance_m is not None for i in moves if i.action == "move")


def test_render_uses_a_prefix_when_asked():
    config = GrammarConfig(prefix_prob=1.0, suffix_prob=0.0)
    utterance = render(Intent("stop"), np.random.default_rng(3), config)
    assert utterance.transcript != "stop"
    assert utterance.transcript.endswith(("stop", "halt", "freeze", "moving", "there"))


@pytest.mark.parametrize("bad", [{"question_fraction": 1.5}, {"prefix_prob": -0.1}, {"suffix_prob": True}])
def test_config_validation(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        GrammarConfig(**bad)
