"""Tiny ONNX models built with onnx.helper for backend tests (the `onnx` package is test-only).

Each builder saves the model under the given directory and returns its path together with the
numpy reference that the model computes, so tests can check parity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Kept low so that every supported onnxruntime (>= 1.17) loads these files.
OPSET = 17
IR_VERSION = 8

Reference = Callable[..., np.ndarray]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def linear_model(directory: Path, in_features: int = 4, out_features: int = 3, seed: int = 0) -> tuple[Path, Reference]:
    """y = x @ W + b with x float32 ("batch", in_features) and y float32 ("batch", out_features)."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((in_features, out_features)).astype(np.float32)
    bias = rng.standard_normal(out_features).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out_features])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    return _save(graph, directory / "linear.onnx"), lambda x: x @ weight + bias


def two_input_model(directory: Path, features: int = 3) -> tuple[Path, Reference]:
    """sum = a + b and prod = a * b, with a, b float32 ("batch", features); two outputs."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["prod"])],
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", features]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", features]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", features]),
            helper.make_tensor_value_info("prod", TensorProto.FLOAT, ["batch", features]),
        ],
    )
    return _save(graph, directory / "two_inputs.onnx"), lambda a, b: {"sum": a + b, "prod": a * b}


def embedding_model(directory: Path, vocab: int = 10, dim: int = 4, seed: int = 0) -> tuple[Path, Reference]:
    """emb = table[ids] with ids int64 ("batch", "seq") and emb float32 ("batch", "seq", dim)."""
    table = np.random.default_rng(seed).standard_normal((vocab, dim)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0)],
        "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["batch", "seq", dim])],
        initializer=[numpy_helper.from_array(table, "table")],
    )
    return _save(graph, directory / "embedding.onnx"), lambda ids: table[ids]


def unsupported_op_model(directory: Path) -> Path:
    """A valid ONNX file whose only node is an operator from a domain no runtime implements."""
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"], domain="tinymm.test")],
        "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("tinymm.test", 1)]
    )
    model.ir_version = IR_VERSION
    path = directory / "unsupported.onnx"
    onnx.save(model, str(path))
    return path


def corrupt_model(directory: Path) -> Path:
    """A file named .onnx that holds no ONNX protobuf."""
    path = directory / "corrupt.onnx"
    path.write_bytes(b"this is not an onnx model \x00\x01\x02")
    return path
