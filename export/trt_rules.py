"""Static checks that an ONNX graph is one TensorRT can build, run before shipping or building.

TensorRT's ONNX parser and its explicit quantization put rules on a graph that onnxruntime does
not; checking them on the export machine (with the `onnx` package, no TensorRT needed) turns a
failed engine build on the device into a clear list of node names at export time.

Rules (the `rule` field of each Violation):
- if-node: no If nodes. TensorRT cannot build optimum-style merged decoders; export a first-step
  decoder and a decoder-with-past instead.
- integer-op: no onnxruntime integer operators (MatMulInteger, DynamicQuantizeLinear,
  QLinearMatMul, ...), which dynamic or QOperator quantization produces. TensorRT takes only
  QuantizeLinear/DequantizeLinear (explicit quantization); build decoders from the fp16 variant.
- qdq-domain: Q/DQ nodes in the standard ONNX domain (not com.microsoft contrib ops).
- qdq-opset: Q/DQ need opset >= 10, per-channel Q/DQ (an `axis`, non-scalar scale) opset >= 13.
- qdq-zero-point: every zero point is 0; TensorRT supports symmetric quantization only.
- qdq-int8: int8 Q/DQ, not uint8 (a missing zero point means uint8); int32 DequantizeLinear
  (a quantized bias) is rejected by TensorRT's parser as well.
- qdq-placement: Q/DQ pairs only on the inputs of MatMul/Conv/Gemm: every QuantizeLinear feeds
  DequantizeLinear nodes only, and every DequantizeLinear feeds MatMul/Conv/Gemm (through
  shape-only ops), so LayerNorm, Softmax and GELU never consume quantized tensors. (Their float
  outputs may be quantized as the input of a following MatMul.)

Usage:
    violations = check_tensorrt_graph(Path("image_encoder.int8.onnx"))
    if violations:
        raise SystemExit("\n".join(str(v) for v in violations))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Operators whose inputs TensorRT quantizes to int8 kernels in this project.
QUANTIZED_CONSUMERS = ("MatMul", "Conv", "Gemm", "ConvTranspose")
# Operators a DequantizeLinear output may pass through on its way to a quantized consumer.
SHAPE_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity")
# Operators kept out of INT8 (the fp32 building blocks of LayerNorm, Softmax and GELU included).
FLOAT_ONLY_OPS = (
    "LayerNormalization",
    "Softmax",
    "LogSoftmax",
    "Gelu",
    "Erf",
    "ReduceMean",
    "Pow",
    "Sqrt",
)
INTEGER_OPS = (
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "QLinearMatMul",
    "QLinearConv",
    "QLinearAdd",
    "QLinearMul",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QAttention",
    "QGemm",
)
MIN_QDQ_OPSET = 10
MIN_PER_CHANNEL_OPSET = 13
_STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Violation:
    """One thing in the graph TensorRT will not accept."""

    rule: str  # see the module docstring
    node: str  # the offending node's name (or its op type and index when unnamed)
    message: str  # what is wrong and what to do

    def __str__(self) -> str:
        return f"[{self.rule}] {self.node}: {self.message}"


class _Graph:
    """Lookups over one graph: constants, element types, and consumers of tensors."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.nodes = list(graph.node)
        self.opset = next((o.version for o in model.opset_import if o.domain in _STANDARD_DOMAINS), 0)
        # Constant tensors, converted to numpy only when read (weights may be external and unloaded).
        self._constants: dict[str, onnx.TensorProto] = {init.name: init for init in graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant" and node.domain in _STANDARD_DOMAINS:
                value = next((a for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    self._constants[node.output[0]] = value.t
        self.types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
        self.types.update({name: tensor.data_type for name, tensor in self._constants.items()})
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def is_constant(self, name: str) -> bool:
        return name in self._constants

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor, or None when `name` is not a constant."""
        tensor = self._constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def constant_size(self, name: str) -> int:
        tensor = self._constants.get(name)
        return 0 if tensor is None else int(np.prod(tensor.dims, dtype=np.int64))

    def final_consumers(self, tensor: str) -> list[onnx.NodeProto]:
        """Consumers of `tensor`, looking through shape-only ops."""
        found, pending, seen = [], [tensor], set()
        while pending:
            name = pending.pop()
            for node in self.consumers.get(name, []):
                if node.op_type in SHAPE_OPS and id(node) not in seen:
                    seen.add(id(node))
                    pending.extend(node.output)
                elif node.op_type not in SHAPE_OPS:
                    found.append(node)
        return found


def _label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def _check_qdq(g: _Graph, node: onnx.NodeProto, label: str) -> list[Violation]:
    out: list[Violation] = []
    if node.domain not in _STANDARD_DOMAINS:
        out.append(
            Violation("qdq-domain", label, f"{node.op_type} is in domain {node.domain!r}; use standard ONNX Q/DQ")
        )
    if g.opset < MIN_QDQ_OPSET:
        out.append(Violation("qdq-opset", label, f"opset {g.opset} has no {node.op_type}; export with opset >= 13"))
    if len(node.input) > 1 and g.constant_size(node.input[1]) > 1 and g.opset < MIN_PER_CHANNEL_OPSET:
        out.append(
            Violation("qdq-opset", label, f"per-channel {node.op_type} needs opset >= 13, the model has {g.opset}")
        )
    zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if node.op_type == "DequantizeLinear" and g.types.get(node.input[0]) == onnx.TensorProto.INT32:
        out.append(
            Violation("qdq-int8", label, "int32 DequantizeLinear (a quantized bias); quantize with QuantizeBias=False")
        )
    elif zero_point is None:
        out.append(
            Violation("qdq-int8", label, "no zero point, so the quantized type is uint8; use int8 with zero point 0")
        )
    elif g.is_constant(zero_point):
        value = g.constant(zero_point)
        if value.dtype != np.int8:
            out.append(Violation("qdq-int8", label, f"quantized type is {value.dtype.name}; TensorRT needs int8"))
        if np.any(value != 0):
            out.append(Violation("qdq-zero-point", label, "zero point is not 0; quantize symmetrically (zero point 0)"))
    else:
        out.append(
            Violation("qdq-zero-point", label, f"zero point {zero_point!r} is not a constant; make it a constant 0")
        )
    return out


def _check_placement(g: _Graph, node: onnx.NodeProto, label: str) -> list[Violation]:
    if node.op_type == "QuantizeLinear":
        allowed, consumers = ("DequantizeLinear",), g.consumers.get(node.output[0], [])
    else:
        allowed, consumers = QUANTIZED_CONSUMERS, g.final_consumers(node.output[0])
    bad = sorted({c.op_type for c in consumers if c.op_type not in allowed})
    if not bad:
        return []
    hint = "; keep LayerNorm, Softmax and GELU in float" if set(bad) & set(FLOAT_ONLY_OPS) else ""
    return [Violation("qdq-placement", label, f"{node.op_type} feeds {bad}; it may only feed {list(allowed)}{hint}")]


def check_tensorrt_model(model: onnx.ModelProto) -> list[Violation]:
    """Violations of the module's rules in `model` (main graph), in node order; empty when it passes."""
    g = _Graph(model)
    violations: list[Violation] = []
    for index, node in enumerate(g.nodes):
        label = _label(node, index)
        if node.op_type == "If":
            violations.append(
                Violation("if-node", label, "If node; export a first-step decoder and a decoder-with-past instead")
            )
        elif node.op_type in INTEGER_OPS:
            violations.append(
                Violation(
                    "integer-op", label, f"{node.op_type} is not explicit (QDQ) quantization; use the fp16 variant"
                )
            )
        elif node.op_type in QDQ_OPS:
            violations.extend(_check_qdq(g, node, label))
            violations.extend(_check_placement(g, node, label))
    return violations


def check_tensorrt_graph(path: Path) -> list[Violation]:
    """Violations of the module's rules in the ONNX file at `path` (weights are not loaded)."""
    return check_tensorrt_model(onnx.load(str(path), load_external_data=False))
