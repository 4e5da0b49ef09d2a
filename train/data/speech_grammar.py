"""Spoken robot commands and scene questions, with their intents, for the speech training data.

Every utterance is rendered from the runtime's own grammar (``tinymm.robot.phrases.PHRASES``), so the
speech model learns exactly the language that ``tinymm.robot.intent.parse_intent`` understands and
each clip carries its structured intent as a label. The covered forms:

- commands: stop; go forward / go back [one..ten meters]; turn left / right / around; pick up
  the {color} {shape}; put it down; look at the {color} {shape}; each with variations ("move
  three meters forward", "go backward", "turn to the left", "grab the red star", "drop it");
- questions about the scene, in the scene generator's question types: what color is the
  {shape}; what shape is the {color} object; how many {shapes} are there; how many objects are
  there; is there a {color} {shape}; where is the {color} {shape}; what does the sign say; with
  variations ("what is the color of the star", "do you see a red circle", "read the sign");
- optional polite prefixes and suffixes ("could you please ...", "hey robot ...", "... now").

Sampling one utterance (``sample_utterance``): a command with probability
``1 - question_fraction``, else a question; a frame uniformly (commands: an action, then its
direction; questions: a type); slot values uniformly; a distance for a move with
``distance_prob``; a phrasing uniformly among the intent's phrasings; then a prefix with
``prefix_prob`` and a suffix with ``suffix_prob``.

Each utterance has one canonical transcript: ``tinymm.robot.transcripts.normalize_transcript`` of it is
itself (lowercase a-z words, numbers as words, no punctuation). ``spoken_text`` is what the
synthesizer reads: the same words, capitalized, with a full stop or a question mark for the
intonation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, TypeVar

import numpy as np

from tinymm.robot.intent import Intent, phrasings
from tinymm.robot.phrases import COLORS, MAX_DISTANCE_M, MIN_DISTANCE_M, PHRASES, SHAPES, affixes
from tinymm.robot.transcripts import normalize_transcript

_T = TypeVar("_T")

COMMAND_FRAMES = tuple(frame for frame in PHRASES if frame[0] != "question")
QUESTION_FRAMES = tuple(frame for frame in PHRASES if frame[0] == "question")
COMMAND_ACTIONS = tuple(dict.fromkeys(action for action, _ in COMMAND_FRAMES))


@dataclass(frozen=True)
class GrammarConfig:
    """How often each kind of utterance is drawn (every value is a probability in [0, 1])."""

    question_fraction: float = 0.4  # share of questions; the rest are commands
    distance_prob: float = 0.6  # share of move commands that say a distance
    prefix_prob: float = 0.25  # share of utterances with a polite prefix ("could you please")
    suffix_prob: float = 0.15  # share of commands with a suffix ("please", "now")

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"grammar.{field.name}={value!r} must be a probability in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GrammarConfig":
        return cls(**data)


@dataclass(frozen=True)
class Utterance:
    """One sentence to synthesize, with its labels."""

    transcript: str  # canonical: normalize_transcript(transcript) == transcript
    intent: Intent  # what the sentence asks for
    spoken_text: str  # what the synthesizer reads ("Could you please stop.", "Where is the red star?")

    @property
    def kind(self) -> str:
        """ "command" or "question"."""
        return self.intent.kind


def _pick(rng: np.random.Generator, options: Sequence[_T]) -> _T:
    return options[int(rng.integers(len(options)))]


def _frame_intents(frame: tuple[str, str | None]) -> list[Intent]:
    """Every intent of one frame: the cross product of the slots its phrasings use."""
    action, detail = frame
    base: dict[str, Any] = {"question_type": detail} if action == "question" else {"direction": detail}
    intents = []
    for slot_set in sorted({tuple(sorted(set(_slots(p)))) for p in PHRASES[frame]}):
        colors = COLORS if "color" in slot_set else (None,)
        shapes = SHAPES if {"shape", "shapes"} & set(slot_set) else (None,)
        distances = range(MIN_DISTANCE_M, MAX_DISTANCE_M + 1) if "distance" in slot_set else (None,)
        for color in colors:
            for shape in shapes:
                for distance in distances:
                    intents.append(Intent(action=action, color=color, shape=shape, distance_m=distance, **base))
    return intents


def _slots(phrase: str) -> list[str]:
    return [word[1:-1] for word in phrase.split() if word.startswith("{")]


def all_intents() -> list[Intent]:
    """Every intent the grammar can express, each once (commands first, in ``PHRASES`` order)."""
    return [intent for frame in PHRASES for intent in _frame_intents(frame)]


def all_transcripts(intent: Intent) -> list[str]:
    """Every transcript of ``intent``: each phrasing with and without each prefix and suffix."""
    prefixes, suffixes = affixes(intent.kind)
    return [
        " ".join(part for part in (prefix, phrase, suffix) if part)
        for phrase in phrasings(intent)
        for prefix in ("", *prefixes)
        for suffix in ("", *suffixes)
    ]


def sample_intent(rng: np.random.Generator, config: GrammarConfig) -> Intent:
    """Draw an intent: kind, then frame, then slot values (see the module docstring)."""
    if rng.random() < config.question_fraction:
        frame = _pick(rng, QUESTION_FRAMES)
    else:
        action = _pick(rng, COMMAND_ACTIONS)
        frame = _pick(rng, [f for f in COMMAND_FRAMES if f[0] == action])
    options = _frame_intents(frame)
    if frame[0] == "move":
        with_distance = rng.random() < config.distance_prob
        options = [intent for intent in options if (intent.distance_m is not None) == with_distance]
    return _pick(rng, options)


def render(intent: Intent, rng: np.random.Generator, config: GrammarConfig) -> Utterance:
    """Say ``intent`` one way: a random phrasing, maybe with a polite prefix and suffix."""
    words = [_pick(rng, phrasings(intent))]
    prefixes, suffixes = affixes(intent.kind)
    if prefixes and rng.random() < config.prefix_prob:
        words.insert(0, _pick(rng, prefixes))
    if suffixes and rng.random() < config.suffix_prob:
        suffix = _pick(rng, suffixes)
        if suffix not in words[0].split():  # not "please stop please"
            words.append(suffix)
    transcript = " ".join(words)
    if normalize_transcript(transcript) != transcript:  # the grammar table is written canonically
        raise ValueError(f"grammar phrasing {transcript!r} is not canonical; fix tinymm.robot.phrases.PHRASES")
    spoken = transcript[0].upper() + transcript[1:] + ("?" if intent.kind == "question" else ".")
    return Utterance(transcript=transcript, intent=intent, spoken_text=spoken)


def sample_utterance(rng: np.random.Generator, config: GrammarConfig) -> Utterance:
    """``render(sample_intent(rng, config), rng, config)``."""
    return render(sample_intent(rng, config), rng, config)
