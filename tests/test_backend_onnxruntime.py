"""The onnxruntime backend on tiny ONNX models built in the tests, plus its provider choice."""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("onnx", reason="building test models needs the onnx package (pip install 'tinymm[dev]')")
ort = pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs onnxruntime")

import tiny_models  # noqa: E402  (after the importorskip above)

from tinymm.backends import BackendOptions, Session, TensorSpec, get_backend  # noqa: E402
from tinymm.backends.ort_providers import (  # noqa: E402
    TRT_CACHE_SUBDIR,
    ProviderPlan,
    check_session_providers,
    cuda_provider_options,
    plan_providers,
    tensorrt_provider_options,
)
from tinymm.errors import BackendError, InputError  # noqa: E402

ALL_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
CPU_ONLY = ["CPUExecutionProvider"]
CPU = BackendOptions(provider="cpu", intra_op_threads=1)


@pytest.fixture
def backend():
    return get_backend("onnxruntime")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --- load, describe and run -------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 5])
def test_linear_model_matches_numpy(backend, tmp_path, rng, batch):
    path, reference = tiny_models.linear_model(tmp_path)
    session = backend.load(path, CPU)
    x = rng.standard_normal((batch, 4)).astype(np.float32)
    out = session.run({"x": x})
    assert list(out) == ["y"]
    assert out["y"].dtype == np.float32 and out["y"].shape == (batch, 3)
    np.testing.assert_allclose(out["y"], reference(x), rtol=1e-5, atol=1e-6)


def test_session_describes_inputs_and_outputs(backend, tmp_path):
    session = backend.load(tiny_models.linear_model(tmp_path)[0], CPU)
    assert isinstance(session, Session)
    assert session.provider == "cpu"
    assert session.inputs == (TensorSpec("x", ("batch", 4), "float32"),)
    assert session.outputs == (TensorSpec("y", ("batch", 3), "float32"),)
    assert "linear.onnx" in repr(session)


def test_int64_input_model(backend, tmp_path):
    path, reference = tiny_models.embedding_model(tmp_path)
    session = backend.load(path, CPU)
    assert session.inputs == (TensorSpec("ids", ("batch", "seq"), "int64"),)
    ids = np.array([[1, 2, 3], [9, 0, 4]], dtype=np.int64)
    np.testing.assert_array_equal(session.run({"ids": ids})["emb"], reference(ids))


def test_two_inputs_and_output_selection(backend, tmp_path, rng):
    path, reference = tiny_models.two_input_model(tmp_path)
    session = backend.load(path, CPU)
    a, b = rng.standard_normal((2, 2, 3)).astype(np.float32)
    both = session.run({"a": a, "b": b})
    assert list(both) == ["sum", "prod"]
    np.testing.assert_allclose(both["prod"], reference(a, b)["prod"])
    only = session.run({"b": b, "a": a}, output_names=["prod"])
    assert list(only) == ["prod"]
    np.testing.assert_allclose(only["prod"], reference(a, b)["prod"])


def test_non_contiguous_feed_is_accepted(backend, tmp_path, rng):
    path, reference = tiny_models.linear_model(tmp_path)
    session = backend.load(path, CPU)
    x = rng.standard_normal((4, 8)).astype(np.float32)[:, ::2]  # a strided (4, 4) view
    assert not x.flags.c_contiguous
    np.testing.assert_allclose(session.run({"x": x})["y"], reference(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("feeds", "match"),
    [
        ({}, "missing model input"),
        ({"x": np.zeros((1, 4), np.float32), "z": np.zeros(1, np.float32)}, "unexpected input"),
        ({"x": np.zeros((1, 4), np.float64)}, r"astype\(np.float32\)"),
        ({"x": np.zeros(4, np.float32)}, "rank 2"),
        ({"x": np.zeros((1, 5), np.float32)}, "dimension 1 must be 4"),
        ({"x": [[0.0, 0.0, 0.0, 0.0]]}, "numpy array"),
    ],
)
def test_bad_feeds_raise_input_error(backend, tmp_path, feeds, match):
    session = backend.load(tiny_models.linear_model(tmp_path)[0], CPU)
    with pytest.raises(InputError, match=match):
        session.run(feeds)


@pytest.mark.parametrize("names", [["nope"], [], "y"])
def test_bad_output_names(backend, tmp_path, names):
    session = backend.load(tiny_models.linear_model(tmp_path)[0], CPU)
    with pytest.raises(InputError, match="'y'"):
        session.run({"x": np.zeros((1, 4), np.float32)}, output_names=names)


def test_runtime_failure_is_a_backend_error(backend, tmp_path):
    # Both inputs share the symbolic "batch" dim; 2 vs 3 passes the per-input checks but not Add.
    session = backend.load(tiny_models.two_input_model(tmp_path)[0], CPU)
    with pytest.raises(BackendError) as excinfo:
        session.run({"a": np.zeros((2, 3), np.float32), "b": np.zeros((3, 3), np.float32)})
    assert "two_inputs.onnx" in str(excinfo.value)
    assert excinfo.value.__cause__ is not None


# --- session options --------------------------------------------------------------------------


def test_session_options_are_applied(backend, tmp_path):
    options = BackendOptions(
        provider="cpu",
        intra_op_threads=1,
        inter_op_threads=2,
        graph_optimization="basic",
        session_options={"session.intra_op.allow_spinning": "0"},
    )
    applied = backend.load(tiny_models.linear_model(tmp_path)[0], options).ort_session.get_session_options()
    assert applied.intra_op_num_threads == 1
    assert applied.inter_op_num_threads == 2
    assert applied.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert applied.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert applied.get_session_config_entry("session.intra_op.allow_spinning") == "0"


# --- load failures ----------------------------------------------------------------------------


def test_missing_file(backend, tmp_path):
    missing = tmp_path / "nowhere" / "model.onnx"
    with pytest.raises(BackendError, match="does not exist") as excinfo:
        backend.load(missing, CPU)
    assert str(missing) in str(excinfo.value)


def test_corrupt_file(backend, tmp_path):
    path = tiny_models.corrupt_model(tmp_path)
    with pytest.raises(BackendError) as excinfo:
        backend.load(path, CPU)
    assert str(path) in str(excinfo.value)
    assert excinfo.value.__cause__ is not None


def test_unsupported_operator(backend, tmp_path):
    path = tiny_models.unsupported_op_model(tmp_path)
    with pytest.raises(BackendError) as excinfo:
        backend.load(path, CPU)
    assert str(path) in str(excinfo.value)
    assert "NoSuchOp" in str(excinfo.value)


# --- provider choice --------------------------------------------------------------------------


def test_auto_resolves_to_cpu_without_gpu_providers(backend, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(ort, "get_available_providers", lambda: CPU_ONLY)
    with caplog.at_level(logging.INFO, logger="tinymm.backends"):
        session = backend.load(tiny_models.linear_model(tmp_path)[0], BackendOptions(provider="auto"))
    assert session.provider == "cpu"
    assert session.io_binding is False
    assert "chose cpu" in caplog.text
    assert "tensorrt skipped" in caplog.text and "cuda skipped" in caplog.text
    assert backend.available_providers() == ("cpu",)


@pytest.mark.parametrize(("provider", "hints"), [("cuda", ["tinymm[gpu]"]), ("tensorrt", ["tinymm[gpu]", "TensorRT"])])
def test_explicit_gpu_provider_missing(backend, tmp_path, monkeypatch, provider, hints):
    monkeypatch.setattr(ort, "get_available_providers", lambda: CPU_ONLY)
    with pytest.raises(BackendError) as excinfo:
        backend.load(tiny_models.linear_model(tmp_path)[0], BackendOptions(provider=provider))
    message = str(excinfo.value)
    assert f"'{provider}'" in message
    assert "pip uninstall onnxruntime" in message
    assert "CPUExecutionProvider" in message  # lists what is available
    for hint in hints:
        assert hint in message


def test_auto_prefers_tensorrt_then_cuda():
    plan = plan_providers(BackendOptions(), ALL_PROVIDERS)
    assert (plan.provider, plan.explicit) == ("tensorrt", False)
    assert plan.ort_names == tuple(ALL_PROVIDERS)
    plan = plan_providers(BackendOptions(), ALL_PROVIDERS[1:])
    assert plan.provider == "cuda"
    assert plan.ort_names == ("CUDAExecutionProvider", "CPUExecutionProvider")
    plan = plan_providers(BackendOptions(provider="cpu"), ALL_PROVIDERS)
    assert (plan.provider, plan.ort_names, plan.explicit) == ("cpu", ("CPUExecutionProvider",), True)


def test_tensorrt_provider_options(tmp_path):
    options = BackendOptions(provider="tensorrt", device_id=1, cache_dir=tmp_path, trt_fp16=True)
    trt = tensorrt_provider_options(options)
    engine_dir = tmp_path / TRT_CACHE_SUBDIR / "fp16"
    timing_dir = tmp_path / TRT_CACHE_SUBDIR / "timing"
    assert trt == {
        "device_id": "1",
        "trt_fp16_enable": "True",
        "trt_int8_enable": "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(engine_dir),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(timing_dir),
    }
    plan = plan_providers(options, ALL_PROVIDERS)
    assert plan.ort_options == (trt, {"device_id": "1"}, {})
    assert plan.cache_dirs == (engine_dir, timing_dir)
    assert not engine_dir.exists()  # planning is pure; load creates the directories


def test_tensorrt_engines_of_each_precision_get_their_own_cache(tmp_path):
    paths = {
        tensorrt_provider_options(BackendOptions(cache_dir=tmp_path, trt_fp16=fp16, trt_int8=int8))[
            "trt_engine_cache_path"
        ]
        for fp16 in (False, True)
        for int8 in (False, True)
    }
    assert len(paths) == 4


def test_tensorrt_without_cache_dir_disables_caches():
    trt = tensorrt_provider_options(BackendOptions(trt_int8=True))
    assert trt["trt_engine_cache_enable"] == "False"
    assert trt["trt_timing_cache_enable"] == "False"
    assert trt["trt_int8_enable"] == "True"
    assert "trt_engine_cache_path" not in trt
    assert plan_providers(BackendOptions(provider="tensorrt"), ALL_PROVIDERS).cache_dirs == ()


def test_cuda_provider_options():
    assert cuda_provider_options(BackendOptions(device_id=2)) == {"device_id": "2"}


def _plan(provider: str, explicit: bool) -> ProviderPlan:
    options = BackendOptions(provider=provider if explicit else "auto")
    available = {"tensorrt": ALL_PROVIDERS, "cuda": ALL_PROVIDERS[1:], "cpu": CPU_ONLY}[provider]
    return plan_providers(options, available)


def test_silent_fallback_of_an_explicit_provider_is_an_error():
    with pytest.raises(BackendError, match="could not initialise CUDAExecutionProvider"):
        check_session_providers(_plan("cuda", explicit=True), CPU_ONLY)


def test_silent_fallback_under_auto_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="tinymm.backends"):
        actual = check_session_providers(_plan("tensorrt", explicit=False), ALL_PROVIDERS[1:])
    assert actual == "cuda"
    assert "TensorrtExecutionProvider" in caplog.text
    assert check_session_providers(_plan("cpu", explicit=True), CPU_ONLY) == "cpu"


# --- IO binding and OrtValues -----------------------------------------------------------------


def test_io_binding_on_cpu_gives_the_same_results(backend, tmp_path, rng):
    path, reference = tiny_models.two_input_model(tmp_path)
    plain = backend.load(path, CPU)
    bound = backend.load(path, BackendOptions(provider="cpu", io_binding="on"))
    assert (plain.io_binding, bound.io_binding) == (False, True)
    a, b = rng.standard_normal((2, 3, 3)).astype(np.float32)
    expected = plain.run({"a": a, "b": b})
    got = bound.run({"a": a, "b": b})
    assert list(got) == ["sum", "prod"]
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    np.testing.assert_allclose(bound.run({"a": a, "b": b}, ["prod"])["prod"], reference(a, b)["prod"])


def test_run_ortvalues_outputs_feed_the_next_run(backend, tmp_path, rng):
    path, reference = tiny_models.two_input_model(tmp_path)
    session = backend.load(path, CPU)
    a, b = rng.standard_normal((2, 2, 3)).astype(np.float32)
    first = session.run_ortvalues({"a": a, "b": b}, output_names=["sum"])
    assert isinstance(first["sum"], ort.OrtValue)
    assert first["sum"].device_name().lower() == "cpu"
    np.testing.assert_allclose(first["sum"].numpy(), a + b)
    # An OrtValue feed goes through IO binding even when it is off for numpy feeds.
    second = session.run({"a": first["sum"], "b": b})
    np.testing.assert_allclose(second["prod"], reference(a + b, b)["prod"], rtol=1e-6)


def test_ortvalue_feeds_are_checked(backend, tmp_path):
    session = backend.load(tiny_models.two_input_model(tmp_path)[0], CPU)
    wrong = ort.OrtValue.ortvalue_from_numpy(np.zeros((2, 3), np.float64))
    with pytest.raises(InputError, match="float64"):
        session.run({"a": wrong, "b": np.zeros((2, 3), np.float32)})


# --- GPU ----------------------------------------------------------------------------------------


@pytest.mark.requires_cuda
def test_cuda_provider_with_io_binding(backend, tmp_path, rng):
    path, reference = tiny_models.linear_model(tmp_path)
    session = backend.load(path, BackendOptions(provider="cuda"))
    assert session.provider == "cuda"
    assert session.io_binding is True  # auto turns it on for GPU providers
    assert session.device == ("cuda", 0)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(session.run({"x": x})["y"], reference(x), rtol=1e-4, atol=1e-5)
    on_device = session.run_ortvalues({"x": x})["y"]
    assert on_device.device_name().lower() == "cuda"
    np.testing.assert_allclose(on_device.numpy(), reference(x), rtol=1e-4, atol=1e-5)
    x_on_device = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
    np.testing.assert_allclose(session.run({"x": x_on_device})["y"], reference(x), rtol=1e-4, atol=1e-5)


@pytest.mark.requires_tensorrt
def test_tensorrt_provider_caches_engines(backend, tmp_path, rng):
    path, reference = tiny_models.linear_model(tmp_path)
    cache = tmp_path / "cache"
    session = backend.load(path, BackendOptions(provider="tensorrt", cache_dir=cache))
    assert session.provider == "tensorrt"
    x = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(session.run({"x": x})["y"], reference(x), rtol=1e-3, atol=1e-4)
    assert any((cache / TRT_CACHE_SUBDIR / "fp32").iterdir())
