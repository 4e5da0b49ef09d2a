"""The backend seam: what every inference backend offers, and the checks they share.

A backend turns a model file into a `Session` that runs a dict of numpy arrays and describes its
inputs and outputs. Backends live one per file and are imported only when asked for by name
(`get_backend`), so that a missing optional package (onnxruntime-gpu, tensorrt) is a clear
BackendError saying what to install instead of an ImportError when tinymm is imported.

This module imports nothing heavier than numpy.
"""

from __future__ import annotations

import importlib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from tinymm.errors import BackendError, InputError

PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")
GRAPH_OPTIMIZATIONS = ("disabled", "basic", "extended", "all")
IO_BINDING_MODES = ("auto", "on", "off")
# Providers that keep tensors in GPU memory; IO binding defaults to on for them.
GPU_PROVIDERS = ("cuda", "tensorrt")

Dim = int | str | None  # a fixed size, a symbolic name ("batch"), or unknown


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: its name, shape and numpy dtype name.

    A dimension is an int when the model fixes it, and a str (its symbolic name, e.g. "batch") or
    None when any positive size is accepted.
    """

    name: str
    shape: tuple[Dim, ...]
    dtype: str  # numpy dtype name: float32, float16, int64, ...

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True)
class InputProfile:
    """The min/opt/max shapes of one engine input: one entry of a TensorRT optimization profile
    (``BackendOptions.trt_profiles``; ``engine_cache.compute_profiles`` makes them)."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_list(self) -> list[Any]:
        return [self.name, list(self.min), list(self.opt), list(self.max)]


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"BackendOptions.{name}={value!r} is not one of {list(choices)}")


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"BackendOptions.{name}={value!r} must be an integer >= 0")


def _check_profile_shape(where: str, shape: Any, rank: int) -> None:
    if (
        not isinstance(shape, tuple)
        or len(shape) != rank
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape)
    ):
        raise ValueError(f"{where}={shape!r} must be a tuple of {rank} sizes >= 1 (one per dimension of the input)")


def _check_trt_profiles(value: Any) -> tuple[InputProfile, ...]:
    """BackendOptions.trt_profiles as a tuple; ValueError naming the first bad entry."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(
            f"BackendOptions.trt_profiles={value!r} must be a sequence of InputProfile "
            "(tinymm.backends.engine_cache.compute_profiles makes them)"
        )
    names: set[str] = set()
    for index, profile in enumerate(value):
        where = f"BackendOptions.trt_profiles[{index}]"
        if not isinstance(profile, InputProfile):
            raise ValueError(f"{where}={profile!r} is not an InputProfile; make them with compute_profiles")
        if not isinstance(profile.name, str) or not profile.name:
            raise ValueError(f"{where}.name={profile.name!r} must be the model input's name")
        if profile.name in names:
            raise ValueError(f"{where}: input {profile.name!r} has two profiles; give one (min, opt, max) per input")
        names.add(profile.name)
        rank = len(profile.min) if isinstance(profile.min, tuple) and profile.min else 1
        for part in ("min", "opt", "max"):
            _check_profile_shape(f"{where}.{part} ({profile.name!r})", getattr(profile, part), rank)
        if not all(low <= opt <= high for low, opt, high in zip(profile.min, profile.opt, profile.max)):
            raise ValueError(
                f"{where} ({profile.name!r}): min {profile.min}, opt {profile.opt}, max {profile.max} must satisfy "
                "min <= opt <= max in every dimension"
            )
    return tuple(value)


@dataclass(frozen=True)
class BackendOptions:
    """How a backend loads and runs a model. Checked once here; every bad value is a ValueError."""

    provider: str = "auto"  # auto | cpu | cuda | tensorrt; auto picks the best available
    intra_op_threads: int = 0  # threads inside one operator; 0 = the library's default
    inter_op_threads: int = 0  # threads across independent operators; 0 = the library's default
    device_id: int = 0  # GPU index for cuda and tensorrt
    graph_optimization: str = "all"  # disabled | basic | extended | all
    # Where TensorRT engines and timing caches are kept (tinymm.load picks a per-bundle directory
    # under the user's cache); None disables the TensorRT caches: engines are built at every load.
    cache_dir: Path | None = None
    trt_fp16: bool = False  # let TensorRT run layers in fp16
    trt_int8: bool = False  # let TensorRT run the model's QDQ (explicitly quantized) layers in int8
    # The TensorRT optimization profile: one InputProfile (engine_cache.compute_profiles) per model
    # input that has a dynamic dimension. () lets TensorRT size its engine from the shapes of the
    # first runs, and rebuild it whenever a larger shape arrives.
    trt_profiles: Sequence[InputProfile] = ()
    io_binding: str = "auto"  # auto (on for GPU providers) | on | off
    # Extra session configuration entries passed through verbatim (key -> value).
    session_options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_choice("provider", self.provider, PROVIDERS)
        _check_choice("graph_optimization", self.graph_optimization, GRAPH_OPTIMIZATIONS)
        _check_choice("io_binding", self.io_binding, IO_BINDING_MODES)
        for name in ("intra_op_threads", "inter_op_threads", "device_id"):
            _check_count(name, getattr(self, name))
        for name in ("trt_fp16", "trt_int8"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"BackendOptions.{name}={getattr(self, name)!r} must be True or False")
        if self.cache_dir is not None:
            if not isinstance(self.cache_dir, (str, Path)):
                raise ValueError(f"BackendOptions.cache_dir={self.cache_dir!r} must be a path or None")
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        object.__setattr__(self, "trt_profiles", _check_trt_profiles(self.trt_profiles))
        if not isinstance(self.session_options, Mapping):
            raise ValueError(f"BackendOptions.session_options={self.session_options!r} must be a mapping of str to str")
        for key, value in self.session_options.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(f"BackendOptions.session_options[{key!r}]={value!r}: keys and values must be strings")
        # A read-only copy, so the options cannot change after they were checked.
        object.__setattr__(self, "session_options", types.MappingProxyType(dict(self.session_options)))

    def use_io_binding(self, provider: str) -> bool:
        """Whether runs on the resolved `provider` ("cpu", "cuda", "tensorrt") use IO binding."""
        if self.io_binding == "auto":
            return provider in GPU_PROVIDERS
        return self.io_binding == "on"


@runtime_checkable
class Session(Protocol):
    """A loaded model, cheap to reuse for many runs."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    provider: str  # the provider actually running the model: cpu | cuda | tensorrt

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model on `feeds` (input name -> array) and return output name -> array.

        `output_names` picks outputs (default: all, in the model's order).
        """
        ...


@runtime_checkable
class Backend(Protocol):
    """Loads model files into Sessions."""

    name: str

    def load(self, model_path: Path, options: BackendOptions) -> Session: ...

    def available_providers(self) -> tuple[str, ...]:
        """The providers (cpu, cuda, tensorrt) this machine can use, best first."""
        ...


@dataclass(frozen=True)
class _BackendEntry:
    module: str  # module that defines the backend
    factory: str  # zero-argument callable in that module returning a Backend
    package: str  # top-level package the module needs
    install_hint: str  # what to run when that package is missing


_BACKENDS: Mapping[str, _BackendEntry] = types.MappingProxyType(
    {
        "onnxruntime": _BackendEntry(
            module="tinymm.backends.onnxruntime",
            factory="OnnxRuntimeBackend",
            package="onnxruntime",
            install_hint=(
                "pip install onnxruntime (CPU), or pip install 'tinymm[gpu]' for onnxruntime-gpu (CUDA, TensorRT)"
            ),
        ),
        "tensorrt": _BackendEntry(
            module="tinymm.backends.tensorrt",
            factory="TensorRTBackend",
            package="tensorrt",
            install_hint=(
                "pip install 'tinymm[tensorrt]' (TensorRT and cuda-python, on a machine with an NVIDIA GPU); "
                "on a Jetson, use the TensorRT that JetPack ships and pip install cuda-python"
            ),
        ),
    }
)


def known_backends() -> tuple[str, ...]:
    """Names accepted by `get_backend`."""
    return tuple(_BACKENDS)


def get_backend(name: str = "onnxruntime") -> Backend:
    """Import the backend called `name` and return an instance of it.

    Raises BackendError for an unknown name (listing the known ones) or when the package the
    backend needs cannot be imported (saying what to install).
    """
    entry = _BACKENDS.get(name)
    if entry is None:
        raise BackendError(f"unknown backend {name!r}; known backends are {list(_BACKENDS)}")
    try:
        module = importlib.import_module(entry.module)
    except ModuleNotFoundError as e:
        missing = (e.name or "").split(".")[0]
        if missing == entry.package:
            raise BackendError(
                f"the {name} backend needs the {entry.package!r} package, which is not installed: {entry.install_hint}"
            ) from e
        raise BackendError(f"the {name} backend could not be imported ({e}); {entry.install_hint}") from e
    except ImportError as e:  # the package is there but broken (e.g. a shared library is missing)
        raise BackendError(
            f"the {name} backend's package {entry.package!r} failed to import ({e}); reinstall it: {entry.install_hint}"
        ) from e
    return getattr(module, entry.factory)()


def _format_dim(dim: Dim) -> str:
    return "?" if dim is None else repr(dim) if isinstance(dim, str) else str(dim)


def _format_shape(shape: Sequence[Dim]) -> str:
    trailing = "," if len(shape) == 1 else ""
    return "(" + ", ".join(_format_dim(d) for d in shape) + trailing + ")"


def check_signatures(specs: Sequence[TensorSpec], feeds: Mapping[str, tuple[str, tuple[int, ...]]]) -> None:
    """Check feeds described as input name -> (numpy dtype name, shape) against the model's inputs.

    Backends use this directly for feeds that are not numpy arrays (e.g. tensors already on a
    GPU). Raises InputError for a missing or unexpected name, a wrong dtype, a wrong rank, or a
    size that differs from a fixed dimension (symbolic dimensions accept any size > 0).
    """
    expected = {spec.name: spec for spec in specs}
    missing = [name for name in expected if name not in feeds]
    if missing:
        raise InputError(f"missing model input(s) {missing}; the model expects {[str(s) for s in specs]}")
    unexpected = [name for name in feeds if name not in expected]
    if unexpected:
        raise InputError(f"unexpected input name(s) {unexpected}; the model's inputs are {list(expected)}")
    for name, (dtype, shape) in feeds.items():
        spec = expected[name]
        if dtype != spec.dtype:
            raise InputError(
                f"input {name!r} expects dtype {spec.dtype} but was given {dtype}; "
                f"convert it with .astype(np.{spec.dtype})"
            )
        if len(shape) != spec.rank:
            raise InputError(
                f"input {name!r} expects rank {spec.rank} {_format_shape(spec.shape)} but was given "
                f"shape {tuple(shape)} (rank {len(shape)})"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
            if isinstance(want, int) and want >= 0:
                if got != want:
                    raise InputError(
                        f"input {name!r} dimension {axis} must be {want} (expected shape "
                        f"{_format_shape(spec.shape)}) but was given shape {tuple(shape)}"
                    )
            elif got <= 0:
                raise InputError(
                    f"input {name!r} dimension {axis} ({want or 'dynamic'}) must be > 0 but was given "
                    f"shape {tuple(shape)}; empty inputs cannot be run"
                )


def array_signature(name: str, value: np.ndarray) -> tuple[str, tuple[int, ...]]:
    """(numpy dtype name, shape) of the feed for input `name`; InputError when it is not an array."""
    if not isinstance(value, np.ndarray):
        raise InputError(
            f"input {name!r} was given a {type(value).__name__}; pass a numpy array "
            f"(e.g. np.asarray(value, dtype=np.float32))"
        )
    return value.dtype.name, value.shape


def _numpy_dtype(name: str) -> np.dtype | None:
    try:
        return np.dtype(name)
    except TypeError:  # bfloat16 and other names numpy does not know
        return None


class FeedChecker:
    """The checks of `check_feeds` for one model, with each input's expectations computed once.

    A decoder runs its session once per token with a dozen or more inputs; building each array's
    dtype name and walking the specs every call cost about as much as a small model's step.
    `fast_ok` accepts the usual feeds - exactly the model's input names, C-contiguous numpy
    arrays of the expected dtype and rank, fixed sizes matched, no empty dimension - with a few
    comparisons per input. Anything else is left to `check_feeds` / `check_signatures`, which
    accept or reject it and word the error.
    """

    def __init__(self, specs: Sequence[TensorSpec]) -> None:
        self._names = frozenset(spec.name for spec in specs)
        # name -> (numpy dtype or None, rank, ((axis, fixed size), ...))
        self._expected = {
            spec.name: (
                _numpy_dtype(spec.dtype),
                spec.rank,
                tuple((axis, dim) for axis, dim in enumerate(spec.shape) if isinstance(dim, int) and dim >= 0),
            )
            for spec in specs
        }

    def fast_ok(self, feeds: Mapping[str, Any]) -> bool:
        """True when every feed is certainly valid and C-contiguous; False means: check it the slow way."""
        if feeds.keys() != self._names:
            return False
        for name, value in feeds.items():
            dtype, rank, fixed = self._expected[name]
            if type(value) is not np.ndarray or value.dtype != dtype or value.ndim != rank:
                return False
            shape = value.shape
            if 0 in shape or not value.flags.c_contiguous:
                return False
            for axis, size in fixed:
                if shape[axis] != size:
                    return False
        return True


def check_feeds(specs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray]) -> None:
    """Check numpy feeds (input name -> array) against the model's inputs before a run.

    Raises InputError when a value is not a numpy array, and for every mismatch listed in
    `check_signatures`.
    """
    check_signatures(specs, {name: array_signature(name, value) for name, value in feeds.items()})
