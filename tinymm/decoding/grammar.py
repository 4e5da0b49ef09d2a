"""CTC decoding constrained to a closed grammar: the best path among the grammar's sentences.

A character CTC model trained on a closed grammar (such as the robot commands of tinymm.robot)
still merges or drops words ("nowtake the red star", "where is the black located"); a per-word
lexicon cannot repair that, but a decoder that only considers the grammar's sentences can, as
Kaldi and Vosk do in grammar mode. The grammar
(``tinymm.decoding.grammar_graph.Grammar``, from its domain such as ``tinymm.robot.grammar``) is
compiled once into a small token graph (``GrammarGraph``, in grammar_graph.py).

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
from typing import TYPE_CHECKING

import numpy as np

from tinymm.decoding.grammar_graph import Grammar, GrammarGraph
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
