"""Captions, questions and answers, and classification labels, derived only from a scene's ground truth.

Facts
-----
A caption states a set of *facts*, hashable tuples that an evaluator can check against a scene
(``fact_holds``). Objects are referred to by *descriptors*:

- ``("shape", size, color, shape)``: a shape; any field may be None (unspecified);
- ``("sign", text)``: a sign, text None for any sign;
- ``("any",)``: any object, shape or sign.

The facts are:

- ``("object", desc)``: some object matches desc ("a large red circle");
- ``("count", desc, n)``: exactly n objects match desc ("three objects", "two circles");
- ``("position", desc, pos)``: an object matching desc is at position pos ("... on the left");
- ``("relation", desc_a, rel, desc_b)``: an object matching desc_a is <rel> a different object
  matching desc_b ("a red circle to the left of a blue square").

Generated captions only use descriptors that pick out exactly one object for positions and
relations, and only *clear* relations (``scene_world.clear_relation``); ``fact_holds`` is more
lenient (any matching object, any relation that holds) so that it also judges a model's captions.
``parse_caption_facts(text)`` reads the facts back from text (its docstring gives the grammar), and
``parse_caption_facts(caption.text) == caption.facts`` for every generated caption.

Answers
-------
Answers are one lowercase word: colours, shapes, sizes and position words as in scene_world;
"yes"/"no"; counts as number words ("zero" ... "four"); a sign's text lowercased ("stop", "7").
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from tinymm.errors import InputError
from train.data.scene_world import (
    COLORS,
    SHAPES,
    SIGN_TEXTS,
    SIZES,
    Scene,
    SceneObject,
    clear_relation,
    position_answer,
    position_of,
    relation_holds,
)

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "cross": "crosses", "diamond": "diamonds", "object": "objects", "sign": "signs"}
QA_TYPES = ("color", "shape", "size", "count", "count_shape", "exist", "position", "sign")
CAPTIONS_PER_SCENE = 4
EXIST_PAIRS_PER_SCENE = 2  # at most this many "yes" and as many "no" questions per scene
HARD_NEGATIVE_PROB = 0.7  # a "no" question shares the colour or the shape of a present object

# Phrases, as token tuples. Relations are matched before positions ("on the left of" is a relation).
_RELATION_PHRASES = {
    ("to", "the", "left", "of"): "left of", ("on", "the", "left", "of"): "left of", ("left", "of"): "left of",
    ("to", "the", "right", "of"): "right of", ("on", "the", "right", "of"): "right of", ("right", "of"): "right of",
    ("above",): "above", ("over",): "above", ("below",): "below", ("under",): "below", ("beneath",): "below",
}
_POSITION_PHRASES = {
    ("on", "the", "left"): "left", ("on", "the", "right"): "right", ("at", "the", "top"): "top",
    ("at", "the", "bottom"): "bottom", ("in", "the", "center"): "center", ("in", "the", "middle"): "center",
    ("at", "the", "center"): "center",
}
_RELATION_TEXT = {"left of": ("to the left of", "left of"), "right of": ("to the right of", "right of"),
                  "above": ("above",), "below": ("below",)}
_POSITION_TEXT = {"left": ("on the left",), "right": ("on the right",), "top": ("at the top",),
                  "bottom": ("at the bottom",), "center": ("in the center", "in the middle")}
_SIGN_VERBS = (("that", "says"), ("reading",), ("showing",), ("saying",))
_SEPARATORS = {",", "and", ";", ":", "."}
_ARTICLES = {"a", "an", "the"}
_FILLERS = {"there", "is", "are", "with", "scene", "image", "picture", "photo", "of", "it", "shows"} | _ARTICLES
_NUMBERS = {w: i for i, w in enumerate(NUMBER_WORDS)} | {str(i): i for i in range(len(NUMBER_WORDS))} | {"no": 0}
_SINGULAR = {p: s for s, p in PLURALS.items()} | {"things": "thing"}
_TOKEN_RE = re.compile(r"[a-z0-9]+|[,:;.]")

Descriptor = tuple
Fact = tuple


@dataclass(frozen=True)
class Caption:
    text: str
    facts: frozenset  # of Fact tuples


@dataclass(frozen=True)
class QA:
    type: str  # one of QA_TYPES
    question: str
    answer: str


# --- descriptors ---------------------------------------------------------------------------------
def describe(obj: SceneObject, fields: Sequence[str] = ("size", "color", "shape")) -> Descriptor:
    """The descriptor of obj naming only the given shape fields (signs are always ("sign", text))."""
    if obj.kind == "sign":
        return ("sign", obj.text)
    return ("shape",) + tuple(getattr(obj, f) if f in fields else None for f in ("size", "color", "shape"))


def matches(obj: SceneObject, desc: Descriptor) -> bool:
    """True when obj fits the descriptor."""
    if desc[0] == "any":
        return True
    if desc[0] == "sign":
        return obj.kind == "sign" and desc[1] in (None, obj.text)
    return obj.kind == "shape" and all(v is None or v == getattr(obj, f)
                                       for v, f in zip(desc[1:], ("size", "color", "shape")))


def _matching(scene: Scene, desc: Descriptor) -> list[SceneObject]:
    return [o for o in scene.objects if matches(o, desc)]


def fact_holds(scene: Scene, fact: Fact) -> bool:
    """True when the fact is true of the scene (see the module docstring for the fact forms)."""
    kind = fact[0]
    if kind == "object":
        return bool(_matching(scene, fact[1]))
    if kind == "count":
        return len(_matching(scene, fact[1])) == fact[2]
    if kind == "position":
        return any(position_of(o, scene.width, scene.height) == fact[2] for o in _matching(scene, fact[1]))
    if kind == "relation":
        return any(relation_holds(a, b, fact[2], scene.side)
                   for a in _matching(scene, fact[1]) for b in _matching(scene, fact[3]) if a is not b)
    raise ValueError(f"unknown fact {fact!r}: the first field must be object, count, position or relation")


def false_facts(scene: Scene, facts: Iterable[Fact]) -> list[Fact]:
    """The facts that are not true of the scene (empty when a caption is entirely correct)."""
    return [f for f in facts if not fact_holds(scene, f)]


# --- text rendering --------------------------------------------------------------------------------
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(desc: Descriptor, rng: np.random.Generator | None = None) -> str:
    """"a large red circle", "a sign that says STOP", "an object"; rng varies the sign wording."""
    if desc[0] == "any":
        return "an object"
    if desc[0] == "sign":
        if desc[1] is None:
            return "a sign"
        verb = ("that says", "reading", "showing")[int(rng.integers(3))] if rng is not None else "that says"
        return f"a sign {verb} {desc[1]}"
    words = [w for w in desc[1:3] if w is not None] + [desc[3] or "object"]
    return f"{_article(words[0])} {' '.join(words)}"


def count_phrase(desc: Descriptor, n: int) -> str:
    """"two circles", "three objects", "one red square"."""
    if desc[0] == "any":
        noun = "object"
    elif desc[0] == "sign":
        noun = "sign"
    else:
        noun = " ".join([w for w in desc[1:3] if w is not None] + [desc[3] or "object"])
    if n != 1:
        head, _, last = noun.rpartition(" ")
        noun = f"{head} {PLURALS[last]}".strip()
    return f"{NUMBER_WORDS[n]} {noun}"


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# --- caption generation --------------------------------------------------------------------------
_DETAIL_LEVELS = (("size", "color", "shape"), ("color", "shape"), ("size", "shape"), ("shape",))
_DETAIL_CUMULATIVE = (0.5, 0.8, 0.9)  # chances 0.5, 0.3, 0.1, 0.1 of the levels above


def _random_desc(obj: SceneObject, rng: np.random.Generator) -> Descriptor:
    return describe(obj, _DETAIL_LEVELS[bisect.bisect(_DETAIL_CUMULATIVE, rng.random())])


def _unique_desc(scene: Scene, obj: SceneObject, rng: np.random.Generator) -> Descriptor | None:
    """A descriptor (random detail level first) that matches obj and nothing else, or None."""
    full_first = [0] if rng.random() < 0.5 else []  # favour the full description half of the time
    for k in full_first + list(rng.permutation(len(_DETAIL_LEVELS))):
        desc = describe(obj, _DETAIL_LEVELS[k])
        if len(_matching(scene, desc)) == 1:
            return desc
    return None


def _list_caption(scene: Scene, rng: np.random.Generator) -> Caption:
    """"three objects: a large red circle, two squares and a sign reading GO"."""
    objects = list(scene.objects)
    facts: set[Fact] = set()
    items: list[str] = []
    by_shape: dict[str, list[SceneObject]] = {}
    for o in objects:
        if o.kind == "shape":
            by_shape.setdefault(o.shape, []).append(o)
    merged = {s for s, group in by_shape.items() if len(group) > 1 and rng.random() < 0.5}
    for o in objects:
        if o.kind == "shape" and o.shape in merged:
            if o is by_shape[o.shape][0]:
                desc = ("shape", None, None, o.shape)
                items.append(count_phrase(desc, len(by_shape[o.shape])))
                facts.add(("count", desc, len(by_shape[o.shape])))
            continue
        desc = _random_desc(o, rng)
        items.append(noun_phrase(desc, rng))
        facts.add(("object", desc))
    order = rng.permutation(len(items))
    body = _join([items[i] for i in order])
    style = int(rng.integers(4))
    n = len(objects)
    if style == 0:
        return Caption(body, frozenset(facts))
    facts.add(("count", ("any",), n))
    if style == 1:
        return Caption(f"{count_phrase(('any',), n)}: {body}", frozenset(facts))
    if style == 2:
        return Caption(f"there {'is' if n == 1 else 'are'} {count_phrase(('any',), n)}: {body}", frozenset(facts))
    return Caption(f"a scene with {count_phrase(('any',), n)}: {body}", frozenset(facts))


def _relation_caption(scene: Scene, rng: np.random.Generator) -> Caption | None:
    """"a red circle to the left of a small blue square" (one or two clear relations)."""
    pairs = []  # each unordered pair once, in a random direction
    for i, first in enumerate(scene.objects):
        for second in scene.objects[i + 1:]:
            a, b = (first, second) if rng.random() < 0.5 else (second, first)
            rel = clear_relation(a, b, scene.side)
            if rel is not None:
                pairs.append((a, rel, b))
    if not pairs:
        return None
    chosen = [pairs[i] for i in rng.permutation(len(pairs))[: 1 + int(rng.random() < 0.3)]]
    clauses, facts = [], set()
    for a, rel, b in chosen:
        da, db = _unique_desc(scene, a, rng), _unique_desc(scene, b, rng)
        if da is None or db is None:
            continue
        phrases = _RELATION_TEXT[rel]
        verb = " is" if rng.random() < 0.3 else ""
        phrase = phrases[int(rng.integers(len(phrases)))]
        clauses.append(f"{noun_phrase(da, rng)}{verb} {phrase} {noun_phrase(db, rng)}")
        facts |= {("object", da), ("object", db), ("relation", da, rel, db)}
    return Caption(" and ".join(clauses), frozenset(facts)) if clauses else None


def _position_caption(scene: Scene, rng: np.random.Generator) -> Caption | None:
    """"a sign reading GO at the top and a large red circle on the left"."""
    placed = [o for o in scene.objects if position_of(o, scene.width, scene.height) is not None]
    if not placed:
        return None
    clauses, facts = [], set()
    for i in rng.permutation(len(placed))[: 1 + int(rng.random() < 0.4)]:
        obj = placed[i]
        desc = _unique_desc(scene, obj, rng)
        if desc is None:
            continue
        pos = position_of(obj, scene.width, scene.height)
        phrases = _POSITION_TEXT[pos]
        clauses.append(f"{noun_phrase(desc, rng)} {phrases[int(rng.integers(len(phrases)))]}")
        facts |= {("object", desc), ("position", desc, pos)}
    return Caption(" and ".join(clauses), frozenset(facts)) if clauses else None


def make_captions(scene: Scene, rng: np.random.Generator, n: int = CAPTIONS_PER_SCENE) -> list[Caption]:
    """Up to n distinct captions of the scene, each with the set of facts it states (all true)."""
    builders = (_list_caption, _list_caption, _relation_caption, _position_caption)
    captions: list[Caption] = []
    seen: set[str] = set()
    for _ in range(4 * n):
        caption = builders[int(rng.integers(len(builders)))](scene, rng)
        if caption is not None and caption.text not in seen:
            seen.add(caption.text)
            captions.append(caption)
            if len(captions) == n:
                break
    return captions


# --- caption parsing -------------------------------------------------------------------------------
def _match_phrase(tokens: list[str], i: int, table: dict) -> tuple[Any, int] | None:
    for phrase, value in table.items():
        if tuple(tokens[i:i + len(phrase)]) == phrase:
            return value, i + len(phrase)
    return None


def _parse_np(tokens: list[str], i: int) -> tuple[Descriptor, int | None, int] | None:
    """Parse a noun phrase at tokens[i]: (descriptor, count or None, next index), or None."""
    j, count = i, None
    if j < len(tokens) and tokens[j] in _ARTICLES:
        j += 1
    elif j < len(tokens) and tokens[j] in _NUMBERS:
        count = _NUMBERS[tokens[j]]
        j += 1
    size = tokens[j] if j < len(tokens) and tokens[j] in SIZES else None
    j += size is not None
    color = tokens[j] if j < len(tokens) and tokens[j] in COLORS else None
    j += color is not None
    if j >= len(tokens):
        return None
    noun = _SINGULAR.get(tokens[j], tokens[j])
    if noun not in SHAPES and noun not in ("object", "thing", "sign"):
        return None
    j += 1
    if noun == "sign":
        text = None
        for verb in _SIGN_VERBS:
            if tuple(tokens[j:j + len(verb)]) == verb and j + len(verb) < len(tokens):
                text = tokens[j + len(verb)].upper()
                j += len(verb) + 1
                break
        return ("sign", text), count, j
    if noun in ("object", "thing") and size is None and color is None:
        return ("any",), count, j
    return ("shape", size, color, noun if noun in SHAPES else None), count, j


def _known_words() -> set[str]:
    phrases = [*_RELATION_PHRASES, *_POSITION_PHRASES, *_SIGN_VERBS]
    return (set(SHAPES) | set(COLORS) | set(SIZES) | set(_NUMBERS) | set(_SINGULAR) | _FILLERS | _SEPARATORS
            | {w for p in phrases for w in p} | {t.lower() for t in SIGN_TEXTS} | {"object", "thing", "sign"})


def parse_caption_facts(text: str, strict: bool = False) -> frozenset:
    """The facts a caption states (see the module docstring), read with a small forgiving grammar.

    Noun phrases ("a large red circle", "two squares", "a sign that says STOP"), count prefixes
    ("three objects:"), relations between consecutive noun phrases ("... to the left of ...") and
    positions after a noun phrase ("... on the left") become facts; separators ("," "and") end a
    clause. Unknown words are skipped, or with strict=True raise InputError.
    """
    tokens = _TOKEN_RE.findall(text.lower())
    facts: set[Fact] = set()
    prev: Descriptor | None = None  # the last singular noun phrase of the current clause
    pending: tuple[Descriptor, str] | None = None  # (subject, relation) waiting for its object
    i = 0
    while i < len(tokens):
        token = tokens[i]
        rel = _match_phrase(tokens, i, _RELATION_PHRASES)
        if rel is not None and prev is not None:
            pending, i = (prev, rel[0]), rel[1]
            continue
        pos = _match_phrase(tokens, i, _POSITION_PHRASES)
        if pos is not None and prev is not None:
            facts.add(("position", prev, pos[0]))
            i = pos[1]
            continue
        np_ = _parse_np(tokens, i)
        if np_ is not None:
            desc, count, i = np_
            if count is not None:
                facts.add(("count", desc, count))
                prev = pending = None
                continue
            facts.add(("object", desc))
            if pending is not None:
                facts.add(("relation", pending[0], pending[1], desc))
                pending = None
            prev = desc
            continue
        if token in _SEPARATORS:
            prev = pending = None
        elif strict and token not in _FILLERS:
            unknown = [t for t in tokens if t not in _known_words()]
            why = f"word {unknown[0]!r} is unknown" if unknown else f"word {token!r} (token {i}) is out of place"
            raise InputError(f"caption {text!r} does not fit the caption grammar: {why}; "
                             "use strict=False to skip what does not fit")
        i += 1
    return frozenset(facts)


def _word_tokens(text: str) -> tuple[list[str], list[int]]:
    """The caption's grammar tokens and, per token, the index of the whitespace word it came from."""
    tokens, owner = [], []
    for w, word in enumerate(text.split()):
        found = _TOKEN_RE.findall(word.lower())
        tokens += found
        owner += [w] * len(found)
    return tokens, owner


def _noun_phrases(tokens: list[str]) -> Iterator[tuple[int, int, Descriptor, int | None]]:
    """(first token, end token, descriptor, count or None) of each noun phrase, left to right."""
    i = 0
    while i < len(tokens):
        np_ = _parse_np(tokens, i)
        if np_ is None:
            i += 1
            continue
        desc, count, end = np_
        yield i, end, desc, count
        i = end


def noun_phrase_spans(text: str) -> list[tuple[int, int, Descriptor]]:
    """The noun phrases of a caption as (first word, end word, descriptor), indexing its whitespace
    words ("a large red circle" in "a large red circle on the left" is (0, 4, desc)); counted
    phrases ("two circles") give the descriptor of what they count."""
    tokens, owner = _word_tokens(text)
    return [(owner[first], owner[end - 1] + 1, desc) for first, end, desc, _ in _noun_phrases(tokens)]


def spatial_phrase_spans(text: str) -> list[tuple[int, int, Descriptor]]:
    """The position and relation phrases of a caption as (first word, end word, descriptor of the noun
    phrase they follow), indexing its whitespace words: in "a red circle is to the left of a square"
    the words "is to the left of" are (3, 8, red circle). A leading "is" belongs to the phrase."""
    tokens, owner = _word_tokens(text)
    spans = []
    for _, end, desc, count in _noun_phrases(tokens):
        start = end + (end < len(tokens) and tokens[end] == "is")
        phrase = _match_phrase(tokens, start, _RELATION_PHRASES) or _match_phrase(tokens, start, _POSITION_PHRASES)
        if count is None and phrase is not None:
            spans.append((owner[end], owner[phrase[1] - 1] + 1, desc))
    return spans


def facts_to_json(facts: Iterable[Fact]) -> list:
    """Facts as a JSON-ready list, in a stable order (tuples become lists)."""
    return sorted((json.loads(json.dumps(f)) for f in facts), key=json.dumps)


def facts_from_json(data: Iterable) -> frozenset:
    """Inverse of facts_to_json: nested lists back to the hashable fact tuples."""
    def tup(x: Any) -> Any:
        return tuple(tup(v) for v in x) if isinstance(x, list) else x
    return frozenset(tup(f) for f in data)


# --- questions and answers -------------------------------------------------------------------------
def make_qa(scene: Scene, rng: np.random.Generator) -> list[QA]:
    """Questions whose answer is unique in the scene, with one-word answers; "exist" is balanced yes/no.

    "where is ...?" is also asked where the answer is "unclear" (see ``position_answer``).
    """
    shapes = [o for o in scene.objects if o.kind == "shape"]
    signs = [o for o in scene.objects if o.kind == "sign"]
    qa: list[QA] = []
    for shape in SHAPES:
        found = [o for o in shapes if o.shape == shape]
        if len(found) == 1:
            qa.append(QA("color", f"what color is the {shape}?", found[0].color))
    for color in COLORS:
        found = [o for o in shapes if o.color == color]
        if len(found) == 1:
            qa.append(QA("shape", f"what shape is the {color} object?", found[0].shape))
    for o in shapes:
        if sum(p.color == o.color and p.shape == o.shape for p in shapes) != 1:
            continue
        qa.append(QA("size", f"what size is the {o.color} {o.shape}?", o.size))
        pos = position_answer(o, scene.width, scene.height)
        if pos is not None:
            qa.append(QA("position", f"where is the {o.color} {o.shape}?", pos))
    if len(signs) == 1:
        qa.append(QA("sign", "what does the sign say?", signs[0].text.lower()))
        pos = position_answer(signs[0], scene.width, scene.height)
        if pos is not None:
            qa.append(QA("position", "where is the sign?", pos))
    qa.append(QA("count", "how many objects are there?", NUMBER_WORDS[len(scene.objects)]))
    present_shapes = sorted({o.shape for o in shapes}, key=SHAPES.index)
    absent_shapes = [s for s in SHAPES if s not in present_shapes]
    asked = present_shapes + ([absent_shapes[int(rng.integers(len(absent_shapes)))]] if absent_shapes else [])
    for shape in asked:
        n = sum(o.shape == shape for o in shapes)
        qa.append(QA("count_shape", f"how many {PLURALS[shape]} are there?", NUMBER_WORDS[n]))
    qa.extend(_exist_questions(shapes, rng))
    return qa


def _exist_questions(shapes: list[SceneObject], rng: np.random.Generator) -> list[QA]:
    """As many "no" as "yes" questions; most "no"s swap the colour or shape of a present object."""
    present = sorted({(o.color, o.shape) for o in shapes}, key=lambda p: (COLORS.index(p[0]), SHAPES.index(p[1])))
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
    hard = [p for p in absent if any(p[0] == q[0] or p[1] == q[1] for q in present)]
    yes = [present[i] for i in rng.permutation(len(present))[:EXIST_PAIRS_PER_SCENE]]
    no: list[tuple[str, str]] = []
    while len(no) < len(yes):
        pool = hard if hard and rng.random() < HARD_NEGATIVE_PROB else absent
        pick = pool[int(rng.integers(len(pool)))]
        if pick not in no:
            no.append(pick)
    out = []
    for (color, shape), answer in [(p, "yes") for p in yes] + [(p, "no") for p in no]:
        out.append(QA("exist", f"is there {_article(color)} {color} {shape}?", answer))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


# --- zero-shot classification labels ---------------------------------------------------------------
def object_label(obj: SceneObject) -> str:
    """"a photo of a red circle" or "a photo of a sign that says STOP"."""
    if obj.kind == "sign":
        return f"a photo of a sign that says {obj.text}"
    return f"a photo of {_article(obj.color)} {obj.color} {obj.shape}"


def all_labels() -> list[str]:
    """The full label set: 48 colour-shape labels, then one per sign text."""
    return ([f"a photo of {_article(c)} {c} {s}" for c in COLORS for s in SHAPES]
            + [f"a photo of a sign that says {t}" for t in SIGN_TEXTS])


def scene_labels(scene: Scene) -> list[str]:
    """The labels of the scene's objects, in object order, without repeats."""
    return list(dict.fromkeys(object_label(o) for o in scene.objects))


__all__ = [
    "Caption", "QA", "QA_TYPES", "NUMBER_WORDS", "describe", "matches", "fact_holds",
    "false_facts", "noun_phrase", "count_phrase", "make_captions", "parse_caption_facts", "facts_to_json",
    "facts_from_json", "make_qa", "object_label", "all_labels", "scene_labels", "noun_phrase_spans",
]
