"""The Whisper distillation terms: 50 Hz teacher states pooled to the student's frame rate, masked
where either side ends, matched through a learned projection; teacher words as CTC targets."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the training tier needs torch (pip install 'tinymm[train]')")

from train.whisper_distill import WhisperStateMatcher, batch_states, ctc_targets, pool_factor, pool_states  # noqa: E402


def test_states_are_averaged_in_groups_of_the_frame_ratio() -> None:
    states = np.arange(10, dtype=np.float16).reshape(5, 2)  # 5 frames of 20 ms
    pooled = pool_states(states, 2)  # 40 ms student frames
    np.testing.assert_allclose(pooled, [[1, 2], [5, 6], [8, 9]])  # the last group holds one frame
    assert pool_factor(40) == 2 and pool_factor(80) == 4
    with pytest.raises(ValueError, match="whole number"):
        pool_factor(30)


def test_a_batch_is_padded_or_cut_to_the_student_frames_with_a_mask() -> None:
    short, long = np.ones((3, 4), np.float16), np.ones((12, 4), np.float16)
    out, mask = batch_states([short, long], 2, frames=4)
    assert out.shape == (2, 4, 4) and mask.tolist() == [[True, True, False, False], [True] * 4]
    assert float(out[0, 2:].abs().sum()) == 0.0


def test_the_matcher_learns_a_projection_onto_the_teacher_states() -> None:
    torch.manual_seed(0)
    matcher = WhisperStateMatcher(student_dim=8, teacher_dim=6, student_frame_ms=40)
    student = torch.randn(2, 5, 8)
    mapping = torch.randn(8, 6)
    teacher = [np.repeat((student[i] @ mapping).numpy(), 2, axis=0).astype(np.float16) for i in range(2)]
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    optimizer = torch.optim.Adam(matcher.parameters(), lr=0.05)
    first = float(matcher.loss(student, valid, teacher))
    for _ in range(300):
        optimizer.zero_grad()
        loss = matcher.loss(student, valid, teacher)
        loss.backward()
        optimizer.step()
    assert float(loss) < 0.05 * first  # a linear map of the student's states is learnable


def test_teacher_words_become_ctc_labels() -> None:
    class Chars:
        def encode(self, text):
            return [ord(c) - 96 for c in text.replace(" ", "")]

    assert ctc_targets(Chars(), ["go ab", "c"]) == [[7, 15, 1, 2], [3]]
