"""How much each quantized node costs: the per-node sweep behind the INT8 accuracy gate.

Two measures, with different costs:

- `leave_one_out` (what the gate uses): for each candidate node, build the INT8 model with that
  node left in float and evaluate the task metric. It measures exactly what the gate decides on
  (VQA accuracy, WER, ...) and needs nothing but the builder and the metric, at the price of one
  quantization and one evaluation per candidate; `max_evaluations` bounds it.
- `output_error_ranking` (cheap, optional): one run of the fp32 and one of the INT8 model over a
  few samples, comparing every candidate node's input and output tensors. A node's score is the
  relative error its output gains over its input, i.e. the error the node itself adds. Use it to
  order or shorten the candidate list handed to the gate when a model has too many nodes to
  sweep exhaustively.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from export.quantize import preprocess
from tinymm.errors import InputError

logger = logging.getLogger(__name__)

Exclusion = tuple[str, ...]  # node names left in float, in the order they were chosen


@dataclass(frozen=True)
class NodeSensitivity:
    """What leaving one node in float is worth (higher `gain` = more sensitive node)."""

    node: str  # node name in the pre-processed graph
    gain: float  # leave_one_out: metric points recovered vs all-int8; output_error_ranking: error added
    score: float | None = None  # leave_one_out: the task metric with this node in float


class ScoreCache:
    """Builds and evaluates INT8 models at most once per set of excluded nodes.

    build: excluded node names -> path of an INT8 model with those nodes in float.
    evaluate: model path -> task metric (a finite float).
    """

    def __init__(self, build: Callable[[Sequence[str]], Path], evaluate: Callable[[Path], float]) -> None:
        self._build = build
        self._evaluate = evaluate
        self._scores: dict[frozenset[str], tuple[float, Path]] = {}
        self.builds = 0  # how many INT8 models were built (each a quantization)

    def evaluate(self, path: Path) -> float:
        """The metric of the model at `path`; InputError when the metric is not a finite number."""
        value = self._evaluate(Path(path))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"the evaluate callback returned {value!r} for {path}; it must return a finite number")
        return float(value)

    def score(self, excluded: Sequence[str]) -> tuple[float, Path]:
        """(metric, model path) of the INT8 model with `excluded` left in float."""
        key = frozenset(excluded)
        if key not in self._scores:
            path = Path(self._build(list(excluded)))
            self.builds += 1
            self._scores[key] = (self.evaluate(path), path)
        return self._scores[key]


def leave_one_out(
    candidates: Sequence[str],
    cache: ScoreCache,
    *,
    int8_score: float,
    higher_is_better: bool,
    max_evaluations: int,
) -> list[NodeSensitivity]:
    """Sweep up to `max_evaluations` candidates, each left in float alone; most sensitive first.

    int8_score: the metric of the all-INT8 model. A node's gain is the metric points recovered by
    leaving it in float (negative when doing so made things worse). Candidates past the budget
    are not swept (logged).
    """
    if len(candidates) > max_evaluations:
        logger.warning(
            "sensitivity sweep: %d candidate nodes but a budget of %d evaluations; sweeping the first %d in the "
            "order given (rank the candidates, e.g. with output_error_ranking, to sweep the likeliest ones)",
            len(candidates),
            max_evaluations,
            max_evaluations,
        )
    sign = 1.0 if higher_is_better else -1.0
    results = []
    for node in candidates[:max_evaluations]:
        score, _ = cache.score((node,))
        results.append(NodeSensitivity(node=node, gain=sign * (score - int8_score), score=score))
        logger.info("sensitivity: %s in float -> metric %.4g (gain %+.4g)", node, score, results[-1].gain)
    return sorted(results, key=lambda s: s.gain, reverse=True)


def _node_tensors(fp32_path: Path, nodes: Sequence[str] | None) -> dict[str, tuple[str, str]]:
    """node name -> (first input tensor, first output tensor) in the pre-processed fp32 graph."""
    with tempfile.TemporaryDirectory(prefix="tinymm-sens-") as tmp:
        model = onnx.load(str(preprocess(fp32_path, Path(tmp) / "pre.onnx")), load_external_data=False)
    by_name = {node.name: node for node in model.graph.node}
    wanted = list(by_name) if nodes is None else list(nodes)
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise InputError(f"nodes {unknown} are not in the pre-processed graph of {fp32_path}; use quantizable_nodes()")
    return {name: (by_name[name].input[0], by_name[name].output[0]) for name in wanted}


def _run_with_tensors(
    path: Path, tensors: Iterable[str], samples: Sequence[Mapping[str, np.ndarray]]
) -> list[dict[str, np.ndarray]]:
    """Run the model at `path` on each sample, returning the named intermediate tensors it has."""
    model = onnx.load(str(path))
    wanted = list(dict.fromkeys(tensors))
    inputs = [name for name in wanted if name in {v.name for v in model.graph.input}]
    produced = {out for node in model.graph.node for out in node.output}
    present = [name for name in wanted if name in produced]
    existing = {v.name for v in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in present if name not in existing)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    runs = []
    for sample in samples:
        values = dict(zip(present, session.run(present, dict(sample)), strict=True))
        values.update({name: np.asarray(sample[name]) for name in inputs})
        runs.append(values)
    return runs


def _relative_error(reference: np.ndarray, value: np.ndarray) -> float:
    reference = reference.astype(np.float64).ravel()
    norm = np.linalg.norm(reference)
    return float(np.linalg.norm(value.astype(np.float64).ravel() - reference) / max(norm, np.finfo(np.float64).tiny))


def output_error_ranking(
    fp32_path: Path,
    int8_path: Path,
    samples: Sequence[Mapping[str, np.ndarray]],
    nodes: Sequence[str] | None = None,
) -> list[NodeSensitivity]:
    """Rank `nodes` (default: all) by the relative error each adds in the INT8 model; worst first.

    samples: a few model feeds (input name -> numpy array), e.g. calibration samples.
    For each node, gain = mean over samples of (relative L2 error of its output tensor) minus
    (relative L2 error of its first input tensor), INT8 vs fp32. Nodes whose tensors do not
    exist in the INT8 graph are skipped (logged). Cost: one run of each model per sample.
    """
    if not samples:
        raise InputError("output_error_ranking needs at least one sample feed")
    tensors = _node_tensors(Path(fp32_path), nodes)
    names = [t for pair in tensors.values() for t in pair]
    reference = _run_with_tensors(Path(fp32_path), names, samples)
    quantized = _run_with_tensors(Path(int8_path), names, samples)
    ranking = []
    for node, (inp, out) in tensors.items():
        if not all(t in quantized[0] and t in reference[0] for t in (inp, out)):
            logger.info("output_error_ranking: %s has no comparable tensors in %s; skipped", node, int8_path)
            continue
        added = [
            _relative_error(r[out], q[out]) - _relative_error(r[inp], q[inp]) for r, q in zip(reference, quantized)
        ]
        ranking.append(NodeSensitivity(node=node, gain=float(np.mean(added))))
    return sorted(ranking, key=lambda s: s.gain, reverse=True)
