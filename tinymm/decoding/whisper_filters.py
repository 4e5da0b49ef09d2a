"""Whisper's logit filters, as openai/whisper's decoding.py (and transformers' Whisper processors) apply them.

Each follows the ``LogitFilter`` protocol of filters.py: it edits (rows, V) float32 logits in
place, given each row's generated tokens (the start sequence excluded, so "the first sampled
step" is a row with no generated token: whisper's ``tokens.shape[1] == sample_begin``). They
run, in this order, before the log-softmax:

- ``SuppressBlank``: at the first sampled step, ban the blank (the tokenizer's encoding of " ")
  and ``<|endoftext|>``, so a transcript never starts empty;
- ``SuppressTokens``: ban the checkpoint's ``suppress_tokens`` (non-speech symbols) and the
  control tokens (task, start and no-speech tokens) at every step;
- ``ApplyTimestampRules`` (timestamps requested): timestamps come in pairs except right before
  ``<|endoftext|>``; they never decrease and each segment has a nonzero length; the first token
  is a timestamp no later than ``max_initial_timestamp``; and when the total probability of the
  timestamps beats every single text token, a timestamp is forced.

``whisper_filters`` assembles them from the bundle's ``WhisperTokens`` and the tokenizer.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from tinymm.decoding.filters import BANNED, LogitFilter, log_softmax
from tinymm.decoding.whisper_tokens import WhisperTokens
from tinymm.preprocess.tokenizer import Tokenizer


class SuppressTokens:
    """Ban ``token_ids`` at every step."""

    def __init__(self, token_ids: Iterable[int], vocab_size: int) -> None:
        ids = sorted({int(i) for i in token_ids})
        outside = [i for i in ids if not 0 <= i < vocab_size]
        if outside:
            raise ValueError(f"suppress_tokens {outside[:5]} are outside the vocabulary [0, {vocab_size})")
        self.token_ids = np.asarray(ids, dtype=np.int64)

    def apply(self, logits: np.ndarray, generated: Sequence[Sequence[int]]) -> None:
        if self.token_ids.size:
            logits[:, self.token_ids] = BANNED


class SuppressBlank:
    """At a row's first sampled step, ban the blank token(s) and ``<|endoftext|>`` (whisper's SuppressBlank)."""

    def __init__(self, tokenizer: Tokenizer, eot: int) -> None:
        self.token_ids = np.asarray(sorted({*tokenizer.encode(" "), eot}), dtype=np.int64)

    def apply(self, logits: np.ndarray, generated: Sequence[Sequence[int]]) -> None:
        first = [row for row, tokens in enumerate(generated) if not tokens]
        if first:
            logits[np.ix_(first, self.token_ids)] = BANNED


class ApplyTimestampRules:
    """Whisper's timestamp grammar (see the module docstring); rows are decoded independently."""

    def __init__(self, tokens: WhisperTokens) -> None:
        self.eot = tokens.eot
        self.no_timestamps = tokens.no_timestamps
        self.begin = tokens.timestamp_begin
        self.max_initial_index = tokens.max_initial_timestamp_index

    def apply(self, logits: np.ndarray, generated: Sequence[Sequence[int]]) -> None:
        begin = self.begin
        logits[:, self.no_timestamps] = BANNED  # that choice was made by the start sequence
        for row, seq in enumerate(generated):
            last_was_timestamp = len(seq) >= 1 and seq[-1] >= begin
            penultimate_was_timestamp = len(seq) < 2 or seq[-2] >= begin
            if last_was_timestamp:
                if penultimate_was_timestamp:  # a pair just closed (or the first token): text must follow
                    logits[row, begin:] = BANNED
                else:  # a segment's end timestamp is due: no text token
                    logits[row, : self.eot] = BANNED
            stamps = [t for t in seq if t >= begin]
            if stamps:
                # Timestamps never decrease; a new segment must not start where the last one did.
                last = stamps[-1] if last_was_timestamp and not penultimate_was_timestamp else stamps[-1] + 1
                logits[row, begin:last] = BANNED
            if not seq:  # the first sampled token is a timestamp, at most max_initial_timestamp
                logits[row, :begin] = BANNED
                if self.max_initial_index is not None:
                    logits[row, begin + self.max_initial_index + 1 :] = BANNED
        with np.errstate(divide="ignore", invalid="ignore"):
            logprobs = log_softmax(logits)  # (rows, V), after the rules above
            top = logprobs[:, begin:].max(axis=1, keepdims=True)
            stamp_logprob = np.log(np.exp(logprobs[:, begin:] - top).sum(axis=1)) + top[:, 0]  # logsumexp
        text_best = logprobs[:, :begin].max(axis=1)
        forced = np.isfinite(stamp_logprob) & (stamp_logprob > text_best)
        logits[forced, :begin] = BANNED


def whisper_filters(
    tokens: WhisperTokens, tokenizer: Tokenizer, suppress_tokens: Iterable[int], *, timestamps: bool
) -> tuple[LogitFilter, ...]:
    """SuppressBlank, SuppressTokens (``suppress_tokens`` and the control tokens) and, with
    ``timestamps``, ApplyTimestampRules: the filters openai/whisper's DecodingTask builds."""
    filters: list[LogitFilter] = [
        SuppressBlank(tokenizer, tokens.eot),
        SuppressTokens([*suppress_tokens, *tokens.control_tokens], tokens.vocab_size),
    ]
    if timestamps:
        filters.append(ApplyTimestampRules(tokens))
    return tuple(filters)
