"""The native TensorRT backend and engine builder.

Without TensorRT (CI, this machine) the backend and the builder run against small fakes of the
`tensorrt` and `cuda.bindings.runtime` modules: "device" memory is host memory and the fake engine
computes y = 2x and present = concat(past, x), which exercises shapes, profiles, tensor
addresses, device-resident outputs fed back as inputs, and buffer lifetimes. Tests of the real
library are marked requires_tensorrt and skip here with the reason.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import logging
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tinymm.backends import BackendOptions, get_backend
from tinymm.backends.engine_cache import ShapeLimits, contract_limits
from tinymm.errors import BackendError, InputError

WIDTH = 4
SPECS = [SimpleNamespace(name="x", shape=("batch", WIDTH))]  # the tiny ONNX model's input, for the builder
PROFILES = {"x": ((1, WIDTH), (2, WIDTH), (4, WIDTH)), "past": ((1, 1, WIDTH), (2, 4, WIDTH), (4, 8, WIDTH))}


# --- fakes of cuda-python and TensorRT ------------------------------------------------------------


class FakeCuda(types.ModuleType):
    """cuda.bindings.runtime over host memory; counts copies and tracks live allocations."""

    def __init__(self) -> None:
        super().__init__("cuda.bindings.runtime")
        self.cudaError_t = SimpleNamespace(cudaSuccess=0)
        self.cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
        self.live: dict[int, ctypes.Array] = {}
        self.copies = {1: 0, 2: 0}

    def cudaMalloc(self, size):  # noqa: N802 - the CUDA names
        buffer = ctypes.create_string_buffer(size)
        self.live[ctypes.addressof(buffer)] = buffer
        return (0, ctypes.addressof(buffer))

    def cudaFree(self, ptr):  # noqa: N802
        del self.live[ptr]
        return (0,)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):  # noqa: N802
        ctypes.memmove(dst, src, count)
        self.copies[kind] += 1
        return (0,)

    # Streams, devices and errors: nothing to do but report success.
    def cudaStreamCreate(self):  # noqa: N802
        return (0, 7)

    def cudaGetDeviceProperties(self, device):  # noqa: N802
        return (0, SimpleNamespace(name=b"Fake GPU\x00", major=8, minor=7))

    def __getattr__(self, name):
        replies = {"cudaGetDeviceCount": (0, 1), "cudaGetErrorName": (0, b"cudaErrorFake")}
        if name in ("cudaStreamSynchronize", "cudaStreamDestroy", "cudaSetDevice", *replies):
            return lambda *args: replies.get(name, (0,))
        raise AttributeError(name)


def _read(ptr: int, shape, dtype=np.float32) -> np.ndarray:
    count = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(ctypes.string_at(ptr, count), dtype=dtype).reshape(shape)


class FakeContext:
    """y = 2 x; present = concat(past, x[:, None, :]) along axis 1."""

    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.streams: list[int] = []

    def set_input_shape(self, name, shape):
        low, _, high = PROFILES[name]
        ok = len(shape) == len(low) and all(lo <= s <= hi for lo, s, hi in zip(low, shape, high))
        if ok:
            self.shapes[name] = tuple(shape)
        return ok

    def get_tensor_shape(self, name):
        batch, past = self.shapes["x"][0], self.shapes["past"][1]
        return {"y": (batch, WIDTH), "present": (batch, past + 1, WIDTH)}[name]

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        self.streams.append(stream)
        x = _read(self.addresses["x"], self.shapes["x"])
        past = _read(self.addresses["past"], self.shapes["past"])
        y = np.ascontiguousarray(2 * x)
        present = np.ascontiguousarray(np.concatenate([past, x[:, None, :]], axis=1))
        ctypes.memmove(self.addresses["y"], y.ctypes.data, y.nbytes)
        ctypes.memmove(self.addresses["present"], present.ctypes.data, present.nbytes)
        return True


class FakeEngine:
    names = ("x", "past", "y", "present")
    shapes = {"x": (-1, WIDTH), "past": (-1, -1, WIDTH), "y": (-1, WIDTH), "present": (-1, -1, WIDTH)}

    def __init__(self) -> None:
        self.num_io_tensors = len(self.names)
        self.context = FakeContext()

    def get_tensor_name(self, index):
        return self.names[index]

    def get_tensor_mode(self, name):
        return "in" if name in PROFILES else "out"

    def get_tensor_dtype(self, name):
        return np.float32

    def get_tensor_shape(self, name):
        return self.shapes[name]

    def get_tensor_profile_shape(self, name, profile):
        return PROFILES[name]

    def create_execution_context(self):
        return self.context


class FakeBuild:
    """Records what the builder code asks of TensorRT."""

    def __init__(self) -> None:
        self.network_flags: list[int] = []
        self.builder_flags: list[str] = []
        self.shapes: dict[str, tuple] = {}
        self.timing_in: list[bytes] = []
        self.inputs: list[str] = ["x"]
        self.builds = 0


def fake_tensorrt(build: FakeBuild, version: str = "10.3.0") -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    severity = SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

    class ILogger:
        Severity = severity

        def __init__(self):
            pass

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            return FakeEngine() if data == b"fake-engine" else None

    class Network:
        def __init__(self, flags):
            build.network_flags.append(flags)
            self.num_inputs = len(build.inputs)

        def get_input(self, index):
            return SimpleNamespace(name=build.inputs[index])

    class Config:
        builder_optimization_level = 3

        def set_memory_pool_limit(self, pool, size):
            self.workspace = size

        def set_flag(self, flag):
            build.builder_flags.append(flag)

        def add_optimization_profile(self, profile):
            self.profile = profile

        def create_timing_cache(self, data):
            build.timing_in.append(data)
            return SimpleNamespace(serialize=lambda: b"timing")

        def set_timing_cache(self, cache, ignore_mismatch):
            self.timing = cache

        def get_timing_cache(self):
            return self.timing

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return SimpleNamespace(set_shape=lambda name, lo, opt, hi: build.shapes.__setitem__(name, (lo, opt, hi)))

        def build_serialized_network(self, network, config):
            build.builds += 1
            return b"fake-engine"

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse_from_file(self, path):
            return True

    trt.ILogger, trt.Runtime, trt.Builder, trt.OnnxParser = ILogger, Runtime, Builder, OnnxParser
    trt.TensorIOMode = SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
    trt.BuilderFlag = SimpleNamespace(INT8="INT8", FP16="FP16")
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE="workspace")
    trt.nptype = lambda dtype: dtype
    return trt


@pytest.fixture
def fakes(monkeypatch):
    """Install the fakes and import a fresh tinymm.backends.tensorrt against them."""
    cuda, build = FakeCuda(), FakeBuild()
    package = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime, package.bindings = cuda, bindings
    for name, module in (("cuda", package), ("cuda.bindings", bindings), ("cuda.bindings.runtime", cuda)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(build))
    sys.modules.pop("tinymm.backends.tensorrt", None)
    module = importlib.import_module("tinymm.backends.tensorrt")
    yield SimpleNamespace(cuda=cuda, build=build, module=module)
    sys.modules.pop("tinymm.backends.tensorrt", None)


@pytest.fixture
def session(fakes, tmp_path):
    path = tmp_path / "step.fp16.0123456789abcdef.engine"
    path.write_bytes(b"fake-engine")
    return get_backend("tensorrt").load(path, BackendOptions())


# --- the backend without TensorRT ---------------------------------------------------------------


def test_get_backend_without_tensorrt_names_the_install(monkeypatch):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here, so the missing-package error cannot happen")
    monkeypatch.delitem(sys.modules, "tinymm.backends.tensorrt", raising=False)
    with pytest.raises(BackendError) as excinfo:
        get_backend("tensorrt")
    assert "pip install 'tinymm[tensorrt]'" in str(excinfo.value)
    assert isinstance(excinfo.value.__cause__, ModuleNotFoundError)


def test_missing_cuda_python_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(FakeBuild()))
    monkeypatch.setitem(sys.modules, "cuda", None)  # `import cuda...` raises ImportError
    monkeypatch.delitem(sys.modules, "tinymm.backends.tensorrt", raising=False)
    with pytest.raises(BackendError, match=r"needs cuda-python.*pip install 'tinymm\[tensorrt\]'"):
        get_backend("tensorrt")
    sys.modules.pop("tinymm.backends.tensorrt", None)


# --- the backend against the fakes --------------------------------------------------------------


def test_backend_reports_the_gpu(fakes):
    backend = get_backend("tensorrt")
    assert backend.name == "tensorrt" and backend.available_providers() == ("tensorrt",)
    assert fakes.module.gpu_info(0) == ("Fake GPU", "8.7")


def test_onnx_missing_and_foreign_engines_are_backend_errors(fakes, tmp_path):
    backend = get_backend("tensorrt")
    with pytest.raises(BackendError, match="export/tensorrt_build.py.*provider='tensorrt'"):
        backend.load(tmp_path / "model.onnx")
    with pytest.raises(BackendError, match="does not exist"):
        backend.load(tmp_path / "missing.engine")
    foreign = tmp_path / "other.engine"
    foreign.write_bytes(b"built elsewhere")
    with pytest.raises(BackendError, match="could not deserialize.*rebuild it"):
        backend.load(foreign)


def test_session_describes_the_engine(session):
    assert [str(s) for s in session.inputs] == ["x: float32[?, 4]", "past: float32[?, ?, 4]"]
    assert [s.name for s in session.outputs] == ["y", "present"] and session.provider == "tensorrt"


def test_run_takes_and_returns_numpy_and_frees_its_buffers(fakes, session):
    x = np.arange(8, dtype=np.float32).reshape(2, WIDTH)
    past = np.ones((2, 3, WIDTH), np.float32)
    out = session.run({"x": x, "past": past})
    np.testing.assert_array_equal(out["y"], 2 * x)
    np.testing.assert_array_equal(out["present"], np.concatenate([past, x[:, None]], axis=1))
    assert fakes.cuda.live == {}  # staged inputs and outputs were freed
    assert fakes.module.cudart.cudaStreamCreate()[1] in session._context.streams


def test_device_outputs_feed_the_next_step_without_copies(fakes, session):
    x = np.ones((1, WIDTH), np.float32)
    state = session.run_device({"x": x, "past": np.zeros((1, 1, WIDTH), np.float32)})
    assert isinstance(state["present"], fakes.module.DeviceArray) and state["present"].shape == (1, 2, WIDTH)
    copies_to_gpu = fakes.cuda.copies[1]
    step = session.run_device({"x": 3 * x, "past": state["present"]})
    assert fakes.cuda.copies[1] == copies_to_gpu + 1  # only x was copied; the KV cache stayed on the GPU
    present = step["present"].numpy()
    np.testing.assert_array_equal(present[0, :, 0], [0, 1, 3])
    for value in (*state.values(), *step.values()):
        value.free()
    assert fakes.cuda.live == {}


def test_output_names_pick_outputs_and_free_the_others(fakes, session):
    feeds = {"x": np.ones((1, WIDTH), np.float32), "past": np.ones((1, 1, WIDTH), np.float32)}
    out = session.run_device(feeds, ["y"])
    assert list(out) == ["y"] and len(fakes.cuda.live) == 1
    out["y"].free()
    with pytest.raises(InputError, match="unknown output name"):
        session.run(feeds, ["z"])


def test_bad_feeds_are_input_errors_and_leak_nothing(fakes, session):
    good_past = np.ones((1, 1, WIDTH), np.float32)
    profile = r"outside the engine's optimization profile \(min \(1, 1, 4\).*max \(4, 8, 4\)"
    with pytest.raises(InputError, match=profile):
        session.run({"x": np.ones((1, WIDTH), np.float32), "past": np.ones((1, 9, WIDTH), np.float32)})
    assert fakes.cuda.live == {}
    with pytest.raises(InputError, match="expects dtype float32 but was given float64"):
        session.run({"x": np.ones((1, WIDTH)), "past": good_past})
    freed = session.to_device(good_past)
    freed.free()
    with pytest.raises(InputError, match="already freed"):
        session.run({"x": np.ones((1, WIDTH), np.float32), "past": freed})
    with pytest.raises(InputError, match="missing model input"):
        session.run({"x": np.ones((1, WIDTH), np.float32)})


def test_tensorrt_messages_go_to_python_logging(fakes, caplog):
    trt_logger = fakes.module.TrtLogger()
    with caplog.at_level(logging.DEBUG, logger="tinymm.backends.tensorrt"):
        trt_logger.log(1, "parse failed")
        trt_logger.log(4, "tactic chosen")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "TensorRT: parse failed"),
        (logging.DEBUG, "TensorRT: tactic chosen"),
    ]


# --- the engine builder -------------------------------------------------------------------------

tensorrt_build = pytest.importorskip("export.tensorrt_build", reason="the export tier needs the onnx package")


@pytest.mark.parametrize(
    ("version", "precision", "typing", "strong", "flags"),
    [
        ("10.3.0", "fp16", "auto", True, ()),
        ("10.3.0", "int8", "auto", False, ("INT8", "FP16")),
        ("10.3.0", "int8", "strong", True, ()),
        ("10.3.0", "fp16", "weak", False, ("FP16",)),
        ("11.0.0", "fp16", "auto", True, ()),
        ("11.2.1", "int8", "auto", True, ()),
    ],
)
def test_network_plan_per_tensorrt_version(version, precision, typing, strong, flags):
    plan = tensorrt_build.plan_network(version, precision, typing)
    assert plan.strongly_typed is strong and plan.builder_flags == flags


def test_network_plan_refuses_old_versions_and_weak_typing_on_11():
    with pytest.raises(tensorrt_build.EngineBuildError, match="too old"):
        tensorrt_build.plan_network("8.6.1", "fp16")
    with pytest.raises(tensorrt_build.EngineBuildError, match="strongly typed networks only"):
        tensorrt_build.plan_network("11.0.0", "int8", "weak")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"precision": "fp32"}, "precision"),
        ({"precision": "fp16", "typing": "loose"}, "typing"),
        ({"precision": "fp16", "workspace_bytes": 0}, "workspace_bytes"),
        ({"precision": "fp16", "optimization_level": 6}, "optimization_level"),
    ],
)
def test_build_options_are_checked_once(options, message):
    with pytest.raises(InputError, match=message):
        tensorrt_build.BuildOptions(**options)


def _tiny_onnx(path: Path) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(WIDTH, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_int8_variants_breaking_the_rules_are_refused_before_tensorrt_is_needed(tmp_path):
    from export.quantize import quantize_dynamic_int8

    dynamic = quantize_dynamic_int8(_tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.int8.onnx")
    options = tensorrt_build.BuildOptions(precision="int8")
    with pytest.raises(tensorrt_build.EngineBuildError, match=r"breaks \d+ TensorRT rule.*fp16 variant"):
        tensorrt_build.build_engine(dynamic, tmp_path / "cache", [], ShapeLimits(), options)


def test_build_engine_configures_tensorrt_and_caches(fakes, tmp_path, caplog):
    onnx_path = _tiny_onnx(tmp_path / "encoder.fp16.onnx")
    cache = tmp_path / "cache"
    options = tensorrt_build.BuildOptions(precision="fp16", optimization_level=4)
    with caplog.at_level(logging.INFO):
        path = tensorrt_build.build_engine(onnx_path, cache, SPECS, contract_limits(16, max_batch=4), options)
    assert path.read_bytes() == b"fake-engine" and path.name.startswith("encoder.fp16.")
    assert fakes.build.network_flags == [1 << 1] and fakes.build.builder_flags == []  # strongly typed
    assert fakes.build.shapes == {"x": ((1, WIDTH), (1, WIDTH), (4, WIDTH))}
    assert (cache / "timing-fake-gpu-trt10.3.0.cache").read_bytes() == b"timing"
    assert "no fp16 engine cached for 'encoder' yet" in caplog.text
    # The same key is a cache hit: no second build; the engine loads in the backend.
    assert tensorrt_build.build_engine(onnx_path, cache, SPECS, contract_limits(16, max_batch=4), options) == path
    assert fakes.build.builds == 1
    assert get_backend("tensorrt").load(path).outputs[0].name == "y"
    # A wider profile rebuilds, reusing the timing cache, and says why.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        tensorrt_build.build_engine(onnx_path, cache, SPECS, contract_limits(16, max_batch=8), options)
    assert fakes.build.builds == 2 and fakes.build.timing_in[-1] == b"timing"
    assert "shape profile changed" in caplog.text


def test_build_engine_with_int8_on_tensorrt_10_sets_the_precision_flags(fakes, tmp_path):
    from export.quantize import quantize_static_qdq

    fp32 = _tiny_onnx(tmp_path / "m.onnx")
    calibration = [{"x": np.random.default_rng(0).standard_normal((2, WIDTH)).astype(np.float32)}]
    int8 = quantize_static_qdq(fp32, tmp_path / "m.int8.onnx", calibration)
    options = tensorrt_build.BuildOptions(precision="int8")
    tensorrt_build.build_engine(int8, tmp_path / "cache", SPECS, ShapeLimits(), options)
    assert fakes.build.network_flags == [0] and fakes.build.builder_flags == ["INT8", "FP16"]


def test_profile_and_network_inputs_must_agree(fakes, tmp_path):
    onnx_path = _tiny_onnx(tmp_path / "m.onnx")
    specs = [SimpleNamespace(name="pixels", shape=("batch", WIDTH))]
    options = tensorrt_build.BuildOptions("fp16")
    message = r"has inputs \['x'\] but the profile covers \['pixels'\]"
    with pytest.raises(tensorrt_build.EngineBuildError, match=message):
        tensorrt_build.build_engine(onnx_path, tmp_path / "c", specs, ShapeLimits(), options)


# --- the real library ---------------------------------------------------------------------------


@pytest.mark.requires_tensorrt
def test_real_fp16_engine_matches_onnxruntime(tmp_path):
    import onnxruntime as ort

    from export.fp16 import convert_fp16

    fp16 = convert_fp16(_tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.fp16.onnx")
    options = tensorrt_build.BuildOptions(precision="fp16")
    engine = tensorrt_build.build_engine(fp16, tmp_path / "cache", SPECS, ShapeLimits(), options)
    assert tensorrt_build.build_engine(fp16, tmp_path / "cache", SPECS, ShapeLimits(), options) == engine
    x = np.random.default_rng(0).standard_normal((3, WIDTH)).astype(np.float32)
    got = get_backend("tensorrt").load(engine).run({"x": x})["y"]
    expected = ort.InferenceSession(str(fp16), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-2)


@pytest.mark.requires_tensorrt
def test_real_int8_qdq_engine_builds_and_runs(tmp_path):
    from export.quantize import quantize_static_qdq

    rng = np.random.default_rng(0)
    calibration = [{"x": rng.standard_normal((2, WIDTH)).astype(np.float32)} for _ in range(4)]
    int8 = quantize_static_qdq(_tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.int8.onnx", calibration)
    options = tensorrt_build.BuildOptions("int8")
    engine = tensorrt_build.build_engine(int8, tmp_path / "cache", SPECS, ShapeLimits(), options)
    x = rng.standard_normal((2, WIDTH)).astype(np.float32)
    got = get_backend("tensorrt").load(engine).run({"x": x})["y"]
    np.testing.assert_allclose(got, x, atol=0.1)  # the model is the identity
