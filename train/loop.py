"""Small helpers every training recipe uses: seeds, threads, LR schedule, time budget, progress,
device and mixed precision, and a JSONL metrics log. No training loop lives here: each recipe
writes its own in a few readable lines.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SECONDS_PER_MINUTE = 60.0


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(n: int | None) -> None:
    """Use ``n`` CPU threads for torch's intra-op work (None: leave torch's default)."""
    if n is not None:
        if n < 1:
            raise ValueError(f"threads={n} must be at least 1")
        torch.set_num_threads(n)


@dataclass(frozen=True)
class CosineSchedule:
    """Linear warmup from 0 to ``peak_lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at ``total_steps``."""

    peak_lr: float  # learning rate at the end of warmup
    total_steps: int  # steps of the whole run; later steps stay at min_lr
    warmup_steps: int = 0  # steps of linear warmup
    min_lr: float = 0.0  # learning rate at and after total_steps

    def __post_init__(self) -> None:
        if not self.peak_lr > 0 or self.min_lr < 0 or self.min_lr > self.peak_lr:
            raise ValueError(f"need 0 <= min_lr <= peak_lr and peak_lr > 0, got {self.peak_lr}, {self.min_lr}")
        if self.total_steps < 1 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"need 0 <= warmup_steps <= total_steps >= 1, got {self.warmup_steps}, {self.total_steps}")

    def __call__(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_lr(step: int, progress: float, peak_lr: float, warmup_steps: int, min_lr: float = 0.0) -> float:
    """Learning rate for a run whose length is known only as a fraction (steps or time budget).

    Linear warmup over the first ``warmup_steps`` optimizer steps, times a cosine decay from
    ``peak_lr`` to ``min_lr`` over ``progress`` in [0, 1] (e.g. max(step / max_steps, time used)).
    """
    warm = min((step + 1) / warmup_steps, 1.0) if warmup_steps > 0 else 1.0
    progress = min(max(progress, 0.0), 1.0)
    return warm * (min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress)))


def teacher_anneal_scale(anneal: bool, progress: float) -> float:
    """Factor on a distillation stage's teacher terms at ``progress`` (0..1): falling linearly to 0
    when ``anneal``, so a student that outgrows its teacher ends on the ground truth alone; else 1."""
    return max(0.0, 1.0 - progress) if anneal else 1.0


LR_SCALE_KEY = "lr_scale"  # optional in a parameter group: its learning rate is this times the schedule's


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate: lr, times the group's LR_SCALE_KEY where it has one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get(LR_SCALE_KEY, 1.0)


class TimeBudget:
    """A wall-clock budget: ``expired()`` turns true once ``minutes`` have passed since construction.

    ``minutes=None`` never expires. Training loops check it each step and stop early, saving a
    checkpoint, so that a stage ends on time whatever the machine's speed. A resumed run passes
    the seconds it had already spent (``spent_s``), so the budget covers the whole stage.
    """

    def __init__(self, minutes: float | None, spent_s: float = 0.0, clock=time.monotonic) -> None:
        if minutes is not None and not minutes > 0:
            raise ValueError(f"budget minutes={minutes!r} must be positive (or None for no limit)")
        self.seconds = None if minutes is None else minutes * SECONDS_PER_MINUTE
        self._clock = clock
        self._start = clock() - spent_s

    def elapsed(self) -> float:
        """Seconds since construction, plus ``spent_s``."""
        return self._clock() - self._start

    def remaining(self) -> float:
        """Seconds left (inf without a budget)."""
        return math.inf if self.seconds is None else self.seconds - self.elapsed()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def fraction(self) -> float:
        """Share of the budget used, 0..1 (0 without a budget)."""
        return 0.0 if self.seconds is None else min(self.elapsed() / self.seconds, 1.0)


def progress(iterable: Iterable | None = None, *, enabled: bool = True, **tqdm_kwargs: Any):
    """A tqdm progress bar over ``iterable`` (or a manual one with ``total=``); silent when not enabled."""
    from tqdm import tqdm

    return tqdm(iterable, disable=not enabled, dynamic_ncols=True, **tqdm_kwargs)


@dataclass(frozen=True)
class DeviceSetup:
    """Where training runs and in which precision.

    Mixed precision (``torch.autocast``) is used only on CUDA: bf16 where the GPU supports it,
    else fp16 with a GradScaler. On CPU everything stays fp32.
    """

    device: torch.device
    amp_dtype: torch.dtype | None  # None: full fp32

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for forward passes: autocast on CUDA with amp_dtype, a no-op otherwise."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled only for fp16 on CUDA (bf16 and fp32 need none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)


def setup_device(device: str = "auto", precision: str = "auto") -> DeviceSetup:
    """Choose the device ("auto": CUDA when present, else CPU) and precision ("auto": bf16 or fp16 on CUDA, fp32 on CPU)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {list(PRECISIONS)}")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    if dev.type != "cuda" or precision == "fp32":
        if precision in ("bf16", "fp16") and dev.type != "cuda":
            raise ValueError(f"precision={precision} needs a CUDA device; on {dev} use fp32 or auto")
        return DeviceSetup(dev, None)
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return DeviceSetup(dev, torch.bfloat16 if precision == "bf16" else torch.float16)


class MetricsLogger:
    """Appends one JSON object per ``log`` call to a .jsonl file (step, wall time, metrics)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._start = time.monotonic()

    def log(self, step: int, **metrics: Any) -> None:
        row = {"step": int(step), "time_s": round(time.monotonic() - self._start, 2)}
        row.update({k: (float(v) if isinstance(v, (torch.Tensor, np.floating)) else v) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | Path) -> Iterator[dict[str, Any]]:
    """The rows a MetricsLogger wrote."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
