"""Distillation losses shared by the speech and the vision-language recipes.

- ``kd_logit_loss``: Hinton's soft-target loss, KL(teacher || student) at a temperature, x T².
- ``hidden_match_loss``: MSE between a learned projection of student states and teacher states.
- ``ctc_posterior_kd_loss``: frame-level KD on CTC posteriors, padded frames masked out.
- ``affinity_distill_loss``: TinyCLIP affinity mimicking, KL between the teacher's and the
  student's image-text similarity distributions, image->text and text->image.

The teacher side never receives gradients (it is detached). Masks are bool or 0/1 float with the
leading shape of the inputs (1 = a position that counts); masked means divide by the number of
counted positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.models.layers import key_padding_mask


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} must be positive")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` (...) over positions where ``mask`` (...) is set; 0 when none is."""
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def kd_logit_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) x T², summed over classes, masked mean.

    Args:
        student_logits: (..., V) float.
        teacher_logits: (..., V) float, same shape; detached here.
        temperature: T > 0; the T² factor keeps gradient magnitudes comparable across T.
        mask: (...) bool or 0/1 float, 1 = position counts; None counts all.

    Returns:
        A scalar tensor, 0 when the two distributions are equal.
    """
    _check_temperature(temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} != teacher logits {tuple(teacher_logits.shape)}")
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)  # (...)
    return _masked_mean(kl, mask) * temperature**2


def hidden_match_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    projection: nn.Module,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE between ``projection(student_hidden)`` and the teacher's states, masked mean over positions.

    Args:
        student_hidden: (..., D_s) float.
        teacher_hidden: (..., D_t) float; detached here.
        projection: maps D_s -> D_t (e.g. nn.Linear(D_s, D_t)); trained with the student.
        mask: (...) bool or 0/1 float, 1 = position counts; None counts all.

    Returns:
        A scalar tensor: squared error averaged over D_t and the counted positions.
    """
    projected = projection(student_hidden).float()  # (..., D_t)
    target = teacher_hidden.detach().float()
    if projected.shape != target.shape:
        raise ValueError(f"projected student states {tuple(projected.shape)} != teacher states {tuple(target.shape)}")
    return _masked_mean((projected - target).square().mean(dim=-1), mask)


def ctc_posterior_kd_loss(
    student_log_probs: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    lengths: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Frame-level KD on CTC posteriors: ``kd_logit_loss`` over each clip's valid frames.

    Log-probabilities are logits up to a per-frame constant, so the temperature applies to them
    directly. Teacher and student must share the frame rate (the same subsampling).

    Args:
        student_log_probs: (B, T, V) float.
        teacher_log_probs: (B, T, V) float; detached here.
        lengths: (B,) int valid frames per clip; frames at or past a clip's length are ignored.
        temperature: T > 0.

    Returns:
        A scalar tensor.
    """
    if student_log_probs.ndim != 3:
        raise ValueError(f"CTC posteriors must be (B, T, V), got {tuple(student_log_probs.shape)}")
    mask = key_padding_mask(lengths.to(student_log_probs.device), student_log_probs.shape[1])  # (B, T)
    return kd_logit_loss(student_log_probs, teacher_log_probs, temperature, mask)


def affinity_distill_loss(
    student_img: torch.Tensor,
    student_txt: torch.Tensor,
    teacher_img: torch.Tensor,
    teacher_txt: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """TinyCLIP affinity mimicking: match the student's image-text similarity distributions to the teacher's.

    Embeddings are L2-normalized; similarities are cosine / temperature (a CLIP-style temperature
    such as 0.07, not a KD temperature, so there is no T² factor). The loss is the mean of
    KL(teacher || student) over the rows (image -> text) and over the columns (text -> image).

    Args:
        student_img: (N, D_s) student image embeddings.
        student_txt: (N, D_s) student text embeddings (pair i matches image i).
        teacher_img: (N, D_t) teacher image embeddings; detached here.
        teacher_txt: (N, D_t) teacher text embeddings; detached here.
        temperature: > 0.

    Returns:
        A scalar tensor, 0 when the student's similarity matrix equals the teacher's.
    """
    _check_temperature(temperature)
    n = student_img.shape[0]
    for name, t in (("student_txt", student_txt), ("teacher_img", teacher_img), ("teacher_txt", teacher_txt)):
        if t.ndim != 2 or t.shape[0] != n:
            raise ValueError(f"{name} is {tuple(t.shape)}; every input must be (N={n}, D)")

    def similarities(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:  # (N, N)
        return F.normalize(img.float(), dim=-1) @ F.normalize(txt.float(), dim=-1).T / temperature

    s = similarities(student_img, student_txt)
    t = similarities(teacher_img.detach(), teacher_txt.detach())
    image_to_text = kd_logit_loss(s, t, 1.0)
    text_to_image = kd_logit_loss(s.T, t.T, 1.0)
    return 0.5 * (image_to_text + text_to_image)
