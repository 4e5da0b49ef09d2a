"""The TensorRT engine cache: keys, optimization-profile shapes, lookup and the reasons to rebuild.

A serialized TensorRT engine only runs on the GPU model and TensorRT version it was built with,
at the precision and within the input shapes (the optimization profile) chosen at build time, and
only for the ONNX file it came from. `EngineKey` holds those five parts; its fingerprint names the
engine file, so a stale engine is never loaded. Next to each engine a small JSON record keeps the
key of the last build for that model and precision, which is how a rebuild can say *why* it
happens ("TensorRT version changed: 10.3.0 -> 10.7.0").

Cache layout under a directory chosen by the caller (e.g. `~/.cache/tinymm/<bundle>-<manifest hash>/tensorrt`, next to
the engines onnxruntime caches for `tinymm.load`; see `tinymm.backends.trt_profiles.engine_cache_dir`):
    <stem>.<precision>.<fingerprint>.engine    the serialized engine
    <stem>.<precision>.json                    the EngineKey of the newest engine of that slot
    timing-<gpu>-trt<version>.cache            TensorRT's timing cache, shared by all builds

Nothing here imports TensorRT or CUDA: the GPU name, compute capability and TensorRT version are
passed in, so all of it is testable on a machine without a GPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from tinymm.backends.base import Dim, InputProfile
from tinymm.errors import BackendError, InputError

logger = logging.getLogger(__name__)

ENGINE_SUFFIX = ".engine"
RECORD_SUFFIX = ".json"
FINGERPRINT_HEX_CHARS = 16  # 64 bits of sha256: collisions are not a concern for one cache
TRT_PRECISIONS = ("fp16", "int8")  # engines are built from the bundle's fp16 or QDQ-int8 ONNX
BATCH_DIM = "batch"  # the dynamic dimension every component has first
# Human-readable names of EngineKey's parts, in the order reasons are reported.
KEY_PARTS: Mapping[str, str] = {
    "gpu_name": "GPU",
    "compute_capability": "compute capability",
    "trt_version": "TensorRT version",
    "precision": "precision",
    "profiles": "shape profile",
    "onnx_sha256": "ONNX file (sha256)",
}

Range = tuple[int, int, int]  # (min, opt, max) of one dimension


class _Spec(Protocol):
    """A tensor spec: tinymm.backends.base.TensorSpec or a bundle manifest's TensorSpec."""

    name: str
    shape: tuple[Dim, ...]


def _check_range(where: str, value: Any) -> Range:
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 3
        or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
    ):
        raise InputError(f"{where}={value!r} must be a (min, opt, max) tuple of ints")
    low, opt, high = value
    if not 1 <= low <= opt <= high:
        raise InputError(f"{where}={tuple(value)} must satisfy 1 <= min <= opt <= max")
    return (low, opt, high)


@dataclass(frozen=True)
class ShapeLimits:
    """The sizes an engine must accept for each named dynamic dimension.

    batch: (min, opt, max) of the "batch" dimension; opt is the size TensorRT tunes for.
    dims: other dimension names -> (min, opt, max), e.g. {"seq": (1, 16, 64), "past": (1, 32, 64)}.
    """

    batch: Range = (1, 1, 8)
    dims: Mapping[str, Range] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch", _check_range("ShapeLimits.batch", self.batch))
        if not isinstance(self.dims, Mapping):
            raise InputError(f"ShapeLimits.dims={self.dims!r} must map dimension names to (min, opt, max)")
        dims = {}
        for name, value in self.dims.items():
            if not isinstance(name, str) or not name:
                raise InputError(f"ShapeLimits.dims has key {name!r}; keys are dimension names such as 'seq'")
            dims[name] = _check_range(f"ShapeLimits.dims[{name!r}]", value)
        object.__setattr__(self, "dims", dict(sorted(dims.items())))

    def range_of(self, dim: str) -> Range | None:
        return self.batch if dim == BATCH_DIM else self.dims.get(dim)


def contract_limits(
    context: int, *, max_batch: int = 8, max_frames: int | None = None, max_new: int = 1
) -> ShapeLimits:
    """ShapeLimits for the bundle contract's dynamic dimensions.

    context: the decoder's most tokens (prompt included), bounding "seq" and "past".
    max_frames: the most log-mel frames of a speech clip ("frames"); None for bundles without audio.
    max_new: tokens fed per decoder-with-past step ("new"); 1 for greedy and beam search.
    Opt sizes: batch 1, half the context, half the frames, max_new.
    """
    dims: dict[str, Range] = {
        "seq": (1, max(1, context // 2), context),
        "past": (1, max(1, context // 2), context),
        "new": (1, max_new, max_new),
    }
    if max_frames is not None:
        dims["frames"] = (1, max(1, max_frames // 2), max_frames)
    return ShapeLimits(batch=(1, 1, max_batch), dims=dims)


def compute_profiles(inputs: Sequence[_Spec], limits: ShapeLimits) -> tuple[InputProfile, ...]:
    """The optimization profile for `inputs` under `limits`, one InputProfile per input, sorted by name.

    Fixed dimensions (ints) keep their size; named dimensions take their range from `limits`.
    Raises InputError for an unnamed dynamic dimension or a name `limits` has no range for.
    """
    profiles = []
    for spec in inputs:
        ranges = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0:
                ranges.append((dim, dim, dim))
                continue
            found = limits.range_of(dim) if isinstance(dim, str) else None
            if found is None:
                raise InputError(
                    f"input {spec.name!r} dimension {axis} is dynamic ({dim!r}) but the shape limits give no "
                    f"range for it; pass ShapeLimits(dims={{{dim!r}: (min, opt, max)}}) (known: "
                    f"{[BATCH_DIM, *limits.dims]})"
                )
            ranges.append(found)
        lows, opts, highs = (tuple(r[i] for r in ranges) for i in range(3))
        profiles.append(InputProfile(spec.name, lows, opts, highs))
    return tuple(sorted(profiles, key=lambda p: p.name))


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on; see KEY_PARTS."""

    gpu_name: str  # e.g. "NVIDIA Jetson AGX Orin" or "NVIDIA H100 80GB HBM3"
    compute_capability: str  # "major.minor", e.g. "8.7"
    trt_version: str  # tensorrt.__version__, e.g. "10.3.0"
    precision: str  # one of TRT_PRECISIONS
    profiles: tuple[InputProfile, ...]  # from compute_profiles
    onnx_sha256: str  # of the ONNX file the engine is built from

    def __post_init__(self) -> None:
        if self.precision not in TRT_PRECISIONS:
            raise InputError(f"EngineKey.precision={self.precision!r} must be one of {list(TRT_PRECISIONS)}")
        if not re.fullmatch(r"\d+\.\d+", self.compute_capability):
            raise InputError(f"EngineKey.compute_capability={self.compute_capability!r} must look like '8.7'")
        for name in ("gpu_name", "trt_version", "onnx_sha256"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise InputError(f"EngineKey.{name}={getattr(self, name)!r} must be a non-empty string")
        object.__setattr__(self, "profiles", tuple(sorted(self.profiles, key=lambda p: p.name)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "trt_version": self.trt_version,
            "precision": self.precision,
            "profiles": [p.to_list() for p in self.profiles],
            "onnx_sha256": self.onnx_sha256,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineKey:
        """The key stored by `to_dict`; InputError when `data` is not one."""
        try:
            profiles = tuple(InputProfile(n, tuple(lo), tuple(op), tuple(hi)) for n, lo, op, hi in data["profiles"])
            return cls(
                gpu_name=data["gpu_name"],
                compute_capability=data["compute_capability"],
                trt_version=data["trt_version"],
                precision=data["precision"],
                profiles=profiles,
                onnx_sha256=data["onnx_sha256"],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"not an engine cache record ({e!r}); delete it and the engine is rebuilt") from e

    def fingerprint(self) -> str:
        """FINGERPRINT_HEX_CHARS hex digits of the sha256 of the canonical JSON of this key."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:FINGERPRINT_HEX_CHARS]


def describe_changes(old: EngineKey, new: EngineKey) -> list[str]:
    """One reason per key part that differs, e.g. "TensorRT version changed: 10.3.0 -> 10.7.0"."""
    reasons = []
    for part, label in KEY_PARTS.items():
        before, after = getattr(old, part), getattr(new, part)
        if before == after:
            continue
        if part == "profiles":
            before, after = _describe_profiles(before), _describe_profiles(after)
        elif part == "onnx_sha256":
            before, after = before[:12], after[:12]
        reasons.append(f"{label} changed: {before} -> {after}")
    return reasons


def _describe_profiles(profiles: Sequence[InputProfile]) -> str:
    return "; ".join(f"{p.name} min{list(p.min)} opt{list(p.opt)} max{list(p.max)}" for p in profiles)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-").lower() or "unnamed"


def engine_path(cache_dir: Path, stem: str, key: EngineKey) -> Path:
    """Where the engine for model `stem` (e.g. "image_encoder") and `key` lives."""
    return Path(cache_dir) / f"{_slug(stem)}.{key.precision}.{key.fingerprint()}{ENGINE_SUFFIX}"


def record_path(cache_dir: Path, stem: str, precision: str) -> Path:
    """The JSON record of the newest engine for model `stem` at `precision`."""
    return Path(cache_dir) / f"{_slug(stem)}.{precision}{RECORD_SUFFIX}"


def timing_cache_path(cache_dir: Path, gpu_name: str, trt_version: str) -> Path:
    """TensorRT's timing cache for this GPU and TensorRT version."""
    return Path(cache_dir) / f"timing-{_slug(gpu_name)}-trt{_slug(trt_version)}.cache"


@dataclass(frozen=True)
class CacheDecision:
    """The outcome of `lookup`: use the cached engine, or build one for the given reasons."""

    path: Path  # where the engine is (hit) or must be written (miss)
    hit: bool
    reasons: tuple[str, ...] = ()  # why a build is needed; empty on a hit


def lookup(cache_dir: Path, stem: str, key: EngineKey) -> CacheDecision:
    """Find the engine for `stem` and `key` in `cache_dir`; on a miss, say why (and log it)."""
    path = engine_path(cache_dir, stem, key)
    if path.is_file():
        logger.info("TensorRT engine cache hit: %s", path)
        return CacheDecision(path=path, hit=True)
    record = record_path(cache_dir, stem, key.precision)
    reasons: list[str] = []
    if record.is_file():
        try:
            previous = EngineKey.from_dict(json.loads(record.read_text(encoding="utf-8")))
        except (OSError, ValueError, InputError) as e:
            reasons.append(f"the cache record {record.name} is unreadable ({e})")
        else:
            reasons = describe_changes(previous, key) or [f"the engine file {path.name} is missing"]
    else:
        reasons.append(f"no {key.precision} engine cached for {stem!r} yet")
    logger.info("building a TensorRT engine for %s (%s): %s", stem, key.precision, "; ".join(reasons))
    return CacheDecision(path=path, hit=False, reasons=tuple(reasons))


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def store(cache_dir: Path, stem: str, key: EngineKey, engine: bytes) -> Path:
    """Write `engine` for `stem` and `key`, record the key, and remove the slot's previous engine.

    Writes are atomic (a temporary file renamed into place), so a crash never leaves a truncated
    engine under a valid name. Raises BackendError when the directory is not writable.
    """
    path = engine_path(cache_dir, stem, key)
    record = record_path(cache_dir, stem, key.precision)
    previous = None
    if record.is_file():
        try:
            previous = engine_path(cache_dir, stem, EngineKey.from_dict(json.loads(record.read_text("utf-8"))))
        except (OSError, ValueError, InputError):
            previous = None
    try:
        _write_atomic(path, bytes(engine))
        _write_atomic(record, json.dumps(key.to_dict(), indent=2, sort_keys=True).encode("utf-8"))
    except OSError as e:
        raise BackendError(
            f"cannot write the TensorRT engine cache in {cache_dir}: {e}; choose a writable cache_dir"
        ) from e
    if previous is not None and previous != path and previous.is_file():
        previous.unlink()
        logger.info("removed the superseded engine %s", previous.name)
    logger.info("cached TensorRT engine %s (%d bytes)", path, len(engine))
    return path
