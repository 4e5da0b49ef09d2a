"""Lexicon correction of CTC transcripts: snap each word that is not in the lexicon to the closest one.

A character CTC model spells: on a closed vocabulary (a robot's command grammar) most of its
errors are near misses ("blellow" for "yellow", "greee" for "green") that a lexicon fixes, as a
lexicon does in a classic ASR decoder. A bundle that ships one lists its words in the manifest's
``model.lexicon``; the speech pipeline applies it unless asked not to.

    lexicon = Lexicon(["pick", "up", "the", "yellow", "circle"])
    lexicon.correct("pick up the blellow circle")  # -> "pick up the yellow circle"

A word is replaced only when its closest lexicon word is within ``max_edit_fraction`` edits per
character of the longer of the two words; otherwise it is kept as spoken. Among equally close
words the one listed first wins: list the most frequent words first (the training recipe writes
them so), which makes the tie-break a unigram prior ("tel" becomes "tell", not "ten").
"""

from __future__ import annotations

from typing import Iterable

from tinymm.errors import BundleError

DEFAULT_MAX_EDIT_FRACTION = 0.5  # edits per character of the longer word, at most, for a replacement
MAX_CACHED_WORDS = 4096  # corrections remembered per Lexicon (bounded: a stream can say anything)


def edit_distance(a: str, b: str, limit: int | None = None) -> int:
    """Levenshtein distance (insertions, deletions and substitutions cost 1).

    With ``limit``, stops as soon as the distance must exceed it and returns ``limit + 1``: most
    lexicon words are far from a misspelling, and this rejects them after a row or two.
    """
    if len(a) < len(b):
        a, b = b, a
    if limit is not None and len(a) - len(b) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        if limit is not None and min(current) > limit:  # every later row is at least this far
            return limit + 1
        previous = current
    return previous[-1]


class Lexicon:
    """The words a speech model was trained on; ``correct`` snaps near misses to them."""

    def __init__(self, words: Iterable[str], max_edit_fraction: float = DEFAULT_MAX_EDIT_FRACTION) -> None:
        ordered = tuple(dict.fromkeys(w.strip().lower() for w in words if isinstance(w, str) and w.strip()))
        if not ordered:
            raise BundleError("the lexicon is empty; a bundle's model.lexicon must list the words the model knows")
        if not 0.0 < max_edit_fraction <= 1.0:
            raise ValueError(f"max_edit_fraction={max_edit_fraction!r} must be in (0, 1]")
        self.words = frozenset(ordered)
        self.max_edit_fraction = max_edit_fraction
        self._ordered = ordered  # the given order decides ties: most frequent first
        self._cache: dict[str, str] = {}  # unknown word -> its correction; a talker repeats their slips

    def __repr__(self) -> str:
        return f"Lexicon({len(self.words)} words, max_edit_fraction={self.max_edit_fraction})"

    @classmethod
    def from_model_info(cls, value: object) -> Lexicon | None:
        """The lexicon of a manifest's ``model.lexicon`` (a list of words), None when absent."""
        if value is None:
            return None
        if not isinstance(value, (list, tuple)) or not all(isinstance(w, str) for w in value):
            raise BundleError(f"manifest model.lexicon must be a list of words, got {type(value).__name__}; "
                              "re-export the bundle")
        return cls(value)

    def closest(self, word: str) -> str:
        """``word`` itself when known, else the closest lexicon word within the limit, else ``word``."""
        if word in self.words:
            return word
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        best, best_distance = word, None
        for candidate in self._ordered:
            limit = int(self.max_edit_fraction * max(len(word), len(candidate)))
            if best_distance is not None:
                limit = min(limit, best_distance - 1)  # only a strictly closer word can win
            distance = edit_distance(word, candidate, limit)
            if distance <= limit:  # earlier words win ties: a later one must be strictly closer
                best, best_distance = candidate, distance
        if len(self._cache) < MAX_CACHED_WORDS:
            self._cache[word] = best
        return best

    def correct(self, text: str) -> str:
        """``text`` with each unknown word replaced by its closest lexicon word (see ``closest``)."""
        return " ".join(self.closest(word) for word in text.split())
