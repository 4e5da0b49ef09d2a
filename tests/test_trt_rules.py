"""TensorRT graph rules on tiny hand-built ONNX graphs (no TensorRT needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the export tier needs the onnx package (pip install 'tinymm[dev]')")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from export.trt_rules import Violation, check_tensorrt_graph, check_tensorrt_model  # noqa: E402

WIDTH = 4


def model(nodes, inits=(), opset=17, domains=()) -> onnx.ModelProto:
    """x float32 (2, WIDTH) -> y float32, from `nodes` (not checked: some graphs are invalid on purpose)."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=list(inits),
    )
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    return helper.make_model(graph, opset_imports=opsets)


def qdq_matmul(zero_point=np.int8(0), weight_dtype=np.int8, consumer="MatMul", opset=17, per_channel=True):
    """x -> Q -> DQ -> consumer(., W) with W an int8 (or other) initializer behind its own DQ."""
    zp = np.asarray(zero_point)
    w_scale = np.full(WIDTH, 0.1, np.float32) if per_channel else np.float32(0.1)
    inits = [
        numpy_helper.from_array(np.float32(0.05), "x_scale"),
        numpy_helper.from_array(zp, "x_zp"),
        numpy_helper.from_array(np.ones((WIDTH, WIDTH), weight_dtype), "w_q"),
        numpy_helper.from_array(np.asarray(w_scale), "w_scale"),
        numpy_helper.from_array(np.zeros(WIDTH if per_channel else (), weight_dtype), "w_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="x_q"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="x_dq"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="w_dq", axis=1),
    ]
    if consumer == "MatMul":
        nodes.append(helper.make_node("MatMul", ["xd", "w"], ["y"], name="mm"))
    else:
        nodes.append(helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"))
        nodes.append(helper.make_node(consumer, ["xd"], ["y"], name="float_op"))
    return model(nodes, inits, opset=opset)


def rules(violations: list[Violation]) -> set[tuple[str, str]]:
    return {(v.rule, v.node) for v in violations}


def test_a_symmetric_int8_qdq_matmul_passes():
    assert check_tensorrt_model(qdq_matmul()) == []


def test_dequantize_through_shape_ops_to_a_matmul_passes():
    m = qdq_matmul()
    mm = m.graph.node[3]
    reshape_shape = numpy_helper.from_array(np.array([2, WIDTH], np.int64), "shape")
    m.graph.initializer.append(reshape_shape)
    m.graph.node.insert(3, helper.make_node("Reshape", ["xd", "shape"], ["xr"], name="reshape"))
    mm.input[0] = "xr"
    assert check_tensorrt_model(m) == []


def test_if_nodes_are_flagged():
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["out"])], "b", [], [out])
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["y"], name="merged_decoder", then_branch=branch, else_branch=branch)
    violations = check_tensorrt_model(model([node], [cond]))
    assert rules(violations) == {("if-node", "merged_decoder")}
    assert "decoder-with-past" in violations[0].message


def test_nonzero_zero_points_are_flagged():
    assert rules(check_tensorrt_model(qdq_matmul(zero_point=np.int8(3)))) == {
        ("qdq-zero-point", "x_q"),
        ("qdq-zero-point", "x_dq"),
    }


def test_uint8_and_missing_zero_points_are_flagged():
    uint8 = check_tensorrt_model(qdq_matmul(zero_point=np.uint8(128)))
    assert ("qdq-int8", "x_q") in rules(uint8) and ("qdq-zero-point", "x_q") in rules(uint8)
    missing = qdq_matmul()
    missing.graph.node[0].input.pop()  # QuantizeLinear without a zero point outputs uint8
    assert ("qdq-int8", "x_q") in rules(check_tensorrt_model(missing))


def test_qdq_feeding_softmax_is_flagged():
    violations = check_tensorrt_model(qdq_matmul(consumer="Softmax"))
    assert rules(violations) == {("qdq-placement", "x_dq")}
    assert "Softmax" in violations[0].message and "keep LayerNorm, Softmax and GELU in float" in violations[0].message


def test_quantize_not_followed_by_dequantize_is_flagged():
    m = qdq_matmul()
    m.graph.node.append(helper.make_node("Relu", ["xq"], ["z"], name="relu_on_int8"))
    assert ("qdq-placement", "x_q") in rules(check_tensorrt_model(m))


def test_int32_dequantize_of_a_bias_is_flagged():
    inits = [
        numpy_helper.from_array(np.zeros(WIDTH, np.int32), "bias_q"),
        numpy_helper.from_array(np.float32(0.01), "bias_scale"),
        numpy_helper.from_array(np.zeros((), np.int32), "bias_zp"),
        numpy_helper.from_array(np.ones((WIDTH, WIDTH), np.float32), "w"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["bias_q", "bias_scale", "bias_zp"], ["bias"], name="bias_dq"),
        helper.make_node("Gemm", ["x", "w", "bias"], ["y"], name="gemm"),
    ]
    violations = check_tensorrt_model(model(nodes, inits))
    assert rules(violations) == {("qdq-int8", "bias_dq")} and "QuantizeBias=False" in violations[0].message


def test_per_channel_qdq_needs_opset_13():
    violations = rules(check_tensorrt_model(qdq_matmul(opset=12)))
    assert violations == {("qdq-opset", "w_dq")}
    assert check_tensorrt_model(qdq_matmul(opset=12, per_channel=False)) == []


def test_integer_ops_and_contrib_qdq_are_flagged():
    inits = [numpy_helper.from_array(np.ones((WIDTH, WIDTH), np.int8), "w_q")]
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dql"),
        helper.make_node("MatMulInteger", ["xq", "w_q", "xz"], ["y"], name="mmi"),
    ]
    assert rules(check_tensorrt_model(model(nodes, inits))) == {("integer-op", "dql"), ("integer-op", "mmi")}
    contrib = qdq_matmul()
    for node in contrib.graph.node[:2]:
        node.domain = "com.microsoft"
    assert {("qdq-domain", "x_q"), ("qdq-domain", "x_dq")} <= rules(check_tensorrt_model(contrib))


def test_unnamed_nodes_are_labelled_by_type_and_index(tmp_path: Path):
    branch = helper.make_graph([], "b", [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)])
    cond = numpy_helper.from_array(np.array(True), "cond")
    m = model([helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)], [cond])
    path = tmp_path / "if.onnx"
    onnx.save(m, str(path))
    violations = check_tensorrt_graph(path)
    assert [str(v) for v in violations] == [f"[if-node] If#0: {violations[0].message}"]
