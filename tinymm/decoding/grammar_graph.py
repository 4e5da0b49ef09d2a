"""A closed grammar and its CTC decoding graph: what ``tinymm.decoding.grammar.GrammarDecoder`` searches.

A ``Grammar`` (templates of word alternatives, with optional prefixes and suffixes per template
kind) comes from its domain (``tinymm.robot.grammar``); this module knows no domain. It is
compiled once into a small token graph:

1. the templates (phrasings with their slot words spelled out, optional prefixes and suffixes)
   become a token automaton, each word the tokenizer's pieces of it ("\u2581", "r", "e", "d"
   for a character model);
2. the automaton is determinized and minimized (an acyclic automaton: states with the same
   future are merged bottom-up), so shared prefixes ("go ...") and tails ("the {color}
   {shape}") are stored once: ~30k sentences in ~1.4k graph nodes;
3. every arc of the minimal automaton becomes a node of the CTC graph, carrying one token; a
   node is entered from the nodes of its source state (the "entry group"), and from a
   predecessor with the same token only through a blank ("l", blank, "l": a repeated letter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np

from tinymm.errors import BundleError

TokenEncoder = Callable[[str], Sequence[int]]  # text -> token ids (Tokenizer.encode)
AffixTable = Mapping[str, tuple[Sequence[str], Sequence[str]]]  # template kind -> (prefixes, suffixes)


class GrammarTemplate(NamedTuple):
    """One phrasing of a grammar with its slots spelled out.

    The sentences of the template are one alternative of each segment, in order, joined by
    spaces: ``(("pick up the",), ("red", "green", ...), ("circle", ...))``.
    """

    kind: str  # the template's kind (e.g. "command" or "question"): its Grammar.affixes entry may surround it
    segments: tuple[tuple[str, ...], ...]  # alternatives of each position, each one or more words


@dataclass(frozen=True)
class Grammar:
    """A closed set of sentences: templates, each optionally preceded by one of its kind's
    prefixes and followed by one of its suffixes. Its domain builds it (tinymm.robot.grammar)."""

    name: str  # what a bundle's model.grammar calls it, e.g. "robot-commands"
    templates: tuple[GrammarTemplate, ...]
    affixes: AffixTable  # template kind -> (prefixes, suffixes); a kind not listed has none


# ----------------------------------------------------------------------------------------------
# Compiling templates into a minimal token automaton


class _Automaton:
    """An acyclic token automaton under construction: arcs (token, target) and epsilon arcs per state."""

    def __init__(self) -> None:
        self.arcs: list[list[tuple[int, int]]] = []
        self.eps: list[list[int]] = []
        self.final: set[int] = set()

    def state(self) -> int:
        self.arcs.append([])
        self.eps.append([])
        return len(self.arcs) - 1

    def chain(self, source: int, tokens: Sequence[int], target: int) -> None:
        """Arcs source -tokens[0]-> ... -tokens[-1]-> target through new states."""
        for i, token in enumerate(tokens):
            nxt = target if i == len(tokens) - 1 else self.state()
            self.arcs[source].append((token, nxt))
            source = nxt


def _encode(encode: TokenEncoder, text: str) -> tuple[int, ...]:
    ids = tuple(int(i) for i in encode(text))
    if not ids:
        raise BundleError(f"the tokenizer encodes the grammar's words {text!r} to no tokens; the grammar and the "
                          "bundle's tokenizer do not fit")
    return ids


def _template_automaton(templates: Sequence[GrammarTemplate], affix_table: AffixTable,
                        encode: TokenEncoder) -> _Automaton:
    """start [prefix] phrase [suffix] final, per kind; slot alternatives as parallel chains."""
    nfa = _Automaton()
    start, end = nfa.state(), nfa.state()
    nfa.final.add(end)
    for kind in dict.fromkeys(t.kind for t in templates):
        prefixes, suffixes = affix_table.get(kind, ((), ()))
        phrase_start, phrase_end = nfa.state(), nfa.state()
        nfa.eps[start].append(phrase_start)
        nfa.eps[phrase_end].append(end)
        for prefix in prefixes:
            nfa.chain(start, _encode(encode, prefix), phrase_start)
        for suffix in suffixes:
            nfa.chain(phrase_end, _encode(encode, suffix), end)
        after: dict[tuple[int, tuple[str, ...]], int] = {}  # (state, segment) -> state: templates share prefixes
        for template in (t for t in templates if t.kind == kind):
            here = phrase_start
            for segment in template.segments:
                if (here, segment) not in after:
                    after[here, segment] = nfa.state()
                    for words in dict.fromkeys(segment):
                        nfa.chain(here, _encode(encode, words), after[here, segment])
                here = after[here, segment]
            if phrase_end not in nfa.eps[here]:
                nfa.eps[here].append(phrase_end)
    return nfa


def _determinize(nfa: _Automaton) -> _Automaton:
    """Subset construction (with epsilon closures) from state 0; the result's state 0 is its start."""
    closures: dict[int, frozenset[int]] = {}

    def closure(state: int) -> frozenset[int]:
        if state not in closures:
            seen, todo = {state}, [state]
            while todo:
                for nxt in nfa.eps[todo.pop()]:
                    if nxt not in seen:
                        seen.add(nxt)
                        todo.append(nxt)
            closures[state] = frozenset(seen)
        return closures[state]

    dfa = _Automaton()
    first = closure(0)
    ids = {first: dfa.state()}
    todo = [first]
    while todo:
        subset = todo.pop()
        here = ids[subset]
        if subset & nfa.final:
            dfa.final.add(here)
        moves: dict[int, set[int]] = {}
        for state in subset:
            for token, nxt in nfa.arcs[state]:
                moves.setdefault(token, set()).update(closure(nxt))
        for token, targets in sorted(moves.items()):
            key = frozenset(targets)
            if key not in ids:
                ids[key] = dfa.state()
                todo.append(key)
            dfa.arcs[here].append((token, ids[key]))
    return dfa


def _minimize(dfa: _Automaton) -> _Automaton:
    """Merge states with the same future (acyclic: bottom-up by signature); state 0 stays the start."""
    order: list[int] = []  # post-order: every state after its successors
    seen = {0}
    stack = [(0, iter(dfa.arcs[0]))]
    while stack:
        state, arcs = stack[-1]
        for _, nxt in arcs:
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, iter(dfa.arcs[nxt])))
                break
        else:
            stack.pop()
            order.append(state)
    classes: dict[tuple, int] = {}
    rep: dict[int, int] = {}
    out = _Automaton()
    out.state()  # the start keeps id 0: it is last in post-order, so give it its slot first
    for state in order:
        arcs = tuple(sorted((token, rep[nxt]) for token, nxt in dfa.arcs[state]))
        signature = (state in dfa.final, arcs)
        if signature not in classes:
            classes[signature] = 0 if state == 0 else out.state()
            new = classes[signature]
            out.arcs[new] = list(arcs)
            if state in dfa.final:
                out.final.add(new)
        rep[state] = classes[signature]
    return out


# ----------------------------------------------------------------------------------------------
# The CTC graph


@dataclass(frozen=True)
class GrammarGraph:
    """A grammar as a CTC decoding graph of N token nodes (the arcs of its minimal automaton).

    The decoder keeps, per frame, a score vector W = [X (N) | start | B (N)]: X[n] the best path
    ending in node n (on its token or on the blank after it), start the path of blanks before
    any token, B[n] the path ending on the blank after node n. Node n is entered from the best of
    W[entries[n]]; nodes ``0..wide-1`` have several entries (word and phrase boundaries), the
    others exactly one (the previous letter).
    """

    labels: np.ndarray  # (N,) int64 token of each node
    final: np.ndarray  # (F,) int64 nodes a sentence may end with
    entries: tuple[tuple[int, ...], ...]  # per node: indices into W it is entered from
    wide: int  # nodes before this index have more than one entry
    transitions: tuple[dict[int, int], ...]  # per automaton state (0: the start): token -> node leaving it
    node_target: tuple[int, ...]  # per node: the automaton state it leads to
    final_states: frozenset[int]

    @property
    def num_nodes(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def build(cls, templates: Sequence[GrammarTemplate], affix_table: AffixTable, encode: TokenEncoder) -> GrammarGraph:
        """Compile templates (with their kinds' optional prefixes and suffixes) into a graph of ``encode``'s tokens."""
        if not templates:
            raise BundleError("a grammar needs at least one template")
        automaton = _minimize(_determinize(_template_automaton(templates, affix_table, encode)))
        arcs = [(state, token, nxt) for state, out in enumerate(automaton.arcs) for token, nxt in out]
        fan_in = [int(state == 0) for state in range(len(automaton.arcs))]  # the start is entered from `start`
        for _, _, nxt in arcs:
            fan_in[nxt] += 1
        arcs.sort(key=lambda arc: fan_in[arc[0]] == 1)  # stable: nodes with several entries first
        n = len(arcs)
        incoming: list[list[int]] = [[] for _ in automaton.arcs]
        transitions: list[dict[int, int]] = [{} for _ in automaton.arcs]
        for node, (state, token, nxt) in enumerate(arcs):
            incoming[nxt].append(node)
            transitions[state][token] = node
        entries = []
        for state, token, _ in arcs:
            # From a predecessor with the same token only through its blank: CTC would merge the two.
            entry = tuple(n + 1 + p if arcs[p][1] == token else p for p in incoming[state])
            entries.append(entry + ((n,) if state == 0 else ()))
        return cls(
            labels=np.asarray([token for _, token, _ in arcs], dtype=np.int64),
            final=np.asarray([node for node, (_, _, nxt) in enumerate(arcs) if nxt in automaton.final], dtype=np.int64),
            entries=tuple(entries), wide=sum(len(entry) > 1 for entry in entries),
            transitions=tuple(transitions), node_target=tuple(nxt for _, _, nxt in arcs),
            final_states=frozenset(automaton.final),
        )

    @classmethod
    def from_grammar(cls, grammar: Grammar, encode: TokenEncoder) -> GrammarGraph:
        """The graph of ``grammar`` over ``encode``'s tokens."""
        return cls.build(grammar.templates, grammar.affixes, encode)

    def accepts(self, tokens: Sequence[int]) -> bool:
        """True when the token sequence is a sentence of the grammar."""
        state = 0
        for token in tokens:
            node = self.transitions[state].get(int(token))
            if node is None:
                return False
            state = self.node_target[node]
        return state in self.final_states


# ----------------------------------------------------------------------------------------------
# Viterbi decoding
