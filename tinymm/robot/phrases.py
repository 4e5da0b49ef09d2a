"""The robot command grammar's table: vocabulary, the phrasings of each intent frame, and the
words said around them.

``PHRASES`` maps each intent frame (action, direction or question type) to the phrasings the
runtime understands, with ``{color}``, ``{shape}``, ``{shapes}`` (plural) and ``{distance}``
("three meters") slots, optionally preceded by a polite prefix ("could you please") and, for
commands, followed by a suffix ("please"). Everything that reads the grammar starts here: the
intent parser (``tinymm.robot.intent``), the grammar a speech decoder is constrained to
(``tinymm.robot.grammar``) and the training data generator (``train/data/speech_grammar.py``),
so what the models hear is exactly what the parser accepts.

Pure Python (no numpy).
"""

from __future__ import annotations

import re
from typing import Mapping

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
DISTANCE_UNITS = ("meter", "meters")

SLOT_PATTERN = re.compile(r"\{(\w+)\}")  # a "{slot}" of a phrasing


# ----------------------------------------------------------------------------------------------
# Reading the table


def phrase_slots(phrase: str) -> set[str]:
    """The slots a phrasing uses: "go {distance} forward" -> {"distance"}."""
    return set(SLOT_PATTERN.findall(phrase))


def distance_words(meters: int) -> str:
    """3 -> "three meters", 1 -> "one meter"."""
    return f"{NUMBER_WORDS[meters - 1]} {DISTANCE_UNITS[meters != 1]}"


def with_articles(words: list[str]) -> str:
    """The words joined, "a" before a vowel color made "an": "a orange star" -> "an orange star"
    (a color is the only slot word that starts with a vowel)."""
    return " ".join(
        "an" if word == "a" and i + 1 < len(words) and words[i + 1] in COLORS and words[i + 1][0] in "aeiou" else word
        for i, word in enumerate(words)
    )


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
        "distance": tuple(distance_words(m) for m in range(MIN_DISTANCE_M, MAX_DISTANCE_M + 1)),
    }
