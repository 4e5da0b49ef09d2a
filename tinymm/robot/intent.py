"""Spoken robot commands and scene questions: the Intent type and the intent parser.

The speech pipeline's ``command(audio)`` transcribes a clip, then ``IntentParser.parse`` maps the
transcript to an ``Intent``: ``{"action": "move", "direction": "forward", "distance_m": 3}``,
``{"action": "turn", "direction": "left"}``, ``{"action": "pick_up", "color": "red",
"shape": "circle"}``, ``{"action": "question", "type": "color", "shape": "star", "question":
"what color is the star?"}`` ... Text outside the grammar gives None: the parser never guesses.

The grammar is the table ``tinymm.robot.phrases.PHRASES``. The first phrasing of a frame is its
canonical form: a question's ``question`` text is the canonical phrasing with its slots filled,
the text the vision-language model is asked.

Small speech-recognition slips are tolerated where it is cheap: a slot word is matched against
its closed vocabulary with ``difflib`` ("read" -> red, "sqare" -> square), a literal word of four
letters or more may differ a little ("forwad"), the distance accepts homophones ("for" -> four,
"to" -> two), and a plural slot accepts the singular. At most ``MAX_INEXACT_WORDS`` words may be
inexact, and a transcript that two different intents match equally well gives None.

This module is pure Python (no numpy) so that it can run anywhere the runtime does.
"""

from __future__ import annotations

import difflib
import itertools
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

from tinymm.robot.phrases import (
    ACTIONS,
    COLORS,
    DISTANCE_UNITS,
    MAX_DISTANCE_M,
    MIN_DISTANCE_M,
    NUMBER_WORDS,
    PHRASES,
    QUESTION_TYPES,
    SHAPE_PLURALS,
    SHAPES,
    SLOT_PATTERN,
    affixes,
    distance_words,
    phrase_slots,
    with_articles,
)
from tinymm.robot.transcripts import normalize_transcript

# ----------------------------------------------------------------------------------------------
# Tolerance to recognition slips

SLOT_CUTOFF = 0.75  # difflib ratio a slot word needs to its closest vocabulary word
LITERAL_CUTOFF = 0.8  # difflib ratio a literal word needs to the grammar's word
MIN_FUZZY_LITERAL_LETTERS = 4  # shorter literal words must match exactly
MAX_INEXACT_WORDS = 2  # more inexact words than this and the transcript is out of grammar
# Words heard in place of a distance number, and the number they stand for.
NUMBER_HOMOPHONES = {"a": 1, "an": 1, "won": 1, "to": 2, "too": 2, "tree": 3, "for": 4, "fore": 4, "ate": 8}
HOMOPHONE_SIMILARITY = 0.5  # a distance homophone costs half a missed word
# Literal words that are interchangeable in the grammar (the article before a vowel).
LITERAL_EQUIVALENTS = {"an": "a"}


# ----------------------------------------------------------------------------------------------
# Intent


@dataclass(frozen=True)
class Intent:
    """What a spoken command or question asks for; invalid combinations raise ValueError.

    The slots an intent fills are those of a phrasing of its frame in ``PHRASES``: a move may
    have a distance (None: until told to stop); the other frames have fixed slots.
    """

    action: str  # one of ACTIONS
    direction: str | None = None  # move: forward | backward; turn: left | right | around
    distance_m: int | None = None  # move: meters, MIN_DISTANCE_M..MAX_DISTANCE_M
    color: str | None = None  # one of COLORS
    shape: str | None = None  # one of SHAPES
    question_type: str | None = None  # question: one of QUESTION_TYPES

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"intent action={self.action!r} is not one of {list(ACTIONS)}")
        for name, vocabulary in (("color", COLORS), ("shape", SHAPES), ("question_type", QUESTION_TYPES)):
            value = getattr(self, name)
            if value is not None and value not in vocabulary:
                raise ValueError(f"intent {name}={value!r} is not one of {list(vocabulary)}")
        distance = self.distance_m
        if distance is not None and (type(distance) is not int or not MIN_DISTANCE_M <= distance <= MAX_DISTANCE_M):
            raise ValueError(f"intent distance_m={distance!r} must be whole meters, {MIN_DISTANCE_M}..{MAX_DISTANCE_M}")
        if self.frame not in PHRASES:
            details = [detail for action, detail in PHRASES if action == self.action]
            if details == [None]:
                raise ValueError(f"a {self.action} intent takes no direction or question_type: {self}")
            field = "question_type" if self.action == "question" else "direction"
            raise ValueError(f"a {self.action} intent needs {field} in {details}, got {self.frame[1]!r}")
        if self.direction is not None and self.action not in ("move", "turn"):
            raise ValueError(f"only move and turn intents take a direction: {self}")
        if self.question_type is not None and self.action != "question":
            raise ValueError(f"only question intents take a question_type: {self}")
        # The slots an intent may fill are those of some phrasing of its frame.
        fields = {"color": "color", "shape": "shape", "shapes": "shape", "distance": "distance_m"}
        allowed = {tuple(sorted(fields[slot] for slot in phrase_slots(phrase))) for phrase in PHRASES[self.frame]}
        filled = tuple(sorted(fields[slot] for slot in _intent_slots(self)))
        if filled not in allowed:
            frame = self.action + (f" {self.frame[1]}" if self.frame[1] else "")
            raise ValueError(f"a {frame} intent fills one of the slot sets {sorted(allowed)}, got {filled}: {self}")

    @property
    def kind(self) -> str:
        """ "question" or "command"."""
        return "question" if self.action == "question" else "command"

    @property
    def frame(self) -> tuple[str, str | None]:
        """The key of this intent's phrasings in ``PHRASES``."""
        return (self.action, self.question_type if self.action == "question" else self.direction)

    @property
    def question(self) -> str | None:
        """For a question, the text the vision-language model is asked: the canonical phrasing
        with a question mark, as the scene generator writes it ("what color is the star?")."""
        if self.action != "question":
            return None
        return phrasings(self)[0] + "?"

    def to_dict(self) -> dict[str, Any]:
        """JSON form: the action, then the slots that are set; questions add "type" and "question"."""
        out: dict[str, Any] = {"action": self.action}
        if self.question_type is not None:
            out["type"] = self.question_type
        for name in ("direction", "distance_m", "color", "shape"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.action == "question":
            out["question"] = self.question
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Intent":
        """Inverse of ``to_dict`` (the derived "question" text is accepted and ignored)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"an intent must be a JSON object, got {type(data).__name__}")
        known = {"action", "type", "direction", "distance_m", "color", "shape", "question"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown intent field(s) {unknown}; known fields are {sorted(known)}")
        if "action" not in data:
            raise ValueError(f"an intent needs an 'action', got {dict(data)}")
        slots = {name: data.get(name) for name in ("direction", "distance_m", "color", "shape")}
        return cls(action=data["action"], question_type=data.get("type"), **slots)


# ----------------------------------------------------------------------------------------------
# Rendering (the grammar read forwards)


def _intent_slots(intent: Intent) -> set[str]:
    """The phrase slots an intent fills: shape is said as {shapes} in count questions."""
    slots = set()
    if intent.distance_m is not None:
        slots.add("distance")
    if intent.color is not None:
        slots.add("color")
    if intent.shape is not None:
        slots.add("shapes" if intent.question_type == "count_shape" else "shape")
    return slots


def _fill(phrase: str, intent: Intent) -> str:
    values = {"color": intent.color, "shape": intent.shape}
    if intent.shape is not None:
        values["shapes"] = SHAPE_PLURALS[intent.shape]
    if intent.distance_m is not None:
        values["distance"] = distance_words(intent.distance_m)
    return with_articles(SLOT_PATTERN.sub(lambda m: str(values[m.group(1)]), phrase).split())


def phrasings(intent: Intent) -> tuple[str, ...]:
    """Every way the grammar says ``intent`` (without polite prefixes or suffixes), canonical first."""
    wanted = _intent_slots(intent)
    return tuple(_fill(phrase, intent) for phrase in PHRASES[intent.frame] if phrase_slots(phrase) == wanted)


# ----------------------------------------------------------------------------------------------
# Parsing (the grammar read backwards)


class _Template(NamedTuple):
    frame: tuple[str, str | None]
    tokens: tuple[str, ...]  # literal words and "{slot}" markers; {distance} spans two words


class _Match(NamedTuple):
    cost: float  # sum over words of (1 - similarity); 0 for an exact match
    slots: tuple[tuple[str, Any], ...]


_SLOT_VOCABULARIES: Mapping[str, Mapping[str, Any]] = {
    "color": {color: color for color in COLORS},
    "shape": {shape: shape for shape in SHAPES},
    "shapes": {**{plural: shape for shape, plural in SHAPE_PLURALS.items()}, **{shape: shape for shape in SHAPES}},
    "number": {word: i + 1 for i, word in enumerate(NUMBER_WORDS)},
    "unit": {unit: unit for unit in DISTANCE_UNITS},
}
_SLOT_FIELDS = {"color": "color", "shape": "shape", "shapes": "shape"}


def _similarity(word: str, target: str, cutoff: float) -> float:
    """difflib's ratio of the two words, or 0.0 when it is below ``cutoff``."""
    if word == target:
        return 1.0
    # ratio = 2 * matches / (len(a) + len(b)) <= 2 * min(len) / (len(a) + len(b)): skip hopeless pairs.
    if 2 * min(len(word), len(target)) < cutoff * (len(word) + len(target)):
        return 0.0
    score = difflib.SequenceMatcher(None, word, target).ratio()
    return score if score >= cutoff else 0.0


class _WordScorer:
    """Word-level similarities for one transcript, memoized (templates share most words)."""

    def __init__(self) -> None:
        self._literals: dict[tuple[str, str], float] = {}
        self._slots: dict[tuple[str, str], tuple[Any, float] | None] = {}

    def literal(self, word: str, literal: str) -> float:
        """Similarity of a heard word to a literal of the grammar; 0.0 when it does not match."""
        key = (word, literal)
        if key not in self._literals:
            word = LITERAL_EQUIVALENTS.get(word, word)
            if word == literal:
                self._literals[key] = 1.0
            elif len(literal) < MIN_FUZZY_LITERAL_LETTERS:
                self._literals[key] = 0.0
            else:
                self._literals[key] = _similarity(word, literal, LITERAL_CUTOFF)
        return self._literals[key]

    def slot(self, word: str, slot: str) -> tuple[Any, float] | None:
        """(value, similarity) of the unique closest word of the slot's vocabulary, or None."""
        key = (word, slot)
        if key not in self._slots:
            self._slots[key] = self._closest(word, _SLOT_VOCABULARIES[slot])
        return self._slots[key]

    @staticmethod
    def _closest(word: str, vocabulary: Mapping[str, Any]) -> tuple[Any, float] | None:
        if word in vocabulary:
            return vocabulary[word], 1.0
        scored = sorted(((_similarity(word, key, SLOT_CUTOFF), key) for key in vocabulary), reverse=True)
        best_score, best_key = scored[0]
        if best_score == 0.0:
            return None
        tied = [key for score, key in scored[1:] if score == best_score and vocabulary[key] != vocabulary[best_key]]
        return None if tied else (vocabulary[best_key], best_score)

    def distance(self, number: str, unit: str) -> tuple[int, list[float]] | None:
        """(meters, [similarity of each word]) for the two words of a {distance} slot, or None."""
        if number in NUMBER_HOMOPHONES:
            found: tuple[Any, float] | None = (NUMBER_HOMOPHONES[number], HOMOPHONE_SIMILARITY)
        else:
            found = self.slot(number, "number")
        found_unit = self.slot(unit, "unit")
        if found is None or found_unit is None:
            return None
        return found[0], [found[1], found_unit[1]]


def _match_template(words: list[str], template: _Template, scorer: _WordScorer) -> _Match | None:
    """How well ``words`` (as many as the template spans) fit the template, or None."""
    similarities: list[float] = []
    slots: list[tuple[str, Any]] = []
    i = 0
    for token in template.tokens:
        slot = SLOT_PATTERN.fullmatch(token)
        if slot is None:
            score = scorer.literal(words[i], token)
            if score == 0.0:
                return None
            similarities.append(score)
            i += 1
        elif slot.group(1) == "distance":
            found_distance = scorer.distance(words[i], words[i + 1])
            if found_distance is None:
                return None
            slots.append(("distance_m", found_distance[0]))
            similarities += found_distance[1]
            i += 2
        else:
            found = scorer.slot(words[i], slot.group(1))
            if found is None:
                return None
            slots.append((_SLOT_FIELDS[slot.group(1)], found[0]))
            similarities.append(found[1])
            i += 1
    if sum(score < 1.0 for score in similarities) > MAX_INEXACT_WORDS:
        return None
    return _Match(cost=sum(1.0 - score for score in similarities), slots=tuple(slots))


def _intent_from(frame: tuple[str, str | None], slots: tuple[tuple[str, Any], ...]) -> Intent:
    action, detail = frame
    fields: dict[str, Any] = dict(slots)
    if action == "question":
        fields["question_type"] = detail
    elif detail is not None:
        fields["direction"] = detail
    return Intent(action=action, **fields)


class IntentParser:
    """Parses transcripts against the grammar; build one and reuse it (building takes ~5 ms).

    It holds only the grammar's templates, grouped by length, and no per-call state, so one
    parser can serve any number of threads.
    """

    def __init__(self) -> None:
        # Every phrasing with every allowed prefix and suffix, grouped by its length in words.
        by_length: dict[int, list[_Template]] = {}
        for frame, phrases in PHRASES.items():
            prefixes, suffixes = affixes("question" if frame[0] == "question" else "command")
            for phrase, prefix, suffix in itertools.product(phrases, ("", *prefixes), ("", *suffixes)):
                tokens = tuple(f"{prefix} {phrase} {suffix}".split())
                length = len(tokens) + tokens.count("{distance}")
                by_length.setdefault(length, []).append(_Template(frame, tokens))
        self._templates_by_length = {length: tuple(group) for length, group in by_length.items()}

    def parse(self, transcript: str) -> Intent | None:
        """The intent a transcript expresses, or None if it is outside the grammar or ambiguous.

        ``transcript`` is normalized first (``normalize_transcript``), so raw recognizer output,
        digits and punctuation included, can be passed as is.
        """
        words = normalize_transcript(transcript).split()
        scorer = _WordScorer()
        best_cost, best_intents = float("inf"), set()
        for template in self._templates_by_length.get(len(words), ()):
            match = _match_template(words, template, scorer)
            if match is None or match.cost > best_cost:
                continue
            intent = _intent_from(template.frame, match.slots)
            if match.cost < best_cost:
                best_cost, best_intents = match.cost, set()
            best_intents.add(intent)
        # Two different intents that fit equally well: refuse rather than guess.
        return best_intents.pop() if len(best_intents) == 1 else None


def parse_intent(transcript: str) -> Intent | None:
    """``IntentParser().parse(transcript)``: for many transcripts, build one IntentParser instead."""
    return IntentParser().parse(transcript)
