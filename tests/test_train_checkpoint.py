"""Checkpoints round trip (identical outputs, fp16 option, optimizer state, tied weights), refuse
what is not theirs, and the small training helpers of train/loop.py behave."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest

torch = pytest.importorskip("torch", reason="checkpoints need torch (pip install 'tinymm[train]')")
pytest.importorskip("safetensors", reason="checkpoints need safetensors (pip install 'tinymm[train]')")

from tinymm.errors import InputError  # noqa: E402
from train.checkpoint import (  # noqa: E402
    latest_checkpoint,
    load_checkpoint,
    load_optimizer_state,
    save_checkpoint,
    step_dir_name,
)
from train.loop import CosineSchedule, MetricsLogger, TimeBudget, read_metrics, warmup_cosine_lr  # noqa: E402
from train.models.speech import SpeechConfig, SpeechCTCModel  # noqa: E402

pytestmark = pytest.mark.requires_torch


def _tiny_model() -> SpeechCTCModel:
    torch.manual_seed(0)
    return SpeechCTCModel(SpeechConfig.tiny()).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(2, 16, 40, generator=torch.Generator().manual_seed(1)), torch.tensor([40, 25])


def test_round_trip_gives_identical_outputs(tmp_path) -> None:
    model = _tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(*_inputs())[0].sum().backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "ck", model, model.config, step=7, optimizer=optimizer, extra={"wer": 0.1})
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "optimizer.pt"]

    loaded, config, meta = load_checkpoint(path, SpeechCTCModel, SpeechConfig)
    assert config == model.config and meta["step"] == 7 and meta["extra"] == {"wer": 0.1}
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(*_inputs())[0], model.eval()(*_inputs())[0])

    fresh = torch.optim.AdamW(loaded.parameters(), lr=1e-3)
    assert load_optimizer_state(path, fresh)
    assert fresh.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]


def test_fp16_checkpoint_is_smaller_and_close(tmp_path) -> None:
    model = _tiny_model()
    fp32 = save_checkpoint(tmp_path / "fp32", model, model.config, step=1)
    fp16 = save_checkpoint(tmp_path / "fp16", model, model.config, step=1, dtype="float16")
    assert (fp16 / "model.safetensors").stat().st_size < 0.6 * (fp32 / "model.safetensors").stat().st_size
    assert not (fp16 / "optimizer.pt").exists()
    loaded, _, meta = load_checkpoint(fp16, SpeechCTCModel, SpeechConfig)
    assert meta["dtype"] == "float16"
    assert next(loaded.parameters()).dtype == torch.float32  # cast back to the model's dtype
    with torch.no_grad():
        torch.testing.assert_close(loaded(*_inputs())[0], model(*_inputs())[0], atol=2e-2, rtol=0)
    with pytest.raises(ValueError, match="dtype"):
        save_checkpoint(tmp_path / "bad", model, model.config, step=1, dtype="int8")


@dataclass(frozen=True)
class _TiedConfig:
    vocab: int = 5
    width: int = 3


class _Tied(torch.nn.Module):
    def __init__(self, config: _TiedConfig) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(config.vocab, config.width)
        self.head = torch.nn.Linear(config.width, config.vocab, bias=False)
        self.head.weight = self.emb.weight  # tied


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path) -> None:
    model = _Tied(_TiedConfig())
    path = save_checkpoint(tmp_path / "tied", model, _TiedConfig(), step=0)
    meta = json.loads((path / "config.json").read_text())
    assert meta["tied"] == {"head.weight": "emb.weight"}
    loaded, _, _ = load_checkpoint(path, _Tied, _TiedConfig)
    assert torch.equal(loaded.head.weight, model.emb.weight)
    assert loaded.head.weight is loaded.emb.weight


def test_load_refuses_other_model_kinds_and_non_checkpoints(tmp_path) -> None:
    model = _tiny_model()
    path = save_checkpoint(tmp_path / "speech", model, model.config, step=0)
    with pytest.raises(InputError, match="not a .*_Tied"):
        load_checkpoint(path, _Tied, _TiedConfig)
    with pytest.raises(InputError, match="config.json is missing"):
        load_checkpoint(tmp_path, SpeechCTCModel, SpeechConfig)


def test_latest_checkpoint_picks_highest_complete_step(tmp_path) -> None:
    assert latest_checkpoint(tmp_path / "missing") is None
    model = _tiny_model()
    for step in (5, 120):
        save_checkpoint(tmp_path / step_dir_name(step), model, model.config, step=step)
    (tmp_path / step_dir_name(999)).mkdir()  # incomplete: no config.json
    (tmp_path / "step_notanumber").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000120"
    # Saving again over an existing checkpoint replaces it and leaves no temporary directory.
    save_checkpoint(tmp_path / step_dir_name(120), model, model.config, step=120, extra={"again": True})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------------
# train/loop.py helpers


def test_cosine_schedule_and_warmup_cosine_lr() -> None:
    schedule = CosineSchedule(peak_lr=1e-3, total_steps=100, warmup_steps=10, min_lr=1e-5)
    assert schedule(0) == pytest.approx(1e-4) and schedule(9) == pytest.approx(1e-3)
    assert schedule(55) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert schedule(100) == pytest.approx(1e-5) and schedule(500) == pytest.approx(1e-5)
    with pytest.raises(ValueError):
        CosineSchedule(peak_lr=1e-3, total_steps=10, warmup_steps=20)
    assert warmup_cosine_lr(0, 0.0, 1.0, warmup_steps=4) == pytest.approx(0.25)
    assert warmup_cosine_lr(50, 0.5, 1.0, warmup_steps=4) == pytest.approx(0.5)
    assert warmup_cosine_lr(50, 1.0, 1.0, warmup_steps=4, min_lr=0.1) == pytest.approx(0.1)


def test_time_budget_with_a_fake_clock() -> None:
    now = [100.0]
    budget = TimeBudget(2.0, spent_s=30.0, clock=lambda: now[0])
    assert budget.elapsed() == pytest.approx(30.0) and not budget.expired()
    now[0] += 90.0
    assert budget.expired() and budget.fraction() == 1.0
    assert TimeBudget(None).remaining() == math.inf and TimeBudget(None).fraction() == 0.0


def test_metrics_logger_writes_jsonl(tmp_path) -> None:
    with MetricsLogger(tmp_path / "m" / "metrics.jsonl") as log:
        log.log(1, loss=torch.tensor(2.5))
        log.log(2, loss=1.5, note="x")
    rows = list(read_metrics(tmp_path / "m" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["loss"] == 2.5 and rows[1]["note"] == "x"
