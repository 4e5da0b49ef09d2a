"""Transcript normalization: the canonical text of what was said, for training labels and runtime input.

``normalize_transcript("Go forward 3m, please!")`` -> ``"go forward three meters please"``.
Both the speech training data and the intent parser go through it, so a transcript compares
equal however it was written. Pure Python (no numpy).
"""

from __future__ import annotations

import re
import unicodedata

# Characters a canonical transcript may contain (a speech model's output alphabet).
TRANSCRIPT_ALPHABET = " abcdefghijklmnopqrstuvwxyz"

_CONTRACTIONS = {
    "what's": "what is", "where's": "where is", "there's": "there is", "it's": "it is",
    "that's": "that is", "here's": "here is", "how's": "how is", "who's": "who is", "let's": "let us",
    "can't": "can not", "won't": "will not", "i'm": "i am",
}
_CONTRACTION_SUFFIXES = (("n't", " not"), ("'re", " are"), ("'ll", " will"), ("'ve", " have"), ("'d", " would"))
_SPELLINGS = {
    "colour": "color", "colours": "colors", "metre": "meter", "metres": "meters", "grey": "gray", "centre": "center",
}
_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_METERS_AFTER_NUMBER = re.compile(r"(\d+(?:\.\d+)?)\s*m\b")
_INNER_APOSTROPHE = re.compile(r"(?<=[a-z])'(?=[a-z])")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
_NOT_LETTER = re.compile(r"[^a-z]+")


def _int_to_words(n: int) -> str:
    """0 -> "zero", 25 -> "twenty five", 3104 -> "three thousand one hundred four"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (" " + _ONES[ones] if ones else "")
    scale, name = next((scale, name) for scale, name in _SCALES if n >= scale)  # n >= 100: "hundred" at least
    high, rest = divmod(n, scale)
    return f"{_int_to_words(high)} {name}" + (" " + _int_to_words(rest) if rest else "")


def _number_to_words(digits: str) -> str:
    """ "3" -> "three", "2.5" -> "two point five" (digits after the point are read one by one)."""
    whole, _, fraction = digits.partition(".")
    words = _int_to_words(int(whole))
    if fraction:
        words += " point " + " ".join(_ONES[int(d)] for d in fraction)
    return words


def normalize_transcript(text: str) -> str:
    """The canonical form of a transcript: lowercase words of a-z separated by single spaces.

    Steps, in order (training labels and runtime input both go through this function):

    1. Unicode compatibility forms and accents are removed (NFKD: "café" -> "cafe"), lowercase;
       typographic apostrophes become ``'``.
    2. Contractions are expanded: "what's" -> "what is", "don't" -> "do not", "they're" ->
       "they are" (possessive 's is not expanded: "robot's" -> "robots").
    3. Numbers written with digits become words: "3" -> "three", "1,200" -> "one thousand two
       hundred", "2.5" -> "two point five"; a number followed by "m" is in meters: "3m" ->
       "three meters", "1 m" -> "one meter".
    4. Apostrophes left inside words are dropped; every other character outside a-z
       (punctuation, hyphens, digits' leftovers) becomes a space.
    5. British spellings of the grammar's words become American: colour -> color, metres ->
       meters, grey -> gray.
    6. Spaces collapse to one; none lead or trail.

    The result only uses ``TRANSCRIPT_ALPHABET`` and ``normalize_transcript`` of it is itself.
    """
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    for short, long in _CONTRACTIONS.items():
        text = re.sub(rf"\b{re.escape(short)}\b", long, text)
    for suffix, long in _CONTRACTION_SUFFIXES:
        text = re.sub(rf"(?<=[a-z]){re.escape(suffix)}\b", long, text)
    text = _INNER_APOSTROPHE.sub("", text)
    text = _THOUSANDS_COMMA.sub("", text)
    text = _METERS_AFTER_NUMBER.sub(lambda m: m.group(1) + (" meter" if m.group(1) == "1" else " meters"), text)
    text = _NUMBER.sub(lambda m: f" {_number_to_words(m.group(0))} ", text)
    words = _NOT_LETTER.sub(" ", text).split()
    return " ".join(_SPELLINGS.get(word, word) for word in words)
