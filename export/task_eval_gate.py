"""Which int8 components a bundle ships: the accuracy gate per component, then on the whole model.

``build_int8_variants`` quantizes every component (static QDQ for the encoders, dynamic int8 for
the decoder steps, export/quantize.py) and runs ``accuracy_gate.run_int8_gate`` on it:

- with a task evaluator (``--data`` holds a test split): the metric is the END-TO-END task
  metric (VQA accuracy, WER, ...) of the whole model, every other component in fp32 and this
  one's candidate swapped in; the gate may leave the most sensitive nodes in float (its sweep is
  in the report). An accepted candidate must also pass the golden cosine tolerance (the second
  safety check, ``golden.TOLERANCES["int8"]``). Then the int8 variant as a whole (every accepted
  component in int8, the others fp32: what ``tinymm.load(..., precision="int8")`` loads) is
  evaluated; while it drops more than ``max_metric_drop``, the accepted component that lost the
  most on its own goes back to fp32;
- without one: the metric is the component's golden outputs' smallest cosine, in points
  (100 x cosine), with the golden tolerance as the allowed drop.

A refused component ships no int8 file (the runtime loads its fp32 file for ``--precision
int8``); every verdict, with its reason, is in the reports for the provenance and the model card.
``task_metrics`` then records the metrics per precision, of the torch model, and how often the
fp32 runtime's outputs equal the torch model's greedy outputs.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from export.golden import TOLERANCES, GoldenRecord, evaluate_variant
from export.task_eval import GateOptions, TaskEvaluator

if TYPE_CHECKING:
    from export.onnx_common import Prepared

logger = logging.getLogger(__name__)

STATIC_INT8 = ("image_encoder", "text_encoder", "speech_encoder")  # calibrated QDQ; decoder steps: dynamic int8
GOLDEN_METRIC = "golden cosine"  # the fallback metric's name: 100 x the smallest cosine to torch fp32
GOLDEN_MAX_DROP = 100.0 * (1.0 - TOLERANCES["int8"].min_cosine)  # points of 100 x cosine
# A task-metric evaluation costs seconds (not milliseconds like the golden cosine), so its sweep
# takes the TASK_MAX_SWEEP nodes that add the most output error (sensitivity.output_error_ranking
# on RANK_SAMPLES calibration feeds) instead of every quantizable node.
TASK_MAX_SWEEP = 8
RANK_SAMPLES = 4


@dataclass(frozen=True)
class Int8Variants:
    """What the gate decided: the files to ship and the report of every component."""

    files: Mapping[str, Path]  # component -> accepted int8 file (refused components are absent)
    reports: Mapping[str, dict[str, Any]]  # component -> JSON-ready gate report with "metric", "shipped", "reason"
    combined: dict[str, Any] | None  # the int8 variant's task metrics (None without a task evaluator)


def _builder(component: str, fp32: Path, work: Path, prepared: Prepared) -> tuple[Any, list[str] | None]:
    """(build(excluded) -> int8 path, candidate nodes or None for the default) of one component."""
    from export.quantize import DYNAMIC_OP_TYPES, quantizable_nodes, quantize_dynamic_int8, quantize_static_qdq

    static = component in STATIC_INT8
    samples = prepared.calibration()[component] if static else []
    builds = itertools.count()

    def build(excluded: Sequence[str]) -> Path:
        out = work / f"{component}.int8.try{next(builds)}.onnx"
        if static:
            return quantize_static_qdq(fp32, out, samples, nodes_to_exclude=excluded)
        return quantize_dynamic_int8(fp32, out, nodes_to_exclude=excluded)

    return build, None if static else quantizable_nodes(fp32, DYNAMIC_OP_TYPES)


def _ranker(component: str, fp32: Path, prepared: Prepared) -> Any:
    """rank(int8 path, candidates) -> candidates, the nodes adding the most output error first."""
    from export.sensitivity import output_error_ranking

    def rank(int8_path: Path, candidates: Sequence[str]) -> list[str]:
        samples = prepared.calibration()[component][:RANK_SAMPLES]
        try:
            ranked = [s.node for s in output_error_ranking(fp32, int8_path, samples, candidates)]
        except Exception as e:  # a ranking is an optimisation: fall back to graph order, never fail the export
            logger.warning("%s: could not rank nodes by output error (%s: %s); sweeping in graph order",
                           component, type(e).__name__, e)
            return list(candidates)
        return ranked + [node for node in candidates if node not in ranked]

    return rank


def _drop(evaluator: TaskEvaluator, fp32: float, score: float) -> float:
    """Metric points lost (positive = worse), whichever way the metric improves."""
    return (fp32 - score) if evaluator.higher_is_better else (score - fp32)


def build_int8_variants(prepared: Prepared, fp32: Mapping[str, Path], work: Path,
                        records: Mapping[str, GoldenRecord], evaluator: TaskEvaluator | None,
                        options: GateOptions) -> Int8Variants:
    """Quantize and gate every component of `fp32` (component -> fp32 .onnx); see the module docstring."""
    from export.accuracy_gate import run_int8_gate

    accepted: dict[str, Path] = {}
    reports: dict[str, dict[str, Any]] = {}
    for component, path in fp32.items():
        build, candidates = _builder(component, path, work, prepared)
        if evaluator is not None:
            def evaluate(candidate: Path, component: str = component) -> float:
                return evaluator.main({**fp32, component: candidate})
            metric, max_drop, higher = evaluator.metric, options.max_metric_drop, evaluator.higher_is_better
        else:
            def evaluate(candidate: Path, record: GoldenRecord = records[component]) -> float:
                return 100.0 * evaluate_variant(candidate, record, "int8").min_cosine
            metric, max_drop, higher = GOLDEN_METRIC, GOLDEN_MAX_DROP, True
        sweep = {} if evaluator is None else {"max_sweep": TASK_MAX_SWEEP, "rank": _ranker(component, path, prepared)}
        gate = run_int8_gate(path, build, evaluate, max_drop=max_drop, higher_is_better=higher, candidates=candidates,
                             **sweep)
        report = {**gate.to_dict(), "metric": metric, "shipped": gate.accepted, "reason": gate.summary()}
        if gate.accepted and evaluator is not None:
            golden = evaluate_variant(gate.int8_path, records[component], "int8")
            report["golden_min_cosine"] = golden.min_cosine
            if not golden.passed:
                report.update(shipped=False, reason=f"the task metric passed but the golden check failed: "
                                                    f"{'; '.join(golden.failures)}")
        if report["shipped"]:
            final = work / f"{component}.int8.onnx"
            gate.int8_path.replace(final)
            accepted[component] = final
        else:
            logger.warning("%s: no int8 variant shipped (%s)", component, report["reason"])
        reports[component] = report
    combined = _combined(evaluator, fp32, accepted, reports, options) if evaluator is not None else None
    return Int8Variants(accepted, reports, combined)


def _combined(evaluator: TaskEvaluator, fp32: Mapping[str, Path], accepted: dict[str, Path],
              reports: dict[str, dict[str, Any]], options: GateOptions) -> dict[str, Any]:
    """Evaluate every accepted component in int8 together; send back to fp32 the worst until it holds."""
    reference = evaluator.main(dict(fp32))
    while True:
        scores = evaluator.score({**fp32, **accepted})
        drop = _drop(evaluator, reference, scores.main)
        if drop <= options.max_metric_drop or not accepted:
            break
        worst = max(accepted, key=lambda c: reports[c]["drop"])
        logger.warning("int8 variant with %s in int8 drops %.3g points (max %g): %s goes back to fp32",
                       sorted(accepted), drop, options.max_metric_drop, worst)
        reports[worst].update(shipped=False, reason=f"accepted alone, but the int8 variant with "
                                                    f"{sorted(accepted)} in int8 dropped {drop:.3g} points")
        accepted.pop(worst).unlink()
    return {**scores.to_dict(), "components": sorted(accepted), "drop": drop}


def task_metrics(evaluator: TaskEvaluator, files: Mapping[str, Mapping[str, Path]]) -> dict[str, Any]:
    """The provenance's ``task_eval``: metrics per precision (as the runtime loads it: that variant
    where a component has it, fp32 elsewhere), of the torch model, and fp32 runtime vs torch agreement.

    files: component -> precision -> .onnx, before the decoder weights are shared.
    """
    fp32 = {c: variants["fp32"] for c, variants in files.items()}
    precisions = sorted({p for variants in files.values() for p in variants}, key=["fp32", "fp16", "int8"].index)
    per_precision = {}
    for precision in precisions:
        paths = {c: variants.get(precision, variants["fp32"]) for c, variants in files.items()}
        per_precision[precision] = {**evaluator.score(paths).to_dict(),
                                    "components": [c for c, v in files.items() if precision in v]}
    return {
        "description": evaluator.description,
        "counts": evaluator.counts,
        "metric": evaluator.metric,
        "higher_is_better": evaluator.higher_is_better,
        "columns": [list(column) for column in evaluator.columns],
        "precisions": per_precision,
        "torch": evaluator.torch_scores().to_dict(),
        "torch_agreement": evaluator.agreement(fp32),
    }
