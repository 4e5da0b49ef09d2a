"""INT8 (static QDQ, dynamic) and fp16 variants of tiny ONNX graphs built with onnx.helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the export tier needs the onnx package (pip install 'tinymm[dev]')")
ort = pytest.importorskip("onnxruntime", reason="quantization needs onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from export.fp16 import Fp16ConversionError, convert_fp16  # noqa: E402
from export.quantize import (  # noqa: E402
    QuantizationError,
    graph_op_counts,
    quantizable_nodes,
    quantize_dynamic_int8,
    quantize_static_qdq,
)
from export.trt_rules import check_tensorrt_graph  # noqa: E402
from tinymm.errors import InputError  # noqa: E402

OPSET = 17
TOKENS, WIDTH = 8, 32  # tokens per sample and model width of the encoder-like block
WEIGHT_MATMULS = ["q", "k", "v", "out", "fc1", "fc2"]


def _save(nodes, inputs, outputs, inits, path: Path) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def encoder_block(path: Path, seed: int = 0) -> Path:
    """One pre-LN transformer block: x float32 ("batch", TOKENS, WIDTH) -> y, same shape.

    LayerNorm, single-head attention (Softmax), an erf-GELU MLP: six weight MatMuls and two
    activation MatMuls (scores and weighted values).
    """
    rng = np.random.default_rng(seed)
    inits = []

    def weight(name, rows, cols):
        value = (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32)
        inits.append(numpy_helper.from_array(value, name))
        return name

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    const("ln_g", np.ones(WIDTH))
    const("ln_b", np.zeros(WIDTH))
    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln_g", "ln_b"], ["h"], name="ln", axis=-1),
        helper.make_node("MatMul", ["h", weight("wq", WIDTH, WIDTH)], ["q"], name="q"),
        helper.make_node("MatMul", ["h", weight("wk", WIDTH, WIDTH)], ["k"], name="k"),
        helper.make_node("MatMul", ["h", weight("wv", WIDTH, WIDTH)], ["v"], name="v"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores"),
        helper.make_node("Mul", ["scores", const("scale", 1 / np.sqrt(WIDTH))], ["scaled"], name="scale"),
        helper.make_node("Softmax", ["scaled"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["attn"], name="attend"),
        helper.make_node("MatMul", ["attn", weight("wo", WIDTH, WIDTH)], ["o"], name="out"),
        helper.make_node("Add", ["x", "o"], ["r"], name="residual"),
        helper.make_node("MatMul", ["r", weight("w1", WIDTH, 2 * WIDTH)], ["f"], name="fc1"),
        helper.make_node("Mul", ["f", const("inv_sqrt2", 1 / np.sqrt(2))], ["fs"], name="gelu_scale"),
        helper.make_node("Erf", ["fs"], ["fe"], name="gelu_erf"),
        helper.make_node("Add", ["fe", const("one", 1.0)], ["fe1"], name="gelu_add"),
        helper.make_node("Mul", ["f", "fe1"], ["fg2"], name="gelu_mul"),
        helper.make_node("Mul", ["fg2", const("half", 0.5)], ["g"], name="gelu_half"),
        helper.make_node("MatMul", ["g", weight("w2", 2 * WIDTH, WIDTH)], ["y"], name="fc2"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", TOKENS, WIDTH])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", TOKENS, WIDTH])
    return _save(nodes, [x], [y], inits, path)


def decoder_stack(path: Path, layers: int = 3, width: int = 64, seed: int = 1) -> Path:
    """A decoder-step-like stack of MatMul + Relu: h float32 ("batch", 1, width) -> logits, same shape."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "h"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"proj{i}"))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"a{i}"], name=f"relu{i}"))
        x = f"a{i}"
    nodes.append(helper.make_node("Identity", [x], ["logits"], name="out"))
    h = helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 1, width])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, width])
    return _save(nodes, [h], [logits], inits, path)


def samples(count: int, seed: int = 2, shape=(1, TOKENS, WIDTH), name: str = "x") -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]


def run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def consumers_of_dequantize(path: Path) -> set[str]:
    model = onnx.load(str(path))
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.op_type for n in model.graph.node if set(n.input) & dq_outputs}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    return encoder_block(tmp_path_factory.mktemp("enc") / "encoder.onnx")


@pytest.fixture(scope="module")
def static_int8(encoder, tmp_path_factory) -> Path:
    return quantize_static_qdq(encoder, tmp_path_factory.mktemp("int8") / "encoder.int8.onnx", samples(16))


# --- static QDQ ---------------------------------------------------------------------------------


def test_quantizable_nodes_are_the_weight_matmuls_only(encoder):
    assert quantizable_nodes(encoder) == WEIGHT_MATMULS  # not "scores" / "attend" (two activations)


def test_static_qdq_quantizes_only_weight_matmul_inputs(static_int8):
    counts = graph_op_counts(static_int8)
    assert counts["DequantizeLinear"] > 0 and counts["QuantizeLinear"] > 0
    # Every DequantizeLinear feeds a MatMul: LayerNorm, Softmax and the GELU (Erf) stay float,
    # and there are no Q/DQ on MatMul outputs.
    assert consumers_of_dequantize(static_int8) == {"MatMul"}
    model = onnx.load(str(static_int8))
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    quantized = {n.name for n in model.graph.node if n.op_type == "MatMul" and set(n.input) & dq_outputs}
    assert quantized == set(WEIGHT_MATMULS)


def test_static_qdq_is_symmetric_int8_with_reduced_range_per_channel_weights(static_int8):
    model = onnx.load(str(static_int8))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    for node in qdq:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    weights = [inits[n.input[0]] for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(weights) == len(WEIGHT_MATMULS)
    for w in weights:
        assert w.dtype == np.int8 and np.abs(w.astype(int)).max() <= 64  # 7-bit range
    per_channel = [n for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert all(inits[n.input[1]].shape == (inits[n.input[0]].shape[1],) for n in per_channel)
    assert check_tensorrt_graph(static_int8) == []


def test_static_qdq_stays_close_to_fp32(encoder, static_int8):
    for feeds in samples(4, seed=9, shape=(3, TOKENS, WIDTH)):
        assert cosine(run(static_int8, feeds), run(encoder, feeds)) >= 0.99


def test_nodes_to_exclude_stay_float(encoder, tmp_path):
    out = quantize_static_qdq(encoder, tmp_path / "ex.onnx", samples(4), nodes_to_exclude=["fc1", "q"])
    model = onnx.load(str(out))
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    quantized = {n.name for n in model.graph.node if n.op_type == "MatMul" and set(n.input) & dq_outputs}
    assert quantized == set(WEIGHT_MATMULS) - {"fc1", "q"}


def test_excluding_every_node_leaves_no_qdq(encoder, tmp_path):
    # onnxruntime reads an empty nodes_to_quantize as "all"; the wrapper must not fall into that.
    out = quantize_static_qdq(encoder, tmp_path / "none.onnx", samples(2), nodes_to_exclude=WEIGHT_MATMULS)
    counts = graph_op_counts(out)
    assert "QuantizeLinear" not in counts and "DequantizeLinear" not in counts


@pytest.mark.parametrize(
    ("calibration", "message"),
    [
        ([], "calibration is empty"),
        ([{"y": np.zeros((1, TOKENS, WIDTH), np.float32)}], "model's inputs are ['x']"),
        ([{"x": np.zeros((1, TOKENS, WIDTH), np.float64)}], "float64[1, 8, 32]"),
        ([{"x": np.zeros((TOKENS, WIDTH), np.float32)}], "rank 3"),
        ([[1, 2]], "dict of input name"),
    ],
)
def test_bad_calibration_samples_are_input_errors(encoder, tmp_path, calibration, message):
    with pytest.raises(InputError, match=r".*") as excinfo:
        quantize_static_qdq(encoder, tmp_path / "bad.onnx", calibration)
    assert message in str(excinfo.value)


def test_unknown_excluded_node_and_method_are_input_errors(encoder, tmp_path):
    with pytest.raises(InputError, match="'nope'.*quantizable_nodes"):
        quantize_static_qdq(encoder, tmp_path / "a.onnx", samples(1), nodes_to_exclude=["nope"])
    with pytest.raises(InputError, match="calibration method"):
        quantize_static_qdq(encoder, tmp_path / "b.onnx", samples(1), method="kl")


def test_missing_model_is_a_quantization_error(tmp_path):
    with pytest.raises(QuantizationError, match="does not exist"):
        quantize_static_qdq(tmp_path / "missing.onnx", tmp_path / "out.onnx", samples(1))


def test_percentile_calibration_also_works(encoder, tmp_path):
    out = quantize_static_qdq(encoder, tmp_path / "p.onnx", samples(8), method="percentile")
    feeds = samples(1, seed=5)[0]
    assert cosine(run(out, feeds), run(encoder, feeds)) >= 0.99


# --- dynamic INT8 -------------------------------------------------------------------------------


def test_dynamic_int8_quantizes_decoder_matmuls(tmp_path):
    fp32 = decoder_stack(tmp_path / "decoder.onnx")
    int8 = quantize_dynamic_int8(fp32, tmp_path / "decoder.int8.onnx", nodes_to_exclude=["proj2"])
    counts = graph_op_counts(int8)
    assert counts.get("MatMulInteger") == 2 and counts.get("MatMul") == 1  # proj2 stays float
    assert counts.get("DynamicQuantizeLinear", 0) >= 1
    weights = [numpy_helper.to_array(i) for i in onnx.load(str(int8)).graph.initializer]
    int8_weights = [w for w in weights if w.dtype == np.int8 and w.ndim == 2]
    assert len(int8_weights) == 2 and all(np.abs(w.astype(int)).max() <= 64 for w in int8_weights)
    assert int8.stat().st_size < fp32.stat().st_size
    for feeds in samples(3, seed=4, shape=(2, 1, 64), name="h"):
        assert cosine(run(int8, feeds), run(fp32, feeds)) >= 0.99
    # Dynamic quantization is CPU-only: TensorRT's rules reject it.
    assert {v.rule for v in check_tensorrt_graph(int8)} == {"integer-op"}


# --- fp16 ---------------------------------------------------------------------------------------


def test_fp16_keeps_float32_io_and_stays_close(encoder, tmp_path):
    fp16 = convert_fp16(encoder, tmp_path / "encoder.fp16.onnx")
    session = ort.InferenceSession(str(fp16), providers=["CPUExecutionProvider"])
    assert [i.type for i in session.get_inputs()] == ["tensor(float)"]
    assert [o.type for o in session.get_outputs()] == ["tensor(float)"]
    model = onnx.load(str(fp16))
    weight_types = {i.name: i.data_type for i in model.graph.initializer}
    assert weight_types["wq"] == TensorProto.FLOAT16
    # LayerNorm is kept in float32: its scale stays float32 and its input is cast back to float32.
    assert weight_types["ln_g"] == TensorProto.FLOAT
    assert fp16.stat().st_size < 0.6 * encoder.stat().st_size
    for feeds in samples(2, seed=6, shape=(2, TOKENS, WIDTH)):
        expected, got = run(encoder, feeds), run(fp16, feeds)
        assert got.dtype == np.float32
        assert np.abs(got - expected).max() < 2e-2 * np.abs(expected).max()


def test_fp16_without_keep_io_types_has_float16_io(encoder, tmp_path):
    fp16 = convert_fp16(encoder, tmp_path / "encoder.fp16io.onnx", keep_io_types=False)
    session = ort.InferenceSession(str(fp16), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float16)"


def test_fp16_of_a_missing_model_is_an_error(tmp_path):
    with pytest.raises(Fp16ConversionError, match="does not exist"):
        convert_fp16(tmp_path / "missing.onnx", tmp_path / "out.onnx")
