"""``tinymm verify``: rerun golden pairs on this device and check them against their tolerances (no torch)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tinymm.bundle import BundleWriter, Component, GoldenPair, TensorSpec, Tolerance, Variant
from tinymm.cli import main
from tinymm.commands.verify import GoldenResult, OutputError, compare_arrays, compare_outputs
from tinymm.errors import EXIT_BACKEND, EXIT_BAD_INPUT, EXIT_BUNDLE, EXIT_OK, EXIT_TOLERANCE

onnx = pytest.importorskip("onnx", reason="the test models are built with the onnx package (pip install 'tinymm[dev]')")
pytest.importorskip("onnxruntime", reason="tinymm verify runs models with onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

IN, OUT = 4, 3
WEIGHT = np.linspace(-1.0, 1.0, IN * OUT, dtype=np.float32).reshape(IN, OUT)
GOLDEN_IN, GOLDEN_OUT = "golden/linear.inputs.npz", "golden/linear.outputs.npz"


def _linear(weight: np.ndarray) -> bytes:
    """y = x @ weight with x float32 (batch, 4), y float32 (batch, 3), as ONNX bytes."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", OUT])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def write_bundle(root: Path, *, golden: bool = True) -> Path:
    """fp32 = the exact model; fp16 = weights 1% larger: same direction (cosine 1), max abs error ~1e-2."""
    x = np.linspace(-2.0, 2.0, 2 * IN, dtype=np.float32).reshape(2, IN)
    with BundleWriter(root) as writer:
        writer.add_bytes("linear.onnx", _linear(WEIGHT))
        writer.add_bytes("linear.fp16.onnx", _linear(WEIGHT * 1.01))
        pairs = []
        if golden:
            writer.add_arrays(GOLDEN_IN, {"x": x})
            writer.add_arrays(GOLDEN_OUT, {"y": x @ WEIGHT})
            pairs = [GoldenPair("linear", GOLDEN_IN, GOLDEN_OUT,
                                {"fp32": Tolerance(max_abs=1e-4), "fp16": Tolerance(min_cosine=0.999)})]
        writer.write(
            name="linear", family="example", tasks=["embed"],
            components={"linear": Component(
                "linear", inputs=(TensorSpec("x", ("batch", IN), "float32"),),
                outputs=(TensorSpec("y", ("batch", OUT), "float32"),),
                variants={"fp32": Variant("linear.onnx"), "fp16": Variant("linear.fp16.onnx")})},
            golden=pairs,
        )
    return root


def tamper_golden_output(root: Path, delta: float, *, relist: bool = True) -> None:
    """Shift the recorded golden output by ``delta``; with relist, update its checksum so only the values are wrong."""
    path = root / GOLDEN_OUT
    with np.load(path) as npz:
        y = npz["y"]
    with open(path, "wb") as f:
        np.savez(f, y=y + np.float32(delta))
    if relist:
        manifest = json.loads((root / "manifest.json").read_text())
        blob = path.read_bytes()
        manifest["files"][GOLDEN_OUT] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
        (root / "manifest.json").write_text(json.dumps(manifest))


def _run_json(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, dict, str]:
    capsys.readouterr()
    code = main(["verify", *argv, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def test_every_precision_passes_its_own_tolerance(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bundle = write_bundle(tmp_path / "b")
    assert main(["verify", str(bundle), "--provider", "cpu"]) == EXIT_OK
    text = capsys.readouterr().out
    assert "2 checks: 2 passed, 0 failed" in text and "min_cosine=0.999" in text
    code, report, _ = _run_json(capsys, str(bundle))
    assert code == EXIT_OK and report["ok"] is True and report["passed"] == 2 and report["backend"] == "onnxruntime"
    by_precision = {r["precision"]: r for r in report["results"]}
    assert by_precision["fp32"]["max_abs"] < 1e-5 and by_precision["fp32"]["provider"] == "cpu"
    # fp16 here is off by 1% in scale: far outside an absolute bound, but inside its cosine tolerance.
    assert by_precision["fp16"]["max_abs"] > 1e-3 and by_precision["fp16"]["min_cosine"] > 0.9999
    assert by_precision["fp16"]["tolerance"] == {"min_cosine": 0.999} and by_precision["fp16"]["passed"]
    assert set(by_precision["fp32"]["outputs"]) == {"y"}


def test_a_tampered_golden_output_fails_with_the_tolerance_exit_code(tmp_path: Path, capsys) -> None:
    bundle = write_bundle(tmp_path / "b")
    tamper_golden_output(bundle, 0.05)
    code, report, err = _run_json(capsys, str(bundle), "--precision", "fp32")
    assert code == EXIT_TOLERANCE and report["ok"] is False and report["failed"] == 1
    (result,) = report["results"]
    assert result["failures"] == [f"y: max_abs {result['max_abs']:.3g} > 0.0001"] and result["max_abs"] > 0.04
    assert "outside tolerance" in err
    assert main(["verify", str(bundle)]) == EXIT_TOLERANCE
    assert "FAIL y: max_abs" in capsys.readouterr().out


def test_a_changed_file_without_a_new_checksum_is_a_bundle_error(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b")
    tamper_golden_output(bundle, 0.05, relist=False)
    assert main(["verify", str(bundle)]) == EXIT_BUNDLE


def test_precision_filter_and_its_errors(tmp_path: Path, capsys) -> None:
    bundle = write_bundle(tmp_path / "b")
    code, report, _ = _run_json(capsys, str(bundle), "--precision", "fp16")
    assert code == EXIT_OK and [r["precision"] for r in report["results"]] == ["fp16"]
    code, report, _ = _run_json(capsys, str(bundle), "--precision", "int8")
    assert code == EXIT_BAD_INPUT and "has no golden tolerance at that precision" in report["error"]["message"]
    assert main(["verify", str(bundle), "--precision", "int4"]) == 2  # argparse choices: a usage error


def test_no_golden_pairs_and_unknown_backends_are_reported(tmp_path: Path, capsys) -> None:
    code, report, _ = _run_json(capsys, str(write_bundle(tmp_path / "plain", golden=False)))
    assert code == EXIT_BUNDLE and "no golden pairs" in report["error"]["message"]
    code, report, _ = _run_json(capsys, str(write_bundle(tmp_path / "b")), "--backend", "nope")
    assert code == EXIT_BACKEND and "unknown backend 'nope'" in report["error"]["message"]


def test_compare_arrays() -> None:
    a = np.array([[1.0, -2.0], [3.0, 0.5]], dtype=np.float32)
    assert compare_arrays(a, a) == (0.0, pytest.approx(1.0))
    max_abs, cosine = compare_arrays(a, a * 2)
    assert max_abs == pytest.approx(3.0) and cosine == pytest.approx(1.0)
    assert compare_arrays(a, -a)[1] == pytest.approx(-1.0)
    assert compare_arrays(np.zeros(3), np.zeros(3)) == (0.0, 1.0)
    assert compare_arrays(np.zeros(3), np.ones(3)) == (1.0, 0.0)
    assert compare_arrays(a, a[:1]) == (math.inf, -1.0)
    assert compare_arrays(np.array([3, 4], dtype=np.int64), np.array([3, 5], dtype=np.int64))[0] == 1.0
    assert compare_outputs({"y": a}, {})[0] == OutputError("y", math.inf, -1.0)


def test_nan_outputs_never_pass() -> None:
    a = np.ones(4, dtype=np.float32)
    b = a.copy()
    b[2] = np.nan
    (error,) = compare_outputs({"y": a}, {"y": b})
    for tolerance in (Tolerance(max_abs=1.0), Tolerance(min_cosine=-1.0)):
        result = GoldenResult("c", "fp32", "cpu", (error,), tolerance)
        assert not result.passed and result.to_dict()["passed"] is False
    assert GoldenResult("c", "fp32", "cpu", (error,), Tolerance(max_abs=1.0)).to_dict()["max_abs"] == "nan"


def test_tensorrt_checks_get_what_tinymm_load_gives_them(tmp_path: Path, monkeypatch) -> None:
    """On TensorRT each variant is loaded with its optimization profile, the bundle's engine cache
    and its precision flag, as tinymm.load does; run here on the CPU provider with the options recorded."""
    from dataclasses import replace

    from tinymm.backends import get_backend
    from tinymm.bundle import read_bundle
    from tinymm.commands.verify import verify_golden
    from tinymm.pipelines.load_options import LoadOptions

    monkeypatch.setenv("TINYMM_CACHE_DIR", str(tmp_path / "cache"))
    real = get_backend("onnxruntime")
    seen = {}

    class RecordingBackend:
        def load(self, path, options):
            seen[Path(path).name] = options
            return real.load(path, replace(options, provider="cpu", trt_profiles=(), cache_dir=None))

    with read_bundle(write_bundle(tmp_path / "b")) as bundle:
        results = verify_golden(bundle, RecordingBackend(), provider="tensorrt")
        assert all(r.passed for r in results)
        fp32, fp16 = seen["linear.onnx"], seen["linear.fp16.onnx"]
        assert (fp32.trt_fp16, fp16.trt_fp16) == (False, True)
        assert [p.name for p in fp32.trt_profiles] == ["x"] and fp32.trt_profiles[0].min == (1, IN)
        assert fp32.cache_dir.parent == tmp_path / "cache" and fp32.cache_dir.name.startswith("linear-")
        verify_golden(bundle, RecordingBackend(), provider="tensorrt", load_options=LoadOptions(engine_cache=False))
        assert seen["linear.onnx"].cache_dir is None
