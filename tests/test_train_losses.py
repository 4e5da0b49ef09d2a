"""Distillation losses on hand-made inputs: zero when student equals teacher, positive otherwise,
masks respected, gradients reaching the student (and its projection) but never the teacher."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch", reason="the distillation losses need torch (pip install 'tinymm[train]')")

from train.losses import affinity_distill_loss, ctc_posterior_kd_loss, hidden_match_loss, kd_logit_loss  # noqa: E402

pytestmark = pytest.mark.requires_torch


def _logits(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_kd_logit_loss_is_zero_for_equal_logits_and_positive_otherwise() -> None:
    teacher = _logits(3, 5, 7)
    assert float(kd_logit_loss(teacher.clone(), teacher, temperature=2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_logit_loss(_logits(3, 5, 7, seed=1), teacher, temperature=2.0)) > 0.01


def test_kd_logit_loss_matches_hand_computation_with_t_squared() -> None:
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0) * 2.0, 0.0]])  # at T = 2: teacher probs (0.75, 0.25)
    expected = (0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)) * 4.0
    assert float(kd_logit_loss(student, teacher, temperature=2.0)) == pytest.approx(expected, rel=1e-5)


def test_kd_logit_loss_ignores_masked_positions() -> None:
    teacher = _logits(2, 4, 6)
    student = teacher.clone()
    student[1, 2:] = _logits(2, 6, seed=3)  # differs only where the mask is off
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[1, 2:] = False
    assert float(kd_logit_loss(student, teacher, 1.5, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_logit_loss(student, teacher, 1.5)) > 0.0


def test_kd_logit_loss_gradient_reaches_student_only() -> None:
    student = _logits(4, 6, seed=1).requires_grad_()
    teacher = _logits(4, 6).requires_grad_()
    kd_logit_loss(student, teacher, 2.0).backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    assert teacher.grad is None


def test_kd_logit_loss_refuses_bad_temperature_and_shapes() -> None:
    with pytest.raises(ValueError, match="temperature"):
        kd_logit_loss(_logits(2, 3), _logits(2, 3), 0.0)
    with pytest.raises(ValueError, match="teacher logits"):
        kd_logit_loss(_logits(2, 3), _logits(2, 4), 1.0)


def test_hidden_match_loss_through_projection() -> None:
    teacher = _logits(2, 5, 8)
    identity = torch.nn.Linear(8, 8, bias=False)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(8))
    assert hidden_match_loss(teacher.clone(), teacher, identity).item() == pytest.approx(0.0, abs=1e-7)

    projection = torch.nn.Linear(4, 8)
    student = _logits(2, 5, 4, seed=2).requires_grad_()
    loss = hidden_match_loss(student, teacher, projection)
    assert float(loss.detach()) > 0
    loss.backward()
    assert float(projection.weight.grad.abs().sum()) > 0 and float(student.grad.abs().sum()) > 0


def test_hidden_match_loss_mask_and_shape_check() -> None:
    teacher = _logits(1, 4, 3)
    student = teacher.clone()
    student[0, 3] += 5.0
    mask = torch.tensor([[1, 1, 1, 0]])
    assert float(hidden_match_loss(student, teacher, torch.nn.Identity(), mask)) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="teacher states"):
        hidden_match_loss(_logits(1, 4, 3), _logits(1, 4, 5), torch.nn.Identity())


def test_ctc_posterior_kd_loss_counts_only_valid_frames() -> None:
    teacher = torch.log_softmax(_logits(2, 6, 5), dim=-1)
    student = teacher.clone()
    student[0, 4:] = torch.log_softmax(_logits(2, 5, seed=4), dim=-1)  # past clip 0's 4 valid frames
    lengths = torch.tensor([4, 6])
    assert float(ctc_posterior_kd_loss(student, teacher, lengths, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(ctc_posterior_kd_loss(student, teacher, torch.tensor([6, 6]), 2.0)) > 0.0


def test_affinity_distill_loss() -> None:
    img, txt = _logits(4, 8), _logits(4, 8, seed=1)
    # Similarities use normalized embeddings, so a rescaled copy of the teacher is a perfect student.
    assert float(affinity_distill_loss(img * 3.0, txt * 0.5, img, txt, 0.07)) == pytest.approx(0.0, abs=1e-5)
    # A student of another width (D_s != D_t) is fine: only the (N, N) similarities are compared.
    student_img = _logits(4, 3, seed=2).requires_grad_()
    student_txt = _logits(4, 3, seed=3).requires_grad_()
    loss = affinity_distill_loss(student_img, student_txt, img, txt, 0.07)
    assert float(loss.detach()) > 0.01
    loss.backward()
    assert float(student_img.grad.abs().sum()) > 0 and float(student_txt.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="teacher_txt"):
        affinity_distill_loss(student_img, student_txt, img, txt[:3], 0.07)
