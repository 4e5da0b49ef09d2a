"""CTC greedy decoding for the speech encoder's per-frame log-probabilities.

Best path: the most likely label of every valid frame, then repeats merged and blanks removed
("hh_e_ll_llo" -> "hello"). A label repeated across a blank is kept twice ("l_l" -> "ll").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CTCHypothesis:
    """The best path of one clip."""

    tokens: tuple[int, ...]  # label ids, repeats merged, blanks removed
    frames: tuple[int, ...]  # the output frame where each token starts, same length as tokens
    confidence: float  # geometric mean over valid frames of the best label's probability, in (0, 1]
    num_frames: int  # valid output frames that were decoded


def ctc_greedy_decode(log_probs: np.ndarray, lengths: np.ndarray, blank_id: int) -> list[CTCHypothesis]:
    """Best-path decoding of a batch.

    Args:
        log_probs: (batch, frames, vocab) float log-probabilities (log-softmax output).
        lengths: (batch,) int, valid frames of each row (frames past it are padding).
        blank_id: the CTC blank label.

    Returns:
        One CTCHypothesis per row, in order.
    """
    log_probs = np.asarray(log_probs)
    lengths = np.asarray(lengths).reshape(-1)
    if log_probs.ndim != 3:
        raise ValueError(f"log_probs must be (batch, frames, vocab), got shape {log_probs.shape}")
    if lengths.shape[0] != log_probs.shape[0]:
        raise ValueError(f"lengths has {lengths.shape[0]} rows but log_probs has {log_probs.shape[0]}")
    if not 0 <= blank_id < log_probs.shape[2]:
        raise ValueError(f"blank_id={blank_id} is outside the vocabulary of {log_probs.shape[2]} labels")
    best = log_probs.argmax(axis=2)  # (batch, frames)
    best_logp = np.take_along_axis(log_probs, best[..., None], axis=2)[..., 0]  # (batch, frames)
    out = []
    for row in range(log_probs.shape[0]):
        n = int(np.clip(lengths[row], 0, log_probs.shape[1]))
        path = best[row, :n]
        starts = np.ones(n, dtype=bool)
        starts[1:] = path[1:] != path[:-1]  # first frame of each run of one label
        keep = np.flatnonzero(starts & (path != blank_id))
        confidence = math.exp(float(best_logp[row, :n].mean())) if n else 0.0
        out.append(CTCHypothesis(tuple(int(t) for t in path[keep]), tuple(int(f) for f in keep), confidence, n))
    return out
