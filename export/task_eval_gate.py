"""Which int8 components a bundle ships: the accuracy gate per component, then on the whole model.

``build_int8_variants`` quantizes every component (static QDQ for the encoders, dynamic int8 for
the decoder steps, export/quantize.py) and runs ``accuracy_gate.run_int8_gate`` on it:

- with a task evaluator (``--data`` holds a test split): the component is judged on the
  END-TO-END task metrics it can change (``TaskEvaluator.gate_metrics``: a vision-language text
  encoder on zero-shot top-1, its image encoder on VQA accuracy and zero-shot top-1, its decoder
  steps on VQA accuracy; a speech encoder on WER) of the whole model, every other component in
  fp32 and this one's candidate swapped in. The gate's score is the largest drop over those
  metrics (``LARGEST_DROP``), so a candidate is refused when any of them drops more than
  ``max_metric_drop``, and the sweep recovers whichever drops most. The gate may leave the most
  sensitive nodes in float (its sweep is in the report). An accepted candidate must also pass the
  golden cosine tolerance (the second safety check, ``golden.TOLERANCES["int8"]``). Then the int8
  variant as a whole (every accepted component in int8, the others fp32: what
  ``tinymm.load(..., precision="int8")`` loads) is evaluated on every gate metric of every int8
  component; while one of them drops more than ``max_metric_drop``, the accepted component that
  lost the most of it on its own goes back to fp32;
- without one: the metric is the component's golden outputs' smallest cosine, in points
  (100 x cosine), with the golden tolerance as the allowed drop.

Each report carries ``metrics``: per metric the component was judged on, its fp32 and int8
values (the best int8 build), the drop and its direction.

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
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from export.golden import TOLERANCES, GoldenRecord, evaluate_variant
from export.task_eval import GateOptions, TaskEvaluator, metric_drop
from tinymm.errors import InputError

if TYPE_CHECKING:
    from export.onnx_common import Prepared

logger = logging.getLogger(__name__)

STATIC_INT8 = ("image_encoder", "text_encoder", "speech_encoder")  # calibrated QDQ; decoder steps: dynamic int8
GOLDEN_METRIC = "golden cosine"  # the fallback metric's name: 100 x the smallest cosine to torch fp32
LARGEST_DROP = "largest drop"  # the task gate's score: the largest drop, in points, of a component's gate metrics
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
    reports: Mapping[str, dict[str, Any]]  # component -> JSON-ready report: "score", "metrics", "shipped", "reason"
    combined: dict[str, Any] | None  # the int8 variant's task metrics and "drops" (None without a task evaluator)


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


def metric_drops(evaluator: TaskEvaluator, reference: Mapping[str, float | None],
                 values: Mapping[str, float | None], metrics: Sequence[str]) -> dict[str, float]:
    """metric -> points lost from `reference` to `values` (positive = worse), for each of `metrics`."""
    drops = {}
    for metric in metrics:
        before, after = reference.get(metric), values.get(metric)
        if before is None or after is None:
            raise InputError(f"the int8 gate judges on {metric!r}, but no test item measured it (fp32 {before}, "
                             f"int8 {after}); export with --data holding a test split that has items for it")
        drops[metric] = metric_drop(evaluator.higher_is_better_of(metric), float(before), float(after))
    return drops


def _metric_rows(evaluator: TaskEvaluator, reference: Mapping[str, float | None],
                 values: Mapping[str, float | None], metrics: Sequence[str]) -> dict[str, dict[str, Any]]:
    """metric -> {"fp32", "int8", "drop", "higher_is_better"}: the report's per-metric values."""
    drops = metric_drops(evaluator, reference, values, metrics)
    return {m: {"fp32": reference[m], "int8": values[m], "drop": drops[m],
                "higher_is_better": evaluator.higher_is_better_of(m)} for m in metrics}


def _reason(verdict: str, metrics: Mapping[str, Mapping[str, Any]], max_drop: float,
            excluded: Sequence[str]) -> str:
    """One line: the verdict and each metric's fp32 -> int8 values and drop."""
    values = ", ".join(f"{m} {v['fp32']:.4g} -> {v['int8']:.4g} (drop {v['drop']:+.3g})" for m, v in metrics.items())
    kept = f"; {len(excluded)} node(s) in float: {list(excluded)}" if excluded else ""
    return f"int8 gate {verdict}: {values}, max drop {max_drop:g} points per metric{kept}"


def _unique(groups: Iterable[Sequence[str]]) -> tuple[str, ...]:
    """The names of every group, each once, in first-seen order."""
    return tuple(dict.fromkeys(name for group in groups for name in group))


def build_int8_variants(prepared: Prepared, fp32: Mapping[str, Path], work: Path,
                        records: Mapping[str, GoldenRecord], evaluator: TaskEvaluator | None,
                        options: GateOptions) -> Int8Variants:
    """Quantize and gate every component of `fp32` (component -> fp32 .onnx); see the module docstring."""
    from export.accuracy_gate import run_int8_gate

    accepted: dict[str, Path] = {}
    reports: dict[str, dict[str, Any]] = {}
    reference = evaluator.score(dict(fp32)).metrics if evaluator is not None else {}
    for component, path in fp32.items():
        build, candidates = _builder(component, path, work, prepared)
        if evaluator is not None:
            judged = evaluator.gate_metrics(component)

            def evaluate(candidate: Path, component: str = component, judged: Sequence[str] = judged) -> float:
                values = evaluator.score({**fp32, component: candidate}).metrics
                return max(metric_drops(evaluator, reference, values, judged).values())
            # the score is a drop: fp32 scores 0, and the gate refuses a score above max_drop
            score, max_drop, higher = LARGEST_DROP, options.max_metric_drop, False
        else:
            def evaluate(candidate: Path, record: GoldenRecord = records[component]) -> float:
                return 100.0 * evaluate_variant(candidate, record, "int8").min_cosine
            score, max_drop, higher = GOLDEN_METRIC, GOLDEN_MAX_DROP, True
        sweep = {} if evaluator is None else {"max_sweep": TASK_MAX_SWEEP, "rank": _ranker(component, path, prepared)}
        gate = run_int8_gate(path, build, evaluate, max_drop=max_drop, higher_is_better=higher, candidates=candidates,
                             **sweep)
        if evaluator is not None:
            values = evaluator.score({**fp32, component: gate.int8_path}).metrics  # kept from the gate's run
            metrics = _metric_rows(evaluator, reference, values, judged)
        else:
            metrics = {GOLDEN_METRIC: {"fp32": gate.fp32_score, "int8": gate.int8_score, "drop": gate.drop,
                                       "higher_is_better": True}}
        report = {**gate.to_dict(), "score": score, "metrics": metrics, "shipped": gate.accepted,
                  "reason": _reason(gate.verdict, metrics, max_drop, gate.excluded)}
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
    """Evaluate every accepted component in int8 together, on every gate metric of every one of
    them; while a metric drops too much, send back to fp32 the component that lost the most of it alone."""
    reference = evaluator.score(dict(fp32)).metrics
    while True:
        judged = _unique(evaluator.gate_metrics(c) for c in sorted(accepted))
        scores = evaluator.score({**fp32, **accepted})
        drops = metric_drops(evaluator, reference, scores.metrics, judged)
        failing = [m for m, drop in drops.items() if drop > options.max_metric_drop]
        if not failing:
            break
        worst = max((c for c in accepted if set(reports[c]["metrics"]) & set(failing)),
                    key=lambda c: max(reports[c]["metrics"][m]["drop"] for m in failing if m in reports[c]["metrics"]))
        lost = ", ".join(f"{m} {drops[m]:.3g}" for m in failing)
        logger.warning("int8 variant with %s in int8 drops %s points (max %g): %s goes back to fp32",
                       sorted(accepted), lost, options.max_metric_drop, worst)
        reports[worst].update(shipped=False, reason=f"accepted alone, but the int8 variant with "
                                                    f"{sorted(accepted)} in int8 dropped {lost} points")
        accepted.pop(worst).unlink()
    return {**scores.to_dict(), "components": sorted(accepted), "gate_metrics": list(judged), "drops": drops,
            "drop": max(drops.values(), default=0.0)}


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
        "metric_items": evaluator.metric_items,
        "gate_metrics": {c: list(evaluator.gate_metrics(c)) for c in files},
        "metric": evaluator.metric,
        "higher_is_better": evaluator.higher_is_better,
        "columns": [list(column) for column in evaluator.columns],
        "precisions": per_precision,
        "torch": evaluator.torch_scores().to_dict(),
        "torch_agreement": evaluator.agreement(fp32),
    }
