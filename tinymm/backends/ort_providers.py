"""Which onnxruntime execution providers to ask for, with which options.

Pure functions over `BackendOptions` and the list of providers onnxruntime reports, so that the
choice (including the TensorRT and CUDA provider options) can be tested on a machine without a
GPU. Nothing here imports onnxruntime or touches the file system.

TensorRT provider option names follow the onnxruntime TensorRT execution provider documentation
(https://onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html); boolean
values are passed as the strings "True"/"False", as its Python examples do.

Optimization profiles and the engine cache. `BackendOptions.trt_profiles` (one min/opt/max per
input with a dynamic dimension, from `engine_cache.compute_profiles` over the bundle contract)
become `trt_profile_{min,opt,max}_shapes`, e.g. "input_ids:1x1,past_key_values.0.key:1x4x1x32"
(inputs in name order, dimensions joined by "x", as trtexec's --minShapes). onnxruntime then
builds the engine once, when the session is created, for every shape in that range; without
profiles it builds for the shapes of the first run and rebuilds whenever a run exceeds them.
Once profiles are given, onnxruntime needs one for every input with a dynamic dimension (it
refuses the session otherwise) and takes fixed dimensions from the graph, so callers leave
inputs whose dimensions are all fixed out of trt_profiles (`tinymm.load` does); with no profile
at all, the options are not passed. A run outside the profile fails ("cannot set the dynamic
dimensions") instead of rebuilding. When onnxruntime hands part of a graph to another provider,
the TensorRT part's inputs may be inner tensors that have no profile; onnxruntime then refuses
the session, naming them.

With `cache_dir` set, the engine cache lives in `cache_dir/onnxruntime-tensorrt/<precision>/`
(precision: fp32, fp16, int8 or fp16-int8 from the trt_* flags) and the timing cache in
`cache_dir/onnxruntime-tensorrt/timing/`. onnxruntime names an engine after a hash of the model's
file name and graph (input and node names, not the weights), the onnxruntime, CUDA and TensorRT
versions and the GPU's compute capability, and writes next to it a `.profile` file holding the
profile it was built with; at load it rebuilds (and overwrites) an engine whose `.profile`
differs from the requested profile. So: a new profile (another batch limit or context length)
rebuilds in place; a new precision builds into its own directory; new weights under the same
file names are NOT detected, which is why `tinymm.load` gives each bundle content (its manifest
hash) a directory of its own.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from tinymm.backends.base import BackendOptions, InputProfile
from tinymm.errors import BackendError

logger = logging.getLogger(__name__)

# tinymm provider name -> onnxruntime execution provider name.
ORT_PROVIDERS: Mapping[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
# The order "auto" tries, best first.
AUTO_ORDER = ("tensorrt", "cuda", "cpu")
# Each explicit provider and the providers onnxruntime may hand unsupported nodes to, in order.
FALLBACK_CHAINS: Mapping[str, tuple[str, ...]] = {
    "tensorrt": ("tensorrt", "cuda", "cpu"),
    "cuda": ("cuda", "cpu"),
    "cpu": ("cpu",),
}
# Sub-directory of BackendOptions.cache_dir holding the onnxruntime TensorRT caches.
TRT_CACHE_SUBDIR = "onnxruntime-tensorrt"
TRT_TIMING_SUBDIR = "timing"
# Separators of onnxruntime's profile-shape strings: inputs, name from shape, dimensions.
PROFILE_INPUT_SEP, PROFILE_NAME_SEP, PROFILE_DIM_SEP = ",", ":", "x"
# Provider option name of each part of an optimization profile.
PROFILE_OPTIONS: Mapping[str, str] = {
    "min": "trt_profile_min_shapes",
    "opt": "trt_profile_opt_shapes",
    "max": "trt_profile_max_shapes",
}

_GPU_INSTALL_HINT = (
    "pip uninstall onnxruntime && pip install 'tinymm[gpu]' "
    "(onnxruntime-gpu, which needs an NVIDIA driver with the CUDA 12 and cuDNN 9 libraries)"
)
INSTALL_HINTS: Mapping[str, str] = {
    "cuda": _GPU_INSTALL_HINT,
    "tensorrt": _GPU_INSTALL_HINT + ", plus the TensorRT 10 libraries "
    "(pip install 'tinymm[tensorrt]', or the TensorRT that JetPack ships on a Jetson)",
    "cpu": "pip install onnxruntime",
}


def _flag(value: bool) -> str:
    return "True" if value else "False"


def trt_precision_tag(options: BackendOptions) -> str:
    """Name of the precision an engine is built for: fp32, fp16, int8 or fp16-int8."""
    if options.trt_fp16 and options.trt_int8:
        return "fp16-int8"
    return "fp16" if options.trt_fp16 else "int8" if options.trt_int8 else "fp32"


def trt_cache_dirs(options: BackendOptions) -> tuple[Path, Path] | None:
    """(engine cache dir, timing cache dir) under options.cache_dir, or None when it is None.

    Engines of each precision get their own directory, so that switching precision never
    replaces another precision's engines and one precision's cache can be removed alone.
    """
    if options.cache_dir is None:
        return None
    root = Path(os.path.abspath(options.cache_dir)) / TRT_CACHE_SUBDIR
    return root / trt_precision_tag(options), root / TRT_TIMING_SUBDIR


def _profile_shape(profile: InputProfile, part: str) -> str:
    """The "name:d0xd1x..." text of one part (min, opt or max) of `profile`."""
    name = profile.name
    if any(sep in name for sep in (PROFILE_INPUT_SEP, PROFILE_NAME_SEP)):
        raise BackendError(
            f"model input {name!r} contains {PROFILE_INPUT_SEP!r} or {PROFILE_NAME_SEP!r}, which onnxruntime's "
            "TensorRT profile options use as separators; rename the input when exporting, or load with "
            "provider='cuda'"
        )
    dims = PROFILE_DIM_SEP.join(str(size) for size in getattr(profile, part))
    return f"{name}{PROFILE_NAME_SEP}{dims}"


def trt_profile_options(profiles: Sequence[InputProfile]) -> dict[str, str]:
    """trt_profile_{min,opt,max}_shapes for `profiles` (one per dynamic input); {} when there are none.

    Example: an input "features" of min (1, 80, 1) and an input "lengths" of min (1,) give
    trt_profile_min_shapes = "features:1x80x1,lengths:1". Inputs are listed in name order.
    Raises BackendError for an input name onnxruntime cannot parse (one holding "," or ":").
    """
    ordered = sorted(profiles, key=lambda p: p.name)
    if not ordered:
        return {}
    return {
        option: PROFILE_INPUT_SEP.join(_profile_shape(profile, part) for profile in ordered)
        for part, option in PROFILE_OPTIONS.items()
    }


def tensorrt_provider_options(options: BackendOptions) -> dict[str, str]:
    """Options for onnxruntime's TensorrtExecutionProvider.

    Caches only when cache_dir is set; explicit optimization profiles when trt_profiles is set
    (see the module docstring for how the two interact).
    """
    provider_options = {
        "device_id": str(options.device_id),
        "trt_fp16_enable": _flag(options.trt_fp16),
        "trt_int8_enable": _flag(options.trt_int8),
    }
    dirs = trt_cache_dirs(options)
    if dirs is None:
        provider_options["trt_engine_cache_enable"] = _flag(False)
        provider_options["trt_timing_cache_enable"] = _flag(False)
    else:
        engine_dir, timing_dir = dirs
        provider_options["trt_engine_cache_enable"] = _flag(True)
        provider_options["trt_engine_cache_path"] = str(engine_dir)
        provider_options["trt_timing_cache_enable"] = _flag(True)
        provider_options["trt_timing_cache_path"] = str(timing_dir)
    provider_options.update(trt_profile_options(options.trt_profiles))
    return provider_options


def cuda_provider_options(options: BackendOptions) -> dict[str, str]:
    """Options for onnxruntime's CUDAExecutionProvider."""
    return {"device_id": str(options.device_id)}


def _provider_options(provider: str, options: BackendOptions) -> dict[str, str]:
    if provider == "tensorrt":
        return tensorrt_provider_options(options)
    if provider == "cuda":
        return cuda_provider_options(options)
    return {}


@dataclass(frozen=True)
class ProviderPlan:
    """The execution providers to create a session with, best first."""

    provider: str  # the provider the session should run on: cpu | cuda | tensorrt
    explicit: bool  # True when the caller named it, False when "auto" chose it
    ort_names: tuple[str, ...]  # onnxruntime provider names, in priority order
    ort_options: tuple[dict[str, str], ...]  # provider options, one per name
    cache_dirs: tuple[Path, ...]  # directories to create before the session is made


def _missing_provider_error(provider: str, available: Sequence[str]) -> BackendError:
    return BackendError(
        f"provider {provider!r} needs onnxruntime's {ORT_PROVIDERS[provider]}, which this onnxruntime "
        f"does not have (it has {list(available)}). To get it: {INSTALL_HINTS[provider]}. "
        f"Or use provider='auto' or 'cpu'."
    )


def choose_provider(requested: str, available: Sequence[str]) -> str:
    """Resolve `requested` (auto | cpu | cuda | tensorrt) against onnxruntime's providers.

    Raises BackendError when an explicitly requested provider is not available. For "auto",
    logs which provider was chosen and why the better ones were skipped.
    """
    if requested != "auto":
        if requested not in ORT_PROVIDERS:
            raise BackendError(f"unknown provider {requested!r}; known providers are {list(ORT_PROVIDERS)}")
        if ORT_PROVIDERS[requested] not in available:
            raise _missing_provider_error(requested, available)
        return requested
    skipped = []
    for candidate in AUTO_ORDER:
        if ORT_PROVIDERS[candidate] in available:
            reasons = "; ".join(skipped) if skipped else "it is the best one available"
            logger.info("provider auto: chose %s (%s)", candidate, reasons)
            return candidate
        skipped.append(f"{candidate} skipped: {ORT_PROVIDERS[candidate]} not in {list(available)}")
    raise BackendError(
        f"onnxruntime reports none of the providers tinymm can use (it has {list(available)}); "
        f"reinstall it: {INSTALL_HINTS['cpu']}"
    )


def plan_providers(options: BackendOptions, available: Sequence[str]) -> ProviderPlan:
    """The providers, provider options and cache directories for a session under `options`."""
    provider = choose_provider(options.provider, available)
    chain = [p for p in FALLBACK_CHAINS[provider] if p == provider or ORT_PROVIDERS[p] in available]
    cache_dirs = trt_cache_dirs(options) if provider == "tensorrt" else None
    return ProviderPlan(
        provider=provider,
        explicit=options.provider != "auto",
        ort_names=tuple(ORT_PROVIDERS[p] for p in chain),
        ort_options=tuple(_provider_options(p, options) for p in chain),
        cache_dirs=tuple(cache_dirs or ()),
    )


def check_session_providers(plan: ProviderPlan, session_providers: Sequence[str]) -> str:
    """The provider a created session really runs on, given its `get_providers()` list.

    onnxruntime silently falls back to the next provider when one fails to initialise (typically
    missing CUDA, cuDNN or TensorRT libraries). That is a BackendError when the provider was
    requested by name, and a logged warning when "auto" chose it.
    """
    if ORT_PROVIDERS[plan.provider] in session_providers:
        return plan.provider
    actual = next((p for p in AUTO_ORDER if ORT_PROVIDERS[p] in session_providers), None)
    message = (
        f"onnxruntime could not initialise {ORT_PROVIDERS[plan.provider]} and fell back to "
        f"{list(session_providers)}; its own log above has the reason, usually missing or mismatched "
        f"CUDA, cuDNN or TensorRT libraries. Check the install: {INSTALL_HINTS[plan.provider]}"
    )
    if plan.explicit or actual is None:
        raise BackendError(message + ". Or use provider='auto' or 'cpu'.")
    logger.warning("%s. Running on %s instead.", message, actual)
    return actual
