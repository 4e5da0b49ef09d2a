"""The robot command grammar as a decoding Grammar, and the grammar names a bundle may declare.

A speech bundle trained on the robot commands names its grammar in ``model.grammar``
(``"robot-commands"``); the speech pipeline then decodes with ``builtin_grammar(name)``
(``tinymm.decoding.grammar.GrammarDecoder``), importing this domain only for such a bundle.

    decoder = GrammarDecoder.from_tokenizer(robot_commands(), tokenizer, blank_id=0)
"""

from __future__ import annotations

from tinymm.decoding.grammar_graph import Grammar, GrammarTemplate
from tinymm.errors import BundleError
from tinymm.robot.phrases import PHRASES, SLOT_PATTERN, affixes, slot_fillers, with_articles

ROBOT_COMMANDS = "robot-commands"  # the robot commands and scene questions of tinymm.robot.phrases
GRAMMAR_NAMES = (ROBOT_COMMANDS,)  # the names a bundle's ``model.grammar`` may take
KINDS = ("command", "question")  # template kinds, each with its own prefixes and suffixes


def grammar_templates() -> tuple[GrammarTemplate, ...]:
    """Every phrasing of ``PHRASES``, in table order, as a GrammarTemplate of kind "command" or
    "question".

    An article and the color slot after it form one segment (``("a red", ..., "an orange")``),
    as ``tinymm.robot.intent.phrasings`` says them. With the optional prefix and suffix of
    ``affixes(template.kind)``, the templates say every sentence of ``all_transcripts``
    (train/data/speech_grammar.py) and a few more ("please stop please").
    """
    fillers = slot_fillers()
    templates = []
    for (action, _), phrases in PHRASES.items():
        for phrase in phrases:
            segments: list[tuple[str, ...]] = []
            for token in phrase.split():
                slot = SLOT_PATTERN.fullmatch(token)
                if slot is None:
                    segments.append((token,))
                elif segments and segments[-1] == ("a",):  # the article agrees with the word after it
                    segments[-1] = tuple(with_articles(["a", word]) for word in fillers[slot.group(1)])
                else:
                    segments.append(fillers[slot.group(1)])
            templates.append(GrammarTemplate("question" if action == "question" else "command", tuple(segments)))
    return tuple(templates)


def robot_commands() -> Grammar:
    """The robot commands and scene questions, with their polite prefixes and suffixes."""
    return Grammar(ROBOT_COMMANDS, grammar_templates(), {kind: affixes(kind) for kind in KINDS})


def builtin_grammar(name: str) -> Grammar:
    """The grammar a bundle names in ``model.grammar``; BundleError for a name this runtime lacks."""
    if name != ROBOT_COMMANDS:
        raise BundleError(f"unknown grammar {name!r}: this runtime knows {list(GRAMMAR_NAMES)}; re-export the bundle "
                          "with one of them, or upgrade tinymm")
    return robot_commands()


def check_grammar_name(value: object) -> str | None:
    """A manifest's ``model.grammar``: None when absent, else a known grammar name (BundleError if not)."""
    if value is None:
        return None
    if not isinstance(value, str) or value not in GRAMMAR_NAMES:
        raise BundleError(f"manifest model.grammar={value!r} is not a grammar this runtime knows "
                          f"({list(GRAMMAR_NAMES)}); re-export the bundle or upgrade tinymm")
    return value
