"""INT8 variants of the Whisper components, shipped only when the transcripts survive them.

Recipes (export/QUANTIZATION.md): the decoder steps get dynamic int8 weight MatMuls (per channel,
7-bit weights: memory-bound steps run faster on the CPU), with the nodes of
``recipe_float_nodes`` left in float; the encoder gets the same dynamic recipe by default (it
keeps more of the transcripts than static QDQ on whisper-base, see DEFAULT_ENCODER_INT8), or with
``encoder_int8="static"`` static QDQ (symmetric int8, per-channel 7-bit weights, MinMax
calibration on real windows: the kind of file TensorRT builds from).

The gate's metric is the word error rate of the int8 transcripts against the fp32 ones (greedy,
the same clips), in points, lower is better: fp32 scores 0 by definition. Each component's
candidate is swapped into the fp32 model alone and run through ``accuracy_gate.run_int8_gate``
(which leaves the most harmful nodes in float when the WER rises above ``max_wer``); then the
accepted ones are scored together, and while that exceeds ``max_wer`` the component whose
candidate alone did worst goes back to fp32.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

import onnx

from export.accuracy_gate import run_int8_gate
from export.quantize import (
    DYNAMIC_OP_TYPES,
    STATIC_OP_TYPES,
    preprocess,
    quantizable_nodes,
    quantize_dynamic_int8,
    quantize_static_qdq,
)
from export.sensitivity import output_error_ranking
from export.whisper_decode import word_error_rate

logger = logging.getLogger(__name__)

ENCODER_INT8_MODES = ("static", "dynamic")
# whisper-base, 24 espeak-ng clips, WER of int8 vs fp32 transcripts (fp32 vs the texts: 25.5):
# static QDQ encoder 27.7 (25.9 with conv1 in float, the best of a 6-node sweep), dynamic 15.2;
# decoder_with_past 0.89 (head in float; 4.5 with it in int8); decoder_first 6.3 (7.1).
DEFAULT_ENCODER_INT8 = "dynamic"
DEFAULT_MAX_WER = 2.0  # points of WER (int8 vs fp32 transcripts) an int8 component may add
DEFAULT_GATE_CLIPS = 24  # clips transcribed per evaluation (~35 s for whisper-base on 2 cores)
DEFAULT_CALIBRATION_CLIPS = 8  # windows calibrating the static encoder
# No leave-one-out sweep by default: each of its evaluations transcribes every gate clip, and on
# whisper-base the 6-node sweep of the static encoder recovered 1.8 of 27.7 points in 6 minutes.
DEFAULT_MAX_EXCLUDED = 0  # nodes a component may leave in float (beyond the recipe's) before it is refused
DEFAULT_MAX_SWEEP = 0  # leave-one-out evaluations per component
DECODERS = ("decoder_first", "decoder_with_past")
LOGITS, ENCODER_STATES = "logits", "encoder_hidden_states"  # graph tensors that locate the recipe's float nodes

Transcribe = Callable[[Mapping[str, Path]], list[str]]  # component -> ONNX file => one transcript per gate clip


@dataclass(frozen=True)
class WhisperGateOptions:
    """How the int8 variants are built and judged; checked once here."""

    max_wer: float = DEFAULT_MAX_WER
    gate_clips: int = DEFAULT_GATE_CLIPS
    calibration_clips: int = DEFAULT_CALIBRATION_CLIPS
    encoder_int8: str = DEFAULT_ENCODER_INT8  # static (QDQ) | dynamic
    max_excluded: int = DEFAULT_MAX_EXCLUDED
    max_sweep: int = DEFAULT_MAX_SWEEP

    def __post_init__(self) -> None:
        if isinstance(self.max_wer, bool) or not isinstance(self.max_wer, (int, float)) or not self.max_wer >= 0:
            raise ValueError(f"WhisperGateOptions.max_wer={self.max_wer!r} must be a number of WER points >= 0")
        for name in ("gate_clips", "calibration_clips"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"WhisperGateOptions.{name}={value!r} must be a positive integer")
        for name in ("max_excluded", "max_sweep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"WhisperGateOptions.{name}={value!r} must be an integer >= 0")
        if self.encoder_int8 not in ENCODER_INT8_MODES:
            raise ValueError(f"WhisperGateOptions.encoder_int8={self.encoder_int8!r} must be one of {ENCODER_INT8_MODES}")


@dataclass(frozen=True)
class Int8Result:
    """What the gate decided: the int8 files to ship and the report for the provenance."""

    files: Mapping[str, Path]  # accepted component -> its int8 file
    report: Mapping[str, Any]  # per component the gate's report, plus "combined"


def recipe_float_nodes(fp32: Path, component: str) -> list[str]:
    """Nodes the recipe keeps in float, by graph position (the exporter's names are ambiguous): in
    both decoders the tied output head (the MatMul that writes ``logits``: int8 there flips words,
    and its fp32 table is kept anyway for the token embedding), in decoder_first also the
    cross-attention key/value projections of ``encoder_hidden_states`` (quantizing the encoder
    states per tensor moves every later step). Names are those of the pre-processed graph."""
    if component not in DECODERS:
        return []
    with tempfile.TemporaryDirectory(prefix="tinymm-whisper-gate-") as tmp:
        model = onnx.load(str(preprocess(Path(fp32), Path(tmp) / "pre.onnx")), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in DYNAMIC_OP_TYPES and n.input[1] in weights
            and (LOGITS in n.output or (component == "decoder_first" and n.input[0] == ENCODER_STATES))]


def _builder(component: str, fp32: Path, work: Path, calibration: np.ndarray | None,
             options: WhisperGateOptions) -> tuple[Callable[[Sequence[str]], Path], list[str], list[str]]:
    """(excluded nodes -> a fresh int8 build, the nodes a sweep may leave in float, the recipe's
    float nodes) of one component."""
    static = component == "encoder" and options.encoder_int8 == "static"
    samples = [{"input_features": calibration[i:i + 1]} for i in range(len(calibration))] if static else []
    fixed = recipe_float_nodes(fp32, component)
    builds = {"count": 0}

    def build(excluded: Sequence[str]) -> Path:
        builds["count"] += 1
        out = work / f"{component}.int8-{builds['count']}.onnx"
        if static:
            return quantize_static_qdq(fp32, out, samples, nodes_to_exclude=[*fixed, *excluded])
        return quantize_dynamic_int8(fp32, out, nodes_to_exclude=[*fixed, *excluded])

    candidates = [n for n in quantizable_nodes(fp32, STATIC_OP_TYPES if static else DYNAMIC_OP_TYPES) if n not in fixed]
    return build, candidates, fixed


def _ranker(fp32: Path, feeds: Sequence[Mapping[str, np.ndarray]]) -> Callable[[Path, Sequence[str]], list[str]]:
    """rank(int8 path, candidates): the nodes adding the most output error first (graph order on failure)."""
    def rank(int8_path: Path, candidates: Sequence[str]) -> list[str]:
        try:
            ranked = [s.node for s in output_error_ranking(fp32, int8_path, feeds, candidates)]
        except Exception as e:  # a ranking only orders the sweep: never fail the export for it
            logger.warning("could not rank %s nodes by output error (%s); sweeping in graph order", fp32.name, e)
            return list(candidates)
        return ranked + [n for n in candidates if n not in ranked]

    return rank


def build_int8(fp32: Mapping[str, Path], work: Path, calibration: np.ndarray, transcribe: Transcribe,
               rank_feeds: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
               options: WhisperGateOptions = WhisperGateOptions()) -> Int8Result:
    """Build, gate and pick the int8 variants of the components in ``fp32`` (component -> fp32 file).

    calibration: (N, n_mels, frames) float32 windows for the static encoder (not the gate's clips).
    transcribe: files (component -> path) -> the gate clips' transcripts.
    rank_feeds: component -> a few feeds that rank nodes by output error when a sweep is needed.
    """
    reference = transcribe(fp32)
    cache: dict[tuple[tuple[str, str], ...], float] = {}

    def wer(files: Mapping[str, Path]) -> float:
        key = tuple(sorted((c, str(p)) for c, p in files.items()))
        if key not in cache:
            cache[key] = word_error_rate(reference, transcribe(files))
        return cache[key]

    accepted: dict[str, Path] = {}
    report: dict[str, Any] = {"metric": "wer_vs_fp32", "max_wer": options.max_wer, "clips": len(reference),
                              "encoder_int8": options.encoder_int8}
    alone: dict[str, float] = {}
    for component, path in fp32.items():
        build, candidates, fixed = _builder(component, path, work, calibration, options)
        gate = run_int8_gate(path, build, lambda candidate, c=component: wer({**fp32, c: candidate}),
                             max_drop=options.max_wer, max_excluded=options.max_excluded, higher_is_better=False,
                             candidates=candidates, max_sweep=options.max_sweep,
                             rank=_ranker(path, rank_feeds[component]))
        report[component] = {**gate.to_dict(), "recipe_float_nodes": fixed, "shipped": gate.accepted}
        alone[component] = gate.drop
        if gate.accepted:
            accepted[component] = gate.int8_path
    combined = []
    while accepted:
        score = wer({**fp32, **accepted})
        combined.append({"components": sorted(accepted), "wer": score})
        if score <= options.max_wer:
            break
        worst = max(accepted, key=lambda c: alone[c])
        logger.warning("int8 components %s together add %.2f WER points (> %g): %s goes back to fp32",
                       sorted(accepted), score, options.max_wer, worst)
        report[worst]["shipped"] = False
        del accepted[worst]
    report["combined"] = combined
    logger.info("int8 gate: shipping %s", sorted(accepted) or "no int8 component")
    return Int8Result(accepted, report)
