"""The backend seam: options, specs, feed checks and lazy backend lookup (no model is run)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinymm.backends import BackendOptions, TensorSpec, check_feeds, check_signatures, get_backend, known_backends
from tinymm.backends.base import Backend
from tinymm.errors import BackendError, InputError

SPECS = (
    TensorSpec("pixels", ("batch", 3, 8, 8), "float32"),
    TensorSpec("ids", (None, 5), "int64"),
)


def good_feeds(batch: int = 2) -> dict[str, np.ndarray]:
    return {
        "pixels": np.zeros((batch, 3, 8, 8), np.float32),
        "ids": np.zeros((batch, 5), np.int64),
    }


# --- TensorSpec -------------------------------------------------------------------------------


def test_tensor_spec_describes_itself():
    spec = SPECS[0]
    assert spec.rank == 4
    assert str(spec) == "pixels: float32[batch, 3, 8, 8]"
    assert str(SPECS[1]) == "ids: int64[?, 5]"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.dtype = "float16"


# --- BackendOptions ---------------------------------------------------------------------------


def test_backend_options_defaults():
    options = BackendOptions()
    assert options.provider == "auto"
    assert options.graph_optimization == "all"
    assert options.io_binding == "auto"
    assert options.cache_dir is None
    assert options.trt_profiles == ()
    assert (options.intra_op_threads, options.inter_op_threads, options.device_id) == (0, 0, 0)
    assert dict(options.session_options) == {}


@pytest.mark.parametrize(
    ("field", "value", "expected_in_message"),
    [
        ("provider", "gpu", "['auto', 'cpu', 'cuda', 'tensorrt']"),
        ("graph_optimization", "max", "['disabled', 'basic', 'extended', 'all']"),
        ("io_binding", True, "['auto', 'on', 'off']"),
        ("intra_op_threads", -1, ">= 0"),
        ("inter_op_threads", 1.5, ">= 0"),
        ("device_id", True, ">= 0"),
        ("trt_fp16", "yes", "True or False"),
        ("trt_int8", 1, "True or False"),
        ("cache_dir", 3, "path or None"),
        ("session_options", [("a", "b")], "mapping"),
        ("session_options", {"session.key": 1}, "strings"),
    ],
)
def test_backend_options_reject_bad_values(field, value, expected_in_message):
    with pytest.raises(ValueError) as excinfo:
        BackendOptions(**{field: value})
    message = str(excinfo.value)
    assert f"BackendOptions.{field}" in message
    assert expected_in_message in message


def test_backend_options_normalise_paths_and_freeze_session_options(tmp_path: Path):
    extra = {"session.intra_op.allow_spinning": "0"}
    options = BackendOptions(cache_dir=str(tmp_path), session_options=extra)
    assert options.cache_dir == tmp_path
    extra["later"] = "change"  # the options keep their own copy
    assert dict(options.session_options) == {"session.intra_op.allow_spinning": "0"}
    with pytest.raises(TypeError):
        options.session_options["x"] = "y"
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.provider = "cpu"


@pytest.mark.parametrize(
    ("mode", "provider", "expected"),
    [
        ("auto", "cpu", False),
        ("auto", "cuda", True),
        ("auto", "tensorrt", True),
        ("on", "cpu", True),
        ("off", "cuda", False),
    ],
)
def test_io_binding_choice(mode, provider, expected):
    assert BackendOptions(io_binding=mode).use_io_binding(provider) is expected


# --- get_backend ------------------------------------------------------------------------------


def test_unknown_backend_lists_known_ones():
    with pytest.raises(BackendError) as excinfo:
        get_backend("tensorflow")
    assert "'tensorflow'" in str(excinfo.value)
    assert "onnxruntime" in str(excinfo.value)
    assert known_backends() == ("onnxruntime", "tensorrt")


def test_missing_package_says_what_to_install(monkeypatch):
    # A None entry in sys.modules makes `import onnxruntime` raise ModuleNotFoundError.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.delitem(sys.modules, "tinymm.backends.onnxruntime", raising=False)
    with pytest.raises(BackendError) as excinfo:
        get_backend("onnxruntime")
    message = str(excinfo.value)
    assert "pip install onnxruntime" in message
    assert "tinymm[gpu]" in message
    assert isinstance(excinfo.value.__cause__, ModuleNotFoundError)


def test_get_backend_returns_a_backend():
    pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs onnxruntime")
    backend = get_backend("onnxruntime")
    assert isinstance(backend, Backend)
    assert backend.name == "onnxruntime"
    assert "cpu" in backend.available_providers()


def test_importing_the_seam_imports_no_inference_library():
    code = (
        "import sys, tinymm.backends, tinymm.backends.base; "
        "loaded = [m for m in ('onnxruntime', 'tensorrt', 'torch') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- check_feeds ------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 7])
def test_check_feeds_accepts_any_positive_symbolic_size(batch):
    check_feeds(SPECS, good_feeds(batch))


def test_missing_input_lists_expected_inputs():
    feeds = good_feeds()
    del feeds["ids"]
    with pytest.raises(InputError) as excinfo:
        check_feeds(SPECS, feeds)
    assert "['ids']" in str(excinfo.value)
    assert "pixels: float32[batch, 3, 8, 8]" in str(excinfo.value)


def test_unexpected_input_name():
    feeds = {**good_feeds(), "pixel": np.zeros(1, np.float32)}
    with pytest.raises(InputError) as excinfo:
        check_feeds(SPECS, feeds)
    assert "['pixel']" in str(excinfo.value)
    assert "['pixels', 'ids']" in str(excinfo.value)


def test_wrong_dtype_says_how_to_convert():
    feeds = {**good_feeds(), "pixels": np.zeros((2, 3, 8, 8), np.float64)}
    with pytest.raises(InputError) as excinfo:
        check_feeds(SPECS, feeds)
    message = str(excinfo.value)
    assert "float32" in message and "float64" in message
    assert ".astype(np.float32)" in message


def test_wrong_rank():
    feeds = {**good_feeds(), "pixels": np.zeros((3, 8, 8), np.float32)}
    with pytest.raises(InputError) as excinfo:
        check_feeds(SPECS, feeds)
    assert "rank 4" in str(excinfo.value)
    assert "(3, 8, 8)" in str(excinfo.value)


def test_fixed_dimension_mismatch():
    feeds = {**good_feeds(), "pixels": np.zeros((2, 3, 16, 8), np.float32)}
    with pytest.raises(InputError) as excinfo:
        check_feeds(SPECS, feeds)
    message = str(excinfo.value)
    assert "dimension 2 must be 8" in message
    assert "(2, 3, 16, 8)" in message


@pytest.mark.parametrize("name", ["pixels", "ids"])
def test_empty_symbolic_dimension_is_refused(name):
    feeds = good_feeds()
    feeds[name] = np.zeros((0, *feeds[name].shape[1:]), feeds[name].dtype)
    with pytest.raises(InputError, match="must be > 0"):
        check_feeds(SPECS, feeds)


def test_non_array_feed():
    feeds = {**good_feeds(), "ids": [[1, 2, 3, 4, 5]]}
    with pytest.raises(InputError, match="pass a numpy array"):
        check_feeds(SPECS, feeds)


def test_check_signatures_for_non_numpy_feeds():
    check_signatures(SPECS, {"pixels": ("float32", (1, 3, 8, 8)), "ids": ("int64", (1, 5))})
    with pytest.raises(InputError, match="float16"):
        check_signatures(SPECS, {"pixels": ("float16", (1, 3, 8, 8)), "ids": ("int64", (1, 5))})
