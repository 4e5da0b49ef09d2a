"""Checkpoints on disk: weights as safetensors, the model config as JSON, optimizer state for resume.

A checkpoint is a directory::

    DIR/model.safetensors   the state dict (fp32, or fp16 to commit a teacher at half the size);
                            a tensor shared by several names (tied weights) is stored once
    DIR/config.json         {"format_version", "kind" (module.Class of the model), "config" (the
                            model config dataclass as a dict), "step", "dtype", "tied", "extra"}
    DIR/optimizer.pt        optional: the optimizer's state_dict, to resume training

The directory is written next to its final place and renamed into it, so a crash never leaves a
half-written checkpoint behind: a directory with config.json is complete. Run directories hold
``step_{step:08d}`` checkpoints; ``latest_checkpoint`` finds the newest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from tinymm.errors import InputError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.pt"
STEP_DIR_PREFIX = "step_"
STEP_DIR_DIGITS = 8
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def step_dir_name(step: int) -> str:
    """``step_00001234``: the name of a run's checkpoint directory for ``step``."""
    return f"{STEP_DIR_PREFIX}{step:0{STEP_DIR_DIGITS}d}"


def model_kind(model_or_cls: nn.Module | type) -> str:
    """``module.Class`` of a model (or model class), recorded so a checkpoint is not loaded into another."""
    cls = model_or_cls if isinstance(model_or_cls, type) else type(model_or_cls)
    return f"{cls.__module__}.{cls.__qualname__}"


def _config_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    raise TypeError(f"config must be a dataclass instance or have to_dict(), got {type(config).__name__}")


def _dedupe_tied(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keep one name per shared tensor: (unique tensors, {alias: kept name})."""
    kept: dict[tuple, str] = {}
    unique: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))
        if tensor.numel() and key in kept:
            tied[name] = kept[key]
            continue
        kept[key] = name
        unique[name] = tensor
    return unique, tied


def save_checkpoint(
    path_dir: str | Path,
    model: nn.Module,
    config: Any,
    *,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    extra: Mapping[str, Any] | None = None,
    dtype: str = "float32",
) -> Path:
    """Write ``model``'s weights, ``config`` and (optionally) ``optimizer`` state to ``path_dir``.

    Args:
        path_dir: the checkpoint directory; an existing one is replaced as a whole.
        model: its ``state_dict()`` is stored; floating tensors are cast to ``dtype``.
        config: the model config dataclass (stored with ``dataclasses.asdict``).
        step: the optimizer step the weights are from.
        optimizer: stored in optimizer.pt when given (resume).
        extra: JSON-serializable metadata (metrics, data sizes, command line).
        dtype: "float32" (training, resume) or "float16" (a committed teacher, half the size).

    Returns:
        The checkpoint directory.
    """
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
    path_dir = Path(path_dir)
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": model_kind(model),
        "config": _config_dict(config),
        "step": int(step),
        "dtype": dtype,
        "extra": dict(extra or {}),
    }
    unique, tied = _dedupe_tied(model.state_dict())
    meta["tied"] = tied
    cast = DTYPES[dtype]
    tensors = {
        name: (t.detach().to("cpu", cast) if t.is_floating_point() else t.detach().cpu()).contiguous()
        for name, t in unique.items()
    }
    config_text = json.dumps(meta, indent=2) + "\n"  # fails before anything is written if extra is not JSON
    path_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path_dir.name}.tmp-", dir=path_dir.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "kind": meta["kind"]})
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        (tmp / CONFIG_FILE).write_text(config_text, encoding="utf-8")
        _replace_dir(tmp, path_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved checkpoint %s (step %d, %s)", path_dir, step, dtype)
    return path_dir


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished directory ``src`` to ``dst``, replacing an existing ``dst``."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def read_checkpoint_meta(path_dir: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint; InputError when it is missing or not a checkpoint."""
    path = Path(path_dir) / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"{path_dir} is not a checkpoint ({CONFIG_FILE} is missing); pass a directory save_checkpoint wrote")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); the checkpoint is corrupt") from e
    if not isinstance(meta, dict) or not {"kind", "config", "step"} <= set(meta):
        raise InputError(f"{path} lacks 'kind', 'config' or 'step'; it was not written by save_checkpoint")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(
            f"{path} has format_version {meta['format_version']}, newer than {FORMAT_VERSION}; update the code"
        )
    return meta


def load_checkpoint(
    path_dir: str | Path, model_cls: type[nn.Module], config_cls: type, *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Rebuild ``model_cls(config)`` from a checkpoint; returns (model in eval mode, config, meta).

    Weights stored in float16 are cast back to the model's (float32) parameters. ``meta`` is
    config.json (step, extra, ...). Raises InputError when the directory is not a checkpoint of
    ``model_cls`` or its weights do not fit the model.
    """
    from safetensors.torch import load_file

    path_dir = Path(path_dir)
    meta = read_checkpoint_meta(path_dir)
    if meta["kind"] != model_kind(model_cls):
        raise InputError(f"{path_dir} holds a {meta['kind']}, not a {model_kind(model_cls)}; pass the matching class")
    try:
        config = config_cls.from_dict(meta["config"]) if hasattr(config_cls, "from_dict") else config_cls(**meta["config"])
    except (TypeError, ValueError) as e:
        raise InputError(f"{path_dir}/{CONFIG_FILE} has a config that {config_cls.__name__} refuses: {e}") from e
    model = model_cls(config)
    state = load_file(str(path_dir / WEIGHTS_FILE), device="cpu")
    for alias, name in meta.get("tied", {}).items():
        state[alias] = state[name]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(f"the weights in {path_dir} do not fit {config_cls.__name__} {meta['config']}: {e}") from e
    model.to(map_location)
    model.eval()
    return model, config, meta


def load_optimizer_state(path_dir: str | Path, optimizer: torch.optim.Optimizer, map_location: str = "cpu") -> bool:
    """Restore optimizer.pt into ``optimizer``; False when the checkpoint has none."""
    path = Path(path_dir) / OPTIMIZER_FILE
    if not path.is_file():
        return False
    optimizer.load_state_dict(torch.load(path, map_location=map_location, weights_only=True))
    return True


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete ``step_*`` checkpoint with the highest step under ``run_dir``, or None."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    found = []
    for child in run_dir.iterdir():
        suffix = child.name[len(STEP_DIR_PREFIX):]
        if child.name.startswith(STEP_DIR_PREFIX) and suffix.isdigit() and (child / CONFIG_FILE).is_file():
            found.append((int(suffix), child))
    return max(found)[1] if found else None


def adopt_files(source: Path, target: Path, hint: str) -> None:
    """Copy every file of ``source`` into ``target`` once (a run adopting a committed teacher or its
    tokenizer); a different file already at ``target`` is an InputError ending in ``hint``, since the
    run's other outputs were made with it."""
    target.mkdir(parents=True, exist_ok=True)
    # config.json last: a checkpoint directory with config.json is complete (the module docstring).
    for path in sorted((p for p in source.iterdir() if p.is_file()), key=lambda p: (p.name == CONFIG_FILE, p.name)):
        copy = target / path.name
        if not copy.is_file():
            shutil.copyfile(path, copy.with_name(copy.name + ".part"))
            os.replace(copy.with_name(copy.name + ".part"), copy)
        elif copy.read_bytes() != path.read_bytes():
            raise InputError(f"{copy} differs from {path}; {hint}")
