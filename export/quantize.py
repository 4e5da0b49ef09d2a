"""INT8 variants of an fp32 ONNX component, with onnxruntime.quantization.

Two recipes, chosen per component by what was measured on the project's CPU (see QUANTIZATION.md):

- `quantize_static_qdq` for encoders: static QDQ, int8 activations and int8 weights, both symmetric
  (zero point 0), weights per channel and, by default, in the reduced 7-bit range that keeps
  AVX2 CPUs without VNNI from saturating. The same file is what TensorRT's explicit quantization
  expects, so one `int8` variant serves onnxruntime on the CPU and TensorRT on the GPU.
- `quantize_dynamic_int8` for decoder steps: dynamic quantization of the weight MatMuls
  (per channel, reduced range). Memory-bound decoder steps run ~1.5x faster than fp32 on the CPU
  this way; the graph uses onnxruntime's integer operators, so TensorRT builds decoder engines
  from the fp16 variant instead (`export/trt_rules.py` says so when given this file).

Only MatMul, Conv and Gemm are quantized, so LayerNorm, Softmax and GELU stay in float. Both
recipes first run onnxruntime's `quant_pre_process` (shape inference and graph cleanup) and give
every node a stable name, so that the names `quantizable_nodes` reports are the ones
`nodes_to_exclude` matches.

Usage:
    samples = [{"pixel_values": batch} for batch in calibration_batches]
    quantize_static_qdq(Path("image_encoder.onnx"), Path("image_encoder.int8.onnx"), samples)
    quantize_dynamic_int8(Path("decoder_with_past.onnx"), Path("decoder_with_past.int8.onnx"))
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from tinymm.errors import InputError, TinymmError

logger = logging.getLogger(__name__)

# Operator types the static recipe quantizes; everything else (LayerNorm, Softmax, GELU, ...) stays float.
STATIC_OP_TYPES = ("MatMul", "Conv", "Gemm")
# Operator types the dynamic recipe quantizes (the decoder's weight MatMuls).
DYNAMIC_OP_TYPES = ("MatMul",)
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
# MinMax: within 2e-4 cosine of Percentile and Entropy on the measured encoder, and 2x faster to
# calibrate (QUANTIZATION.md, "Calibration").
DEFAULT_CALIBRATION = "minmax"
# The smallest opset with per-channel QuantizeLinear/DequantizeLinear (the `axis` attribute).
MIN_PER_CHANNEL_OPSET = 13
# onnx TensorProto element type -> numpy dtype name, for checking calibration samples.
_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.BOOL: "bool",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT8: "int8",
}


class QuantizationError(TinymmError):
    """An ONNX model could not be quantized (or pre-processed for quantization)."""

    kind = "quantization_error"


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _name_nodes(model: onnx.ModelProto) -> int:
    """Give every unnamed node a unique, deterministic name ("<op_type>_<index>"); returns how many."""
    taken = {node.name for node in model.graph.node if node.name}
    named = 0
    for index, node in enumerate(model.graph.node):
        if node.name:
            continue
        name = f"{node.op_type}_{index}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)
        named += 1
    return named


def preprocess(fp32_path: Path, out_path: Path) -> Path:
    """Run onnxruntime's `quant_pre_process` on `fp32_path` and write the result to `out_path`.

    Symbolic shape inference fails on some exported graphs; it is then skipped (logged) and the
    ONNX shape inference alone is used. Every node gets a unique name. Raises QuantizationError
    when the model cannot be pre-processed at all.
    """
    fp32_path, out_path = Path(fp32_path).resolve(), Path(out_path).resolve()
    if not fp32_path.is_file():
        raise QuantizationError(f"fp32 model {fp32_path} does not exist; export the fp32 component first")
    # When symbolic shape inference is incomplete, onnxruntime dumps the partial model into the
    # current directory (sym_shape_infer_temp.onnx and external data); keep that out of the user's.
    with tempfile.TemporaryDirectory(prefix="tinymm-quant-") as scratch, contextlib.chdir(scratch):
        try:
            quant_pre_process(str(fp32_path), str(out_path))
        except Exception as first:  # onnxruntime's tools raise anything from shape inference
            logger.warning(
                "quant_pre_process on %s failed (%s); retrying without symbolic shape inference", fp32_path, first
            )
            try:
                quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
            except Exception as e:
                raise QuantizationError(f"cannot pre-process {fp32_path} for quantization: {e}") from e
    model = onnx.load(str(out_path))
    if _name_nodes(model):
        onnx.save(model, str(out_path))
    return out_path


def _weight_nodes(model: onnx.ModelProto, op_types: Sequence[str]) -> list[str]:
    """Names of the `op_types` nodes whose second input is a constant (a weight), in graph order."""
    weights = {init.name for init in model.graph.initializer}
    weights |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    return [
        node.name
        for node in model.graph.node
        if node.op_type in op_types and len(node.input) > 1 and node.input[1] in weights
    ]


def _unselected(model: onnx.ModelProto, op_types: Sequence[str], selected: Sequence[str]) -> list[str]:
    """The `op_types` nodes not in `selected`, passed as exclusions too: onnxruntime reads an empty
    `nodes_to_quantize` as "quantize everything"."""
    chosen = set(selected)
    return [node.name for node in model.graph.node if node.op_type in op_types and node.name not in chosen]


def quantizable_nodes(path: Path, op_types: Sequence[str] = STATIC_OP_TYPES) -> list[str]:
    """Names of the nodes of the fp32 model at `path` that a quantizer would touch, in graph order.

    The names are those of the pre-processed graph (see `preprocess`), i.e. what `nodes_to_exclude`
    of `quantize_static_qdq` / `quantize_dynamic_int8` expects. Only nodes with a weight input are
    listed: MatMuls of two activations (attention scores, attention-weighted values) stay float in
    both recipes, which keeps Softmax outputs out of INT8.
    """
    with tempfile.TemporaryDirectory(prefix="tinymm-quant-") as tmp:
        model = onnx.load(str(preprocess(Path(path), Path(tmp) / "pre.onnx")), load_external_data=False)
    return _weight_nodes(model, op_types)


def _input_signature(model: onnx.ModelProto) -> dict[str, tuple[str, int]]:
    """Graph input name -> (numpy dtype name, rank), initializers excluded."""
    initializers = {init.name for init in model.graph.initializer}
    signature = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        signature[value.name] = (_ONNX_DTYPES.get(tensor.elem_type, str(tensor.elem_type)), len(tensor.shape.dim))
    return signature


def _checked_samples(
    calibration: Iterable[Mapping[str, np.ndarray]], signature: Mapping[str, tuple[str, int]]
) -> list[dict[str, np.ndarray]]:
    samples = []
    for index, sample in enumerate(calibration):
        if not isinstance(sample, Mapping):
            raise InputError(
                f"calibration sample {index} is a {type(sample).__name__}; give a dict of input name -> array"
            )
        if set(sample) != set(signature):
            raise InputError(
                f"calibration sample {index} has inputs {sorted(sample)} but the model's inputs are {sorted(signature)}"
            )
        for name, value in sample.items():
            dtype, rank = signature[name]
            if not isinstance(value, np.ndarray) or value.dtype.name != dtype or value.ndim != rank:
                given = (
                    f"{value.dtype.name}{list(value.shape)}" if isinstance(value, np.ndarray) else type(value).__name__
                )
                raise InputError(
                    f"calibration sample {index} input {name!r} is {given}; "
                    f"the model wants a {dtype} array of rank {rank}"
                )
        samples.append({name: np.ascontiguousarray(value) for name, value in sample.items()})
    if not samples:
        raise InputError("calibration is empty; give at least one sample (a few dozen representative ones is typical)")
    return samples


class _SampleReader(CalibrationDataReader):
    """Feeds the checked calibration samples to onnxruntime's calibrator, once each."""

    def __init__(self, samples: Sequence[dict[str, np.ndarray]]) -> None:
        self._samples = samples
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._samples):
            return None
        self._next += 1
        return self._samples[self._next - 1]

    def rewind(self) -> None:
        self._next = 0


def _check_excluded(nodes_to_exclude: Sequence[str], model: onnx.ModelProto) -> list[str]:
    if isinstance(nodes_to_exclude, str):
        raise InputError(f"nodes_to_exclude={nodes_to_exclude!r} must be a list of node names, not one string")
    names = {node.name for node in model.graph.node}
    unknown = [name for name in nodes_to_exclude if name not in names]
    if unknown:
        raise InputError(
            f"nodes_to_exclude names {unknown}, which are not nodes of the pre-processed graph; "
            f"take the names from quantizable_nodes()"
        )
    return list(nodes_to_exclude)


def quantize_static_qdq(
    fp32_path: Path,
    out_path: Path,
    calibration: Iterable[Mapping[str, np.ndarray]],
    *,
    nodes_to_exclude: Sequence[str] = (),
    per_channel: bool = True,
    reduce_range: bool = True,
    method: str = DEFAULT_CALIBRATION,
) -> Path:
    """Write a static QDQ INT8 copy of the fp32 model at `fp32_path` to `out_path` and return it.

    calibration: samples, each a dict of graph input name -> numpy array with the input's dtype
        and rank (e.g. {"pixel_values": float32 (B, 3, H, W)}); held in memory while calibrating.
    nodes_to_exclude: node names (from `quantizable_nodes`) to leave in float.
    per_channel: one weight scale per output channel (needs opset >= 13).
    reduce_range: 7-bit weights, which AVX2 CPUs without VNNI need to avoid saturation; TensorRT
        runs them unchanged (still symmetric int8).
    method: activation range calibration, one of CALIBRATION_METHODS.

    Activations and weights are int8 with zero point 0 (symmetric), biases stay float (TensorRT
    rejects int32 DequantizeLinear), only MatMul/Conv/Gemm with weight inputs are quantized and
    only on their inputs (no Q/DQ on their outputs).
    Raises InputError for bad samples, options or node names, QuantizationError when
    onnxruntime fails.
    """
    if method not in CALIBRATION_METHODS:
        raise InputError(f"method={method!r} is not a calibration method; choose one of {list(CALIBRATION_METHODS)}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tinymm-quant-") as tmp:
        pre_path = preprocess(Path(fp32_path), Path(tmp) / "pre.onnx")
        model = onnx.load(str(pre_path), load_external_data=False)
        if per_channel and _default_opset(model) < MIN_PER_CHANNEL_OPSET:
            raise InputError(
                f"{fp32_path} uses opset {_default_opset(model)}, but per-channel quantization needs opset >= "
                f"{MIN_PER_CHANNEL_OPSET}; re-export with a newer opset or pass per_channel=False"
            )
        excluded = _check_excluded(nodes_to_exclude, model)
        selected = [name for name in _weight_nodes(model, STATIC_OP_TYPES) if name not in excluded]
        others = _unselected(model, STATIC_OP_TYPES, selected)
        samples = _checked_samples(calibration, _input_signature(model))
        logger.info(
            "static int8 QDQ of %s: %d calibration samples, %s calibration, %d node(s) left in float",
            fp32_path,
            len(samples),
            method,
            len(excluded),
        )
        try:
            quantize_static(
                str(pre_path),
                str(out_path),
                _SampleReader(samples),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(STATIC_OP_TYPES),
                nodes_to_quantize=selected,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=others,
                calibrate_method=CALIBRATION_METHODS[method],
                extra_options={
                    "ActivationSymmetric": True,  # zero point 0: what TensorRT requires
                    "WeightSymmetric": True,
                    "QuantizeBias": False,  # TensorRT cannot parse int32 DequantizeLinear
                    # One Q/DQ pair per quantized consumer: a node left in float keeps float inputs
                    # even when a quantized node shares its input tensor.
                    "DedicatedQDQPair": True,
                    # Q/DQ only on the inputs of weighted ops, as TensorRT recommends; their outputs
                    # feed bias Adds, GELU and residuals in float.
                    "OpTypesToExcludeOutputQuantization": list(STATIC_OP_TYPES),
                },
            )
        except Exception as e:  # onnxruntime's quantizer raises anything from calibration to graph edits
            raise QuantizationError(f"static quantization of {fp32_path} failed: {e}") from e
    return out_path


def quantize_dynamic_int8(fp32_path: Path, out_path: Path, *, nodes_to_exclude: Sequence[str] = ()) -> Path:
    """Write a dynamically quantized INT8 copy of the fp32 model at `fp32_path` to `out_path`.

    The weight MatMuls get int8 per-channel reduced-range weights; activations are quantized at
    run time. Meant for decoder steps on the CPU (not for TensorRT). `nodes_to_exclude` takes
    names from `quantizable_nodes(path, DYNAMIC_OP_TYPES)`. Raises InputError for unknown node
    names, QuantizationError when onnxruntime fails.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tinymm-quant-") as tmp:
        pre_path = preprocess(Path(fp32_path), Path(tmp) / "pre.onnx")
        model = onnx.load(str(pre_path), load_external_data=False)
        excluded = _check_excluded(nodes_to_exclude, model)
        selected = [name for name in _weight_nodes(model, DYNAMIC_OP_TYPES) if name not in excluded]
        others = _unselected(model, DYNAMIC_OP_TYPES, selected)
        logger.info("dynamic int8 of %s: %d node(s) left in float", fp32_path, len(excluded))
        try:
            quantize_dynamic(
                str(pre_path),
                str(out_path),
                op_types_to_quantize=list(DYNAMIC_OP_TYPES),
                nodes_to_quantize=selected,
                per_channel=True,
                reduce_range=True,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=others,
                extra_options={"MatMulConstBOnly": True},
            )
        except Exception as e:  # onnxruntime's quantizer raises anything from graph edits
            raise QuantizationError(f"dynamic quantization of {fp32_path} failed: {e}") from e
    return out_path


def graph_op_counts(path: Path) -> dict[str, int]:
    """op_type -> number of nodes in the main graph of the model at `path` (for reports and tests)."""
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
