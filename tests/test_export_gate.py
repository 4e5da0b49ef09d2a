"""The INT8 accuracy gate: unit tests with scripted builders, and one run on a real quantized graph."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the export tier needs the onnx package (pip install 'tinymm[dev]')")
ort = pytest.importorskip("onnxruntime", reason="quantization needs onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from export.accuracy_gate import ACCEPTED, REFUSED, Int8Refused, run_int8_gate  # noqa: E402
from export.quantize import quantize_static_qdq  # noqa: E402
from export.sensitivity import output_error_ranking  # noqa: E402
from tinymm.errors import InputError  # noqa: E402

FP32 = Path("fp32.onnx")


class Scripted:
    """A builder and an evaluator over a table: frozenset(excluded) -> metric (default: `base`)."""

    def __init__(self, fp32: float, base: float, table: dict[frozenset, float] | None = None) -> None:
        self.fp32, self.base, self.table = fp32, base, table or {}
        self.built: list[tuple[str, ...]] = []

    def build(self, excluded):
        self.built.append(tuple(excluded))
        return Path("int8-" + "-".join(sorted(excluded)) + ".onnx")

    def evaluate(self, path: Path) -> float:
        if path == FP32:
            return self.fp32
        names = path.stem[len("int8-") :]
        return self.table.get(frozenset(n for n in names.split("-") if n), self.base)


def test_a_small_drop_is_accepted_without_a_sweep():
    s = Scripted(fp32=80.0, base=79.5)
    report = run_int8_gate(FP32, s.build, s.evaluate, max_drop=1.0, candidates=["a", "b"])
    assert report.verdict == ACCEPTED and report.accepted
    assert report.excluded == () and report.drop == pytest.approx(0.5)
    assert s.built == [()] and [step.phase for step in report.steps] == ["fp32", "int8"]
    report.raise_if_refused()  # no error


def test_the_sensitive_node_is_found_and_left_in_float():
    s = Scripted(fp32=80.0, base=70.0, table={frozenset({"b"}): 79.6, frozenset({"a"}): 71.0})
    report = run_int8_gate(FP32, s.build, s.evaluate, max_drop=1.0, candidates=["a", "b", "c"])
    assert report.verdict == ACCEPTED
    assert report.excluded == ("b",) and report.int8_score == pytest.approx(79.6)
    assert report.int8_path == Path("int8-b.onnx")
    phases = [step.phase for step in report.steps]
    assert phases[:2] == ["fp32", "int8"] and phases.count("sweep") == 3 and phases[-1] == "exclude"
    assert report.builds == 4  # all-int8 + three leave-one-out builds; the accepted one was reused


def test_greedy_exclusion_combines_nodes_and_skips_useless_ones():
    table = {
        frozenset({"a"}): 75.0,
        frozenset({"b"}): 74.0,
        frozenset({"c"}): 72.0,
        frozenset({"a", "b"}): 79.5,
        frozenset({"a", "c"}): 74.0,  # c looks helpful alone but hurts next to a
    }
    s = Scripted(fp32=80.0, base=70.0, table=table)
    report = run_int8_gate(FP32, s.build, s.evaluate, max_drop=1.0, candidates=["c", "b", "a"])
    assert report.verdict == ACCEPTED and report.excluded == ("a", "b")


def test_it_refuses_when_exclusions_cannot_recover_the_drop():
    table = {frozenset({"a"}): 72.0, frozenset({"b"}): 71.0, frozenset({"a", "b"}): 73.0}
    s = Scripted(fp32=80.0, base=70.0, table=table)
    report = run_int8_gate(FP32, s.build, s.evaluate, max_drop=1.0, max_excluded=2, candidates=["a", "b", "c"])
    assert report.verdict == REFUSED and not report.accepted
    assert report.excluded == ("a", "b") and report.drop == pytest.approx(7.0)
    with pytest.raises(Int8Refused, match="REFUSED.*Do not ship the int8 variant"):
        report.raise_if_refused()


def test_max_excluded_zero_refuses_without_a_sweep():
    s = Scripted(fp32=80.0, base=70.0)
    report = run_int8_gate(FP32, s.build, s.evaluate, max_excluded=0, candidates=["a"])
    assert report.verdict == REFUSED and s.built == [()]


def test_lower_is_better_metrics_such_as_wer():
    s = Scripted(fp32=10.0, base=13.0, table={frozenset({"a"}): 10.4})
    report = run_int8_gate(FP32, s.build, s.evaluate, max_drop=1.0, higher_is_better=False, candidates=["a", "b"])
    assert report.verdict == ACCEPTED and report.excluded == ("a",) and report.drop == pytest.approx(0.4)
    # An INT8 model with a lower WER than fp32 has a negative drop.
    better = Scripted(fp32=10.0, base=9.5)
    assert run_int8_gate(FP32, better.build, better.evaluate, higher_is_better=False, candidates=[]).drop < 0


def test_the_sweep_respects_its_budget(caplog):
    s = Scripted(fp32=80.0, base=70.0)
    with caplog.at_level(logging.WARNING, logger="export.sensitivity"):
        report = run_int8_gate(FP32, s.build, s.evaluate, candidates=list("abcdef"), max_sweep=2)
    assert report.verdict == REFUSED
    assert sorted(s.built) == [(), ("a",), ("b",)]
    assert "6 candidate nodes but a budget of 2" in caplog.text


def test_bad_options_and_metrics_are_input_errors():
    s = Scripted(fp32=80.0, base=79.0)
    with pytest.raises(InputError, match="max_drop"):
        run_int8_gate(FP32, s.build, s.evaluate, max_drop=-1)
    with pytest.raises(InputError, match="max_excluded"):
        run_int8_gate(FP32, s.build, s.evaluate, max_excluded=1.5)
    with pytest.raises(InputError, match="finite number"):
        run_int8_gate(FP32, s.build, lambda path: float("nan"))


def test_the_report_is_json_ready():
    s = Scripted(fp32=80.0, base=70.0, table={frozenset({"b"}): 79.6})
    report = run_int8_gate(FP32, s.build, s.evaluate, candidates=["a", "b"])
    data = json.loads(json.dumps(report.to_dict()))
    assert data["verdict"] == ACCEPTED and data["excluded"] == ["b"]
    assert [step["phase"] for step in data["steps"]][:2] == ["fp32", "int8"]
    assert "ACCEPTED" in report.summary() and "['b']" in report.summary()


# --- a real graph with one node that INT8 ruins ---------------------------------------------------

WIDTH = 16
OUTLIER = 1000.0  # the scale of input feature 0: per-tensor int8 of the input crushes the others


def outlier_model(path: Path) -> Path:
    """x float32 ("batch", WIDTH) -> y. `first` sees an input with one huge feature; `second` a LayerNorm output.

    Quantizing the input of `first` (one scale for the whole tensor) rounds every ordinary feature
    to zero, so `first` is the node the gate must leave in float.
    """
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
    w1[0] *= 1e-4  # the outlier feature barely matters to the result
    w2 = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(np.ones(WIDTH, np.float32), "g"),
        numpy_helper.from_array(np.zeros(WIDTH, np.float32), "b"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
        helper.make_node("LayerNormalization", ["h", "g", "b"], ["n"], name="norm", axis=-1),
        helper.make_node("MatMul", ["n", "w2"], ["y"], name="second"),
    ]
    graph = helper.make_graph(
        nodes,
        "outlier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def outlier_inputs(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        x = rng.standard_normal((8, WIDTH)).astype(np.float32)
        x[:, 0] *= OUTLIER
        batches.append({"x": x})
    return batches


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gate")
    fp32 = outlier_model(directory / "fp32.onnx")
    calibration, test = outlier_inputs(8, seed=1), outlier_inputs(4, seed=2)

    def run(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, feeds)[0] for feeds in test])

    reference = run(fp32)

    def evaluate(path: Path) -> float:
        """100 x the mean cosine similarity of each output row to fp32's (points, higher is better)."""
        out = run(path)
        norms = np.linalg.norm(out, axis=1) * np.linalg.norm(reference, axis=1)
        cos = (out * reference).sum(1) / np.maximum(norms, 1e-12)  # an all-zero row scores 0
        return 100.0 * float(cos.mean())

    def build(excluded):
        name = "int8-" + "-".join(excluded) + ".onnx"
        return quantize_static_qdq(fp32, directory / name, calibration, nodes_to_exclude=excluded)

    return fp32, build, evaluate, calibration


def test_gate_on_a_real_model_leaves_the_ruined_node_in_float(outlier):
    fp32, build, evaluate, _ = outlier
    report = run_int8_gate(fp32, build, evaluate, max_drop=1.0)
    assert report.steps[1].drop > 5.0  # all-int8 is clearly worse
    assert report.verdict == ACCEPTED and report.excluded == ("first",)
    assert report.int8_path.is_file() and report.drop <= 1.0


def test_gate_on_a_real_model_refuses_an_impossible_threshold(outlier):
    fp32, build, evaluate, _ = outlier
    report = run_int8_gate(fp32, build, evaluate, max_drop=1e-9, max_excluded=1)
    assert report.verdict == REFUSED and report.excluded == ("first",)


def test_output_error_ranking_points_at_the_ruined_node(outlier):
    fp32, build, _, calibration = outlier
    ranking = output_error_ranking(fp32, build(()), calibration[:2], nodes=["first", "second"])
    assert [s.node for s in ranking] == ["first", "second"]
    assert ranking[0].gain > 10 * max(ranking[1].gain, 1e-6)
