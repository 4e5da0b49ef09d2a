"""SpeechCTCModel: sizes, subsampled lengths, padding invariance, CTC training, ONNX export."""

from __future__ import annotations

import dataclasses
import math

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'tinymm[train]')")

from tinymm.errors import InputError  # noqa: E402
from train.models import CTC_BLANK_ID, SpeechConfig, SpeechCTCModel, param_count, subsampled_length  # noqa: E402

pytestmark = pytest.mark.requires_torch

STUDENT_MAX_PARAMS = 3_000_000
TEACHER_MIN_RATIO = 4.0
PADDING_ATOL = 1e-5
ONNX_ATOL = 1e-4


def _model(**overrides) -> SpeechCTCModel:
    torch.manual_seed(0)
    return SpeechCTCModel(SpeechConfig.tiny(**overrides)).eval()


def _features(cfg: SpeechConfig, batch: int, frames: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.n_mels, frames, generator=g)


def test_student_and_teacher_sizes():
    student = param_count(SpeechCTCModel(SpeechConfig.student()))
    teacher = param_count(SpeechCTCModel(SpeechConfig.teacher()))
    assert 500_000 < student <= STUDENT_MAX_PARAMS, student
    assert teacher >= TEACHER_MIN_RATIO * student, (teacher, student)


@pytest.mark.parametrize("layers", [2, 3])
def test_output_lengths_follow_the_subsampling_formula(layers):
    model = _model(subsampling_layers=layers)
    lengths = torch.tensor([37, 1, 16, 40])
    log_probs, out_lengths = model(_features(model.config, 4, 40), lengths)
    stride = 2**layers
    assert out_lengths.tolist() == [math.ceil(n / stride) for n in lengths.tolist()]
    assert log_probs.shape == (4, math.ceil(40 / stride), model.config.vocab_size)
    assert all(subsampled_length(n, layers) == math.ceil(n / stride) for n in range(1, 200))
    assert model.config.frame_ms == 10 * stride
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:2]))


@pytest.mark.parametrize("conv_kernel", [0, 5])
def test_padding_does_not_change_valid_frames(conv_kernel):
    model = _model(conv_kernel=conv_kernel)
    cfg = model.config
    long, short = _features(cfg, 1, 53, seed=3), _features(cfg, 1, 22, seed=4)
    batch = torch.cat([long, torch.nn.functional.pad(short, (0, 31), value=7.0)])  # junk in the padding
    with torch.no_grad():
        out = model.forward_features(batch, torch.tensor([53, 22]))
        alone = model.forward_features(short, torch.tensor([22]))
    n = int(alone.lengths[0])
    assert int(out.lengths[1]) == n
    torch.testing.assert_close(out.log_probs[1, :n], alone.log_probs[0], atol=PADDING_ATOL, rtol=0)
    for batched, single in zip(out.hidden_states, alone.hidden_states):
        torch.testing.assert_close(batched[1, :n], single[0], atol=PADDING_ATOL, rtol=0)


def test_hidden_states_for_distillation():
    model = _model()
    cfg = model.config
    out = model.forward_features(_features(cfg, 2, 24), torch.tensor([24, 20]))
    assert len(out.hidden_states) == cfg.layers
    assert all(h.shape == (2, 6, cfg.d_model) for h in out.hidden_states)
    torch.testing.assert_close(out.log_probs, out.logits.log_softmax(-1))


def test_ctc_loss_decreases_on_a_fixed_batch():
    model = _model()
    model.train()
    cfg = model.config
    features, lengths = _features(cfg, 3, 48), torch.tensor([48, 40, 32])
    g = torch.Generator().manual_seed(5)
    targets = torch.randint(CTC_BLANK_ID + 1, cfg.vocab_size, (3, 5), generator=g)
    target_lengths = torch.tensor([5, 4, 3])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        log_probs, out_lengths = model(features, lengths)
        loss = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, target_lengths,
                                            blank=CTC_BLANK_ID)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.7 * losses[0], losses


def test_bad_config_and_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="conv_kernel"):
        SpeechConfig.tiny(conv_kernel=4)
    with pytest.raises(ValueError, match="subsampling_layers"):
        SpeechConfig.tiny(subsampling_layers=4)
    assert SpeechConfig.from_dict(dataclasses.asdict(SpeechConfig.tiny())) == SpeechConfig.tiny()
    model = _model()
    cfg = model.config
    with pytest.raises(InputError, match="n_mels=16"):
        model(torch.zeros(1, 80, 10), torch.tensor([10]))
    with pytest.raises(InputError, match="lengths"):
        model(_features(cfg, 2, 10), torch.tensor([10, 11]))
    with pytest.raises(InputError, match="max_frames"):
        model(_features(cfg, 1, cfg.max_frames + 1), torch.tensor([cfg.max_frames + 1]))


@pytest.mark.requires_torch
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_speech_encoder_exports_to_onnx(tmp_path):
    pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    model = _model()
    cfg = model.config
    path = tmp_path / "speech.onnx"
    model_args = (_features(cfg, 2, 40), torch.tensor([40, 31]))
    axes = {"features": {0: "batch", 2: "frames"}, "lengths": {0: "batch"},
            "log_probs": {0: "batch", 1: "out_frames"}, "out_lengths": {0: "batch"}}
    torch.onnx.export(model, model_args, str(path), input_names=["features", "lengths"],
                      output_names=["log_probs", "out_lengths"], dynamic_axes=axes, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    features, lengths = _features(cfg, 3, 67, seed=9), torch.tensor([67, 50, 9])  # other batch and length
    got = session.run(None, {"features": features.numpy(), "lengths": lengths.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in model(features, lengths)]
    assert [g.shape for g in got] == [w.shape for w in want]
    assert (got[1] == want[1]).all()
    for i, n in enumerate(want[1]):  # frames past a clip's length are meaningless; compare the valid ones
        assert abs(got[0][i, :n] - want[0][i, :n]).max() <= ONNX_ATOL
