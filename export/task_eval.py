"""The task metric of a set of ONNX component files, measured with the runtime's own pipelines.

    evaluator = make_task_evaluator(prepared, Path("runs/vlm"), GateOptions(eval_samples=32))  # task_evaluators.py
    scores = evaluator.score({"image_encoder": Path("image_encoder.onnx"), ...})
    scores.main                    # VQA accuracy in points (speech: WER in points, lower is better)
    evaluator.gate_metrics("text_encoder")   # ("zero_shot_top1",): the metrics that component can change
    evaluator.torch_scores()       # the same metrics of the torch model on the same samples
    evaluator.agreement(paths)     # how often the runtime's outputs equal the torch model's greedy outputs

The files need not form a bundle yet: the evaluator opens one onnxruntime CPU session per file
and hands them to the runtime's pipeline constructors (``VisionLanguagePipeline(...)``,
``SpeechPipeline(...)``) with the export's preprocessing contract, tokenizer and ``model``
object, so the numbers are those of ``tinymm.load(bundle)`` on the same inputs: the runtime's
preprocessing, greedy decoding with the KV cache (or CTC best path), detokenization.

Metrics follow train/ (train/metrics_vision.py, train/metrics_speech.py) on the first
``eval_samples`` items of the training data's test split, in points (percent):

- vision-language (``task_eval_vlm.py``): VQA accuracy (main), caption fact accuracy, zero-shot
  top-1 (on more scenes than the others: it needs only the two encoders' embeddings);
- speech (``task_eval_speech.py``): WER (main, lower is better), CER, intent accuracy.

This module holds what the evaluators share (``TaskEvaluator``, ``TaskScores``, ``GateOptions``);
``task_evaluators.py`` picks the evaluator of a family, so that the evaluators import this module
and nothing imports back.

The int8 gate judges each component on ``gate_metrics(component)``, the metrics that component
can change (a text encoder that only feeds zero-shot classification is judged on zero-shot top-1,
not on VQA accuracy, which it cannot move).
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from export.accuracy_gate import DEFAULT_MAX_DROP
from tinymm.errors import InputError
from tinymm.hashing import sha256_file

if TYPE_CHECKING:
    from export.onnx_common import ComponentGraph, Prepared
    from tinymm.backends.base import Session

logger = logging.getLogger(__name__)

TEST_SPLIT = "test"  # the split the gate measures on: scenes and voices training never saw
# Test items per evaluation when GateOptions.eval_samples is None, per family: the scenes of VQA
# and captions (zero-shot top-1 takes more, task_eval_vlm.ZERO_SHOT_SCENES), or the clips. On the
# 2-core CPU with 1 thread: student VLM, 32 scenes (447 questions) + 256 zero-shot scenes ~3 s;
# student speech model, 256 clips ~4 s. A gate without a sweep makes 2 + components evaluations,
# some of them partial (export/QUANTIZATION.md).
DEFAULT_EVAL_SAMPLES = {"vision-language": 32, "speech": 256}
POINTS = 100.0  # a fraction in [0, 1] -> points (percent)


@dataclass(frozen=True)
class GateOptions:
    """How the int8 accuracy gate measures the task metric; checked once here."""

    max_metric_drop: float = DEFAULT_MAX_DROP  # metric points int8 may lose vs fp32 (WER: may gain)
    eval_samples: int | None = None  # test scenes (of VQA, captions) or clips per evaluation; None: the default
    threads: int = 0  # onnxruntime intra-op threads of the evaluation sessions (0: its default)

    def __post_init__(self) -> None:
        drop = self.max_metric_drop
        if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not math.isfinite(drop) or drop < 0:
            raise ValueError(f"max_metric_drop={drop!r} must be a number of metric points >= 0 (e.g. 1.0)")
        for name, low in (("eval_samples", 1), ("threads", 0)):
            value = getattr(self, name)
            if value is None and name == "eval_samples":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} must be an integer >= {low}")

    def samples_for(self, family: str) -> int:
        """Test items per evaluation for a model of `family`."""
        return self.eval_samples if self.eval_samples is not None else DEFAULT_EVAL_SAMPLES[family]


@dataclass(frozen=True)
class TaskScores:
    """The metrics of one model (a set of component files, or the torch model) on the test items."""

    metric: str  # the key of the main metric in `metrics`, the one the gate decides on
    higher_is_better: bool  # of the main metric
    metrics: Mapping[str, float | None]  # name -> points (percent); None where no item measures it
    outputs: tuple[tuple[int, ...], ...] = field(repr=False)  # generated token ids of every output, in order
    seconds: float = 0.0  # wall time of the evaluation

    @property
    def main(self) -> float:
        return float(self.metrics[self.metric])  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "higher_is_better": self.higher_is_better, "metrics": dict(self.metrics),
                "seconds": round(self.seconds, 2)}


class TorchSession:
    """A runtime Session whose model is the torch graph (`ComponentGraph.run_torch`), so a pipeline
    can run the torch model with exactly its own preprocessing and postprocessing."""

    provider = "cpu"

    def __init__(self, graph: ComponentGraph) -> None:
        self.graph, self.inputs, self.outputs = graph, graph.inputs, graph.outputs

    def run(self, feeds: Mapping[str, Any], output_names: Sequence[str] | None = None) -> dict[str, Any]:
        """feeds (input name -> array, shapes as the specs) -> output name -> array."""
        outputs = self.graph.run_torch(feeds)
        return {name: outputs[name] for name in (output_names or self.graph.output_names)}


def metric_drop(higher_is_better: bool, reference: float, value: float) -> float:
    """Metric points lost from `reference` to `value` (positive = worse), whichever way the metric improves."""
    return (reference - value) if higher_is_better else (value - reference)


def batch_slices(n: int, size: int) -> list[slice]:
    """Slices cutting ``n`` items into consecutive batches of at most ``size``."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def agreement(reference: Sequence[tuple[int, ...]], outputs: Sequence[tuple[int, ...]]) -> dict[str, Any]:
    """How many outputs equal the reference's token for token: {"outputs", "identical", "rate" (points)}."""
    if len(reference) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs for {len(reference)} reference outputs; compare the same items")
    same = sum(a == b for a, b in zip(reference, outputs))
    return {"outputs": len(outputs), "identical": same, "rate": POINTS * same / len(outputs) if outputs else None}


class TaskEvaluator(ABC):
    """Evaluates sets of component files on fixed test items; one subclass per model family.

    Scores are kept per set of file contents: a model is evaluated once, whatever its files are called.
    """

    metric: str  # the main metric's key
    lower_is_better: tuple[str, ...] = ()  # metric keys where lower is better (e.g. error rates)
    columns: tuple[tuple[str, str], ...]  # (metric key, heading) shown in the model card

    def __init__(self, prepared: Prepared, threads: int) -> None:
        self.prepared = prepared
        self.threads = threads
        self._cache: dict[tuple[tuple[str, str], ...], TaskScores] = {}  # ((component, sha256), ...) -> scores
        self._torch: TaskScores | None = None

    @property
    @abstractmethod
    def description(self) -> str:
        """What is evaluated, for the model card: e.g. '64 scenes (512 questions) of runs/vlm test split'."""

    @property
    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Test items per kind (scenes, questions, clips), for the provenance."""

    @property
    @abstractmethod
    def metric_items(self) -> dict[str, str]:
        """Test items behind each metric of `columns`, for the model card: e.g. {'wer': '256 clips'}."""

    @abstractmethod
    def _evaluate(self, paths: Mapping[str, Path], digests: Mapping[str, str]) -> TaskScores:
        """The metrics of the runtime pipeline on the files `paths` (component -> .onnx, whose
        sha256 are `digests`); open them with `_sessions`."""

    @abstractmethod
    def _run_torch(self) -> TaskScores:
        """The metrics of the torch model (prepared.model) on the same items, greedy decoding."""

    def gate_metrics(self, component: str) -> tuple[str, ...]:
        """The metrics the int8 gate judges `component` on: those it can change (default: the main one)."""
        return (self.metric,)

    def higher_is_better_of(self, metric: str) -> bool:
        """Whether a higher value of `metric` is better."""
        return metric not in self.lower_is_better

    @property
    def higher_is_better(self) -> bool:
        """Whether a higher value of the main metric is better."""
        return self.higher_is_better_of(self.metric)

    def _sessions(self, paths: Mapping[str, Path]) -> dict[str, Session]:
        """Fresh onnxruntime CPU sessions (loading takes a fraction of an evaluation; keeping every
        candidate's session alive would hold gigabytes of arenas)."""
        from tinymm.backends import BackendOptions, get_backend

        options = BackendOptions(provider="cpu", intra_op_threads=self.threads)
        backend = get_backend("onnxruntime")
        return {name: backend.load(Path(path), options) for name, path in paths.items()}

    def score(self, paths: Mapping[str, Path]) -> TaskScores:
        """The metrics of the model whose components are the files `paths` (component -> .onnx)."""
        missing = [name for name in self.prepared.graphs if name not in paths]
        if missing:
            raise InputError(f"the task evaluation needs a file for every component; {missing} missing from "
                             f"{sorted(paths)}")
        digests = {name: sha256_file(Path(p)) for name, p in paths.items()}
        key = tuple(sorted(digests.items()))  # content, not name
        if key not in self._cache:
            start = time.perf_counter()
            scores = self._evaluate(paths, digests)
            seconds = time.perf_counter() - start
            self._cache[key] = TaskScores(scores.metric, scores.higher_is_better, scores.metrics, scores.outputs,
                                           seconds)
            logger.info("task metric of %s: %s (%.1f s)", {n: Path(p).name for n, p in paths.items()},
                        {k: v for k, v in scores.metrics.items() if k in dict(self.columns)}, seconds)
        return self._cache[key]

    def main(self, paths: Mapping[str, Path]) -> float:
        """The main metric of `paths`, in points: what the int8 gate decides on."""
        return self.score(paths).main

    def torch_scores(self) -> TaskScores:
        """The metrics of the torch model on the same items (computed once)."""
        if self._torch is None:
            start = time.perf_counter()
            scores = self._run_torch()
            self._torch = TaskScores(scores.metric, scores.higher_is_better, scores.metrics, scores.outputs,
                                     time.perf_counter() - start)
        return self._torch

    def agreement(self, paths: Mapping[str, Path]) -> dict[str, Any]:
        """How often the runtime's outputs with `paths` equal the torch model's greedy outputs."""
        return agreement(self.torch_scores().outputs, self.score(paths).outputs)
