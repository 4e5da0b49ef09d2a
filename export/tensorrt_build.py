"""Build TensorRT engines from a bundle's fp16 and QDQ-int8 ONNX files, into a fingerprinted cache.

Run on the machine that will use the engines (an engine only runs on the GPU model and TensorRT
version that built it):

    python -m export.tensorrt_build BUNDLE_DIR --cache-dir ~/.cache/tinymm/engines --context 64

Each engine is keyed by GPU name + compute capability, TensorRT version, precision, optimization
profile and ONNX sha256 (`tinymm.backends.engine_cache`); a cached engine with the same key is
reused, and a rebuild logs which part of the key changed. Builds share one timing cache per GPU
and TensorRT version. The engines run with `get_backend("tensorrt")`.

TensorRT 10.x and 11.x (`plan_network`):
- fp16: the fp16 ONNX (`export/fp16.py`) is parsed into a strongly typed network on both
  versions, so the engine runs exactly the precisions the ONNX declares (LayerNorm and friends
  stay fp32). TensorRT 11 accepts nothing else; 10.x (JetPack 6) behaves the same way.
- int8: the QDQ ONNX (`export/quantize.py`) is checked with `export/trt_rules.py` first. On 10.x
  it is built weakly typed with BuilderFlag.INT8 and FP16, so layers outside the Q/DQ pairs may
  run in fp16; on 11.x (where those flags are gone) strongly typed, so they run in the ONNX's
  float32. Decoder int8 variants are dynamically quantized for the CPU and fail the rules: use
  their fp16 engines.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from export.trt_rules import check_tensorrt_graph
from tinymm.backends.base import InputProfile
from tinymm.backends.engine_cache import (
    TRT_PRECISIONS,
    EngineKey,
    ShapeLimits,
    compute_profiles,
    contract_limits,
    lookup,
    store,
    timing_cache_path,
)
from tinymm.errors import BackendError, InputError
from tinymm.hashing import sha256_file

logger = logging.getLogger(__name__)

TYPING_MODES = ("auto", "strong", "weak")
MIN_TRT_MAJOR = 10  # the tensor-address API and strongly typed networks
STRONG_ONLY_TRT_MAJOR = 11  # TensorRT 11 removed weak typing and the precision builder flags
DEFAULT_WORKSPACE_BYTES = 1 << 30  # 1 GiB of scratch memory for tactics; Jetson Orin Nano has 8 GiB in all
MAX_OPTIMIZATION_LEVEL = 5  # IBuilderConfig.builder_optimization_level range is 0..5 (default 3)


class EngineBuildError(BackendError):
    """TensorRT could not parse an ONNX file or build an engine from it."""

    kind = "engine_build_error"


@dataclass(frozen=True)
class BuildOptions:
    """How to build one engine. Checked once here; every bad value is an InputError."""

    precision: str  # fp16 (from the fp16 ONNX) | int8 (from the QDQ-int8 ONNX)
    typing: str = "auto"  # auto | strong | weak (weak: TensorRT 10.x only); see plan_network
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES  # IBuilderConfig WORKSPACE memory pool limit
    optimization_level: int | None = None  # 0..5; None keeps TensorRT's default (3)
    device_id: int = 0  # CUDA device that builds (and will run) the engine

    def __post_init__(self) -> None:
        if self.precision not in TRT_PRECISIONS:
            raise InputError(f"BuildOptions.precision={self.precision!r} must be one of {list(TRT_PRECISIONS)}")
        if self.typing not in TYPING_MODES:
            raise InputError(f"BuildOptions.typing={self.typing!r} must be one of {list(TYPING_MODES)}")
        for name in ("workspace_bytes", "device_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "workspace_bytes" else 0):
                raise InputError(f"BuildOptions.{name}={value!r} must be a non-negative integer (workspace > 0)")
        level = self.optimization_level
        bad_type = isinstance(level, bool) or not isinstance(level, int)
        if level is not None and (bad_type or not 0 <= level <= MAX_OPTIMIZATION_LEVEL):
            raise InputError(f"BuildOptions.optimization_level={level!r} must be None or an integer in 0..5")


@dataclass(frozen=True)
class NetworkPlan:
    """How the network is created and configured for one TensorRT version and precision."""

    strongly_typed: bool  # create_network with NetworkDefinitionCreationFlag.STRONGLY_TYPED
    builder_flags: tuple[str, ...]  # names of trt.BuilderFlag members to set


def trt_major(version: str) -> int:
    """The major version of a TensorRT version string such as "10.3.0.26"."""
    try:
        return int(version.split(".")[0])
    except ValueError as e:
        raise EngineBuildError(f"cannot read the TensorRT version {version!r}") from e


def plan_network(trt_version: str, precision: str, typing: str = "auto") -> NetworkPlan:
    """The network typing and builder flags for `precision` on TensorRT `trt_version` (see module doc)."""
    major = trt_major(trt_version)
    if major < MIN_TRT_MAJOR:
        raise EngineBuildError(f"TensorRT {trt_version} is too old; tinymm builds engines with TensorRT 10.x or 11.x")
    if major >= STRONG_ONLY_TRT_MAJOR:
        if typing == "weak":
            raise EngineBuildError(f"TensorRT {trt_version} builds strongly typed networks only; use typing='auto'")
        return NetworkPlan(strongly_typed=True, builder_flags=())
    if typing == "strong" or (typing == "auto" and precision == "fp16"):
        return NetworkPlan(strongly_typed=True, builder_flags=())
    return NetworkPlan(strongly_typed=False, builder_flags=("INT8", "FP16") if precision == "int8" else ("FP16",))


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise EngineBuildError(
            f"building engines needs TensorRT ({e}); pip install 'tinymm[tensorrt]' on the NVIDIA machine"
        ) from e
    return trt


def _parse(trt: Any, builder: Any, trt_logger: Any, onnx_path: Path, plan: NetworkPlan) -> Any:
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors}")
    return network, parser  # the parser owns weights the network refers to: keep it alive


def _build_serialized(
    onnx_path: Path, profiles: Sequence[InputProfile], plan: NetworkPlan, options: BuildOptions, timing_path: Path
) -> bytes:
    """Parse `onnx_path` and build a serialized engine with TensorRT's Python API."""
    trt = _import_tensorrt()
    from tinymm.backends.tensorrt import TrtLogger

    trt_logger = TrtLogger()
    builder = trt.Builder(trt_logger)
    network, _parser = _parse(trt, builder, trt_logger, onnx_path, plan)
    names = sorted(network.get_input(i).name for i in range(network.num_inputs))
    if names != sorted(p.name for p in profiles):
        raise EngineBuildError(
            f"{onnx_path} has inputs {names} but the profile covers {[p.name for p in profiles]}; "
            f"pass the component's manifest inputs"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if options.optimization_level is not None:
        config.builder_optimization_level = options.optimization_level
    profile = builder.create_optimization_profile()
    for p in profiles:
        profile.set_shape(p.name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    timing_path.parent.mkdir(parents=True, exist_ok=True)
    timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def build_engine(
    onnx_path: Path,
    cache_dir: Path,
    inputs: Sequence[Any],
    limits: ShapeLimits,
    options: BuildOptions,
    *,
    stem: str | None = None,
) -> Path:
    """Return the cached engine for `onnx_path`, building it first when the cache has none.

    inputs: the component's input TensorSpecs (manifest or backend ones: name and shape with named
        dynamic dimensions); limits: the range of each dynamic dimension (see `contract_limits`).
    stem: the cache name of the model (default: the file name up to its first dot).
    Raises EngineBuildError when the int8 ONNX breaks TensorRT's rules or TensorRT fails, and
    InputError when a dynamic dimension has no range.
    """
    onnx_path, cache_dir = Path(onnx_path), Path(cache_dir)
    stem = stem or onnx_path.name.split(".")[0]
    if not onnx_path.is_file():
        raise EngineBuildError(f"ONNX file {onnx_path} does not exist")
    if options.precision == "int8":
        violations = check_tensorrt_graph(onnx_path)
        if violations:
            listed = "\n  ".join(str(v) for v in violations[:10])
            raise EngineBuildError(
                f"{onnx_path} breaks {len(violations)} TensorRT rule(s); build this component from its fp16 "
                f"variant instead:\n  {listed}"
            )
    trt = _import_tensorrt()
    from tinymm.backends.tensorrt import gpu_info

    gpu_name, capability = gpu_info(options.device_id)
    profiles = compute_profiles(inputs, limits)
    key = EngineKey(gpu_name, capability, trt.__version__, options.precision, profiles, sha256_file(onnx_path))
    decision = lookup(cache_dir, stem, key)
    if decision.hit:
        return decision.path
    plan = plan_network(trt.__version__, options.precision, options.typing)
    timing_path = timing_cache_path(cache_dir, gpu_name, key.trt_version)
    engine = _build_serialized(onnx_path, key.profiles, plan, options, timing_path)
    return store(cache_dir, stem, key, engine)


def build_bundle_engines(
    bundle_dir: Path, cache_dir: Path, limits: ShapeLimits, *, precisions: Sequence[str] = TRT_PRECISIONS
) -> dict[str, Path]:
    """Build (or find) an engine for every component variant of the bundle in `precisions`.

    Returns "<component>.<precision>" -> engine path. An int8 variant that breaks TensorRT's rules
    (e.g. a dynamically quantized decoder) is skipped with a warning; its fp16 engine serves.
    """
    from tinymm.bundle import read_bundle

    engines: dict[str, Path] = {}
    with read_bundle(bundle_dir) as bundle:
        for name, component in bundle.manifest.components.items():
            for precision in (p for p in precisions if p in component.variants):
                path = bundle.component_path(name, precision)
                options = BuildOptions(precision=precision)
                try:
                    engine = build_engine(path, cache_dir, component.inputs, limits, options, stem=name)
                    engines[f"{name}.{precision}"] = engine
                except EngineBuildError as e:
                    if precision != "int8":
                        raise
                    logger.warning("no int8 engine for %s: %s", name, e)
    return engines


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build a bundle's engines into a cache directory."""
    parser = argparse.ArgumentParser(prog="python -m export.tensorrt_build", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="bundle directory")
    parser.add_argument("--cache-dir", type=Path, required=True, help="engine cache directory (created if missing)")
    parser.add_argument("--context", type=int, required=True, help="the decoder's most tokens (seq and past)")
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch the engines accept (default 8)")
    parser.add_argument("--max-frames", type=int, default=None, help="most log-mel frames (speech bundles)")
    parser.add_argument("--precision", choices=TRT_PRECISIONS, action="append", help="default: fp16 and int8")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    limits = contract_limits(args.context, max_batch=args.max_batch, max_frames=args.max_frames)
    engines = build_bundle_engines(args.bundle, args.cache_dir, limits, precisions=args.precision or TRT_PRECISIONS)
    for name, path in engines.items():
        logger.info("%s -> %s", name, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
