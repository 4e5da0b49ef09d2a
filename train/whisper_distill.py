"""Distillation terms from a Whisper teacher's pseudo-labels (train/whisper_teacher.py) for the CTC student.

Two terms, on top of the student's CTC loss:

- sequence level: the teacher's normalised transcript (``TeacherLabel.words``) is the CTC target
  of a clip that has no transcript of its own, or of an augmented copy the dataset's transcript
  may no longer fit; ``ctc_targets`` tokenises the words with the student's tokenizer;
- hidden states: the student's last encoder states, through a learned linear projection, match
  the teacher's encoder states (layer-normed, as for the project's own teacher). Whisper's states
  run at 50 Hz (20 ms); the student's at 1000 / ``SpeechConfig.frame_ms`` Hz (40 ms for two
  subsampling convs), so ``pool_states`` averages each ``frame_ms / 20`` consecutive teacher frames
  into one (Whisper's frame k covers samples [320k, 320k + 320), the student's frame j the
  teacher frames [f*j, f*j + f)); frames past either side's end are masked.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train.losses import hidden_match_loss

WHISPER_FRAME_MS = 20  # one encoder state per 20 ms (50 Hz)


def pool_factor(student_frame_ms: int) -> int:
    """Teacher frames per student frame; ValueError when the rates do not divide."""
    if student_frame_ms % WHISPER_FRAME_MS:
        raise ValueError(f"a student frame of {student_frame_ms} ms is not a whole number of Whisper's "
                         f"{WHISPER_FRAME_MS} ms frames")
    return student_frame_ms // WHISPER_FRAME_MS


def pool_states(states: np.ndarray, factor: int) -> np.ndarray:
    """(T_w, D) teacher states -> (ceil(T_w / factor), D) float32 means of ``factor`` consecutive frames
    (the last group may hold fewer)."""
    frames, width = states.shape
    groups = -(-frames // factor)
    padded = np.zeros((groups * factor, width), np.float32)
    padded[:frames] = states
    counts = np.minimum(factor, frames - np.arange(groups) * factor).astype(np.float32)  # (groups,)
    return padded.reshape(groups, factor, width).sum(axis=1) / counts[:, None]


def batch_states(states: Sequence[np.ndarray], factor: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled teacher states of a batch, padded or cut to the student's ``frames``: (B, frames, D)
    float32 and a (B, frames) bool mask of the frames the teacher covers."""
    pooled = [pool_states(s, factor) for s in states]
    width = pooled[0].shape[1]
    out = torch.zeros(len(pooled), frames, width)
    mask = torch.zeros(len(pooled), frames, dtype=torch.bool)
    for i, p in enumerate(pooled):
        n = min(frames, p.shape[0])
        out[i, :n] = torch.from_numpy(p[:n])
        mask[i, :n] = True
    return out, mask


def ctc_targets(tokenizer: Any, words: Sequence[str]) -> list[list[int]]:
    """The teacher's words as the student's CTC label sequences (its tokenizer's ``encode``)."""
    return [list(tokenizer.encode(w)) for w in words]


class WhisperStateMatcher(nn.Module):
    """The learned projection of the student's last encoder states onto Whisper's, and its loss."""

    def __init__(self, student_dim: int, teacher_dim: int, student_frame_ms: int) -> None:
        super().__init__()
        self.factor = pool_factor(student_frame_ms)
        self.teacher_dim = teacher_dim
        self.projection = nn.Linear(student_dim, teacher_dim)

    def loss(self, student_hidden: torch.Tensor, student_valid: torch.Tensor,
             teacher_states: Sequence[np.ndarray]) -> torch.Tensor:
        """MSE of the projected (B, T', D_s) student states against the pooled, layer-normed teacher
        states, over the frames both cover (``student_valid`` (B, T') bool)."""
        target, covered = batch_states(teacher_states, self.factor, student_hidden.shape[1])
        target = F.layer_norm(target.to(student_hidden.device), (self.teacher_dim,))
        return hidden_match_loss(student_hidden, target, self.projection, student_valid & covered.to(student_valid.device))
