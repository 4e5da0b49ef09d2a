"""The INT8 accuracy gate: an INT8 variant ships only if the task metric stays within a threshold.

    report = run_int8_gate(fp32, build_int8, evaluate, max_drop=1.0)
    logger.info("%s", report.summary())
    if report.accepted:
        writer.add_variant("int8", report.int8_path)  # the build the gate measured
    # or: report.raise_if_refused()  -> Int8Refused (a TinymmError) when REFUSED

Procedure (every step is recorded in the report):
1. Evaluate the fp32 model and the INT8 model with no node excluded.
2. If the metric drops by at most `max_drop` points: ACCEPTED.
3. Otherwise sweep per-node sensitivity by leave-one-out on the task metric (`sensitivity.py`):
   each candidate node is left in float alone, the INT8 model rebuilt and evaluated. At most
   `max_sweep` candidates are swept, in the order given (default: every quantizable node in
   graph order; pass `candidates` ranked by `output_error_ranking`, or a `rank` callback that
   ranks them once the all-INT8 build exists, to sweep the likeliest first).
4. Greedily leave the most sensitive nodes in float, one more at a time (a node that does not
   improve the metric is put back), until the drop is within `max_drop` (ACCEPTED) or
   `max_excluded` nodes are in float or no helpful node is left (REFUSED).

Cost: at most 2 + min(len(candidates), max_sweep) + max_excluded evaluations, and one INT8 build
per evaluation but the fp32 one; builds of the same exclusion set are reused.

A REFUSED report is a flag, not an exception: the caller must not write the INT8 variant (it may
keep the report as provenance). `raise_if_refused` turns it into the typed error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from export.quantize import quantizable_nodes
from export.sensitivity import ScoreCache, leave_one_out
from tinymm.errors import InputError, TinymmError

logger = logging.getLogger(__name__)

ACCEPTED = "ACCEPTED"
REFUSED = "REFUSED"
DEFAULT_MAX_DROP = 1.0  # metric points (e.g. accuracy %, WER %)
DEFAULT_MAX_EXCLUDED = 8  # nodes the gate may leave in float before it refuses
DEFAULT_MAX_SWEEP = 48  # leave-one-out evaluations at most (one INT8 build and one evaluation each)


class Int8Refused(TinymmError):
    """The INT8 variant lost more accuracy than allowed, even with sensitive nodes left in float."""

    kind = "int8_refused"


@dataclass(frozen=True)
class GateStep:
    """One evaluation the gate made."""

    phase: str  # fp32 | int8 | sweep | exclude | revert
    excluded: tuple[str, ...]  # nodes in float for this evaluation
    score: float  # the task metric
    drop: float  # metric points lost vs fp32 (negative: INT8 did better)

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "excluded": list(self.excluded), "score": self.score, "drop": self.drop}


@dataclass(frozen=True)
class GateReport:
    """The gate's verdict and every step that led to it."""

    verdict: str  # ACCEPTED | REFUSED
    fp32_score: float
    int8_score: float  # metric of the best INT8 build tried
    drop: float  # fp32 - int8 in metric points, sign-adjusted so that positive is worse
    max_drop: float
    excluded: tuple[str, ...]  # nodes left in float in the best INT8 build
    int8_path: Path  # the best INT8 build (write it only when accepted)
    higher_is_better: bool
    steps: tuple[GateStep, ...] = field(default=())
    builds: int = 0  # INT8 builds made

    @property
    def accepted(self) -> bool:
        return self.verdict == ACCEPTED

    def summary(self) -> str:
        """One line for logs: verdict, scores, drop and the nodes left in float."""
        kept = f", {len(self.excluded)} node(s) in float: {list(self.excluded)}" if self.excluded else ""
        return (
            f"int8 gate {self.verdict}: fp32 {self.fp32_score:.4g}, int8 {self.int8_score:.4g}, "
            f"drop {self.drop:+.4g} points (max {self.max_drop:g}){kept}; {len(self.steps)} evaluations, "
            f"{self.builds} int8 builds"
        )

    def raise_if_refused(self) -> None:
        """Raise Int8Refused (with the summary) when the verdict is REFUSED."""
        if not self.accepted:
            raise Int8Refused(
                f"{self.summary()}. Do not ship the int8 variant: ship fp32/fp16 only, raise max_drop or "
                f"max_excluded, or improve calibration data"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, e.g. for the bundle's provenance."""
        return {
            "verdict": self.verdict,
            "fp32_score": self.fp32_score,
            "int8_score": self.int8_score,
            "drop": self.drop,
            "max_drop": self.max_drop,
            "excluded": list(self.excluded),
            "higher_is_better": self.higher_is_better,
            "builds": self.builds,
            "steps": [step.to_dict() for step in self.steps],
        }


def _check_options(max_drop: float, max_excluded: int, max_sweep: int) -> None:
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not max_drop >= 0:
        raise InputError(f"max_drop={max_drop!r} must be a number of metric points >= 0")
    for name, value in (("max_excluded", max_excluded), ("max_sweep", max_sweep)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"{name}={value!r} must be an integer >= 0")


def run_int8_gate(
    fp32_path: Path,
    int8_builder: Callable[[Sequence[str]], Path],
    evaluate: Callable[[Path], float],
    *,
    max_drop: float = DEFAULT_MAX_DROP,
    max_excluded: int = DEFAULT_MAX_EXCLUDED,
    higher_is_better: bool = True,
    candidates: Sequence[str] | None = None,
    max_sweep: int = DEFAULT_MAX_SWEEP,
    rank: Callable[[Path, Sequence[str]], Sequence[str]] | None = None,
) -> GateReport:
    """Decide whether an INT8 variant of the fp32 model at `fp32_path` may ship (see module doc).

    int8_builder: node names to leave in float -> path of a freshly built INT8 model (e.g.
        `lambda ex: quantize_static_qdq(fp32, out_dir / f"int8-{len(ex)}.onnx", samples, nodes_to_exclude=ex)`;
        write each build to its own path, the report points at the best one).
    evaluate: model path -> task metric in points (VQA accuracy %, caption facts %, top-1 %,
        WER % with higher_is_better=False).
    max_drop: metric points the INT8 model may lose vs fp32.
    max_excluded: nodes the gate may leave in float before refusing.
    candidates: nodes the sweep may exclude, most promising first (default: `quantizable_nodes`).
    max_sweep: leave-one-out evaluations at most.
    rank: (all-INT8 model path, candidates) -> the candidates most promising first, called only
        when a sweep is needed (e.g. `output_error_ranking` on a few samples, so that a small
        `max_sweep` sweeps the likeliest nodes when each evaluation is expensive).
    Returns the GateReport; never raises for a refusal (see `GateReport.raise_if_refused`).
    """
    _check_options(max_drop, max_excluded, max_sweep)
    sign = 1.0 if higher_is_better else -1.0
    cache = ScoreCache(int8_builder, evaluate)
    fp32_score = cache.evaluate(Path(fp32_path))
    steps = [GateStep("fp32", (), fp32_score, 0.0)]

    def drop_of(score: float) -> float:
        return sign * (fp32_score - score)

    def attempt(phase: str, excluded: tuple[str, ...]) -> tuple[float, Path]:
        score, path = cache.score(excluded)
        steps.append(GateStep(phase, excluded, score, drop_of(score)))
        logger.info("int8 gate %s %s: metric %.4g, drop %+.4g", phase, list(excluded), score, drop_of(score))
        return score, path

    def report(verdict: str, score: float, excluded: tuple[str, ...], path: Path) -> GateReport:
        result = GateReport(
            verdict=verdict,
            fp32_score=fp32_score,
            int8_score=score,
            drop=drop_of(score),
            max_drop=float(max_drop),
            excluded=excluded,
            int8_path=path,
            higher_is_better=higher_is_better,
            steps=tuple(steps),
            builds=cache.builds,
        )
        (logger.info if result.accepted else logger.warning)("%s", result.summary())
        return result

    best_excluded: tuple[str, ...] = ()
    best_score, best_path = attempt("int8", best_excluded)
    if drop_of(best_score) <= max_drop or max_excluded == 0:
        return report(ACCEPTED if drop_of(best_score) <= max_drop else REFUSED, best_score, best_excluded, best_path)

    nodes = list(candidates) if candidates is not None else quantizable_nodes(Path(fp32_path))
    if rank is not None:
        nodes = list(rank(best_path, nodes))
    ranked = leave_one_out(
        nodes, cache, int8_score=best_score, higher_is_better=higher_is_better, max_evaluations=max_sweep
    )
    steps.extend(GateStep("sweep", (s.node,), s.score, drop_of(s.score)) for s in ranked if s.score is not None)
    for sensitivity in (s for s in ranked if s.gain > 0):
        if len(best_excluded) >= max_excluded:
            break
        trial = (*best_excluded, sensitivity.node)
        score, path = attempt("exclude", trial)
        if drop_of(score) < drop_of(best_score):
            best_excluded, best_score, best_path = trial, score, path
            if drop_of(best_score) <= max_drop:
                return report(ACCEPTED, best_score, best_excluded, best_path)
        else:
            steps.append(GateStep("revert", best_excluded, best_score, drop_of(best_score)))
    return report(REFUSED, best_score, best_excluded, best_path)
