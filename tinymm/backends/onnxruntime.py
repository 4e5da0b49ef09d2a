"""The onnxruntime backend: CPU, CUDA and TensorRT execution providers.

Imported only through `tinymm.backends.base.get_backend("onnxruntime")`, which turns a missing
onnxruntime package into a BackendError saying what to install. Provider choice and provider
options live in `ort_providers` (pure, testable without a GPU); this file creates and runs
sessions.

Usage:
    backend = get_backend("onnxruntime")
    session = backend.load(Path("encoder.onnx"), BackendOptions(provider="auto"))
    outputs = session.run({"pixels": pixels})  # {"features": array, ...}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from tinymm.backends.base import (
    GPU_PROVIDERS, BackendOptions, FeedChecker, TensorSpec, array_signature, check_signatures,
)
from tinymm.backends.ort_providers import AUTO_ORDER, ORT_PROVIDERS, check_session_providers, plan_providers
from tinymm.errors import BackendError, InputError

logger = logging.getLogger(__name__)

# onnxruntime element type -> numpy dtype name.
ORT_DTYPES: Mapping[str, str] = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}
GRAPH_OPTIMIZATION_LEVELS: Mapping[str, ort.GraphOptimizationLevel] = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

Feed = np.ndarray | ort.OrtValue


def _tensor_spec(arg: Any) -> TensorSpec:
    """TensorSpec of an onnxruntime NodeArg (from get_inputs() / get_outputs())."""
    shape = tuple(d if isinstance(d, (int, str)) or d is None else str(d) for d in arg.shape)
    return TensorSpec(name=arg.name, shape=shape, dtype=ORT_DTYPES.get(arg.type, arg.type))


def session_options(options: BackendOptions) -> ort.SessionOptions:
    """onnxruntime SessionOptions for `options`.

    Threads left at 0 keep onnxruntime's defaults. More than one inter-op thread switches to the
    parallel execution mode, the only one in which onnxruntime uses them.
    """
    so = ort.SessionOptions()
    if options.intra_op_threads > 0:
        so.intra_op_num_threads = options.intra_op_threads
    if options.inter_op_threads > 0:
        so.inter_op_num_threads = options.inter_op_threads
        if options.inter_op_threads > 1:
            so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    so.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[options.graph_optimization]
    for key, value in options.session_options.items():
        try:
            so.add_session_config_entry(key, value)
        except Exception as e:  # onnxruntime's pybind errors share no base class below Exception
            raise BackendError(f"onnxruntime refused session option {key!r}={value!r}: {e}") from e
    return so


def _make_dirs(dirs: Sequence[Path]) -> None:
    for directory in dirs:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BackendError(
                f"cannot create the TensorRT cache directory {directory}: {e}; pass a writable "
                "BackendOptions.cache_dir (tinymm.load: cache_dir=..., --cache-dir DIR or $TINYMM_CACHE_DIR; "
                "or turn the cache off)"
            ) from e


def _load_error(model_path: Path, plan_provider: str, options: BackendOptions, e: Exception) -> BackendError:
    """The BackendError for onnxruntime failing to create a session, with a hint where one helps."""
    message = f"onnxruntime could not load {model_path}: {e}"
    if plan_provider == "tensorrt" and options.trt_profiles and "profile" in str(e).lower():
        message += (
            ". The TensorRT provider was given optimization profiles for the model's inputs, but it took "
            "only part of the graph (an operator it cannot run went to another provider), and onnxruntime "
            "wants profiles for that part's inputs too; load with provider='cuda', or with a variant TensorRT "
            "runs whole (precision fp16 or fp32 rather than the decoders' CPU-quantized int8)"
        )
    return BackendError(message)


class OnnxRuntimeBackend:
    """Loads ONNX files into onnxruntime sessions."""

    name = "onnxruntime"

    def available_providers(self) -> tuple[str, ...]:
        """The providers (tensorrt, cuda, cpu) this onnxruntime build offers, best first."""
        available = ort.get_available_providers()
        return tuple(p for p in AUTO_ORDER if ORT_PROVIDERS[p] in available)

    def load(self, model_path: Path, options: BackendOptions | None = None) -> OrtSession:
        """Create a session for the ONNX file at `model_path`.

        Raises BackendError when the file is missing or onnxruntime cannot load it (invalid
        model, unsupported operator), or when the requested provider is unavailable or fails to
        initialise.
        """
        options = options if options is not None else BackendOptions()
        model_path = Path(model_path)
        if not model_path.is_file():
            raise BackendError(f"model file {model_path} does not exist (or is not a file); check the bundle")
        plan = plan_providers(options, ort.get_available_providers())
        _make_dirs(plan.cache_dirs)
        if plan.provider == "tensorrt":
            if options.cache_dir is None:
                logger.info("no cache_dir given: TensorRT engines for %s are rebuilt at every load", model_path)
            else:
                logger.info(
                    "TensorRT engines for %s are cached in %s (a first load builds them: seconds to minutes)",
                    model_path.name, plan.cache_dirs[0],
                )
        try:
            session = ort.InferenceSession(
                str(model_path),
                sess_options=session_options(options),
                providers=list(plan.ort_names),
                provider_options=list(plan.ort_options),
            )
        except BackendError:
            raise
        except Exception as e:  # onnxruntime's pybind errors share no base class below Exception
            raise _load_error(model_path, plan.provider, options, e) from e
        provider = check_session_providers(plan, session.get_providers())
        logger.info("loaded %s on %s (providers %s)", model_path, provider, session.get_providers())
        return OrtSession(session, model_path, provider, options.device_id, options.use_io_binding(provider))


class OrtSession:
    """A loaded onnxruntime model; reuse it for many runs.

    `run` takes and returns numpy arrays. `run_ortvalues` returns onnxruntime OrtValues that stay
    on the session's device (GPU memory for cuda/tensorrt), so that a caller such as a decoder can
    feed them back in the next step (e.g. a KV cache) without a round trip through host memory.
    Both accept numpy arrays and OrtValues as feeds.
    """

    def __init__(
        self, session: ort.InferenceSession, model_path: Path, provider: str, device_id: int, io_binding: bool
    ) -> None:
        self._session = session
        self.model_path = model_path
        self.provider = provider
        self.inputs = tuple(_tensor_spec(arg) for arg in session.get_inputs())
        self.outputs = tuple(_tensor_spec(arg) for arg in session.get_outputs())
        self.io_binding = io_binding
        # Computed once: a decoder checks its feeds and output names at every step.
        self._feed_checker = FeedChecker(self.inputs)
        self._known_outputs = [spec.name for spec in self.outputs]
        self._known_output_set = frozenset(self._known_outputs)
        # Where bound outputs are allocated: (onnxruntime device type, device id).
        self.device = ("cuda", device_id) if provider in GPU_PROVIDERS else ("cpu", 0)

    @property
    def ort_session(self) -> ort.InferenceSession:
        """The underlying onnxruntime session, for what this class does not wrap."""
        return self._session

    def __repr__(self) -> str:
        inputs = ", ".join(str(s) for s in self.inputs)
        outputs = ", ".join(str(s) for s in self.outputs)
        return f"OrtSession({self.model_path.name}, provider={self.provider}, inputs=[{inputs}], outputs=[{outputs}])"

    def run(self, feeds: Mapping[str, Feed], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model and return output name -> numpy array.

        feeds: input name -> numpy array (or OrtValue) with the dtype and shape of `self.inputs`
        (symbolic dimensions take any size > 0). output_names: the outputs to compute, default all.
        Raises InputError for bad feeds or output names and BackendError when onnxruntime fails.
        """
        names = self._output_names(output_names)
        feeds = self._checked(feeds)
        use_binding = self.io_binding or any(isinstance(v, ort.OrtValue) for v in feeds.values())
        try:
            if use_binding:
                binding = self._run_bound(feeds, names)
                values = binding.copy_outputs_to_cpu()
            else:
                values = self._session.run(names, feeds)
        except Exception as e:  # onnxruntime's pybind errors share no base class below Exception
            raise self._run_error(e) from e
        return dict(zip(names, values, strict=True))

    def run_ortvalues(
        self, feeds: Mapping[str, Feed], output_names: Sequence[str] | None = None
    ) -> dict[str, ort.OrtValue]:
        """Run the model and return output name -> OrtValue left on the session's device.

        Same feeds and errors as `run`. The outputs are allocated on `self.device` (GPU memory for
        cuda/tensorrt sessions, host memory for cpu) and can be passed back as feeds; call
        `.numpy()` on one to copy it to the host.
        """
        names = self._output_names(output_names)
        feeds = self._checked(feeds)
        try:
            binding = self._run_bound(feeds, names)
            values = binding.get_outputs()
        except Exception as e:  # onnxruntime's pybind errors share no base class below Exception
            raise self._run_error(e) from e
        return dict(zip(names, values, strict=True))

    def _output_names(self, output_names: Sequence[str] | None) -> list[str]:
        known = self._known_outputs
        if output_names is None:
            return list(known)
        if isinstance(output_names, str) or not output_names:
            raise InputError(f"output_names={output_names!r} must be a non-empty list of output names from {known}")
        unknown = [name for name in output_names if name not in self._known_output_set]
        if unknown:
            raise InputError(f"unknown output name(s) {unknown}; the model's outputs are {known}")
        return list(output_names)

    def _checked(self, feeds: Mapping[str, Feed]) -> dict[str, Feed]:
        """Validate feeds against self.inputs; numpy arrays come back C-contiguous."""
        if not isinstance(feeds, Mapping):
            raise InputError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
        if self._feed_checker.fast_ok(feeds):  # the usual case: valid, contiguous numpy arrays
            return dict(feeds)
        signatures = {}
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                if not value.is_tensor():
                    raise InputError(f"input {name!r} was given an OrtValue that is not a tensor")
                signatures[name] = (ORT_DTYPES.get(value.data_type(), value.data_type()), tuple(value.shape()))
            else:
                signatures[name] = array_signature(name, value)
        check_signatures(self.inputs, signatures)
        return {k: v if isinstance(v, ort.OrtValue) else np.ascontiguousarray(v) for k, v in feeds.items()}

    def _run_bound(self, feeds: Mapping[str, Feed], names: Sequence[str]) -> ort.IOBinding:
        """Run with IO binding: inputs bound where they are, outputs allocated on self.device."""
        binding = self._session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, value)
        device_type, device_id = self.device
        for name in names:
            binding.bind_output(name, device_type, device_id)
        self._session.run_with_iobinding(binding)
        return binding

    def _run_error(self, e: Exception) -> BackendError:
        return BackendError(f"onnxruntime failed to run {self.model_path} on {self.provider}: {e}")
