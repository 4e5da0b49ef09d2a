"""Logit filters: small rules that change next-token logits before a token is chosen.

A filter edits a (rows, vocab) float32 logits array in place, given the tokens each row has
generated so far (the prompt is not counted, so a caption prompt such as "caption:" is never
penalised). Filters run in the order ``build_filters`` returns them, before the log-softmax, so
greedy and beam search see the same filtered distribution.

If filters ban every token of a row, ``apply_filters`` re-opens the end-of-sequence token so
that the row can still finish.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from tinymm.decoding.options import DecodingOptions

BANNED = -np.inf  # the logit of a token a filter forbids


class LogitFilter(Protocol):
    def apply(self, logits: np.ndarray, generated: Sequence[Sequence[int]]) -> None:
        """Edit logits (rows, vocab) float32 in place; generated[r] holds row r's tokens so far."""
        ...


class RepetitionPenalty:
    """CTRL's repetition penalty (Keskar et al. 2019), as Hugging Face implements it.

    For every token a row has generated, a positive logit is divided by ``penalty`` and a
    negative one multiplied by it, so the token becomes less likely whatever its sign.
    """

    def __init__(self, penalty: float) -> None:
        if penalty <= 0:
            raise ValueError(f"repetition penalty={penalty!r} must be > 0")
        self.penalty = float(penalty)

    def apply(self, logits: np.ndarray, generated: Sequence[Sequence[int]]) -> None:
        for row, tokens in enumerate(generated):
            if not tokens:
                continue
            seen = np.unique(np.asarray(tokens, dtype=np.int64))
            values = logits[row, seen]
            logits[row, seen] = np.where(values > 0, values / self.penalty, values * self.penalty)


class NoRepeatNGram:
    """Forbid the token that would repeat an n-gram the row already generated."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"no-repeat n-gram size={size!r} must be >= 1")
        self.size = size

    def banned(self, tokens: Sequence[int]) -> set[int]:
        """Tokens that, appended to ``tokens``, would form an n-gram already in ``tokens``."""
        n = self.size
        prefix = tuple(tokens[len(tokens) - n + 1 :])  # the last n - 1 tokens
        return {tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i : i + n - 1]) == prefix}

    def apply(self, logits: np.ndarray, generated: Sequence[Sequence[int]]) -> None:
        for row, tokens in enumerate(generated):
            banned = self.banned(list(tokens))
            if banned:
                logits[row, sorted(banned)] = BANNED


def build_filters(options: DecodingOptions) -> tuple[LogitFilter, ...]:
    """The filters ``options`` asks for, in the order they apply (none for the defaults)."""
    filters: list[LogitFilter] = []
    if options.repetition_penalty != 1.0:
        filters.append(RepetitionPenalty(options.repetition_penalty))
    if options.no_repeat_ngram_size > 0:
        filters.append(NoRepeatNGram(options.no_repeat_ngram_size))
    return tuple(filters)


def apply_filters(
    filters: Sequence[LogitFilter], logits: np.ndarray, generated: Sequence[Sequence[int]], eos_id: int
) -> np.ndarray:
    """Run ``filters`` on a float32 copy of logits (rows, vocab); returns the filtered copy."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if not filters:
        return out
    for logit_filter in filters:
        logit_filter.apply(out, generated)
    dead = ~np.isfinite(out).any(axis=1)
    if dead.any() and 0 <= eos_id < out.shape[1]:
        out[dead, eos_id] = 0.0
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (rows, vocab) logits; banned (-inf) entries stay -inf."""
    top = logits.max(axis=1, keepdims=True)
    shifted = logits - top
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
