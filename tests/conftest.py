"""Test tiers and hardware markers.

Tiers: unit (no optional packages), backend (tiny ONNX models built in the tests; needs the
`onnx` package from the dev extra), train/export (`requires_torch`), gpu (`requires_cuda`,
`requires_tensorrt`). A test whose hardware or package is missing is skipped with the reason,
never passed silently.
"""

from __future__ import annotations

import glob
import importlib.util

import pytest


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _cuda_reason() -> str | None:
    if not _has_module("onnxruntime"):
        return "onnxruntime is not installed"
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return None
    # Import torch (slow, and it raises every child process's peak RSS) only where a GPU device
    # node exists: /dev/nvidia0.. on desktops and servers, /dev/nvhost-ctrl-gpu on Jetson.
    if _has_module("torch") and (glob.glob("/dev/nvidia[0-9]*") or glob.glob("/dev/nvhost-ctrl-gpu")):
        import torch

        if torch.cuda.is_available():
            return None
    return "no CUDA GPU here (neither onnxruntime-gpu's CUDA provider nor torch.cuda is available)"


def _tensorrt_reason() -> str | None:
    if not _has_module("tensorrt"):
        return "the TensorRT Python package is not installed (pip install 'tinymm[tensorrt]' on an NVIDIA machine)"
    return _cuda_reason()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = {
        "requires_torch": None if _has_module("torch") else "torch is not installed (pip install 'tinymm[train]')",
        "requires_cuda": _cuda_reason(),
        "requires_tensorrt": _tensorrt_reason(),
    }
    for item in items:
        for marker, reason in reasons.items():
            if reason is not None and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=f"{marker}: {reason}"))


@pytest.fixture(autouse=True)
def _no_user_bundles(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bundle names resolve against the shipped bundles and an empty user bundle directory, never
    the bundles of the user running the tests (tinymm.bundle.names.user_bundle_dir)."""
    monkeypatch.setenv("TINYMM_BUNDLE_DIR", str(tmp_path_factory.getbasetemp() / "no-user-bundles"))
    # Archives are extracted into the user cache (tinymm.bundle.extract_cache): a per-run one here.
    monkeypatch.setenv("TINYMM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "user-cache"))
