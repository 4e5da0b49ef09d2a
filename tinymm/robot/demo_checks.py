"""The demo's caption check: a caption holds when it names something and everything it names is
in the scene (the objects, counts and sign texts; positions and relations are not checked).

It reads the scene generator's wording (train/data/scene_language.py) with the robot domain's
vocabulary: "two small red circles", "a sign reading GO", "three objects: ...". Pure Python.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from tinymm.robot.phrases import COLORS, SHAPE_PLURALS, SHAPES

# The words the scene generator's captions use for what they name.
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
SIZES = ("small", "large")
SIGN_VERBS = ("that", "says", "reading", "showing", "saying")
WHOLE_SCENE_NOUNS = ("object", "objects", "thing", "things")
_WORD = re.compile(r"[a-z0-9]+")


def caption_claims(caption: str) -> list[tuple[Any, ...]]:
    """What a caption names: ("shape", count | None, size, color, shape), ("sign", text), ("objects", n).

    Reads the scene generator's wording: "two small red circles", "a sign reading GO", "three
    objects: ..."; words it does not know are skipped.
    """
    singular = {**{s: s for s in SHAPES}, **{p: s for s, p in SHAPE_PLURALS.items()}}
    words = _WORD.findall(caption.lower())
    claims: list[tuple[Any, ...]] = []
    count = size = color = None
    i = 0
    while i < len(words):
        word = words[i]
        if word in NUMBER_WORDS:
            count, size, color = NUMBER_WORDS.index(word), None, None
        elif word in SIZES:
            size = word
        elif word in COLORS:
            color = word
        elif word in singular:
            claims.append(("shape", count, size, color, singular[word]))
            count = size = color = None
        elif word in WHOLE_SCENE_NOUNS and count is not None and size is None and color is None:
            claims.append(("objects", count))
            count = None
        elif word == "sign":
            j = i + 1
            while j < len(words) and words[j] in SIGN_VERBS:
                j += 1
            if j > i + 1 and j < len(words):
                claims.append(("sign", words[j]))
                i = j
            count = size = color = None
        else:
            count = size = color = None
        i += 1
    return claims


def caption_holds(caption: str, objects: Sequence[Mapping[str, Any]]) -> bool:
    """True when the caption names something and everything it names is in the scene (``objects``)."""
    claims = caption_claims(caption)
    for claim in claims:
        if claim[0] == "objects":
            ok = claim[1] == len(objects)
        elif claim[0] == "sign":
            ok = any(o.get("kind") == "sign" and str(o.get("text", "")).lower() == claim[1] for o in objects)
        else:
            _, count, size, color, shape = claim
            found = sum(o.get("kind") == "shape" and o.get("shape") == shape and color in (None, o.get("color"))
                        and size in (None, o.get("size")) for o in objects)
            ok = found >= 1 if count is None else found == count
        if not ok:
            return False
    return bool(claims)
