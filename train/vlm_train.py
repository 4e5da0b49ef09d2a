"""Training stages of the vision-language recipe: multi-task training and distillation.

One loop serves the teacher, the distilled student and the from-scratch student::

    batch -> model.forward_features -> task losses (LM cross-entropy on the target tokens,
    CLIP loss over the whole label set, per-cell attribute cross-entropy, supervised
    cross-attention to the objects a text is about: vlm_grounding)
          [+ with a teacher: logit KL at a temperature on the same prompts, hidden-state matching
             through learned projections, TinyCLIP affinity distillation]
    -> AdamW step, lr on a cosine over the stage's progress (time or steps, whichever is further)

A stage stops at its time budget or step limit, checkpoints every few minutes, and resumes from
its latest checkpoint (weights, optimizer, projections, step and time spent).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train.checkpoint import latest_checkpoint, load_checkpoint, load_optimizer_state, save_checkpoint, step_dir_name
from train.loop import (LR_SCALE_KEY, CosineSchedule, DeviceSetup, MetricsLogger, TimeBudget, progress, set_lr,
                        teacher_anneal_scale)
from train.losses import affinity_distill_loss, hidden_match_loss, kd_logit_loss
from train.models.vlm import VisionLanguageModel, VLMConfig
from train.vlm_data import IGNORE_INDEX, NO_LABEL, NONE_CLASS_ID, VLMSceneDataset, collate, curriculum_pool, label_token_batch
from train.vlm_grounding import collect_cross_queries, grounding_keys, grounding_loss, head_log_attention

logger = logging.getLogger(__name__)

SCHEDULE_RESOLUTION = 10_000  # the cosine schedule is indexed by progress * this
FINAL_DIR = "final"
PROJECTIONS_FILE = "projections.pt"
LOG_EVERY_STEPS = 10
LENGTH_BUCKETS = 3  # groups of similar-length texts decoded separately (see forward_multi_text)
TEACHER_TERMS = ("kd_logit", "hidden", "affinity")  # the loss terms that need a teacher
IMAGE_STREAM, TEXT_STREAM = 0, 1  # random streams per step: which images, which texts about them


@dataclass(frozen=True)
class StageOptions:
    """How long and how one training stage runs."""

    budget_minutes: float | None  # wall-clock budget of the stage (None: only max_steps stops it)
    max_steps: int | None = None  # optimizer steps at most (None: only the budget stops it)
    batch_size: int = 32  # images per step
    texts_per_image: int = 4  # text tasks per image per step (the image is encoded once for all of them)
    lr: float = 1e-3  # peak AdamW learning rate
    weight_decay: float = 0.05  # AdamW decoupled weight decay (not on norms, biases, embeddings' positions)
    warmup_fraction: float = 0.05  # share of the stage spent in linear lr warmup
    min_lr_fraction: float = 0.05  # final lr as a fraction of the peak
    curriculum_fraction: float = 0.3  # share of the stage over which scenes grow from 1 object to all
    grad_clip: float = 1.0  # max global gradient norm
    checkpoint_minutes: float = 10.0  # wall-clock minutes between resumable checkpoints
    seed: int = 0  # task sampling and batch order
    # The decoder's memory positions (VLMConfig.memory_positions) learn at this many times the lr, without
    # weight decay. At 1x they stayed near 0 and "where is" answers confused left with right; at 20x a
    # 400-step continuation took position accuracy from 66% to 87% (train/RESULTS.md, run vlm6).
    memory_position_lr_scale: float = 20.0

    def __post_init__(self) -> None:
        if self.budget_minutes is None and self.max_steps is None:
            raise ValueError("StageOptions needs budget_minutes or max_steps, else the stage never ends")
        if self.budget_minutes is not None and not self.budget_minutes > 0:
            raise ValueError(f"StageOptions.budget_minutes={self.budget_minutes!r} must be positive")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"StageOptions.max_steps={self.max_steps!r} must be at least 1")
        if self.texts_per_image < 1:
            raise ValueError(f"StageOptions.texts_per_image={self.texts_per_image!r} must be at least 1")
        if self.batch_size < 1 or not self.lr > 0 or self.weight_decay < 0 or not self.grad_clip > 0:
            raise ValueError(f"StageOptions has a non-positive batch_size, lr or grad_clip, or a negative "
                             f"weight_decay: {self}")
        for name in ("warmup_fraction", "min_lr_fraction", "curriculum_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"StageOptions.{name}={getattr(self, name)!r} must be in [0, 1)")
        if not self.checkpoint_minutes > 0:
            raise ValueError(f"StageOptions.checkpoint_minutes={self.checkpoint_minutes!r} must be positive")
        if not self.memory_position_lr_scale > 0:
            raise ValueError(f"StageOptions.memory_position_lr_scale={self.memory_position_lr_scale!r} must be positive")


@dataclass(frozen=True)
class LossWeights:
    """Weights of every loss term; the distillation terms count only when a teacher is given."""

    lm: float = 1.0  # cross-entropy on caption / answer tokens (ground truth or pseudo-captions)
    contrastive: float = 0.5  # CLIP loss of images against the full label set
    aux: float = 1.0  # per-cell attribute cross-entropy, averaged over the attributes
    aux_empty: float = 0.1  # weight of an empty cell's "none" target relative to an object cell's (1)
    kd_logit: float = 1.0  # KL(teacher || student) on the target tokens' next-token distributions
    kd_temperature: float = 2.0  # softmax temperature of the logit KD
    hidden: float = 1.0  # MSE of projected student states to the teacher's (encoder tokens, last decoder block)
    affinity: float = 1.0  # TinyCLIP affinity mimicking of the image-label similarities
    affinity_temperature: float = 0.07  # CLIP temperature of the affinity distributions
    ground: float = 1.0  # supervised cross-attention of one head per decoder block to the named objects' cells
    # The teacher's terms fall linearly to 0 over the stage, so a student that outgrows its teacher
    # ends on the ground truth alone (constant weights cost the speech student; train/RESULTS.md).
    teacher_anneal: bool = True

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"LossWeights.{name}={value!r} must be a non-negative number")
        if not self.kd_temperature > 0 or not self.affinity_temperature > 0:
            raise ValueError("LossWeights temperatures must be positive")


class Projections(nn.Module):
    """Student -> teacher widths for hidden-state matching: encoder tokens and the last decoder block."""

    def __init__(self, student: VLMConfig, teacher: VLMConfig) -> None:
        super().__init__()
        self.encoder = nn.Linear(student.enc_dim, teacher.enc_dim)
        self.decoder = nn.Linear(student.dec_dim, teacher.dec_dim)


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows with any target of -sum(p * log_softmax(logits)), p = targets normalised per row.

    logits and targets are (N, K); rows whose targets are all 0 are skipped."""
    weight = targets.sum(dim=1)  # (N,)
    keep = weight > 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    p = targets[keep] / weight[keep, None]
    return -(p * F.log_softmax(logits[keep].float(), dim=-1)).sum(dim=-1).mean()


def clip_label_loss(model: VisionLanguageModel, image_embedding: torch.Tensor, label_embedding: torch.Tensor,
                    label_targets: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss of images (B, E) against all labels (L, E), multi-hot targets (B, L).

    Image -> label: soft cross-entropy over the label set, uniform over the scene's labels.
    Label -> image: for each label present in the batch, over the batch's images.
    """
    logits = model.contrastive_logits(image_embedding, label_embedding)  # (B, L)
    return 0.5 * (_soft_cross_entropy(logits, label_targets) + _soft_cross_entropy(logits.t(), label_targets.t()))


def aux_loss(aux_logits: tuple[torch.Tensor, ...], aux: torch.Tensor, empty_weight: float) -> torch.Tensor:
    """Mean over attributes of the per-cell cross-entropy, weighted towards the object cells.

    aux_logits as VLMOutput's, aux (B, A, G, G) int64. Most cells are empty, so a plain mean over
    cells is dominated by the easy "none" class: each cell's loss is weighted 1 where the cell holds
    an object centre (any attribute not "none") and ``empty_weight`` where it is empty, and the
    weighted sum is divided by the weights' sum (cells whose target is IGNORE_INDEX count 0).
    """
    if not aux_logits:
        return aux.new_zeros((), dtype=torch.float32)
    occupied = (aux != NONE_CLASS_ID).any(dim=1).flatten()  # (B*G*G,): an object centre lies in the cell
    cell_weight = torch.where(occupied, 1.0, empty_weight)  # (B*G*G,)
    losses = []
    for a, logits in enumerate(aux_logits):
        target = aux[:, a].flatten()  # (B*G*G,)
        ce = F.cross_entropy(logits.flatten(0, 2).float(), target, ignore_index=IGNORE_INDEX, reduction="none")
        w = cell_weight * (target != IGNORE_INDEX)
        losses.append((ce * w).sum() / w.sum().clamp_min(1e-6))
    return torch.stack(losses).mean()


@dataclass(frozen=True)
class MultiTextOutput:
    """A forward over B images and N texts about them (text i is about image image_index[i])."""

    logits: torch.Tensor  # (N, T, V)
    image_tokens: torch.Tensor  # (B, G*G, enc_dim)
    image_embedding: torch.Tensor  # (B, embed_dim), L2-normalised
    decoder_last: torch.Tensor  # (N, T, dec_dim), the last decoder block's output
    aux_logits: tuple[torch.Tensor, ...]  # one (B, G, G, classes_i) per auxiliary attribute
    ground_log_attention: torch.Tensor | None  # (N, L, T, N_img) of the grounding head per block, when asked


def forward_multi_text(model: VisionLanguageModel, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                       image_index: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       with_grounding: bool = False) -> MultiTextOutput:
    """VisionLanguageModel.forward_features with several texts per image: the encoder runs once per
    image and each layer's cross-attention K/V are gathered per text.

    pixel_values (B, 3, H, W) float32, input_ids (N, T) int64, image_index (N,) int64 in [0, B),
    attention_mask (N, T) bool (right padding) or None. With a mask the texts are decoded in
    LENGTH_BUCKETS groups of similar length, each trimmed to its longest text: short answers are not
    padded to the longest caption. Outputs at valid positions are the same as one padded pass (the
    decoder is causal); padded positions hold no meaningful values (the losses mask them).
    with_grounding also returns the grounding head's log attention (vlm_grounding).
    """
    image_tokens, _ = model.image_encoder(pixel_values)  # (B, G*G, Ce)
    image_embeds = model.projector(image_tokens)  # (B, N_img, Cd)
    image_kv = model.cross_kv(image_embeds)  # per image: (B, nh, N_img, hs) each
    keys = grounding_keys(model.decoder, image_embeds.detach()) if with_grounding else []  # (B, N_img, hs) each
    n, width = input_ids.shape
    if attention_mask is None:
        groups = [torch.arange(n, device=input_ids.device)]
        lengths = torch.full((n,), width, device=input_ids.device)
    else:
        lengths = attention_mask.sum(dim=1)  # (N,)
        groups = [g for g in torch.tensor_split(torch.argsort(lengths), LENGTH_BUCKETS) if len(g)]
    logits, last, attention = [], [], []
    for rows in groups:  # (n_g,) text indices
        length = int(lengths[rows].max())
        cross = tuple(kv[image_index[rows]] for kv in image_kv)  # (n_g, nh, N_img, hs)
        records, handles = collect_cross_queries(model.decoder) if with_grounding else ([], [])
        try:
            group_logits, _, hidden = model.decoder(input_ids[rows, :length], cross)  # (n_g, length, V)
        finally:
            for handle in handles:
                handle.remove()
        logits.append(F.pad(group_logits, (0, 0, 0, width - length)))  # (n_g, T, V)
        last.append(F.pad(hidden[-1], (0, 0, 0, width - length)))  # (n_g, T, Cd)
        if with_grounding:
            group_keys = [k[image_index[rows]] for k in keys]
            attention.append(F.pad(head_log_attention(records, group_keys, model.decoder),
                                   (0, 0, 0, width - length)))  # (n_g, L, T, N_img)
    inverse = torch.argsort(torch.cat(groups))  # back to the batch's text order
    return MultiTextOutput(logits=torch.cat(logits)[inverse], image_tokens=image_tokens,
                           image_embedding=model._pool_image(image_tokens), decoder_last=torch.cat(last)[inverse],
                           aux_logits=model.attribute_logits(image_tokens),
                           ground_log_attention=torch.cat(attention)[inverse] if with_grounding else None)


def compute_losses(model: VisionLanguageModel, batch: dict[str, torch.Tensor], label_ids: torch.Tensor,
                   label_mask: torch.Tensor, weights: LossWeights, teacher: VisionLanguageModel | None = None,
                   projections: Projections | None = None, teacher_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Every loss term of one batch (see the module docstring and ``collate``) and their weighted ``total``;
    the teacher's terms are weighted by ``teacher_scale`` on top of their weights."""
    out = forward_multi_text(model, batch["pixel_values"], batch["input_ids"], batch["image_index"],
                             batch["attention_mask"], with_grounding=weights.ground > 0)
    labels = batch["labels"]
    lm = F.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
    label_embedding = model.embed_text(label_ids, label_mask)  # (L, E)
    losses = {
        "lm": lm,
        "contrastive": clip_label_loss(model, out.image_embedding, label_embedding, batch["label_targets"]),
        "aux": aux_loss(out.aux_logits, batch["aux"], weights.aux_empty),
    }
    if out.ground_log_attention is not None:
        losses["ground"] = grounding_loss(out.ground_log_attention, batch["ground"], model.config.pixel_shuffle)
    if teacher is not None:
        with torch.no_grad():
            t_out = forward_multi_text(teacher, batch["pixel_values"], batch["input_ids"], batch["image_index"],
                                       batch["attention_mask"])
            t_label_embedding = teacher.embed_text(label_ids, label_mask)
        target_mask = labels != IGNORE_INDEX  # (N, T)
        losses["kd_logit"] = kd_logit_loss(out.logits, t_out.logits, weights.kd_temperature, target_mask)
        losses["hidden"] = 0.5 * (
            hidden_match_loss(out.image_tokens, t_out.image_tokens, projections.encoder)
            + hidden_match_loss(out.decoder_last, t_out.decoder_last, projections.decoder, batch["attention_mask"])
        )
        # Each image against one of its labels: the (B, B) similarity structure TinyCLIP mimics.
        pick = batch["label_index"]
        has = pick != NO_LABEL  # frames without objects have no label to pair with
        losses["affinity"] = affinity_distill_loss(out.image_embedding[has], label_embedding[pick[has]],
                                                   t_out.image_embedding[has], t_label_embedding[pick[has]],
                                                   weights.affinity_temperature)
    losses["total"] = sum(getattr(weights, name) * value * (teacher_scale if name in TEACHER_TERMS else 1.0)
                          for name, value in losses.items())
    return losses


MEMORY_POSITIONS_PARAM = "projector.positions"  # VisionLanguageModel's learned memory positions


def _param_groups(modules: list[nn.Module], weight_decay: float,
                  memory_position_lr_scale: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices (Linear, Conv, Embedding), none on vectors (norms, biases, scales);
    the memory positions in a group of their own, without decay, at memory_position_lr_scale x the lr."""
    decay, no_decay, positions = [], [], []
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            if name == MEMORY_POSITIONS_PARAM:
                positions.append(p)
            else:
                (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if positions:
        groups.append({"params": positions, "weight_decay": 0.0, LR_SCALE_KEY: memory_position_lr_scale})
    return groups


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train_stage(name: str, model: VisionLanguageModel, dataset: VLMSceneDataset, out_dir: str | Path,
                options: StageOptions, weights: LossWeights, setup: DeviceSetup,
                teacher: VisionLanguageModel | None = None, show_progress: bool = True) -> Path:
    """Train `model` on `dataset` into out_dir (step_* checkpoints, then out_dir/final); returns final.

    With a teacher the distillation terms are added (the teacher is frozen, in eval mode).
    Resumes from out_dir's latest step checkpoint; returns at once when out_dir/final exists.
    """
    out_dir = Path(out_dir)
    final = out_dir / FINAL_DIR
    if (final / "config.json").is_file():
        logger.info("%s: %s exists, skipping", name, final)
        return final
    device = setup.device
    model.to(device).train()
    projections = Projections(model.config, teacher.config).to(device) if teacher is not None else None
    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)
    modules = [model] + ([projections] if projections is not None else [])
    groups = _param_groups(modules, options.weight_decay, options.memory_position_lr_scale)
    optimizer = torch.optim.AdamW(groups, lr=options.lr, betas=(0.9, 0.98))
    scaler = setup.grad_scaler()
    step, spent_s = 0, 0.0
    resume = latest_checkpoint(out_dir)
    if resume is not None:
        restored, _, meta = load_checkpoint(resume, VisionLanguageModel, VLMConfig)
        model.load_state_dict(restored.state_dict())
        if projections is not None and (out_dir / PROJECTIONS_FILE).is_file():
            projections.load_state_dict(torch.load(out_dir / PROJECTIONS_FILE, map_location=device, weights_only=True))
        load_optimizer_state(resume, optimizer, map_location=str(device))
        step, spent_s = int(meta["step"]), float(meta["extra"].get("spent_s", 0.0))
        logger.info("%s: resuming from %s (step %d, %.0f s spent)", name, resume, step, spent_s)
    budget_s = math.inf if options.budget_minutes is None else options.budget_minutes * 60.0
    schedule = CosineSchedule(options.lr, SCHEDULE_RESOLUTION, int(options.warmup_fraction * SCHEDULE_RESOLUTION),
                              options.lr * options.min_lr_fraction)
    label_ids, label_mask = (t.to(device) for t in label_token_batch(dataset.tokenizer, dataset.labels))
    clock = TimeBudget(None)
    last_ckpt = time.monotonic()

    def stage_progress() -> float:
        by_time = (spent_s + clock.elapsed()) / budget_s
        by_steps = step / options.max_steps if options.max_steps else 0.0
        return min(1.0, max(by_time, by_steps))

    def checkpoint(path: Path, with_optimizer: bool) -> None:
        if projections is not None:
            torch.save(projections.state_dict(), out_dir / PROJECTIONS_FILE)
        save_checkpoint(path, model, model.config, step=step, optimizer=optimizer if with_optimizer else None,
                        extra={"stage": name, "spent_s": round(spent_s + clock.elapsed(), 1),
                               "weights": asdict(weights), "options": asdict(options)})

    first_step = step + 1  # logged whatever its number, so that every run (or resumed run) has a row
    bar = progress(total=options.max_steps, enabled=show_progress, desc=name, initial=step)
    with MetricsLogger(out_dir / "train_log.jsonl") as log:
        while stage_progress() < 1.0:
            frac = stage_progress()
            lr = schedule(int(frac * SCHEDULE_RESOLUTION))
            set_lr(optimizer, lr)
            pool = curriculum_pool(dataset.object_counts, frac, options.curriculum_fraction)
            # Batches are a function of (seed, step): two stages with the same seed see the same images
            # at the same step (distilled vs scratch), and a resumed stage continues the same sequence.
            pick_rng = np.random.default_rng([options.seed, step, IMAGE_STREAM])
            text_rng = np.random.default_rng([options.seed, step, TEXT_STREAM])
            indices = pick_rng.choice(pool, size=options.batch_size, replace=len(pool) < options.batch_size)
            examples = [dataset.example(int(i), text_rng, options.texts_per_image) for i in indices]
            batch = _to_device(collate(examples, dataset.tokenizer.config.pad_id), device)
            scale = teacher_anneal_scale(weights.teacher_anneal, frac) if teacher is not None else 0.0
            with setup.autocast():
                losses = compute_losses(model, batch, label_ids, label_mask, weights, teacher, projections, scale)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["total"]).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_([p for m in modules for p in m.parameters()], options.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            bar.update(1)
            if step % LOG_EVERY_STEPS == 0 or step == first_step:
                values = {k: round(float(v.detach()), 4) for k, v in losses.items()}
                bar.set_postfix(loss=values["total"], lm=values["lm"])
                log.log(step, lr=lr, grad_norm=float(grad_norm), progress=round(frac, 4), teacher_scale=round(scale, 4),
                        max_objects=int(dataset.object_counts[pool].max()), **values)
            if time.monotonic() - last_ckpt > options.checkpoint_minutes * 60.0:
                previous = latest_checkpoint(out_dir)
                checkpoint(out_dir / step_dir_name(step), with_optimizer=True)
                if previous is not None and previous.name != step_dir_name(step):
                    shutil.rmtree(previous, ignore_errors=True)  # keep only the newest resumable checkpoint
                last_ckpt = time.monotonic()
    bar.close()
    seconds = spent_s + clock.elapsed()
    samples = step * options.batch_size
    logger.info("%s: %d steps (%d images, %d texts) in %.0f s, %.1f images/s", name, step, samples,
                samples * options.texts_per_image, seconds, samples / max(seconds, 1e-9))
    checkpoint(final, with_optimizer=False)
    (out_dir / "stage.json").write_text(json.dumps({"stage": name, "steps": step, "examples": samples,
                                                     "texts": samples * options.texts_per_image,
                                                     "seconds": round(seconds, 1),
                                                     "examples_per_s": round(samples / max(seconds, 1e-9), 2),
                                                     "device": str(device)}, indent=2) + "\n")
    return final
