"""Roofline row: how close an encoder comes to this machine's GEMM rate on its own shapes.

Usage:
    python benchmarks/roofline.py BUNDLE [--component image_encoder] [--precision fp32]
                                         [--threads 2] [--runs 20] [--frames 201] [--json PATH]

1. FLOPs: the encoder's ONNX graph (the fp32 file: the int8 file does the same work as integer
   ops) with its inputs fixed to batch 1, through ONNX shape inference; shapes that inference
   leaves symbolic are read from one onnxruntime run. MatMul and Gemm count 2*M*K*N per batch
   element, Conv 2 * N * C_out * output pixels * C_in/group * kernel area. Elementwise ops,
   softmax and normalization are not counted: the row is about the GEMMs.
2. GEMM rate: every distinct MatMul/Gemm shape of the graph runs alone in onnxruntime (fp32
   MatMul, and int8 MatMulInteger as a probe of the quantized kernels) with the same thread
   count, ``GEMMS_PER_CALL`` products per call (each with its own B) into pre-bound outputs, so
   that the per-call cost is amortized; numpy's ``matmul`` (BLAS limited to the same threads with
   threadpoolctl, from the ``bench`` extra) is the reference. The rate is the shapes' FLOPs over
   their times, weighted by how often the encoder runs each shape. Conv FLOPs count in the
   encoder's total but not in the rate (the convs are a small share of these encoders).
3. Achieved: the encoder's FLOPs over its fastest run (the tinymm OrtSession, same threads).

Times are the fastest of ``--runs`` on both sides: on a shared machine the minimum is the run
least disturbed by other processes, and a ceiling is compared with a best case. The median
encoder time is reported too.

The share achieved / GEMM rate says whether the encoder is GEMM-bound (near 1) or loses its
time elsewhere (small ops, layout changes, memory traffic).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

GEMMS_PER_CALL = 8  # MatMul copies per onnxruntime call in the rate probe
DEFAULT_RUNS = 20
DEFAULT_THREADS = 2
DEFAULT_FRAMES = 201  # log-mel frames of a 2 s clip at a 10 ms hop (speech encoders)
FLOP_OPS = ("MatMul", "Gemm", "Conv")
GIGA = 1e9
MS_PER_S = 1000.0
OPSET = 17
IR_VERSION = 8


@dataclass(frozen=True)
class GemmShape:
    """One matrix product of a graph: batch x (M, K) @ (K, N); ``weight`` when B is a constant."""

    batch: int
    m: int
    k: int
    n: int
    weight: bool

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n


@dataclass(frozen=True)
class FlopCount:
    """GEMM and conv FLOPs of one forward pass at the given input shapes."""

    total: int
    by_op: dict[str, int]
    gemms: dict[GemmShape, int]  # shape -> how many nodes run it
    unresolved: tuple[str, ...] = ()  # nodes whose shapes could not be found (not counted)


@dataclass(frozen=True)
class RooflineRow:
    """What roofline() measured for one encoder."""

    component: str
    precision: str
    threads: int
    input_shapes: dict[str, list[int]]
    gflop_per_call: float
    flops_by_op: dict[str, int]
    encoder_ms_best: float
    encoder_ms_p50: float
    achieved_gflops: float  # FLOPs / fastest encoder run
    ort_gemm_gflops: float  # onnxruntime fp32 MatMul on the encoder's shapes
    ort_int8_gops: float  # onnxruntime MatMulInteger on the same shapes
    numpy_gemm_gflops: float
    share_of_gemm_rate: float  # achieved / ort_gemm_gflops
    unresolved_nodes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- FLOPs from the graph --------------------------------------------------------------------


def _fix_inputs(model: Any, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Set the graph inputs' dimensions to ``shapes`` (name -> concrete shape)."""
    for value in model.graph.input:
        if value.name not in shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(shapes[value.name]):
            raise ValueError(f"input {value.name!r} has rank {len(dims)} but shape {shapes[value.name]} was given")
        for dim, size in zip(dims, shapes[value.name]):
            dim.Clear()
            dim.dim_value = int(size)


def _known_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Tensor name -> concrete shape, for every tensor whose dimensions are all known."""
    import onnx

    shapes: dict[str, tuple[int, ...]] = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    for node in model.graph.node:  # Constant nodes: their value's shape
        if node.op_type == "Constant" and node.attribute:
            shapes[node.output[0]] = tuple(onnx.numpy_helper.to_array(node.attribute[0].t).shape)
    return shapes


def _shapes_from_run(path: Path, names: list[str], feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors ``names`` read from one onnxruntime run (exposed as extra outputs)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = session.run(names, dict(feeds))
    return {name: tuple(value.shape) for name, value in zip(names, values)}


def _gemm(node: Any, a: tuple[int, ...], b: tuple[int, ...], weight: bool) -> GemmShape:
    if node.op_type == "Gemm":
        attrs = {x.name: x.i for x in node.attribute}
        m, k = (a[1], a[0]) if attrs.get("transA", 0) else (a[0], a[1])
        n = b[0] if attrs.get("transB", 0) else b[1]
        return GemmShape(1, m, k, n, weight)
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    batch = int(np.prod(np.broadcast_shapes(a2[:-2], b2[:-2]), dtype=np.int64)) if max(len(a2), len(b2)) > 2 else 1
    return GemmShape(batch, a2[-2], a2[-1], b2[-1], weight)


def count_flops(path: str | Path, feeds: Mapping[str, np.ndarray]) -> FlopCount:
    """GEMM and conv FLOPs of the ONNX model at ``path`` run on ``feeds`` (their shapes fix the graph's)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    _fix_inputs(model, {name: value.shape for name, value in feeds.items()})
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = _known_shapes(inferred)
    constants = {t.name for t in model.graph.initializer}
    constants |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    nodes = [n for n in model.graph.node if n.op_type in FLOP_OPS]
    wanted = sorted({name for n in nodes for name in [*n.input[:2], n.output[0]] if name and name not in shapes})
    if wanted:
        shapes.update(_shapes_from_run(path, wanted, feeds))
    by_op: Counter[str] = Counter()
    gemms: Counter[GemmShape] = Counter()
    unresolved = []
    for node in nodes:
        a, b, y = (shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0]))
        if a is None or b is None or y is None:
            unresolved.append(node.name or node.op_type)
            continue
        if node.op_type == "Conv":
            group = next((x.i for x in node.attribute if x.name == "group"), 1)
            flops = 2 * y[0] * y[1] * int(np.prod(y[2:])) * (a[1] // group) * int(np.prod(b[2:]))
        else:
            shape = _gemm(node, a, b, node.input[1] in constants)
            gemms[shape] += 1
            flops = shape.flops
        by_op[node.op_type] += flops
    return FlopCount(sum(by_op.values()), dict(by_op), dict(gemms), tuple(unresolved))


# ---- the GEMM rate on those shapes -------------------------------------------------------------


Probe = tuple[bytes, dict[str, np.ndarray], list[tuple[str, tuple[int, ...], Any]]]  # model, feeds, outputs


def _probe_model(shape: GemmShape, int8: bool) -> Probe:
    """GEMMS_PER_CALL products of one shape, each with its own B (identical nodes would be merged by
    onnxruntime's common-subexpression elimination); returns (model, feeds, outputs)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    lead = (shape.batch,) if shape.batch > 1 else ()
    a_shape, b_shape = (*lead, shape.m, shape.k), ((shape.k, shape.n) if shape.weight else (*lead, shape.k, shape.n))
    if int8:
        a = rng.integers(0, 255, a_shape, dtype=np.uint8)
        bs = [rng.integers(-127, 127, b_shape, dtype=np.int8) for _ in range(GEMMS_PER_CALL)]
        a_type, b_type, y_type, y_dtype = TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32, np.int32
    else:
        a = rng.standard_normal(a_shape).astype(np.float32)
        bs = [rng.standard_normal(b_shape).astype(np.float32) for _ in range(GEMMS_PER_CALL)]
        a_type = b_type = y_type = TensorProto.FLOAT
        y_dtype = np.float32
    op = "MatMulInteger" if int8 else "MatMul"
    y_shape = (*lead, shape.m, shape.n)
    names = [(f"b{i}", f"y{i}") for i in range(GEMMS_PER_CALL)]
    feeds = {"a": a}
    inputs = [helper.make_tensor_value_info("a", a_type, a_shape)]
    initializers = []
    for (b_name, _), b in zip(names, bs):
        if shape.weight:
            initializers.append(numpy_helper.from_array(b, b_name))
        else:
            inputs.append(helper.make_tensor_value_info(b_name, b_type, b_shape))
            feeds[b_name] = b
    graph = helper.make_graph(
        [helper.make_node(op, ["a", b_name], [y_name]) for b_name, y_name in names], "gemm_probe", inputs,
        [helper.make_tensor_value_info(y_name, y_type, y_shape) for _, y_name in names], initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model.SerializeToString(), feeds, [(y_name, y_shape, y_dtype) for _, y_name in names]


def _ort_seconds_per_gemm(shape: GemmShape, threads: int, runs: int, int8: bool) -> float:
    """Median seconds of one product of ``shape`` in onnxruntime (outputs pre-bound, copies amortized)."""
    import onnxruntime as ort

    blob, feeds, outputs = _probe_model(shape, int8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    for name, y_shape, y_dtype in outputs:
        binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(np.empty(y_shape, y_dtype)))
    session.run_with_iobinding(binding)  # warm up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        times.append(time.perf_counter() - start)
    return min(times) / GEMMS_PER_CALL


def _numpy_seconds_per_gemm(shape: GemmShape, threads: int, runs: int) -> float:
    """Fastest seconds of one product of ``shape`` in numpy, its BLAS limited to ``threads`` threads
    when threadpoolctl is installed (else the BLAS default)."""
    rng = np.random.default_rng(0)
    lead = (shape.batch,) if shape.batch > 1 else ()
    a = rng.standard_normal((*lead, shape.m, shape.k)).astype(np.float32)
    b = rng.standard_normal((shape.k, shape.n) if shape.weight else (*lead, shape.k, shape.n)).astype(np.float32)
    out = np.empty((*lead, shape.m, shape.n), np.float32)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # the bench extra is not installed: numpy keeps its BLAS default
        limits: Any = contextlib.nullcontext()
    else:
        limits = threadpool_limits(limits=threads, user_api="blas")
    times = []
    with limits:
        np.matmul(a, b, out=out)
        for _ in range(runs):
            start = time.perf_counter()
            for _ in range(GEMMS_PER_CALL):
                np.matmul(a, b, out=out)
            times.append(time.perf_counter() - start)
    return min(times) / GEMMS_PER_CALL


def gemm_rates(gemms: Mapping[GemmShape, int], threads: int, runs: int) -> dict[str, float]:
    """Rates in G(FL)OP/s of the graph's GEMM mix: ``ort_fp32``, ``ort_int8`` and ``numpy_fp32``."""
    flops = sum(shape.flops * count for shape, count in gemms.items())
    seconds = {"ort_fp32": 0.0, "ort_int8": 0.0, "numpy_fp32": 0.0}
    for shape, count in gemms.items():
        seconds["ort_fp32"] += count * _ort_seconds_per_gemm(shape, threads, runs, int8=False)
        seconds["ort_int8"] += count * _ort_seconds_per_gemm(shape, threads, runs, int8=True)
        seconds["numpy_fp32"] += count * _numpy_seconds_per_gemm(shape, threads, runs)
    return {name: flops / s / GIGA if s > 0 else math.nan for name, s in seconds.items()}


# ---- the encoder itself ----------------------------------------------------------------------


def encoder_seconds(path: Path, feeds: Mapping[str, np.ndarray], threads: int, runs: int) -> tuple[float, float]:
    """(fastest, median) seconds of one encoder run through tinymm's onnxruntime backend with ``threads``."""
    from tinymm.backends.base import BackendOptions, get_backend

    session = get_backend("onnxruntime").load(path, BackendOptions(provider="cpu", intra_op_threads=threads))
    session.run(dict(feeds))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(dict(feeds))
        times.append(time.perf_counter() - start)
    return min(times), float(np.median(times))


def synthetic_feeds(specs: Any, frames: int) -> dict[str, np.ndarray]:
    """Batch-1 inputs for a component's input specs: symbolic dims become ``frames``, the batch 1;
    float inputs are standard normal, integer inputs of shape (batch,) hold ``frames`` (valid lengths)."""
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in specs:
        shape = tuple(1 if i == 0 and not isinstance(d, int) else d if isinstance(d, int) else frames
                      for i, d in enumerate(spec.shape))
        if spec.dtype.startswith("float"):
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feeds[spec.name] = np.full(shape, frames, dtype=spec.dtype)
    return feeds


def roofline(bundle: str | Path, component: str, precision: str = "fp32", *, threads: int = DEFAULT_THREADS,
             runs: int = DEFAULT_RUNS, frames: int = DEFAULT_FRAMES,
             feeds: Mapping[str, np.ndarray] | None = None) -> RooflineRow:
    """The roofline row of ``component`` of ``bundle`` at ``precision`` (FLOPs from the fp32 graph)."""
    from tinymm.bundle import read_bundle

    with read_bundle(bundle, verify_checksums=False) as opened:
        spec = opened.manifest.components[component]
        feeds = dict(feeds) if feeds is not None else synthetic_feeds(spec.inputs, frames)
        fp32_path, path = opened.component_path(component, "fp32"), opened.component_path(component, precision)
        count = count_flops(fp32_path, feeds)
        rates = gemm_rates(count.gemms, threads, runs)
        best, median = encoder_seconds(path, feeds, threads, runs)
    achieved = count.total / best / GIGA
    return RooflineRow(
        component=component, precision=precision, threads=threads,
        input_shapes={name: list(value.shape) for name, value in feeds.items()},
        gflop_per_call=count.total / GIGA, flops_by_op=count.by_op, encoder_ms_best=best * MS_PER_S,
        encoder_ms_p50=median * MS_PER_S,
        achieved_gflops=achieved, ort_gemm_gflops=rates["ort_fp32"], ort_int8_gops=rates["ort_int8"],
        numpy_gemm_gflops=rates["numpy_fp32"], share_of_gemm_rate=achieved / rates["ort_fp32"],
        unresolved_nodes=list(count.unresolved),
    )


def render_rows(rows: list[RooflineRow]) -> str:
    """A Markdown table of roofline rows."""
    lines = ["| model | precision | threads | GFLOP/call | model best / p50 ms | achieved GFLOP/s "
             "| ORT fp32 GEMM GFLOP/s | ORT int8 GEMM GOP/s | numpy GEMM GFLOP/s | achieved / ORT fp32 GEMM |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.component} | {r.precision} | {r.threads} | {r.gflop_per_call:.3f} | "
                     f"{r.encoder_ms_best:.2f} / {r.encoder_ms_p50:.2f} | "
                     f"{r.achieved_gflops:.1f} | {r.ort_gemm_gflops:.1f} | {r.ort_int8_gops:.1f} | "
                     f"{r.numpy_gemm_gflops:.1f} | {r.share_of_gemm_rate:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/roofline.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="bundle directory or archive")
    parser.add_argument("--component", default=None, help="default: image_encoder or speech_encoder, as the bundle has")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"))
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="size of symbolic non-batch dimensions")
    parser.add_argument("--json", type=Path, default=None, help="also write the row as JSON here")
    args = parser.parse_args(argv)
    from tinymm.bundle import read_bundle

    component = args.component
    if component is None:
        with read_bundle(args.bundle, verify_checksums=False) as opened:
            component = next((c for c in ("image_encoder", "speech_encoder") if c in opened.manifest.components), None)
        if component is None:
            parser.error(f"{args.bundle} has no image_encoder or speech_encoder; pass --component")
    row = roofline(args.bundle, component, args.precision, threads=args.threads, runs=args.runs, frames=args.frames)
    sys.stdout.write(render_rows([row]))
    if args.json is not None:
        args.json.write_text(json.dumps(row.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
