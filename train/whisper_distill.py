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

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train.loop import teacher_anneal_scale
from train.losses import hidden_match_loss
from train.models.layers import key_padding_mask

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


def batch_states(states: Sequence[np.ndarray | None], factor: int, frames: int,
                 width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled teacher states of a batch, padded or cut to the student's ``frames``: (B, frames, width)
    float32 and a (B, frames) bool mask of the frames the teacher covers (none for a None entry:
    a clip the teacher did not label)."""
    pooled = [None if s is None else pool_states(s, factor) for s in states]
    out = torch.zeros(len(pooled), frames, width)
    mask = torch.zeros(len(pooled), frames, dtype=torch.bool)
    for i, p in enumerate(pooled):
        if p is None:
            continue
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
             teacher_states: Sequence[np.ndarray | None]) -> torch.Tensor:
        """Squared error (mean over the teacher's width) of the projected (B, T', D_s) student states
        against the pooled, layer-normed teacher states, summed over the frames both cover and
        divided by all valid student frames (``student_valid`` (B, T') bool): a clip without
        teacher states adds frames but no error, so the term is a mean over the batch's frames, as
        the recipe's DDP scaling expects (train/speech_train.py, MEAN_OVER)."""
        target, covered = batch_states(teacher_states, self.factor, student_hidden.shape[1], self.teacher_dim)
        target = F.layer_norm(target.to(student_hidden.device), (self.teacher_dim,))
        counted = student_valid & covered.to(student_valid.device)
        # hidden_match_loss is the mean over the covered frames; rescale it to a mean over all valid ones.
        share = counted.sum() / student_valid.sum().clamp(min=1)
        return hidden_match_loss(student_hidden, target, self.projection, counted) * share


@dataclass(frozen=True)
class WhisperDistillConfig:
    """Loss weights of the Whisper-distilled student: ctc * CTC + state * MSE(Whisper's states)."""

    ctc_weight: float = 1.0
    state_weight: float = 0.5
    anneal: bool = True  # the state term falls linearly to 0 over the stage, as DistillConfig.anneal
    student_layer: int = -1  # the student block whose output is matched (-1: the last)


class WhisperDistiller:
    """The Whisper side of a student's loss, for ``train_stage``: the teacher ran beforehand
    (train/whisper_teacher.py), so a batch brings its states (``FeatureSet.teacher_states``) and
    only the projection trains here. The sequence-level term is in the batch's CTC targets
    (``attach_teacher_labels``)."""

    def __init__(self, student: Any, teacher_dim: int, cfg: WhisperDistillConfig = WhisperDistillConfig()) -> None:
        self.cfg = cfg
        self.matcher = WhisperStateMatcher(student.d_model, teacher_dim, student.frame_ms)
        self.projections = nn.ModuleList([self.matcher])  # trained with the student, synced by DDP

    def to(self, device: torch.device) -> WhisperDistiller:
        return self  # nothing to move: the teacher ran beforehand

    def losses(self, out: Any, features: torch.Tensor, lengths: torch.Tensor,
               teacher_states: Sequence[np.ndarray | None] | None) -> dict[str, torch.Tensor]:
        if teacher_states is None:
            raise ValueError("a Whisper-distilled stage needs FeatureSet.teacher_states (attach_teacher_labels)")
        hidden = out.hidden_states[self.cfg.student_layer]
        return {"whisper": self.matcher.loss(hidden, key_padding_mask(out.lengths, hidden.shape[1]), teacher_states)}

    def teacher_scale(self, progress: float) -> float:
        return teacher_anneal_scale(self.cfg.anneal, progress)

    def total(self, losses: dict[str, torch.Tensor], progress: float = 0.0) -> torch.Tensor:
        return self.cfg.ctc_weight * losses["ctc"] + self.teacher_scale(progress) * self.cfg.state_weight * losses["whisper"]


def attach_teacher_labels(data: Any, labels: Mapping[int, tuple[str, np.ndarray]], tokenizer: Any,
                          use_words: bool) -> Any:
    """``data`` (a FeatureSet) with the teacher's states for the clips in ``labels`` (clip index ->
    (words, states), ``whisper_teacher.read_labels``) and, when ``use_words``, the teacher's words as
    those clips' CTC targets (the sequence-level term: the clips are treated as unlabeled). The
    reference transcripts stay for scoring."""
    states = list(data.teacher_states) if data.teacher_states is not None else [None] * len(data)
    targets = list(data.labels)
    for index, (words, clip_states) in labels.items():
        if not 0 <= index < len(data):
            raise ValueError(f"teacher label for clip {index}, but the set has {len(data)} clips")
        states[index] = clip_states
        if use_words:
            targets[index] = list(tokenizer.encode(words))
    return dataclasses.replace(data, labels=targets, teacher_states=states)
