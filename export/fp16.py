"""The fp16 variant of an fp32 ONNX component, for GPUs (onnxruntime CUDA/TensorRT, native TensorRT).

onnxruntime's float16 converter rewrites weights and operators to float16 and inserts Casts. The
bundle contract keeps every variant's inputs and outputs float32 (`keep_io_types=True`), so
callers feed the same arrays to every precision. Operators that lose too much in fp16 stay in
float32 (FP32_OPS): normalisation and its reductions, exponentials and logarithms (LogSoftmax of
the CTC head), plus the converter's own default list.

TensorRT 11 builds only strongly typed networks, and TensorRT 10 is used that way here too
(`export/tensorrt_build.py`): the precisions written by this converter are the ones the engine
runs, so this file is where fp16 precision is decided.

Usage:
    convert_fp16(Path("image_encoder.onnx"), Path("image_encoder.fp16.onnx"))
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import onnxruntime as ort
from onnxruntime.transformers.float16 import (
    DEFAULT_OP_BLOCK_LIST,
    convert_float_to_float16,
)

from tinymm.errors import TinymmError

logger = logging.getLogger(__name__)

# Operators kept in float32: fp16's 5e-4 relative precision and 65504 maximum are too little for
# the variance of LayerNorm (sums of squares), for exp/log and for their reductions.
FP32_OPS = (
    "LayerNormalization",
    "ReduceMean",
    "ReduceSum",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Exp",
    "Log",
    "LogSoftmax",
)
_FLOAT32 = onnx.TensorProto.FLOAT


class Fp16ConversionError(TinymmError):
    """An fp32 ONNX model could not be converted to a working fp16 model."""

    kind = "fp16_error"


def _io_types(model: onnx.ModelProto) -> dict[str, int]:
    initializers = {init.name for init in model.graph.initializer}
    values = [v for v in model.graph.input if v.name not in initializers] + list(model.graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in values}


def _check_loads(path: Path) -> None:
    """Create a CPU onnxruntime session for `path`; Fp16ConversionError when that fails."""
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's pybind errors share no base class below Exception
        raise Fp16ConversionError(
            f"the fp16 model {path} does not load in onnxruntime on the CPU ({e}); add the failing "
            f"operator to FP32_OPS or report the converter bug"
        ) from e


def convert_fp16(fp32_path: Path, out_path: Path, *, keep_io_types: bool = True) -> Path:
    """Write an fp16 copy of the fp32 model at `fp32_path` to `out_path` and return `out_path`.

    keep_io_types: keep float32 graph inputs and outputs (the bundle contract), casting inside the
        graph; False makes float inputs/outputs float16.
    Operators in FP32_OPS stay float32. The result is checked to keep its float32 I/O (when
    asked) and to load in onnxruntime's CPU provider. Raises Fp16ConversionError otherwise.
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.is_file():
        raise Fp16ConversionError(f"fp32 model {fp32_path} does not exist; export the fp32 component first")
    try:
        model = onnx.load(str(fp32_path))
        before = _io_types(model)
        converted = convert_float_to_float16(
            model,
            keep_io_types=keep_io_types,
            op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP32_OPS),
        )
    except Exception as e:  # the converter raises anything from shape inference to graph edits
        raise Fp16ConversionError(f"fp16 conversion of {fp32_path} failed: {e}") from e
    if keep_io_types:
        changed = [
            name for name, kind in _io_types(converted).items() if before.get(name) == _FLOAT32 and kind != _FLOAT32
        ]
        if changed:
            raise Fp16ConversionError(
                f"fp16 conversion of {fp32_path} changed the type of float32 inputs/outputs {changed}"
            )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(converted, str(out_path))
    _check_loads(out_path)
    logger.info("fp16 variant of %s: %d -> %d bytes", fp32_path, fp32_path.stat().st_size, out_path.stat().st_size)
    return out_path
