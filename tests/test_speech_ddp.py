"""The speech recipe's training stage under DistributedDataParallel: 2 CPU processes (gloo) end with
one process's weights, write one set of checkpoints and metrics and resume; and the pieces that
make it so: the batch split, the loss scaling and SpecAugment drawn per clip."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the speech recipe needs torch (pip install 'tinymm[train]')")

import torch.distributed as dist  # noqa: E402

from train import distributed as ddp  # noqa: E402
from train import speech_train  # noqa: E402
from train.loop import read_metrics  # noqa: E402
from train.models.speech import SpeechCTCModel  # noqa: E402
from train.recipes.speech import model_configs  # noqa: E402
from train.speech_features import FeatureSet, collate  # noqa: E402
from train.speech_train import DistillConfig, Distiller, SpecAugmentConfig, TrainConfig, clip_generator, \
    spec_augment, train_stage  # noqa: E402
from train.whisper_distill import WhisperDistiller, attach_teacher_labels  # noqa: E402
from tinymm.errors import UsageError  # noqa: E402

pytestmark = pytest.mark.requires_torch

VOCAB = 12
CLIPS = 7
BATCH = 3  # batches of 3, 3 and 1 clips: uneven shares on 2 ranks, and a batch smaller than the world
WEIGHT_TOLERANCE = 1e-5  # max abs difference of any weight, 1 vs 2 processes


class LetterTokenizer:
    """Enough of a tokenizer for the val WER at checkpoints: id i -> the i-th letter."""

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(ord("a") + i) for i in ids)


def tiny_clips() -> FeatureSet:
    rng = np.random.default_rng(0)
    features = [rng.standard_normal((16, int(n))).astype(np.float16) for n in rng.integers(40, 120, CLIPS)]
    labels = [rng.integers(1, VOCAB, int(rng.integers(2, 6))).tolist() for _ in range(CLIPS)]
    return FeatureSet(features, [LetterTokenizer().decode(ids) for ids in labels], [None] * CLIPS, labels)


def seeded(config, seed: int) -> SpeechCTCModel:
    torch.manual_seed(seed)
    return SpeechCTCModel(config)


def stages(out: Path) -> None:
    """What both runs train: CTC for 2 steps, resumed from its step-2 checkpoint up to step 4, and
    a student distilled from a tiny teacher for 3 steps; a checkpoint after every step."""
    teacher_cfg, student_cfg = model_configs("tiny", VOCAB)
    data = tiny_clips()
    common = dict(out=out, train=data, val=data, tokenizer=LetterTokenizer(), show=False)

    def config(steps: int) -> TrainConfig:
        return TrainConfig(minutes=None, max_steps=steps, batch_size=BATCH, peak_lr=3e-3, warmup_steps=1,
                           checkpoint_minutes=0.0, log_every=2, seed=5)

    train_stage("ctc", model=seeded(student_cfg, 1), cfg=config(2), **common)
    if ddp.is_main():
        shutil.rmtree(out / "ctc" / "final")  # the next call resumes from step_00000002
    ddp.barrier()
    train_stage("ctc", model=seeded(student_cfg, 1), cfg=config(4), **common)
    distiller = Distiller(seeded(teacher_cfg, 2), student_cfg, DistillConfig())
    train_stage("kd", model=seeded(student_cfg, 1), distiller=distiller, cfg=config(3), **common)
    # Whisper's precomputed states (50 Hz: half the feature frames) for all clips but every third.
    rng = np.random.default_rng(1)
    labels = {i: ("", rng.standard_normal((f.shape[1] // 2, 6)).astype(np.float16))
              for i, f in enumerate(data.features) if i % 3}
    taught = attach_teacher_labels(data, labels, LetterTokenizer(), use_words=False)
    train_stage("whisper", model=seeded(student_cfg, 1), distiller=WhisperDistiller(student_cfg, 6), cfg=config(3),
                **{**common, "train": taught})


def record_saves(log: Path):
    """save_checkpoint, appending each checkpoint's path to ``log`` first."""
    save = speech_train.save_checkpoint

    def recording(path, *args, **kwargs):
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{Path(path).relative_to(log.parent)}\n")
        return save(path, *args, **kwargs)

    return recording


def ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    """One torchrun-like process: torchrun's variables, 1 thread, the stages in a gloo group."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    speech_train.save_checkpoint = record_saves(Path(out) / f"saves_by_rank{rank}.txt")
    with ddp.process_group(torch.device("cpu")) as device:
        assert device == torch.device("cpu") and dist.get_backend() == "gloo"
        stages(Path(out))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="this torch build has no torch.distributed gloo backend")
def test_two_processes_end_with_one_process_weights(tmp_path, monkeypatch) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        monkeypatch.setattr(speech_train, "save_checkpoint", record_saves(one / "saves.txt"))
        stages(one)
    finally:
        torch.set_num_threads(threads)
    torch.multiprocessing.spawn(ddp_worker, args=(2, free_port(), str(two)), nprocs=2, join=True)

    # Rank 0 alone wrote, and the same checkpoints as one process, resume included.
    assert not (two / "saves_by_rank1.txt").exists()
    saves = (two / "saves_by_rank0.txt").read_text().splitlines()
    assert saves == (one / "saves.txt").read_text().splitlines()
    assert saves.count("ctc/final") == 2 and "ctc/step_00000003" in saves and "kd/step_00000003" in saves

    init = seeded(model_configs("tiny", VOCAB)[1], 1).state_dict()
    for stage in ("ctc", "kd", "whisper"):
        for checkpoint in ("step_00000001", "final"):
            single, shared = weights(one / stage / checkpoint), weights(two / stage / checkpoint)
            assert max_difference(single, shared) < WEIGHT_TOLERANCE, (stage, checkpoint)
        assert max_difference(weights(one / stage / "final"), init) > 100 * WEIGHT_TOLERANCE  # training moved them
        rows_one, rows_two = (list(read_metrics(d / stage / "metrics.jsonl")) for d in (one, two))
        assert [r["step"] for r in rows_one] == [r["step"] for r in rows_two]  # one writer, no duplicate rows
        for a, b in zip(rows_one, rows_two):
            for key in set(a) & {"loss", "ctc", "kd", "hidden", "whisper", "val_wer"}:
                assert a[key] == pytest.approx(b[key], abs=2e-4), (stage, a["step"], key)
    assert all({"kd", "hidden"} <= set(row) for row in read_metrics(two / "kd" / "metrics.jsonl") if "loss" in row)
    for stage in ("kd", "whisper"):
        single, shared = (torch.load(d / stage / "projections.pt", weights_only=True) for d in (one, two))
        assert max_difference(single, shared) < WEIGHT_TOLERANCE
    assert all("whisper" in row for row in read_metrics(two / "whisper" / "metrics.jsonl") if "loss" in row)


def test_shard_splits_a_global_batch_by_position() -> None:
    batch = np.arange(10, 17)  # 7 clip indices, in batch order
    assert ddp.shard(batch, 0, 2).tolist() == [10, 12, 14, 16]
    assert ddp.shard(batch, 1, 2).tolist() == [11, 13, 15]
    assert sorted(np.concatenate([ddp.shard(batch, r, 3) for r in range(3)]).tolist()) == batch.tolist()
    assert len(ddp.shard(batch[:2], 2, 3)) == 0  # a batch with fewer clips than ranks
    with pytest.raises(ValueError, match="outside"):
        ddp.shard(batch, 2, 2)


@pytest.mark.parametrize("world", [2, 3, 8])
@pytest.mark.parametrize("unit", ["clips", "frames"])
def test_scaled_rank_losses_average_to_the_global_gradient(world: int, unit: str) -> None:
    """DDP averages the ranks' gradients; the scaled rank losses make that the global mean's gradient,
    for a mean over clips (CTC) and over frames, whose counts differ between clips (KD, hidden)."""
    rng = np.random.default_rng(1)
    frames = [torch.randn(int(n), 4, dtype=torch.float64) for n in rng.integers(1, 9, 5)]  # 5 clips
    weight = torch.randn(4, dtype=torch.float64, requires_grad=True)

    def mean_loss(clips: list[int]) -> torch.Tensor:  # a mean over clips, or over all their frames
        per_clip = [((frames[c] @ weight) ** 2).sum() for c in clips]
        if unit == "clips":
            return sum(p / len(frames[c]) for p, c in zip(per_clip, clips)) / len(clips)
        return sum(per_clip) / sum(len(frames[c]) for c in clips)

    def count(clips: list[int]) -> int:
        return len(clips) if unit == "clips" else sum(len(frames[c]) for c in clips)

    batch = np.arange(5)
    expected = torch.autograd.grad(mean_loss(batch.tolist()), weight)[0]
    averaged = torch.zeros(4, dtype=torch.float64)
    for rank in range(world):
        share = ddp.shard(batch, rank, world).tolist()
        if share:  # an empty share weighs 0 (the training loop runs a stand-in clip scaled by 0)
            scale = ddp.mean_scale(count(share), count(batch.tolist()), world)
            averaged += torch.autograd.grad(mean_loss(share) * scale, weight)[0] / world
    torch.testing.assert_close(averaged, expected)


def test_one_process_scales_and_averages_nothing() -> None:
    assert not dist.is_initialized() and (ddp.rank(), ddp.world_size(), ddp.is_main()) == (0, 1, True)
    assert ddp.mean_scales({"clips": 3, "frames": 71}) == {"clips": 1.0, "frames": 1.0}
    assert ddp.mean_over_ranks({"loss": 0.25}) == {"loss": 0.25}
    assert ddp.mean_scale(0, 0, 2) == 0.0


def test_partial_torchrun_environment_is_a_usage_error(monkeypatch) -> None:
    monkeypatch.setenv("RANK", "0")
    for name in ("WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UsageError, match="not .*WORLD_SIZE.*torchrun"):
        with ddp.process_group(torch.device("cpu")):
            pass


def test_a_clip_is_masked_the_same_wherever_it_sits() -> None:
    data = tiny_clips()
    cfg = SpecAugmentConfig(freq_masks=2, freq_width=4, time_masks=2, time_width=10, time_fraction=0.5)

    def masked_clip(batch: list[int], clip: int) -> torch.Tensor:
        x, lengths = collate(data, np.array(batch))
        row = batch.index(clip)
        out = spec_augment(x, lengths, cfg, [clip_generator(5, 3, c) for c in batch])
        return out[row, :, : lengths[row]]

    alone = masked_clip([4], 4)
    assert torch.equal(alone, masked_clip([4, 1, 6], 4)) and torch.equal(alone, masked_clip([0, 4], 4))
    assert not torch.equal(alone, spec_augment(*collate(data, np.array([4])), cfg, [clip_generator(5, 4, 4)])[0])
