"""WER, CER and intent accuracy on hand-made transcripts (no torch needed)."""

from __future__ import annotations

import pytest

from tinymm.robot.intent import IntentParser
from train.metrics_speech import (
    char_error_rate,
    edit_distance,
    intent_matches,
    score_transcripts,
    word_error_rate,
)

PICK_RED_STAR = {"action": "pick_up", "color": "red", "shape": "star"}
WHAT_COLOR_STAR = {"action": "question", "type": "color", "shape": "star", "question": "what color is the star?"}


def test_edit_distance() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a", "b"]) == 2
    assert edit_distance(["a", "b", "c"], ["a", "c"]) == 1
    assert edit_distance("same", "same") == 0


def test_wer_is_corpus_level_not_a_mean_of_sentences() -> None:
    refs = ["stop", "go forward three meters please"]  # 1 + 5 reference words
    hyps = ["go", "go forward three meters please"]  # 1 substitution
    assert word_error_rate(refs, hyps) == pytest.approx(1 / 6)  # a per-sentence mean would give 0.5


def test_wer_counts_insertions_and_deletions() -> None:
    assert word_error_rate(["turn left"], ["turn left now please"]) == pytest.approx(1.0)  # 2 insertions / 2
    assert word_error_rate(["turn to the left"], ["turn left"]) == pytest.approx(0.5)


def test_transcripts_are_normalized_before_scoring() -> None:
    assert word_error_rate(["go forward three meters"], ["Go forward 3 m."]) == 0.0
    assert char_error_rate(["what color is the star"], ["What colour is the star?"]) == 0.0


def test_cer_includes_spaces() -> None:
    assert char_error_rate(["ab cd"], ["abcd"]) == pytest.approx(1 / 5)
    assert char_error_rate(["stop"], ["stob"]) == pytest.approx(1 / 4)


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])


def test_intent_matches_compares_action_type_and_slots() -> None:
    parser = IntentParser()
    assert intent_matches("pick up the red star", PICK_RED_STAR, parser)
    assert intent_matches("please grab the red star", PICK_RED_STAR, parser)  # another phrasing, same intent
    assert not intent_matches("pick up the blue star", PICK_RED_STAR, parser)  # wrong slot
    assert intent_matches("what color is the star", WHAT_COLOR_STAR, parser)
    assert not intent_matches("what shape is the red object", WHAT_COLOR_STAR, parser)  # wrong question type
    assert not intent_matches("the and of", WHAT_COLOR_STAR, parser)  # unparseable counts as wrong


def test_score_transcripts_splits_commands_and_questions() -> None:
    refs = ["pick up the red star", "stop", "what color is the star", "what color is the star"]
    hyps = ["pick up the red star", "top", "what color is the star", "what shape is the star"]
    intents = [PICK_RED_STAR, {"action": "stop"}, WHAT_COLOR_STAR, WHAT_COLOR_STAR]
    scores = score_transcripts(refs, hyps, intents)
    assert (scores.commands, scores.questions, scores.clips) == (2, 2, 4)
    assert scores.question_intent_accuracy == pytest.approx(0.5)
    assert scores.sentence_accuracy == pytest.approx(0.5)
    assert scores.wer == pytest.approx(2 / 16)
    assert 0.0 < scores.cer < scores.wer
    assert set(scores.to_dict()) >= {"wer", "cer", "command_intent_accuracy", "question_intent_accuracy"}


def test_score_transcripts_without_intents() -> None:
    scores = score_transcripts(["stop"], ["stop"])
    assert scores.wer == 0.0 and scores.intent_accuracy is None and scores.command_intent_accuracy is None
