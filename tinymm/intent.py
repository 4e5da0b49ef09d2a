"""Spoken robot commands and scene questions: transcript normalization and intent parsing.

The speech pipeline's ``command(audio)`` transcribes a clip, then ``parse_intent`` maps the
transcript to an ``Intent``: ``{"action": "move", "direction": "forward", "distance_m": 3}``,
``{"action": "turn", "direction": "left"}``, ``{"action": "pick_up", "color": "red",
"shape": "circle"}``, ``{"action": "question", "type": "color", "shape": "star", "question":
"what color is the star?"}`` ... Text outside the grammar gives None: the parser never guesses.

The grammar is the table ``PHRASES`` below: for each intent frame, the phrasings the runtime
understands, with ``{color}``, ``{shape}``, ``{shapes}`` (plural) and ``{distance}`` ("three
meters") slots, optionally preceded by a polite prefix ("could you please") and, for commands,
followed by a suffix ("please"). The training data generator (``train/data/speech_grammar.py``)
renders utterances from this same table, so what the models hear is exactly what the parser
accepts. The first phrasing of a frame is its canonical form: a question's ``question`` text is
the canonical phrasing with its slots filled, the text the vision-language model is asked.
``grammar_templates`` spells the table out, slots filled, for a speech decoder constrained to
the grammar (tinymm/decoding/grammar.py).

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
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

# ----------------------------------------------------------------------------------------------
# Vocabulary

COLORS = ("red", "green", "blue", "yellow", "orange", "purple", "white", "black")
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
SHAPE_PLURALS = {shape: shape + ("es" if shape.endswith(("s", "x", "sh", "ch")) else "s") for shape in SHAPES}
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
MIN_DISTANCE_M = 1  # shortest spoken move distance, meters
MAX_DISTANCE_M = len(NUMBER_WORDS)  # longest spoken move distance, meters ("ten")

ACTIONS = ("stop", "move", "turn", "pick_up", "put_down", "look_at", "question")
MOVE_DIRECTIONS = ("forward", "backward")
TURN_DIRECTIONS = ("left", "right", "around")
# The question types of the scene generator (train/data/scene_language.py) that can be spoken.
QUESTION_TYPES = ("color", "shape", "count", "count_shape", "exist", "position", "sign")

# Characters a canonical transcript may contain (a speech model's output alphabet).
TRANSCRIPT_ALPHABET = " abcdefghijklmnopqrstuvwxyz"

# ----------------------------------------------------------------------------------------------
# Grammar: frame -> phrasings. A frame is (action, direction or question type). The slots a
# phrasing uses must be exactly the slots its intent fills; the first phrasing whose slots fit
# an intent is that intent's canonical form.

PHRASES: Mapping[tuple[str, str | None], tuple[str, ...]] = {
    ("stop", None): ("stop", "halt", "stop moving", "stop right there", "freeze"),
    ("move", "forward"): (
        "go forward", "move forward", "go ahead", "move ahead", "drive forward",
        "go forward {distance}", "move forward {distance}", "go {distance} forward",
        "move {distance} forward", "drive forward {distance}", "go ahead {distance}",
    ),
    ("move", "backward"): (
        "go back", "go backward", "go backwards", "move back", "move backward", "back up", "reverse",
        "go back {distance}", "go backward {distance}", "move back {distance}",
        "move backward {distance}", "move {distance} back", "back up {distance}",
    ),
    ("turn", "left"): ("turn left", "turn to the left", "turn to your left", "rotate left", "take a left"),
    ("turn", "right"): ("turn right", "turn to the right", "turn to your right", "rotate right", "take a right"),
    ("turn", "around"): ("turn around", "turn all the way around", "spin around", "do a u turn", "about face"),
    ("pick_up", None): (
        "pick up the {color} {shape}", "pick the {color} {shape} up", "grab the {color} {shape}",
        "take the {color} {shape}", "lift the {color} {shape}",
    ),
    ("put_down", None): (
        "put it down", "put down", "drop it", "set it down", "put it back down", "release it", "let it go",
    ),
    ("look_at", None): (
        "look at the {color} {shape}", "look toward the {color} {shape}", "look towards the {color} {shape}",
        "face the {color} {shape}", "point the camera at the {color} {shape}",
    ),
    ("question", "color"): (
        "what color is the {shape}", "what is the color of the {shape}", "which color is the {shape}",
        "what color does the {shape} have", "tell me the color of the {shape}",
        "can you tell me what color the {shape} is",
    ),
    ("question", "shape"): (
        "what shape is the {color} object", "what is the shape of the {color} object",
        "which shape is the {color} object", "what shape is the {color} thing",
        "what shape does the {color} object have",
    ),
    ("question", "count"): (
        "how many objects are there", "how many shapes are there", "how many things are there",
        "how many objects do you see", "count the objects",
    ),
    ("question", "count_shape"): (
        "how many {shapes} are there", "how many {shapes} do you see", "how many {shapes} can you see",
        "count the {shapes}",
    ),
    ("question", "exist"): (
        "is there a {color} {shape}", "do you see a {color} {shape}", "can you see a {color} {shape}",
        "is there any {color} {shape}",
    ),
    ("question", "position"): (
        "where is the {color} {shape}", "where can i find the {color} {shape}", "where is the {color} {shape} located",
    ),
    ("question", "sign"): (
        "what does the sign say", "what is written on the sign", "read the sign", "what does the sign read",
        "what is on the sign", "read me the sign",
    ),
}

# Words said before or after the phrasing; they do not change the intent.
COMMAND_PREFIXES = (
    "please", "robot", "hey robot", "okay robot", "robot please", "now", "can you", "could you",
    "could you please", "would you please",
)
COMMAND_SUFFIXES = ("please", "now", "for me")
QUESTION_PREFIXES = ("robot", "hey robot", "okay robot")
QUESTION_SUFFIXES: tuple[str, ...] = ()

# ----------------------------------------------------------------------------------------------
# Tolerance to recognition slips

SLOT_CUTOFF = 0.75  # difflib ratio a slot word needs to its closest vocabulary word
LITERAL_CUTOFF = 0.8  # difflib ratio a literal word needs to the grammar's word
MIN_FUZZY_LITERAL_LETTERS = 4  # shorter literal words must match exactly
MAX_INEXACT_WORDS = 2  # more inexact words than this and the transcript is out of grammar
# Words heard in place of a distance number, and the number they stand for.
NUMBER_HOMOPHONES = {"a": 1, "an": 1, "won": 1, "to": 2, "too": 2, "tree": 3, "for": 4, "fore": 4, "ate": 8}
HOMOPHONE_SIMILARITY = 0.5  # a distance homophone costs half a missed word
DISTANCE_UNITS = ("meter", "meters")
# Literal words that are interchangeable in the grammar (the article before a vowel).
LITERAL_EQUIVALENTS = {"an": "a"}

_SLOT_PATTERN = re.compile(r"\{(\w+)\}")


# ----------------------------------------------------------------------------------------------
# Normalization


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
        allowed = {tuple(sorted(fields[slot] for slot in _phrase_slots(phrase))) for phrase in PHRASES[self.frame]}
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


def _phrase_slots(phrase: str) -> set[str]:
    return set(_SLOT_PATTERN.findall(phrase))


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


def _distance_words(meters: int) -> str:
    """3 -> "three meters", 1 -> "one meter"."""
    return f"{NUMBER_WORDS[meters - 1]} {DISTANCE_UNITS[meters != 1]}"


def _with_articles(words: list[str]) -> str:
    """The words joined, "a" before a vowel color made "an": "a orange star" -> "an orange star"
    (a color is the only slot word that starts with a vowel)."""
    return " ".join(
        "an" if word == "a" and i + 1 < len(words) and words[i + 1] in COLORS and words[i + 1][0] in "aeiou" else word
        for i, word in enumerate(words)
    )


def _fill(phrase: str, intent: Intent) -> str:
    values = {"color": intent.color, "shape": intent.shape}
    if intent.shape is not None:
        values["shapes"] = SHAPE_PLURALS[intent.shape]
    if intent.distance_m is not None:
        values["distance"] = _distance_words(intent.distance_m)
    return _with_articles(_SLOT_PATTERN.sub(lambda m: str(values[m.group(1)]), phrase).split())


def phrasings(intent: Intent) -> tuple[str, ...]:
    """Every way the grammar says ``intent`` (without polite prefixes or suffixes), canonical first."""
    wanted = _intent_slots(intent)
    return tuple(_fill(phrase, intent) for phrase in PHRASES[intent.frame] if _phrase_slots(phrase) == wanted)


def affixes(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(prefixes, suffixes) that may surround a phrasing of this kind ("command" or "question")."""
    if kind == "question":
        return QUESTION_PREFIXES, QUESTION_SUFFIXES
    return COMMAND_PREFIXES, COMMAND_SUFFIXES


def slot_fillers() -> dict[str, tuple[str, ...]]:
    """The words each phrase slot may be filled with: {"color": ("red", ...), "distance": ("one meter", ...)}."""
    return {
        "color": COLORS,
        "shape": SHAPES,
        "shapes": tuple(SHAPE_PLURALS[shape] for shape in SHAPES),
        "distance": tuple(_distance_words(m) for m in range(MIN_DISTANCE_M, MAX_DISTANCE_M + 1)),
    }


class GrammarTemplate(NamedTuple):
    """One phrasing of ``PHRASES`` with its slots spelled out, for decoders constrained to the grammar.

    The sentences of the template are one alternative of each segment, in order, joined by
    spaces: ``(("pick up the",), ("red", "green", ...), ("circle", ...))``. An article and the
    color slot after it form one segment (``("a red", ..., "an orange")``), as ``phrasings`` says them.
    """

    kind: str  # "command" or "question": ``affixes(kind)`` may surround it
    segments: tuple[tuple[str, ...], ...]  # alternatives of each position, each one or more words


def grammar_templates() -> tuple[GrammarTemplate, ...]:
    """Every phrasing of ``PHRASES``, in table order, as a GrammarTemplate.

    With the optional prefix and suffix of ``affixes(template.kind)``, they say every sentence
    of ``all_transcripts`` (train/data/speech_grammar.py) and a few more ("please stop please").
    """
    fillers = slot_fillers()
    templates = []
    for (action, _), phrases in PHRASES.items():
        for phrase in phrases:
            segments: list[tuple[str, ...]] = []
            for token in phrase.split():
                slot = _SLOT_PATTERN.fullmatch(token)
                if slot is None:
                    segments.append((token,))
                elif segments and segments[-1] == ("a",):  # the article agrees with the word after it
                    segments[-1] = tuple(_with_articles(["a", word]) for word in fillers[slot.group(1)])
                else:
                    segments.append(fillers[slot.group(1)])
            templates.append(GrammarTemplate("question" if action == "question" else "command", tuple(segments)))
    return tuple(templates)


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
        slot = _SLOT_PATTERN.fullmatch(token)
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
