"""Greedy and beam search over an ``Inference`` (a decoder with or without a KV cache).

Both take prompts of equal length (the decoder graphs have no padding mask: group prompts by
length) and return, per prompt, its hypotheses best first with the time each decoder call took.

- Greedy search takes the most likely token until EOS or ``max_new_tokens``; rows that finished
  leave the batch, so the decoder runs only on unfinished rows.
- Beam search follows whisper's BeamSearchDecoder (patience 1): each step keeps the
  ``beam_size`` best unfinished continuations of each input, a hypothesis that picks EOS is set
  aside, and an input is done once ``beam_size`` hypotheses have finished or ``max_new_tokens``
  is reached. Finished hypotheses (plus the unfinished ones when fewer than ``beam_size``
  finished) are ranked by ``sum_logprob / length ** length_penalty`` with length counting EOS.
  With ``beam_size=1`` it returns exactly what greedy search does.

Before each choice the logit filters run on each row's generated tokens, then a log-softmax.

A caller that ran the prompt itself (Whisper forces its start sequence token by token after
reading the language and no-speech probabilities off the first position) passes the last
position's logits as ``prefilled``; the search then starts from them instead of calling
``inference.prefill``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from tinymm.decoding.filters import (
    LogitFilter,
    apply_filters,
    build_filters,
    log_softmax,
)
from tinymm.decoding.inference import Inference
from tinymm.decoding.options import DecodingOptions

MS_PER_S = 1000.0


@dataclass(frozen=True)
class Hypothesis:
    """One decoded sequence."""

    tokens: tuple[int, ...]  # generated token ids, EOS excluded
    sum_logprob: float  # natural-log probability of the generated tokens, EOS included when finished
    score: float  # sum_logprob / length ** length_penalty (length = len(tokens) + finished)
    finished: bool  # True: ended with EOS; False: stopped by max_new_tokens

    @property
    def length(self) -> int:
        """Generated tokens, EOS included."""
        return len(self.tokens) + int(self.finished)

    @property
    def mean_logprob(self) -> float:
        """sum_logprob per generated token (EOS included): a confidence in (-inf, 0]."""
        return self.sum_logprob / max(self.length, 1)


@dataclass(frozen=True)
class Generation:
    """What ``generate`` returns for a batch of prompts."""

    hypotheses: tuple[tuple[Hypothesis, ...], ...]  # per prompt, best first (greedy: exactly one)
    prefill_ms: float  # the prompt pass and the choice of the first token
    step_ms: tuple[float, ...]  # each later decoder step with its token choice, in order

    @property
    def best(self) -> tuple[Hypothesis, ...]:
        """The best hypothesis of each prompt."""
        return tuple(hyps[0] for hyps in self.hypotheses)


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * MS_PER_S


def _score(sum_logprob: float, length: int, length_penalty: float) -> float:
    return sum_logprob / (max(length, 1) ** length_penalty)


def _check_prompts(prompt_ids: np.ndarray, max_new_tokens: int) -> np.ndarray:
    prompt_ids = np.asarray(prompt_ids)
    if prompt_ids.ndim != 2 or prompt_ids.shape[0] < 1 or prompt_ids.shape[1] < 1:
        raise ValueError(f"prompt_ids must be (batch, length) with both >= 1, got shape {prompt_ids.shape}")
    if not np.issubdtype(prompt_ids.dtype, np.integer):
        raise ValueError(f"prompt_ids must hold integer token ids, got dtype {prompt_ids.dtype}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
    return prompt_ids.astype(np.int64, copy=False)


def _first_logits(inference: Inference, prompt_ids: np.ndarray, prefilled: np.ndarray | None) -> np.ndarray:
    """(rows, V): ``inference.prefill(prompt_ids)``, or ``prefilled`` when the caller already ran the prompt."""
    if prefilled is None:
        return inference.prefill(prompt_ids)
    prefilled = np.asarray(prefilled)
    if prefilled.ndim != 2 or prefilled.shape[0] != prompt_ids.shape[0]:
        raise ValueError(
            f"prefilled logits must be (batch, V) with batch {prompt_ids.shape[0]} (one row per prompt), "
            f"got shape {prefilled.shape}"
        )
    return prefilled


def greedy_search(
    inference: Inference,
    prompt_ids: np.ndarray,
    *,
    eos_id: int,
    max_new_tokens: int,
    filters: Sequence[LogitFilter] = (),
    length_penalty: float = 1.0,
    prefilled: np.ndarray | None = None,
) -> Generation:
    """The most likely token at each step, for prompts (batch, T) int64; one hypothesis per prompt.

    prefilled: (batch, V) logits of the prompts' last position when the caller already ran them
    through ``inference`` (see the module docstring); None runs ``inference.prefill``.
    """
    prompt_ids = _check_prompts(prompt_ids, max_new_tokens)
    batch = prompt_ids.shape[0]
    tokens: list[list[int]] = [[] for _ in range(batch)]
    sums = np.zeros(batch, dtype=np.float64)
    finished = [False] * batch
    active = np.arange(batch)  # (rows,) prompt index of each decoder row
    step_ms: list[float] = []
    prefill_ms = 0.0
    last = np.zeros(0, dtype=np.int64)  # (rows,) the tokens just chosen, fed to the next step
    start = time.perf_counter()
    logits = _first_logits(inference, prompt_ids, prefilled)  # (rows, V)
    for step in range(max_new_tokens):
        if step > 0:
            start = time.perf_counter()
            logits = inference.step(last)
        logprobs = log_softmax(apply_filters(filters, logits, [tokens[i] for i in active], eos_id))
        choice = logprobs.argmax(axis=1)  # (rows,)
        for row, i in enumerate(active):
            sums[i] += logprobs[row, choice[row]]
            if choice[row] == eos_id:
                finished[i] = True
            else:
                tokens[i].append(int(choice[row]))
        keep = choice != eos_id
        if step == 0:
            prefill_ms = _ms_since(start)
        else:
            step_ms.append(_ms_since(start))
        if not keep.any() or step == max_new_tokens - 1:
            break
        if not keep.all():
            inference.select(np.flatnonzero(keep))
            active = active[keep]
        last = choice[keep]
    hypotheses = tuple(
        (Hypothesis(tuple(t), float(s), _score(float(s), len(t) + f, length_penalty), f),)
        for t, s, f in zip(tokens, sums, finished)
    )
    return Generation(hypotheses, prefill_ms, tuple(step_ms))


class _Beam(NamedTuple):
    tokens: tuple[int, ...]  # generated so far, no EOS
    sum_logprob: float
    row: int  # the decoder row holding this beam's state


def _extend(
    beams: list[_Beam], logprobs: np.ndarray, eos_id: int, beam_size: int, length_penalty: float
) -> tuple[list[_Beam], list[Hypothesis]]:
    """One input's step: the next live beams (their ``row`` is the parent's row) and new finished ones.

    logprobs: (rows, V) for the whole batch; beams index it by row.
    """
    scores = np.array([b.sum_logprob for b in beams])[:, None] + logprobs[[b.row for b in beams]]  # (n, V)
    vocab = scores.shape[1]
    flat = scores.ravel()
    order = np.argsort(-flat, kind="stable")[: 2 * beam_size]  # enough for beam_size non-EOS choices
    live: list[_Beam] = []
    done: list[Hypothesis] = []
    for index in order:
        total = float(flat[index])
        if not np.isfinite(total):
            break  # sorted: every later candidate is banned too
        parent, token = divmod(int(index), vocab)
        seq = beams[parent].tokens
        if token == eos_id:
            done.append(Hypothesis(seq, total, _score(total, len(seq) + 1, length_penalty), True))
        else:
            live.append(_Beam((*seq, token), total, beams[parent].row))
            if len(live) == beam_size:
                break
    return live, done


def beam_search(
    inference: Inference,
    prompt_ids: np.ndarray,
    *,
    eos_id: int,
    max_new_tokens: int,
    beam_size: int,
    filters: Sequence[LogitFilter] = (),
    length_penalty: float = 1.0,
    prefilled: np.ndarray | None = None,
) -> Generation:
    """Beam search for prompts (batch, T) int64; up to ``beam_size`` hypotheses per prompt, best first.

    prefilled: as greedy_search's.
    """
    prompt_ids = _check_prompts(prompt_ids, max_new_tokens)
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size={beam_size!r} must be a positive integer")
    batch = prompt_ids.shape[0]
    live: list[list[_Beam]] = [[_Beam((), 0.0, i)] for i in range(batch)]
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    running = list(range(batch))  # inputs still searching
    row_tokens: list[tuple[int, ...]] = [()] * batch  # generated tokens held by each decoder row
    step_ms: list[float] = []
    prefill_ms = 0.0
    last: list[int] = []  # the newest token of each decoder row, fed to the next step
    start = time.perf_counter()
    logits = _first_logits(inference, prompt_ids, prefilled)
    for step in range(max_new_tokens):
        if step > 0:
            start = time.perf_counter()
            logits = inference.step(np.array(last, dtype=np.int64))
        logprobs = log_softmax(apply_filters(filters, logits, row_tokens, eos_id))
        parents: list[int] = []
        last = []
        still: list[int] = []
        for i in running:
            beams, done = _extend(live[i], logprobs, eos_id, beam_size, length_penalty)
            finished[i].extend(done[: beam_size - len(finished[i])])
            live[i] = beams
            if len(finished[i]) >= beam_size or not beams or step == max_new_tokens - 1:
                continue
            still.append(i)
            moved = []
            for beam in beams:  # the beam's state moves from its parent's row to row len(parents)
                moved.append(beam._replace(row=len(parents)))
                parents.append(beam.row)
                last.append(beam.tokens[-1])
            live[i] = moved
        running = still
        if step == 0:
            prefill_ms = _ms_since(start)
        else:
            step_ms.append(_ms_since(start))
        if not running:
            break
        inference.select(np.array(parents, dtype=np.int64))
        row_tokens = [beam.tokens for i in running for beam in live[i]]
    hypotheses = []
    for i in range(batch):
        pool = list(finished[i])
        if len(pool) < beam_size:  # too few finished: unfinished hypotheses compete too
            pool += [
                Hypothesis(b.tokens, b.sum_logprob, _score(b.sum_logprob, len(b.tokens), length_penalty), False)
                for b in live[i]
            ]
        pool.sort(key=lambda h: -h.score)  # stable: ties keep the order they were found in
        hypotheses.append(tuple(pool[:beam_size]))
    return Generation(tuple(hypotheses), prefill_ms, tuple(step_ms))


def generate(
    inference: Inference, prompt_ids: np.ndarray, *, eos_id: int, max_new_tokens: int, options: DecodingOptions
) -> Generation:
    """Greedy search when ``options.beam_size`` is 1, beam search otherwise, with the options' filters.

    prompt_ids: (batch, T) int64, equal-length prompts. ``options.max_new_tokens`` is ignored
    here: the caller resolves it (bundle default, context room) and passes ``max_new_tokens``.
    """
    filters = build_filters(options)
    if options.beam_size == 1:
        return greedy_search(
            inference, prompt_ids, eos_id=eos_id, max_new_tokens=max_new_tokens, filters=filters,
            length_penalty=options.length_penalty,
        )
    return beam_search(
        inference, prompt_ids, eos_id=eos_id, max_new_tokens=max_new_tokens, beam_size=options.beam_size,
        filters=filters, length_penalty=options.length_penalty,
    )
