"""Free English sentences beyond the command grammar, so that a speech model learns words and
sounds rather than a phrase list.

``sample_free_sentence(rng)`` returns (transcript, spoken_text): the transcript canonical
(``normalize_transcript``: lowercase a-z words, numbers as words), the spoken text with a capital
and a full stop or question mark for the synthesizer's intonation. Sentences come from a dozen
templates over a few hundred everyday words (people, things, places, actions, times), so they
cover most English phonemes in many contexts; they need not be true or sensible, only speakable.
Deterministic for a given generator state.
"""

from __future__ import annotations

import numpy as np

from tinymm.robot.transcripts import normalize_transcript

PEOPLE = (
    "my sister", "the old man", "our neighbour", "the teacher", "a young girl", "the driver", "my friend",
    "the doctor", "a tired worker", "the children", "his brother", "the baker", "her mother", "the pilot",
    "a quiet student", "the farmer", "my uncle", "the nurse", "the captain", "everyone", "nobody", "the guide",
)
THINGS = (
    "the kettle", "a blanket", "the bicycle", "an umbrella", "the window", "a letter", "the garden gate",
    "the laptop", "a bowl of soup", "the newspaper", "the keys", "a pair of shoes", "the television",
    "a cup of coffee", "the map", "the bread", "a wooden chair", "the lamp", "a heavy box", "the phone",
    "the guitar", "a basket of apples", "the clock", "the jacket", "a bottle of water", "the mirror",
    "the suitcase", "a pencil", "the fridge", "the ladder", "a birthday cake", "the curtains",
)
PLACES = (
    "in the kitchen", "at the station", "near the river", "behind the house", "on the bridge",
    "in the library", "at the market", "under the table", "by the window", "in the village",
    "at the airport", "on the beach", "in the office", "at the hospital", "in the park", "upstairs",
    "across the street", "in the garage", "on the mountain", "at school", "outside the church",
)
ACTIONS = (
    "found", "carried", "washed", "painted", "dropped", "bought", "borrowed", "fixed", "opened", "closed",
    "cleaned", "sold", "hid", "moved", "forgot", "brought", "checked", "broke", "wrapped", "watched",
    "cooked", "measured", "lifted", "packed", "returned", "delivered", "ordered", "lost", "repaired",
)
VERBS_NOW = (
    "walk", "read", "sing", "wait", "work", "sleep", "travel", "swim", "study", "cook", "listen", "rest",
    "dance", "write", "shop", "play", "drive", "run", "talk", "think",
)
TIMES = (
    "yesterday", "this morning", "last night", "on monday", "every weekend", "after lunch", "before dinner",
    "in the evening", "at noon", "last summer", "tomorrow", "early today", "at midnight", "on friday",
    "during the storm", "in october", "twice a week",
)
ADJECTIVES = (
    "warm", "cold", "bright", "dark", "quiet", "noisy", "clean", "dusty", "heavy", "light", "broken", "new",
    "old", "strange", "beautiful", "empty", "crowded", "expensive", "cheap", "wet", "dry", "soft", "sharp",
)
WEATHER = (
    "it will rain", "the wind is strong", "the sky looks clear", "snow is falling", "the sun came out",
    "the fog is thick", "a storm is coming", "the air feels fresh",
)
TEMPLATES = (
    "{person} {action} {thing} {time}.",
    "{person} {action} {thing} {place}.",
    "{time} {person} {action} {thing}.",
    "did {person} see {thing} {place}?",
    "why is {thing} so {adjective}?",
    "{thing} {place} was {adjective} and {adjective2}.",
    "i think {weather} {time}.",
    "we like to {verb} {place} {time}.",
    "{person} wants to {verb} {place}.",
    "have you ever {action} {thing}?",
    "there were {number} people {place} {time}.",
    "please tell {person} that {thing} is {adjective}.",
    "{person} said that {weather}.",
    "can you {verb} with {person} {time}?",
)


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def sample_free_sentence(rng: np.random.Generator) -> tuple[str, str]:
    """(transcript, spoken_text) of one free sentence (module docstring)."""
    adjective = _pick(rng, ADJECTIVES)
    fields = {
        "person": _pick(rng, PEOPLE), "thing": _pick(rng, THINGS), "place": _pick(rng, PLACES),
        "action": _pick(rng, ACTIONS), "verb": _pick(rng, VERBS_NOW), "time": _pick(rng, TIMES),
        "adjective": adjective, "adjective2": _pick(rng, tuple(a for a in ADJECTIVES if a != adjective)),
        "weather": _pick(rng, WEATHER), "number": str(int(rng.integers(2, 100))),
    }
    sentence = _pick(rng, TEMPLATES).format(**fields)
    spoken = sentence[0].upper() + sentence[1:]
    return normalize_transcript(sentence), spoken
