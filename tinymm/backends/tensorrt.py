"""The native TensorRT backend: serialized engines run with TensorRT's tensor-address API.

Imported only through `get_backend("tensorrt")`, which turns a missing `tensorrt` package into a
BackendError naming `pip install 'tinymm[tensorrt]'`. GPU memory and streams come from
cuda-python (`cuda.bindings.runtime`, or `cuda.cudart` in cuda-python < 12.6), not from torch.

This backend runs engines; it does not build them. Engines are built from a bundle's fp16 or
QDQ-int8 ONNX by `export/tensorrt_build.py` into a cache keyed by `tinymm.backends.engine_cache`
(GPU, TensorRT version, precision, shape profile, ONNX sha256). For ONNX files, use
`get_backend("onnxruntime")` with provider="tensorrt", which builds and caches engines itself.

Written against the TensorRT 10.x and 11.x Python API (deserialize_cuda_engine,
get_tensor_name/mode/dtype, set_input_shape, set_tensor_address, execute_async_v3), which both
versions share.

Usage:
    session = get_backend("tensorrt").load(Path("image_encoder.fp16.0123abcd.engine"), BackendOptions())
    outputs = session.run({"pixel_values": pixels})  # numpy in, numpy out
    # Decoder loop with the KV cache kept in GPU memory:
    state = session_first.run_device(first_feeds)  # {"logits": DeviceArray, "present.0.key": ...}
    step = session_past.run_device({"input_ids": ids, "past_key_values.0.key": state["present.0.key"], ...})
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import tensorrt as trt

from tinymm.backends.base import (
    BackendOptions,
    TensorSpec,
    array_signature,
    check_signatures,
)
from tinymm.errors import BackendError, InputError

logger = logging.getLogger(__name__)

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
INSTALL_HINT = (
    "pip install 'tinymm[tensorrt]' (TensorRT 10 or 11 and cuda-python); on a Jetson, use the TensorRT "
    "that JetPack ships and pip install cuda-python"
)
_LOG_LEVELS = {
    trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL,
    trt.ILogger.Severity.ERROR: logging.ERROR,
    trt.ILogger.Severity.WARNING: logging.WARNING,
    trt.ILogger.Severity.INFO: logging.INFO,
    trt.ILogger.Severity.VERBOSE: logging.DEBUG,
}


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise BackendError(f"the tensorrt backend needs cuda-python, which is not installed: {INSTALL_HINT}") from e
    return cudart


cudart = _import_cudart()


def cuda_call(result: Any, what: str) -> Any:
    """Unpack a cuda-python result `(error, *values)`: the value(s), or BackendError on an error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(error)
        raise BackendError(f"CUDA {what} failed with {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else tuple(values) if values else None


class TrtLogger(trt.ILogger):
    """Sends TensorRT's messages to Python logging (logger `tinymm.backends.tensorrt`)."""

    def __init__(self) -> None:
        trt.ILogger.__init__(self)

    def log(self, severity: Any, msg: str) -> None:
        logger.log(_LOG_LEVELS.get(severity, logging.INFO), "TensorRT: %s", msg)


def gpu_info(device_id: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of CUDA device `device_id`, for engine cache keys."""
    props = cuda_call(cudart.cudaGetDeviceProperties(device_id), f"cudaGetDeviceProperties({device_id})")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00").strip(), f"{props.major}.{props.minor}"


class DeviceArray:
    """A dense array in GPU memory (C order), owned by this object and freed with it.

    shape: the array's shape; dtype: its numpy dtype; ptr: the device address (int).
    `numpy()` copies it to the host. Pass it back as a feed to `TrtSession.run_device` (or `run`)
    to use it without a copy, e.g. a decoder's KV cache between steps.
    """

    def __init__(self, shape: Sequence[int], dtype: np.dtype, stream: Any) -> None:
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self._stream = stream
        self.ptr = int(cuda_call(cudart.cudaMalloc(max(self.nbytes, 1)), f"cudaMalloc({self.nbytes} bytes)"))

    @classmethod
    def from_numpy(cls, array: np.ndarray, stream: Any) -> DeviceArray:
        """A device copy of `array` (copied on `stream`; synchronize before reusing `array`)."""
        array = np.ascontiguousarray(array)
        device = cls(array.shape, array.dtype, stream)
        if device.nbytes:
            kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            cuda_call(cudart.cudaMemcpyAsync(device.ptr, array.ctypes.data, device.nbytes, kind, stream), "copy to GPU")
        return device

    def numpy(self) -> np.ndarray:
        """A host copy of the array (waits for the copy)."""
        if self.ptr == 0:
            raise BackendError("this DeviceArray was freed; keep it alive while you use it")
        host = np.empty(self.shape, dtype=self.dtype)
        if self.nbytes:
            kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            cuda_call(
                cudart.cudaMemcpyAsync(host.ctypes.data, self.ptr, self.nbytes, kind, self._stream), "copy to host"
            )
            cuda_call(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return host

    def free(self) -> None:
        """Release the GPU memory now (also done when the object is garbage collected)."""
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            cuda_call(cudart.cudaFree(ptr), "cudaFree")

    def __del__(self) -> None:
        try:
            self.free()
        except Exception as e:  # never raise from a finalizer (e.g. CUDA already torn down at exit)
            logger.debug("could not free %d bytes of GPU memory: %s", self.nbytes, e)

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype.name}, ptr={self.ptr:#x})"


Feed = np.ndarray | DeviceArray


class TensorRTBackend:
    """Loads serialized TensorRT engines (.engine/.plan) into sessions."""

    name = "tensorrt"

    def __init__(self) -> None:
        self._logger = TrtLogger()

    def available_providers(self) -> tuple[str, ...]:
        """("tensorrt",) when a CUDA GPU is visible, else ()."""
        error, count = cudart.cudaGetDeviceCount()
        return ("tensorrt",) if error == cudart.cudaError_t.cudaSuccess and count > 0 else ()

    def load(self, model_path: Path, options: BackendOptions | None = None) -> TrtSession:
        """Deserialize the engine at `model_path` on GPU `options.device_id`.

        The precision was fixed when the engine was built; BackendOptions' trt_fp16/trt_int8 and
        thread settings do not apply here.

        Raises BackendError for a missing file, an ONNX file (say how to build an engine), or an
        engine this TensorRT or GPU cannot deserialize (built elsewhere: rebuild it).
        """
        options = options if options is not None else BackendOptions()
        model_path = Path(model_path)
        if model_path.suffix.lower() == ".onnx":
            raise BackendError(
                f"{model_path} is an ONNX file; the tensorrt backend runs engines. Build one with "
                f"export/tensorrt_build.py (python -m export.tensorrt_build), or run the ONNX file with "
                f"get_backend('onnxruntime') and BackendOptions(provider='tensorrt'), which builds engines itself"
            )
        if not model_path.is_file():
            raise BackendError(f"engine file {model_path} does not exist; build it with export/tensorrt_build.py")
        cuda_call(cudart.cudaSetDevice(options.device_id), f"cudaSetDevice({options.device_id})")
        runtime = trt.Runtime(self._logger)
        engine = runtime.deserialize_cuda_engine(model_path.read_bytes())
        if engine is None:
            raise BackendError(
                f"TensorRT {trt.__version__} could not deserialize {model_path} (see the TensorRT log above); "
                f"engines only load on the TensorRT version and GPU they were built with: rebuild it"
            )
        logger.info("loaded TensorRT engine %s on GPU %d", model_path, options.device_id)
        return TrtSession(runtime, engine, model_path)


def _tensor_spec(engine: Any, name: str) -> TensorSpec:
    shape = tuple(None if d < 0 else int(d) for d in engine.get_tensor_shape(name))
    trt_dtype = engine.get_tensor_dtype(name)
    try:
        dtype = np.dtype(trt.nptype(trt_dtype)).name
    except TypeError as e:
        raise BackendError(
            f"engine tensor {name!r} has TensorRT type {trt_dtype}, which numpy cannot hold; "
            f"export the component with float32/int64 inputs and outputs"
        ) from e
    return TensorSpec(name=name, shape=shape, dtype=dtype)


class TrtSession:
    """A deserialized engine with one execution context and one CUDA stream; reuse it for many runs.

    `run` takes and returns numpy arrays. `run_device` returns DeviceArrays that stay in GPU memory
    and accepts them back as feeds. Both take numpy arrays and DeviceArrays as feeds and wait for
    the GPU before returning. Not thread-safe: one session per thread.
    """

    provider = "tensorrt"

    def __init__(self, runtime: Any, engine: Any, model_path: Path) -> None:
        self._runtime = runtime  # the engine must not outlive its runtime
        self._engine = engine
        self.model_path = model_path
        self._context = engine.create_execution_context()
        if self._context is None:
            raise BackendError(f"TensorRT could not create an execution context for {model_path} (out of GPU memory?)")
        self._stream = cuda_call(cudart.cudaStreamCreate(), "cudaStreamCreate")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = tuple(_tensor_spec(engine, n) for n in names if is_input[n])
        self.outputs = tuple(_tensor_spec(engine, n) for n in names if not is_input[n])

    def __repr__(self) -> str:
        inputs = ", ".join(str(s) for s in self.inputs)
        outputs = ", ".join(str(s) for s in self.outputs)
        return f"TrtSession({self.model_path.name}, inputs=[{inputs}], outputs=[{outputs}])"

    def to_device(self, array: np.ndarray) -> DeviceArray:
        """Copy a numpy array to this session's GPU (e.g. to prepare a feed reused across runs)."""
        device = DeviceArray.from_numpy(array, self._stream)
        cuda_call(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return device

    def run(self, feeds: Mapping[str, Feed], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the engine and return output name -> numpy array.

        feeds: input name -> numpy array or DeviceArray with the dtype and shape of `self.inputs`
        (dynamic dimensions within the engine's profile). output_names: default all outputs.
        Raises InputError for bad feeds, shapes outside the profile or unknown output names, and
        BackendError when TensorRT or CUDA fails.
        """
        outputs = self.run_device(feeds, output_names)
        try:
            return {name: value.numpy() for name, value in outputs.items()}
        finally:
            for value in outputs.values():
                value.free()

    def run_device(
        self, feeds: Mapping[str, Feed], output_names: Sequence[str] | None = None
    ) -> dict[str, DeviceArray]:
        """Run the engine and return output name -> DeviceArray left in GPU memory (see `run`)."""
        names = self._output_names(output_names)
        self._check_feeds(feeds)
        staged: list[DeviceArray] = []  # host feeds copied for this run only
        outputs: dict[str, DeviceArray] = {}
        try:
            for spec in self.inputs:
                value = feeds[spec.name]
                if isinstance(value, np.ndarray):
                    value = DeviceArray.from_numpy(value, self._stream)
                    staged.append(value)
                if not self._context.set_input_shape(spec.name, value.shape):
                    raise InputError(self._profile_message(spec.name, value.shape))
                self._context.set_tensor_address(spec.name, value.ptr)
            for spec in self.outputs:
                shape = tuple(self._context.get_tensor_shape(spec.name))
                if any(d < 0 for d in shape):
                    raise BackendError(
                        f"output {spec.name!r} has a data-dependent shape {shape}, which is not supported"
                    )
                outputs[spec.name] = DeviceArray(shape, np.dtype(spec.dtype), self._stream)
                self._context.set_tensor_address(spec.name, outputs[spec.name].ptr)
            if not self._context.execute_async_v3(int(self._stream)):
                raise BackendError(f"TensorRT failed to run {self.model_path} (see the TensorRT log above)")
            cuda_call(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        except BaseException:
            for value in outputs.values():
                value.free()
            raise
        finally:
            for value in staged:
                value.free()
        for name in [n for n in outputs if n not in names]:
            outputs.pop(name).free()
        return {name: outputs[name] for name in names}

    def close(self) -> None:
        """Release the CUDA stream (the engine and context go with the object)."""
        if self._stream is not None:
            stream, self._stream = self._stream, None
            cuda_call(cudart.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def _profile_message(self, name: str, shape: tuple[int, ...]) -> str:
        low, opt, high = (tuple(s) for s in self._engine.get_tensor_profile_shape(name, 0))
        return (
            f"input {name!r} shape {shape} is outside the engine's optimization profile (min {low}, opt {opt}, "
            f"max {high}); rebuild the engine with wider ShapeLimits or send smaller inputs"
        )

    def _output_names(self, output_names: Sequence[str] | None) -> list[str]:
        known = [spec.name for spec in self.outputs]
        if output_names is None:
            return known
        if isinstance(output_names, str) or not output_names:
            raise InputError(f"output_names={output_names!r} must be a non-empty list of output names from {known}")
        unknown = [name for name in output_names if name not in known]
        if unknown:
            raise InputError(f"unknown output name(s) {unknown}; the engine's outputs are {known}")
        return list(output_names)

    def _check_feeds(self, feeds: Mapping[str, Feed]) -> None:
        if not isinstance(feeds, Mapping):
            raise InputError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
        signatures = {}
        for name, value in feeds.items():
            if isinstance(value, DeviceArray):
                if value.ptr == 0:
                    raise InputError(f"input {name!r} was given a DeviceArray that was already freed")
                signatures[name] = (value.dtype.name, value.shape)
            else:
                signatures[name] = array_signature(name, value)
        check_signatures(self.inputs, signatures)
