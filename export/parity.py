"""Parity of the exported ONNX graphs with the torch model, and the report that records it.

Checks, each on onnxruntime (CPU) through the runtime's own backend:

- every component, torch fp32 against ONNX fp32, on fresh random inputs of several batch and
  sequence sizes (the dynamic axes) and on real inputs: the largest absolute error and the
  smallest cosine similarity over every output;
- for a vision-language model, greedy decoding with the KV cache in onnxruntime
  (image_encoder -> decoder_first -> decoder_with_past ...) against greedy decoding without a
  cache in torch (a full forward over the whole sequence at every step): the tokens must be
  identical.

``check_parity`` raises ParityError (exit code EXIT_TOLERANCE) when an fp32 error exceeds
PARITY_MAX_ABS or the tokens differ. The report is a JSON object that goes into the manifest's
provenance and the model card.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from export.golden import FP32_MAX_ABS
from export.onnx_common import ComponentGraph, Feeds, kv_names
from tinymm.backends import BackendOptions, Session, get_backend
from tinymm.commands.verify import compare_outputs
from tinymm.errors import EXIT_TOLERANCE, TinymmError

logger = logging.getLogger(__name__)

PARITY_MAX_ABS = FP32_MAX_ABS  # the export fails when an fp32 output is further than this from torch


class ParityError(TinymmError):
    """The exported graphs do not compute what the torch model computes."""

    exit_code = EXIT_TOLERANCE
    kind = "parity_error"


def load_session(path: str | Path) -> Session:
    """An onnxruntime CPU session of the ONNX file, through the runtime's backend."""
    return get_backend("onnxruntime").load(Path(path), BackendOptions(provider="cpu"))


def _case_errors(graph: ComponentGraph, session: Session, feeds: Feeds,
                 expected: Feeds | None) -> tuple[float, float, str]:
    """(max abs error, min cosine, the output with the largest error) of one feeds dict.

    ``expected`` holds the torch outputs when they are already known; else torch runs here.
    """
    expected = graph.run_torch(feeds) if expected is None else expected
    errors = compare_outputs(expected, session.run(dict(feeds), graph.output_names))
    worst = max(errors, key=lambda e: e.max_abs)
    return worst.max_abs, min(e.cosine for e in errors), worst.name


def _summary(graph: ComponentGraph, session: Session, cases: Sequence[tuple[Feeds, Feeds | None]]) -> dict[str, Any]:
    results = [_case_errors(graph, session, feeds, expected) for feeds, expected in cases]
    worst = max(results, key=lambda r: r[0])
    return {
        "cases": len(cases),
        "batch_sizes": sorted({int(next(iter(feeds.values())).shape[0]) for feeds, _ in cases}),
        "max_abs": worst[0],
        "min_cosine": min(r[1] for r in results),
        "worst_output": worst[2],
    }


def component_parity(graph: ComponentGraph, session: Session, random_cases: Sequence[Feeds],
                     real_cases: Sequence[tuple[Feeds, Feeds]]) -> dict[str, Any]:
    """Torch vs ONNX on random inputs and on real ones given with their torch outputs (inputs, outputs).

    Returns {"random": summary, "real": summary, "max_abs": worst, "min_cosine": worst}.
    """
    random_summary = _summary(graph, session, [(feeds, None) for feeds in random_cases])
    real_summary = _summary(graph, session, real_cases)
    report = {"random": random_summary, "real": real_summary,
              "max_abs": max(random_summary["max_abs"], real_summary["max_abs"]),
              "min_cosine": min(random_summary["min_cosine"], real_summary["min_cosine"])}
    logger.info("parity %s: max abs %.3g, min cosine %.7f", graph.name, report["max_abs"], report["min_cosine"])
    return report


def ort_greedy(sessions: Mapping[str, Session], pixel_values: np.ndarray, prompt_ids: np.ndarray,
               steps: int) -> np.ndarray:
    """Greedy tokens with the KV cache in the exported graphs.

    pixel_values (B, 3, S, S) float32, prompt_ids (B, T0) int64 -> tokens (B, steps) int64.
    """
    first = sessions["decoder_first"]
    num_layers = sum(spec.name.startswith("cross.") for spec in first.inputs) // 2
    cross_names = kv_names("cross", num_layers)
    cross = sessions["image_encoder"].run({"pixel_values": pixel_values}, cross_names)
    out = first.run({"input_ids": prompt_ids, **cross})
    tokens = []
    for step in range(steps):
        token = out["logits"][:, -1].argmax(-1).astype(np.int64)  # (B,)
        tokens.append(token)
        if step == steps - 1:
            break
        past = {p: out[q] for p, q in zip(kv_names("past_key_values", num_layers), kv_names("present", num_layers))}
        out = sessions["decoder_with_past"].run({"input_ids": token[:, None], **past, **cross})
    return np.stack(tokens, axis=1)


@torch.no_grad()
def torch_greedy_no_cache(model: torch.nn.Module, pixel_values: np.ndarray, prompt_ids: np.ndarray,
                          steps: int) -> np.ndarray:
    """Greedy tokens from full torch forwards over the whole sequence (no cache): (B, steps) int64."""
    pixels = torch.from_numpy(pixel_values)
    ids = torch.from_numpy(prompt_ids)
    tokens = []
    for _ in range(steps):
        token = model(pixels, ids)[:, -1].argmax(-1)  # (B,)
        tokens.append(token)
        ids = torch.cat([ids, token[:, None]], dim=1)
    return torch.stack(tokens, dim=1).numpy()


def greedy_parity(model: torch.nn.Module, sessions: Mapping[str, Session], pixel_values: np.ndarray,
                  prompt_ids: np.ndarray, max_new_tokens: int) -> dict[str, Any]:
    """KV-cache greedy decoding in onnxruntime vs no-cache greedy decoding in torch.

    Runs min(max_new_tokens, max_text_len - T0) steps without stopping at eos, so every step is
    compared. Returns {"tokens_match", "steps", "batch", "first_mismatch_step"}.
    """
    steps = max(1, min(max_new_tokens, model.config.max_text_len - prompt_ids.shape[1]))
    cached = ort_greedy(sessions, pixel_values, prompt_ids, steps)
    reference = torch_greedy_no_cache(model, pixel_values, prompt_ids, steps)
    differ = np.nonzero((cached != reference).any(axis=0))[0]
    report = {"tokens_match": not differ.size, "steps": steps, "batch": int(prompt_ids.shape[0]),
              "first_mismatch_step": int(differ[0]) if differ.size else None}
    logger.info("greedy KV cache (onnxruntime) vs no cache (torch): %d steps x %d, %s", steps,
                prompt_ids.shape[0], "identical" if report["tokens_match"] else f"differ from step {differ[0]}")
    return report


def check_parity(report: Mapping[str, Any], max_abs: float = PARITY_MAX_ABS) -> None:
    """Raise ParityError when a component's fp32 error exceeds ``max_abs`` or the greedy tokens differ."""
    problems = [
        f"{name}: max abs error {entry['max_abs']:.3g} > {max_abs:g} "
        f"(random inputs {entry['random']['max_abs']:.3g} on {entry['random']['worst_output']}, "
        f"real inputs {entry['real']['max_abs']:.3g} on {entry['real']['worst_output']})"
        for name, entry in report["components"].items()
        if not entry["max_abs"] <= max_abs
    ]
    greedy = report.get("greedy")
    if greedy is not None and not greedy["tokens_match"]:
        problems.append(
            f"greedy decoding with the KV cache (onnxruntime) and without it (torch) differ from step "
            f"{greedy['first_mismatch_step']} of {greedy['steps']}"
        )
    if problems:
        raise ParityError(
            "the exported ONNX graphs do not match the torch model: " + "; ".join(problems)
            + ". Check the wrapper modules in export/onnx_*.py (eval mode, input order) and the model's "
            "export pieces; nothing was written"
        )


def check_golden_variants(files: dict[str, dict[str, Path]], evaluate: Callable[[str, str, Path], Any],
                          tied: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Every variant of ``files`` (component -> precision -> path) against its golden tolerance.

    ``evaluate(component, precision, path)`` returns a GoldenResult. A failing fp32 or fp16 variant
    raises ParityError (nothing is written); a failing int8 variant is dropped from ``files``, and
    with it the int8 of every component in ``tied`` when it is one of them (graphs that share one
    weights file ship int8 together or not at all). Returns component -> precision -> {max_abs,
    min_cosine, passed} for the provenance.
    """
    golden: dict[str, dict[str, Any]] = {}
    for component, variants in files.items():
        golden[component] = {}
        for precision, path in list(variants.items()):
            if precision not in variants:  # dropped with a tied component
                continue
            result = evaluate(component, precision, path)
            golden[component][precision] = {"max_abs": result.max_abs, "min_cosine": result.min_cosine,
                                            "passed": result.passed}
            if result.passed:
                continue
            if precision != "int8":
                raise ParityError(f"{component} {precision} is outside its golden tolerance "
                                  f"({', '.join(result.failures)}); export without {precision}. Nothing was written")
            dropped = tied if component in tied else (component,)
            logger.warning("%s int8 fails its golden tolerance (%s): no int8 %s shipped", component,
                           "; ".join(result.failures), ", ".join(dropped))
            for name in dropped:
                files[name].pop("int8", None)
    return golden
