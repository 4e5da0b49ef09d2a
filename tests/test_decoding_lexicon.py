"""Lexicon correction of CTC transcripts (tinymm/decoding/lexicon.py)."""

from __future__ import annotations

import pytest

from tinymm.decoding.lexicon import Lexicon, edit_distance
from tinymm.errors import BundleError

WORDS = ["pick", "up", "the", "yellow", "circle", "green", "star", "stop", "black", "block"]


@pytest.mark.parametrize("a, b, expected", [("", "", 0), ("abc", "", 3), ("kitten", "sitting", 3),
                                             ("yellow", "blellow", 2), ("flaw", "lawn", 2)])
def test_edit_distance_against_known_values(a, b, expected):
    assert edit_distance(a, b) == expected == edit_distance(b, a)


def test_near_misses_snap_to_the_lexicon_and_known_words_stay():
    lexicon = Lexicon(WORDS)
    assert lexicon.correct("pick up the blellow circle") == "pick up the yellow circle"
    assert lexicon.correct("face the greee star") == "face the green star"  # "face" is far from every word: kept
    assert lexicon.correct("  stop  ") == "stop"


def test_ties_go_to_the_word_listed_first_and_far_words_are_left_as_spoken():
    assert Lexicon(WORDS).closest("blcck") == "black"  # one edit from "black" and "block": listed first
    assert Lexicon(["block", "black"]).closest("blcck") == "block"
    assert Lexicon(["tell", "ten"]).correct("tel me") == "tell me"
    assert Lexicon(WORDS).closest("xylophone") == "xylophone"
    assert Lexicon(WORDS, max_edit_fraction=0.1).closest("blellow") == "blellow"


def test_bad_lexicons_are_refused():
    with pytest.raises(BundleError, match="empty"):
        Lexicon(["", "  "])
    with pytest.raises(BundleError, match="list of words"):
        Lexicon.from_model_info("pick up")
    assert Lexicon.from_model_info(None) is None
    with pytest.raises(ValueError, match="max_edit_fraction"):
        Lexicon(WORDS, max_edit_fraction=0.0)


def test_a_manifest_lexicon_may_arrive_as_a_tuple():
    lexicon = Lexicon.from_model_info(("stop", "go"))
    assert lexicon is not None and lexicon.correct("stopp") == "stop"


def test_the_cutoff_distance_agrees_with_the_full_one():
    for a, b in [("kitten", "sitting"), ("blellow", "yellow"), ("and", "triangle"), ("", "ab")]:
        full = edit_distance(a, b)
        for limit in range(0, 6):
            assert edit_distance(a, b, limit) == (full if full <= limit else limit + 1)
