"""The Whisper distillation terms: 50 Hz teacher states pooled to the student's frame rate, masked
where either side ends, matched through a learned projection; teacher words as CTC targets."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the training tier needs torch (pip install 'tinymm[train]')")

from train.models.speech import SpeechConfig  # noqa: E402
from train.speech_features import FeatureSet  # noqa: E402
from train.whisper_distill import (WhisperDistillConfig, WhisperDistiller, WhisperStateMatcher,  # noqa: E402
                                   attach_teacher_labels, batch_states, ctc_targets, pool_factor, pool_states)


def test_states_are_averaged_in_groups_of_the_frame_ratio() -> None:
    states = np.arange(10, dtype=np.float16).reshape(5, 2)  # 5 frames of 20 ms
    pooled = pool_states(states, 2)  # 40 ms student frames
    np.testing.assert_allclose(pooled, [[1, 2], [5, 6], [8, 9]])  # the last group holds one frame
    assert pool_factor(40) == 2 and pool_factor(80) == 4
    with pytest.raises(ValueError, match="whole number"):
        pool_factor(30)


def test_a_batch_is_padded_or_cut_to_the_student_frames_with_a_mask() -> None:
    short, long = np.ones((3, 4), np.float16), np.ones((12, 4), np.float16)
    out, mask = batch_states([short, long, None], 2, frames=4, width=4)
    assert out.shape == (3, 4, 4) and mask.tolist() == [[True, True, False, False], [True] * 4, [False] * 4]
    assert float(out[0, 2:].abs().sum()) == 0.0 and float(out[2].abs().sum()) == 0.0


def test_an_unlabelled_clip_adds_frames_but_no_error() -> None:
    """The state term is a sum over covered frames / all valid frames (DDP's "frames" mean)."""
    torch.manual_seed(0)
    matcher = WhisperStateMatcher(student_dim=4, teacher_dim=4, student_frame_ms=40)
    student = torch.randn(2, 3, 4)
    valid = torch.ones(2, 3, dtype=torch.bool)
    states = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float16)
    alone = float(matcher.loss(student[:1], valid[:1], [states]).detach())
    assert float(matcher.loss(student, valid, [states, None]).detach()) == pytest.approx(alone / 2, rel=1e-5)
    assert float(matcher.loss(student, valid, [None, None]).detach()) == 0.0


def test_attached_labels_give_states_and_optionally_the_teachers_words() -> None:
    class Chars:
        def encode(self, text):
            return [ord(c) - 96 for c in text.replace(" ", "")]

    data = FeatureSet([np.zeros((2, 4), np.float16)] * 3, ["ab", "cd", "ef"], [None] * 3, [[1, 2], [3, 4], [5, 6]])
    states = np.ones((4, 2), np.float16)
    kept = attach_teacher_labels(data, {1: ("zz", states)}, Chars(), use_words=False)
    assert kept.labels == data.labels and kept.teacher_states[1] is states and kept.teacher_states[0] is None
    taught = attach_teacher_labels(data, {1: ("zz", states)}, Chars(), use_words=True)
    assert taught.labels[1] == [26, 26] and taught.transcripts == data.transcripts  # scoring keeps the reference
    both = FeatureSet.concat([data, taught])
    assert len(both) == 6 and both.teacher_states[:3] == [None] * 3 and both.teacher_states[4] is states
    with pytest.raises(ValueError, match="has 3 clips"):
        attach_teacher_labels(data, {7: ("zz", states)}, Chars(), use_words=True)


def test_the_whisper_distillers_state_term_anneals_to_zero() -> None:
    distiller = WhisperDistiller(SpeechConfig.tiny(vocab_size=8), teacher_dim=6,
                                 cfg=WhisperDistillConfig(state_weight=0.5))
    losses = {"ctc": torch.tensor(2.0), "whisper": torch.tensor(4.0)}
    assert float(distiller.total(losses, 0.0)) == pytest.approx(4.0)
    assert float(distiller.total(losses, 1.0)) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="teacher_states"):
        distiller.losses(None, None, None, None)


def test_the_matcher_learns_a_projection_onto_the_teacher_states() -> None:
    torch.manual_seed(0)
    matcher = WhisperStateMatcher(student_dim=8, teacher_dim=6, student_frame_ms=40)
    student = torch.randn(2, 5, 8)
    mapping = torch.randn(8, 6)
    teacher = [np.repeat((student[i] @ mapping).numpy(), 2, axis=0).astype(np.float16) for i in range(2)]
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    optimizer = torch.optim.Adam(matcher.parameters(), lr=0.05)
    first = float(matcher.loss(student, valid, teacher).detach())
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
