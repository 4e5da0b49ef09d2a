"""CTC decoding constrained to a closed grammar: the best path among the grammar's sentences.

A character CTC model trained on a closed grammar (such as the robot commands of tinymm.robot)
still merges or drops words ("nowtake the red star", "where is the black located"); a per-word
lexicon cannot repair that, but a decoder that only considers the grammar's sentences can, as
Kaldi and Vosk do in grammar mode. A ``Grammar`` (templates of word alternatives, with optional
prefixes and suffixes per template kind) comes from its domain (``tinymm.robot.grammar``); this
module knows no domain. The grammar is compiled once into a small token graph:

1. the templates (phrasings with their slot words spelled out, optional prefixes and suffixes)
   become a token automaton, each word the tokenizer's pieces of it ("\u2581", "r", "e", "d"
   for a character model);
2. the automaton is determinized and minimized (an acyclic automaton: states with the same
   future are merged bottom-up), so shared prefixes ("go ...") and tails ("the {color}
   {shape}") are stored once: ~30k sentences in ~1.4k graph nodes;
3. every arc of the minimal automaton becomes a node of the CTC graph, carrying one token; a
   node is entered from the nodes of its source state (the "entry group"), and from a
   predecessor with the same token only through a blank ("l", blank, "l": a repeated letter).

``GrammarDecoder.decode`` runs the Viterbi recursion over that graph, one frame at a time and
vectorised over nodes, keeps per-frame scores for the backtrace, and returns the best token
sequence with its log-probability. It also returns the unconstrained best path's score (the sum
over frames of each frame's best log-prob): when the grammar's best path is much worse per token
(``max_gap_per_token``), the speaker said something outside the grammar, and ``in_grammar`` is
False so that the caller keeps its free transcript.

    decoder = GrammarDecoder.from_tokenizer(robot_commands(), tokenizer, blank_id=0)  # tinymm.robot.grammar
    hyp = decoder.decode(log_probs)  # (frames, vocab) float32 log-softmax of one clip
    text = tokenizer.decode(list(hyp.tokens)) if hyp.in_grammar else free_text
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from tinymm.errors import BundleError, InputError

if TYPE_CHECKING:
    from tinymm.preprocess.text import Tokenizer

# Out-of-grammar guard: (free best path score - grammar best path score) / tokens of the grammar
# path, nats per token. Chosen on the speech recipe's val split (500 in-grammar clips of
# runs/speech2) and 100 clips of 50 sentences outside the grammar read by espeak-ng: with the
# distilled student, 1.2 keeps 95.8% of val clips on the grammar path (intent accuracy 92.6%, vs
# 92.8% with no guard and 88.8% at 0.6) and sends 93% of unrelated sentences ("what time is it")
# and 78% of near misses ("pick up the ball") to the free transcript (teacher: 96.4%, 90%, 82%;
# scratch student: 96.6%, 78%, 65%). Per token rather than per frame: silence before and after
# the words scores the same on both paths and dilutes a per-frame gap, which, keeping as many
# val clips, caught 10-20 points fewer unrelated sentences.
MAX_GAP_PER_TOKEN = 1.2

# Longest clip, in output frames (10 s at 40 ms), whose work area a decoder keeps for the next
# call (16 bytes per node and frame: ~23 kB per frame for robot-commands); longer clips get a temporary one.
WORKSPACE_MAX_FRAMES = 250

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


@dataclass(frozen=True)
class GrammarHypothesis:
    """The best in-grammar path of one clip, and how it compares with the unconstrained best path."""

    tokens: tuple[int, ...]  # the sentence's token ids; () when no sentence fits in the frames
    frames: tuple[int, ...]  # the output frame where each token starts, same length as tokens
    score: float  # log-probability of the best in-grammar path (-inf when none fits)
    free_score: float  # sum over frames of the best label's log-prob: the unconstrained best path
    num_frames: int  # valid output frames decoded
    in_grammar: bool  # a sentence fits, and gap_per_token is at most the decoder's max_gap_per_token

    @property
    def gap_per_token(self) -> float:
        """(free_score - score) / len(tokens): nats >= 0 the grammar costs per token; inf when no sentence fits."""
        return (self.free_score - self.score) / len(self.tokens) if self.tokens else math.inf

    @property
    def confidence(self) -> float:
        """Geometric mean over frames of the path's label probability, in [0, 1]."""
        return math.exp(self.score / self.num_frames) if self.tokens and self.num_frames else 0.0


class GrammarDecoder:
    """CTC Viterbi decoding over a GrammarGraph; build one per pipeline and reuse it, from any thread
    (each thread keeps its own work area).

    Per frame and over all nodes at once: each node's entry score (the best of its entries in
    the previous frame's W), then its token score (stay on the token or enter it, plus the
    token's log-prob), its blank score (from its token or blank, plus the blank's log-prob) and
    X, their max. Single-entry nodes read their entry with one gather; the nodes at word and
    phrase boundaries take a max over a small padded (entries, nodes) gather.
    """

    def __init__(self, graph: GrammarGraph, blank_id: int, max_gap_per_token: float = MAX_GAP_PER_TOKEN) -> None:
        if blank_id in set(graph.labels.tolist()):
            raise BundleError(f"the grammar's tokens include the CTC blank id {blank_id}; the tokenizer and "
                              "model.blank_id do not fit")
        if not max_gap_per_token >= 0.0:
            raise ValueError(f"max_gap_per_token={max_gap_per_token!r} must be >= 0 nats per token")
        self.graph, self.blank_id, self.max_gap_per_token = graph, blank_id, max_gap_per_token
        wide = graph.wide
        self._single = np.asarray([entry[0] for entry in graph.entries[wide:]], dtype=np.int64)  # (N - wide,)
        width = max((len(entry) for entry in graph.entries[:wide]), default=1)
        # (width, wide): the entries of each wide node, padded by repeating its first (a max ignores repeats)
        self._wide_entries = np.asarray([[e[min(i, len(e) - 1)] for e in graph.entries[:wide]] for i in range(width)],
                                        dtype=np.int64).reshape(width, wide)
        self._scratch = threading.local()  # per-thread work area, reused between calls

    def __repr__(self) -> str:
        return f"GrammarDecoder({self.graph.num_nodes} nodes, blank_id={self.blank_id})"

    @classmethod
    def from_tokenizer(cls, grammar: Grammar, tokenizer: Tokenizer, blank_id: int,
                       max_gap_per_token: float = MAX_GAP_PER_TOKEN) -> GrammarDecoder:
        """The decoder of ``grammar`` over a Tokenizer's pieces (``tokenizer.encode``)."""
        unk_id = tokenizer.config.unk_id

        def encode(text: str) -> list[int]:
            ids = tokenizer.encode(text)
            if unk_id in ids:
                raise BundleError(f"the bundle's tokenizer cannot spell {text!r} of grammar {grammar.name!r} (it has "
                                  "no piece for a character); the grammar does not fit this model, re-export without it")
            return ids

        return cls(GrammarGraph.from_grammar(grammar, encode), blank_id, max_gap_per_token)

    def decode(self, log_probs: np.ndarray) -> GrammarHypothesis:
        """The best in-grammar token sequence of one clip.

        Args:
            log_probs: (frames, vocab) float log-softmax over the valid frames of one clip.
        """
        log_probs = np.asarray(log_probs, dtype=np.float32)
        if log_probs.ndim != 2 or log_probs.shape[1] <= max(int(self.graph.labels.max()), self.blank_id):
            raise InputError(f"log_probs must be (frames, vocab) with a label for every grammar token, got shape "
                             f"{log_probs.shape}; pass one clip's log-softmax output")
        frames = log_probs.shape[0]
        if frames == 0:
            return GrammarHypothesis((), (), -math.inf, 0.0, 0, False)
        free = float(log_probs.max(axis=1).sum())
        token, w = self._forward(log_probs)
        ends = w[frames, self.graph.final]  # best score ending in each final node
        best = int(np.argmax(ends))
        score = float(ends[best])
        if not math.isfinite(score):
            return GrammarHypothesis((), (), -math.inf, free, frames, False)
        tokens, starts = self._backtrace(token, w, int(self.graph.final[best]))
        in_grammar = (free - score) / len(tokens) <= self.max_gap_per_token
        return GrammarHypothesis(tokens, starts, score, free, frames, in_grammar)

    def _work_area(self, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scratch arrays for ``frames`` frames: token scores (frames+1, N+1), W vectors (frames+1, 2N+2)
        and emissions (frames, N), float32, carved from one buffer that each thread keeps for its next
        call up to WORKSPACE_MAX_FRAMES (fresh memory costs more in page faults than the decoding)."""
        n = self.graph.num_nodes
        shapes = ((frames + 1, n + 1), (frames + 1, 2 * n + 2), (frames, n))
        sizes = [rows * cols for rows, cols in shapes]
        buffer = getattr(self._scratch, "buffer", None)
        if buffer is None or buffer.size < sum(sizes):
            buffer = np.empty(sum(sizes), dtype=np.float32)
            if frames <= WORKSPACE_MAX_FRAMES:
                self._scratch.buffer = buffer
        offsets = np.cumsum([0, *sizes])
        token, w, emit = (buffer[offsets[i]:offsets[i + 1]].reshape(shape) for i, shape in enumerate(shapes))
        return token, w, emit

    def _forward(self, log_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Viterbi scores; row 0 is before the first frame, row t+1 after frame t.

        Returns token scores (frames+1, N+1) and W vectors (frames+1, 2N+2), in the work area.
        W carries the start score twice, at N (read by entries) and at 2N+1 (written by the blank
        update, which shifts [X | start] onto [B | start]); column N of the token scores is -inf,
        so that X's max copies the start score back to N.
        """
        g = self.graph
        n, wide, frames = g.num_nodes, g.wide, log_probs.shape[0]
        token, w, emit = self._work_area(frames)
        np.take(log_probs, g.labels, axis=1, out=emit, mode="clip")  # (frames, N)
        blank = log_probs[:, self.blank_id].tolist()  # (frames,)
        token[:, n] = -np.inf
        token[0, :n] = -np.inf
        w[0] = -np.inf
        w[0, n] = 0.0  # nothing emitted yet
        single, wide_entries = self._single, self._wide_entries
        into = np.empty(n, dtype=np.float32)  # entry scores of the frame
        into_single, into_wide = into[wide:], into[:wide]
        gathered = np.empty(wide_entries.shape, dtype=np.float32)
        # Views are made once per frame and handed on: the loop runs ~25 times per second of audio.
        now, now_x, before = w[0], w[0, : n + 1], token[0, :n]
        for t in range(frames):
            nxt, tok = w[t + 1], token[t + 1]
            tok_n, nxt_x, nxt_b = tok[:n], nxt[: n + 1], nxt[n + 1:]
            np.take(now, single, out=into_single, mode="clip")
            np.take(now, wide_entries, out=gathered, mode="clip").max(axis=0, out=into_wide)
            np.maximum(before, into, out=tok_n)  # stay on the token, or enter it
            tok_n += emit[t]
            np.add(now_x, blank[t], out=nxt_b)  # [X | start] + blank -> [B | start]
            np.maximum(tok, nxt_b, out=nxt_x)  # X = max(token, B); start copied back
            now, now_x, before = nxt, nxt_x, tok_n
        return token, w

    def _backtrace(self, token: np.ndarray, w: np.ndarray, node: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Tokens and their start frames of the best path that ends in ``node`` after the last frame."""
        g = self.graph
        n = g.num_nodes
        t = token.shape[0] - 1
        on_token = bool(token[t, node] >= w[t, n + 1 + node])
        tokens: list[int] = []
        starts: list[int] = []
        while t > 0 and node != n:
            t -= 1  # the state after frame t came from the one after frame t-1 (row t)
            if not on_token:  # the blank after `node` follows the node's token or its blank
                on_token = bool(token[t, node] >= w[t, n + 1 + node])
                continue
            members = g.entries[node]
            if len(members) == 1:
                source = members[0]
            else:
                source = members[int(np.argmax(w[t, list(members)]))]
            if token[t, node] >= w[t, source]:  # stayed on the token
                continue
            tokens.append(int(g.labels[node]))
            starts.append(t)
            if source == n:
                node = source
            elif source > n:
                node, on_token = source - n - 1, False
            else:
                node, on_token = source, bool(token[t, source] >= w[t, n + 1 + source])
        return tuple(reversed(tokens)), tuple(reversed(starts))
