"""One training stage of the speech recipe (teacher, distilled student, scratch student), and the
greedy CTC decoding it checks itself with.

``train_stage`` trains a ``SpeechCTCModel`` with CTC and SpecAugment, plus, for the distilled
student, a ``Distiller``'s terms (KD on the teacher's CTC posteriors, hidden-state matching). It
runs in one process, or under torchrun with DistributedDataParallel (``train.distributed``):

    torchrun --nproc_per_node 2 -m train speech --out runs/speech --threads 1 ...

Under DDP every rank draws the same global batch of ``--batch-size`` clips and trains on its share
(positions rank, rank + world, ...). Each loss term is a mean: CTC over clips (each clip's loss per
target token, as torch's ctc_loss "mean"), KD and hidden-state matching over valid output frames;
each rank scales its term by world x its count / the global count, so DDP's gradient average is
the gradient of one process's loss on the whole batch. SpecAugment draws from a stream per
(seed, step, clip), so a clip is masked the same on any rank. Rank 0's clock, broadcast every
step, decides when the time budget ends and drives the learning rate, so every rank stops on the
same step. Only rank 0 writes checkpoints and metrics; every rank reads OUT (one machine, or a
shared filesystem), so resume works as in one process. With dropout (the default and teacher
presets; the tiny preset has none) each rank draws its own dropout masks, so a DDP run matches
one process in distribution rather than bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tinymm.decoding.grammar import GrammarDecoder, GrammarHypothesis
from tinymm.robot.transcripts import normalize_transcript
from train import distributed as ddp
from train.checkpoint import latest_checkpoint, load_checkpoint, load_optimizer_state, save_checkpoint, step_dir_name
from train.loop import MetricsLogger, TimeBudget, progress, set_lr, teacher_anneal_scale, warmup_cosine_lr
from train.losses import ctc_posterior_kd_loss, hidden_match_loss
from train.metrics_speech import score_transcripts
from train.models.layers import key_padding_mask, param_count
from train.models.speech import CTC_BLANK_ID, SpeechConfig, SpeechCTCModel, SpeechOutput
from train.speech_features import FeatureSet, batches, collate
from train.whisper_distill import WhisperDistiller

logger = logging.getLogger(__name__)

FINAL_DIR = "final"
PROJECTIONS_FILE = "projections.pt"  # the distillation projections, saved next to step checkpoints
EVAL_BATCH = 32  # clips per inference batch
VAL_CLIPS_DURING_TRAINING = 200  # val clips decoded at each checkpoint (the val WER in metrics.jsonl)
# What each loss term is a mean over, so that every rank can weight its share of the global batch.
MEAN_OVER = {"ctc": "clips", "kd": "frames", "hidden": "frames", "whisper": "frames"}


@dataclass(frozen=True)
class SpecAugmentConfig:
    """SpecAugment-style masking of training features (no time warp)."""

    freq_masks: int = 2  # masks per clip over mel bands
    freq_width: int = 10  # mel bands, largest width of a mask (80 mels)
    time_masks: int = 2  # masks per clip over frames
    time_width: int = 25  # frames (10 ms each), largest width of a mask
    time_fraction: float = 0.15  # a time mask covers at most this share of the clip


@dataclass(frozen=True)
class TrainConfig:
    """One training stage."""

    minutes: float | None  # wall-clock budget (None: steps only)
    max_steps: int | None  # step budget (None: time only)
    batch_size: int = 16  # clips per step (the global batch, shared by the ranks under DDP)
    peak_lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max global gradient norm
    checkpoint_minutes: float = 10.0  # wall-clock minutes between resume checkpoints
    log_every: int = 10  # steps per metrics.jsonl row
    seed: int = 0  # init, batch order and masks
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)

    def __post_init__(self) -> None:
        if self.minutes is None and self.max_steps is None:
            raise ValueError("a training stage needs a time budget (minutes) or max_steps, or both")


@dataclass(frozen=True)
class DistillConfig:
    """Loss weights of the distilled student: ctc * CTC + kd * KL(posteriors, T) + hidden * MSE(states)."""

    ctc_weight: float = 1.0
    kd_weight: float = 1.0
    temperature: float = 2.0  # softens the teacher's peaky CTC posteriors
    hidden_weight: float = 0.5
    hidden_layers: int = 3  # student blocks matched to teacher blocks, spaced evenly, last to last
    # The teacher's terms fall linearly to 0 over the stage, so that a student that outgrows its
    # teacher ends on the ground truth alone (train/RESULTS.md: trained 3x longer than its teacher,
    # a student with constant weights lost to its scratch twin; annealed, it beat it).
    anneal: bool = True

    def layer_pairs(self, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
        """(student block, teacher block) 0-based pairs at evenly spaced relative depths, ending at both last blocks."""
        n = min(self.hidden_layers, student_layers)
        pairs = []
        for k in range(1, n + 1):
            s = round(k * student_layers / n) - 1
            pairs.append((s, round((s + 1) * teacher_layers / student_layers) - 1))
        return pairs


def clip_generator(seed: int, step: int, clip: int) -> torch.Generator:
    """The random stream of clip ``clip``'s masks at ``step``: the same whichever rank trains the
    clip and wherever it sits in its batch."""
    state = np.random.SeedSequence([seed, step, int(clip)]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def spec_augment(x: torch.Tensor, lengths: torch.Tensor, cfg: SpecAugmentConfig,
                 generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Zero random mel bands and frame spans of (B, n_mels, T) features, row b drawing from
    ``generators[b]`` (``clip_generator``); returns a new tensor."""
    if len(generators) != x.shape[0]:
        raise ValueError(f"spec_augment got {len(generators)} generators for {x.shape[0]} clips; pass one per clip")
    x = x.clone()
    n_mels = x.shape[1]
    for b, gen in enumerate(generators):
        for _ in range(cfg.freq_masks):
            width = int(torch.randint(0, min(cfg.freq_width, n_mels // 4) + 1, (1,), generator=gen))
            start = int(torch.randint(0, n_mels - width + 1, (1,), generator=gen))
            x[b, start:start + width, :] = 0.0
        length = int(lengths[b])
        for _ in range(cfg.time_masks):
            width = int(torch.randint(0, min(cfg.time_width, int(cfg.time_fraction * length)) + 1, (1,), generator=gen))
            start = int(torch.randint(0, max(length - width, 0) + 1, (1,), generator=gen))
            x[b, :, start:start + width] = 0.0
    return x


def ctc_loss(log_probs: torch.Tensor, out_lengths: torch.Tensor, labels: list[list[int]]) -> torch.Tensor:
    """Mean over clips of each clip's CTC loss per target token, for (B, T', V) log-probs and label id lists."""
    targets = torch.tensor([t for label in labels for t in label], dtype=torch.int64, device=log_probs.device)
    target_lengths = torch.tensor([len(label) for label in labels], dtype=torch.int64, device=log_probs.device)
    return F.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, target_lengths, blank=CTC_BLANK_ID,
                      zero_infinity=True)


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """(B, T', V) log-probs, (B,) valid frames -> token ids per clip: argmax, collapse repeats, drop blanks."""
    best = log_probs.argmax(dim=-1)  # (B, T')
    out = []
    for row, n in zip(best.tolist(), lengths.tolist()):
        ids, previous = [], None
        for token in row[:n]:
            if token != previous and token != CTC_BLANK_ID:
                ids.append(token)
            previous = token
        out.append(ids)
    return out


@torch.inference_mode()
def decode(model: SpeechCTCModel, data: FeatureSet, tokenizer, limit: int | None = None, show: bool = False,
           grammar: GrammarDecoder | None = None) -> tuple[list[str], list[GrammarHypothesis | None]]:
    """Greedy CTC transcripts (normalized) of the first ``limit`` clips of ``data``, and each clip's
    best sentence of ``grammar`` (the runtime's decoder; None without one)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = len(data) if limit is None else min(limit, len(data))
    order = np.argsort([f.shape[1] for f in data.features[:n]], kind="stable")
    texts: list[str] = [""] * n
    best: list[GrammarHypothesis | None] = [None] * n
    for start in progress(range(0, n, EVAL_BATCH), enabled=show, desc="decode", leave=False):
        idx = order[start:start + EVAL_BATCH]
        log_probs, out_lengths = (t.cpu() for t in model(*(t.to(device) for t in collate(data, idx))))
        for row, (i, ids) in enumerate(zip(idx, greedy_decode(log_probs, out_lengths))):
            texts[i] = normalize_transcript(tokenizer.decode(ids))
            if grammar is not None:
                best[i] = grammar.decode(log_probs[row, : out_lengths[row]].numpy())
    model.train(was_training)
    return texts, best


def transcribe(model: SpeechCTCModel, data: FeatureSet, tokenizer, limit: int | None = None, show: bool = False) -> list[str]:
    """Greedy CTC transcripts (normalized) of the first ``limit`` clips of ``data``."""
    return decode(model, data, tokenizer, limit, show)[0]


class Distiller:
    """The teacher side of the distilled student's loss: the frozen teacher and the trained projections."""

    def __init__(self, teacher: SpeechCTCModel, student: SpeechConfig, cfg: DistillConfig) -> None:
        if teacher.config.subsampling_layers != student.subsampling_layers:
            raise ValueError("frame-level distillation needs teacher and student at the same frame rate "
                             f"(subsampling_layers {teacher.config.subsampling_layers} != {student.subsampling_layers})")
        self.teacher = teacher.eval().requires_grad_(False)
        self.cfg = cfg
        self.pairs = cfg.layer_pairs(student.layers, teacher.config.layers)
        self.projections = nn.ModuleList(nn.Linear(student.d_model, teacher.config.d_model) for _ in self.pairs)

    def to(self, device: torch.device) -> Distiller:
        self.teacher.to(device)
        return self

    def losses(self, out: SpeechOutput, features: torch.Tensor, lengths: torch.Tensor,
               teacher_states: list | None = None) -> dict[str, torch.Tensor]:
        """KD and hidden-state losses (means over valid output frames) of a student forward on
        (B, n_mels, T) unmasked features (this teacher hears them itself: ``teacher_states`` unused)."""
        with torch.no_grad():
            target = self.teacher.forward_features(features, lengths)  # the teacher hears the unmasked clip
        valid = key_padding_mask(out.lengths, out.log_probs.shape[1])  # (B, T')
        width = (self.teacher.config.d_model,)
        hidden = [hidden_match_loss(out.hidden_states[s], F.layer_norm(target.hidden_states[t], width), proj, valid)
                  for (s, t), proj in zip(self.pairs, self.projections)]
        return {"kd": ctc_posterior_kd_loss(out.log_probs, target.log_probs, out.lengths, self.cfg.temperature),
                "hidden": sum(hidden) / len(hidden)}

    def teacher_scale(self, progress: float) -> float:
        """Factor on the teacher's terms at ``progress`` (0..1) of the stage."""
        return teacher_anneal_scale(self.cfg.anneal, progress)

    def total(self, losses: dict[str, torch.Tensor], progress: float = 0.0) -> torch.Tensor:
        scale = self.teacher_scale(progress)
        return (self.cfg.ctc_weight * losses["ctc"]
                + scale * (self.cfg.kd_weight * losses["kd"] + self.cfg.hidden_weight * losses["hidden"]))


class StageLosses(nn.Module):
    """What a step differentiates, in one forward for DDP to wrap: the model and the distillation
    projections (the parameters DDP keeps in sync) and the loss terms of a batch."""

    def __init__(self, model: SpeechCTCModel, distiller: Distiller | WhisperDistiller | None) -> None:
        super().__init__()
        self.model = model
        self.projections = distiller.projections if distiller is not None else nn.ModuleList()
        self.distiller = distiller  # a plain attribute: the frozen teacher is not DDP's to sync

    def forward(self, masked: torch.Tensor, clean: torch.Tensor, lengths: torch.Tensor,
                labels: list[list[int]], teacher_states: list | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(B, n_mels, T) masked and unmasked features, (B,) lengths, label ids, and the clips'
        precomputed teacher states (FeatureSet.teacher_states) -> the loss terms (scalars, means as in
        MEAN_OVER) and (B,) valid output frames."""
        out = self.model.forward_features(masked, lengths)
        losses = {"ctc": ctc_loss(out.log_probs, out.lengths, labels)}
        if self.distiller is not None:
            losses.update(self.distiller.losses(out, clean, lengths, teacher_states))
        return losses, out.lengths


def window_means(running: dict[str, list[float]]) -> dict[str, float]:
    """Each value's mean over a logging window, averaged over the ranks (the global batch's value),
    rounded for metrics.jsonl."""
    means = ddp.mean_over_ranks({key: float(np.mean(values)) for key, values in running.items()})
    return {key: round(value, 4) for key, value in means.items()}


def train_stage(name: str, out: Path, model: SpeechCTCModel, train: FeatureSet, val: FeatureSet, tokenizer,
                cfg: TrainConfig, show: bool, distiller: Distiller | WhisperDistiller | None = None,
                device: torch.device = torch.device("cpu")) -> Path:
    """Train ``model`` on ``device`` with CTC (plus ``distiller``'s losses when given); returns the
    final checkpoint. Under torchrun (``train.distributed.process_group``) the ranks share every
    batch (the module docstring).

    Skips when OUT/name/final exists; resumes from the newest OUT/name/step_* checkpoint.
    """
    run_dir = out / name
    final = run_dir / FINAL_DIR
    if (final / "config.json").is_file():
        logger.info("stage %s: done (%s)", name, final)
        return final
    stage = StageLosses(model, distiller).to(device)
    if distiller is not None:
        distiller.to(device)
    params = list(stage.parameters())  # the model's, then the projections'
    optimizer = torch.optim.AdamW(params, lr=cfg.peak_lr, weight_decay=cfg.weight_decay)
    step, spent_s, first_loss = 0, 0.0, None
    resume = latest_checkpoint(run_dir)
    if resume is not None:
        restored, _, meta = load_checkpoint(resume, SpeechCTCModel, SpeechConfig)
        model.load_state_dict(restored.state_dict())
        load_optimizer_state(resume, optimizer)
        if (run_dir / PROJECTIONS_FILE).is_file():
            stage.projections.load_state_dict(torch.load(run_dir / PROJECTIONS_FILE, weights_only=True))
        step, spent_s, first_loss = meta["step"], meta["extra"]["train_seconds"], meta["extra"].get("first_loss")
        logger.info("stage %s: resuming from %s (step %d)", name, resume, step)
    trainer = ddp.data_parallel(stage, device)
    rank, world = ddp.rank(), ddp.world_size()
    clock = ddp.MainClock()  # ticked once per step on every rank
    budget = TimeBudget(cfg.minutes, spent_s=spent_s, clock=clock)
    rng = np.random.default_rng([cfg.seed, step])  # every rank draws the same global batches
    stage.train()
    logger.info("stage %s: %d parameters, %s steps, %s minutes, %d process(es)", name, param_count(model),
                cfg.max_steps, cfg.minutes, world)

    def checkpoint(path: Path, last_loss: float | None) -> None:
        if ddp.is_main():
            if len(stage.projections):
                tmp = run_dir / (PROJECTIONS_FILE + ".tmp")
                run_dir.mkdir(parents=True, exist_ok=True)
                torch.save(stage.projections.state_dict(), tmp)
                os.replace(tmp, run_dir / PROJECTIONS_FILE)
            extra = {"train_seconds": round(budget.elapsed(), 1), "first_loss": first_loss, "last_loss": last_loss,
                     "stage": name, "train_config": dataclasses.asdict(cfg),
                     "distill": dataclasses.asdict(distiller.cfg) if distiller else None, "train_clips": len(train)}
            save_checkpoint(path, model, model.config, step=step, optimizer=optimizer, extra=extra)
        ddp.barrier()  # no rank reads it (next stage, resume) before it is written

    last_save = budget.elapsed()
    running: dict[str, list[float]] = {}
    last_loss = None
    with (MetricsLogger(run_dir / "metrics.jsonl") if ddp.is_main() else contextlib.nullcontext()) as metrics, \
            progress(total=cfg.max_steps, initial=step, enabled=show and ddp.is_main(), desc=name, unit="step") as bar:
        for idx in batches(train, cfg.batch_size, rng):
            if (cfg.max_steps is not None and step >= cfg.max_steps) or budget.expired():
                break
            fraction = max(step / cfg.max_steps if cfg.max_steps else 0.0, budget.fraction())
            set_lr(optimizer, warmup_cosine_lr(step, fraction, cfg.peak_lr, cfg.warmup_steps, cfg.min_lr))
            share = ddp.shard(idx, rank, world)
            counted = len(share)
            if not counted:  # a batch of fewer clips than ranks: DDP needs every rank's backward, this one weighs 0
                share = idx[:1]
            x, lengths = collate(train, share)
            masked = spec_augment(x, lengths, cfg.spec_augment, [clip_generator(cfg.seed, step, i) for i in share])
            states = [train.teacher_states[i] for i in share] if train.teacher_states is not None else None
            losses, out_lengths = trainer(masked.to(device), x.to(device), lengths.to(device),
                                          [train.labels[i] for i in share], states)
            scales = ddp.mean_scales({"clips": counted, "frames": int(out_lengths.sum()) if counted else 0})
            losses = {key: value * scales[MEAN_OVER[key]] for key, value in losses.items()}
            loss = distiller.total(losses, fraction) if distiller is not None else losses["ctc"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over the ranks here
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)  # of the averaged gradient
            optimizer.step()
            step += 1
            clock.tick()
            bar.update(1)
            for key, value in {"loss": loss, **losses}.items():
                running.setdefault(key, []).append(float(value.detach()))
            if step % cfg.log_every == 0:
                means = window_means(running)
                first_loss = means["loss"] if first_loss is None else first_loss
                last_loss = means["loss"]
                if distiller is not None:
                    means["teacher_scale"] = round(distiller.teacher_scale(fraction), 4)
                if metrics is not None:
                    metrics.log(step, lr=optimizer.param_groups[0]["lr"], grad_norm=float(grad_norm), **means)
                bar.set_postfix(loss=means["loss"])
                running = {}
            if budget.elapsed() - last_save > cfg.checkpoint_minutes * 60:
                if metrics is not None:
                    val_wer = score_transcripts(val.transcripts[:VAL_CLIPS_DURING_TRAINING],
                                                transcribe(model, val, tokenizer, VAL_CLIPS_DURING_TRAINING)).wer
                    metrics.log(step, val_wer=round(val_wer, 4))
                    logger.info("stage %s: step %d, val WER %.3f on %d clips", name, step, val_wer,
                                min(len(val), VAL_CLIPS_DURING_TRAINING))
                checkpoint(run_dir / step_dir_name(step), last_loss)
                clock.tick()
                last_save = budget.elapsed()
        if running:  # a partial logging window at the end
            means = window_means(running)
            last_loss = means["loss"]
            first_loss = last_loss if first_loss is None else first_loss
            if metrics is not None:
                metrics.log(step, **means)
    checkpoint(final, last_loss)
    logger.info("stage %s: finished at step %d after %.1f min, loss %s -> %s", name, step, budget.elapsed() / 60,
                first_loss, last_loss)
    return final
