"""Parity of the exported Whisper graphs: with their torch wrappers, with transformers, and of
greedy decoding with the KV cache against decoding without it; plus the golden tolerances.

The encoder's fp32 bound is ENCODER_FP32_MAX_ABS, not the project's 1e-4: on a real 30 s window
whisper-base's encoder states (|x| up to ~24) carry ~4e-4 of float32 rounding in transformers
itself (transformers fp32 vs the same model in float64: 4.0e-4; onnxruntime fp32 vs float64:
3.3e-4; onnxruntime vs transformers fp32: 4.7e-4-6.6e-4). The report records that float64
distance (``float32_noise``) for every export. Logits stay at 1e-4.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from export.golden import TOLERANCES, GoldenRecord
from export.onnx_common import ComponentGraph, kv_names
from export.parity import ParityError, component_parity, load_session
from export.whisper_decode import GreedyOptions, ort_greedy, torch_greedy
from tinymm.bundle import GoldenPair, Tolerance
from tinymm.commands.verify import GoldenResult, run_golden

logger = logging.getLogger(__name__)

ENCODER_FP32_MAX_ABS = 1e-3  # encoder states: float32 noise of a 6-layer, 1500-frame encoder (module docstring)
LOGITS_MAX_ABS = TOLERANCES["fp32"].max_abs  # 1e-4, every decoder output
RANDOM_SIZES = ((1, 32, 2, 1), (2, 64, 5, 2))  # (batch, frames, seq, new) of the random parity cases


def tolerances(component: str) -> dict[str, Tolerance]:
    """Precision -> golden tolerance of ``component`` (the encoder's fp32 bound is wider, see above)."""
    if component == "encoder":
        return {**TOLERANCES, "fp32": Tolerance(max_abs=ENCODER_FP32_MAX_ABS)}
    return dict(TOLERANCES)


def golden_pair(record: GoldenRecord, precisions: list[str]) -> GoldenPair:
    """The manifest's golden entry of ``record`` with this family's tolerances."""
    limits = tolerances(record.component)
    return GoldenPair(record.component, record.inputs_file, record.outputs_file, {p: limits[p] for p in precisions})


def evaluate_golden(path: Any, record: GoldenRecord, precision: str) -> GoldenResult:
    """Run the ONNX file on the record's inputs (onnxruntime CPU) against its tolerance."""
    return run_golden(load_session(path), record.inputs, record.outputs, component=record.component,
                      precision=precision, tolerance=tolerances(record.component)[precision])


def chain_cases(graphs: Mapping[str, ComponentGraph], features: np.ndarray, ids: np.ndarray,
                new_ids: np.ndarray | None, enc_frames: int | None) -> dict[str, dict[str, np.ndarray]]:
    """Feeds of every component, each fed by the torch outputs of the one before it.

    features (B, n_mels, frames) float32, ids (B, T) int64; enc_frames: keep only the first encoder
    frames for the decoders (golden pairs), None: all; new_ids (B, new): decoder_with_past's ids,
    None: the greedy token after ``ids``.
    """
    num_layers = sum(spec.name.startswith("present.") for spec in graphs["decoder_first"].outputs) // 2
    states = graphs["encoder"].run_torch({"input_features": features})["encoder_hidden_states"][:, :enc_frames]
    first_in = {"input_ids": ids, "encoder_hidden_states": np.ascontiguousarray(states)}
    first_out = graphs["decoder_first"].run_torch(first_in)
    if new_ids is None:
        new_ids = first_out["logits"][:, -1:].argmax(-1).astype(np.int64)  # (B, 1)
    past = {p: first_out[q] for p, q in zip(kv_names("past_key_values", num_layers), kv_names("present", num_layers))}
    cross = {name: first_out[name] for name in kv_names("cross", num_layers)}
    return {"encoder": {"input_features": features}, "decoder_first": first_in,
            "decoder_with_past": {"input_ids": new_ids, **past, **cross}}


def random_cases(graphs: Mapping[str, ComponentGraph], config: Any, seed: int) -> dict[str, list]:
    """Component -> random feeds of the RANDOM_SIZES (features ~ N(0, 1), uniform ids)."""
    rng = np.random.default_rng(seed)
    cases: dict[str, list] = {name: [] for name in graphs}
    for batch, frames, seq, new in RANDOM_SIZES:
        frames = min(frames, 2 * config.max_source_positions)
        features = rng.standard_normal((batch, config.num_mel_bins, frames)).astype(np.float32)
        ids = rng.integers(0, config.vocab_size, (batch, seq), dtype=np.int64)
        new_ids = rng.integers(0, config.vocab_size, (batch, new), dtype=np.int64)
        for name, feeds in chain_cases(graphs, features, ids, new_ids, None).items():
            cases[name].append(feeds)
    return cases


def transformers_parity(model: Any, sessions: Mapping[str, Any], features: np.ndarray,
                        prompt: np.ndarray) -> dict[str, Any]:
    """ONNX fp32 against transformers on full windows: encoder states, decoder_first logits, and how
    far transformers' own fp32 encoder is from float64 (the float32 noise floor).

    features (B, n_mels, 2 * max_source_positions) float32, prompt (B, T) int64.
    """
    import copy

    import torch

    x = torch.from_numpy(features)
    with torch.no_grad():
        states = model.model.encoder(x).last_hidden_state
        logits = model(encoder_outputs=(states,), decoder_input_ids=torch.from_numpy(prompt)).logits.numpy()
        exact = copy.deepcopy(model.model.encoder).double()(x.double()).last_hidden_state.numpy()
    ort_states = sessions["encoder"].run({"input_features": features})["encoder_hidden_states"]
    ort_logits = sessions["decoder_first"].run({"input_ids": prompt, "encoder_hidden_states": ort_states})["logits"]
    report = {"frames": int(features.shape[-1]), "batch": int(features.shape[0]),
              "encoder_max_abs": float(np.abs(ort_states - states.numpy()).max()),
              "encoder_limit": ENCODER_FP32_MAX_ABS,
              "float32_noise": {"transformers_vs_float64": float(np.abs(states.numpy() - exact).max()),
                                "onnx_vs_float64": float(np.abs(ort_states - exact).max())},
              "encoder_abs_max": float(np.abs(exact).max()),
              "logits_max_abs": float(np.abs(ort_logits - logits).max()), "logits_limit": LOGITS_MAX_ABS}
    logger.info("fp32 ONNX vs transformers: encoder max abs %.3g (transformers vs float64 %.3g), logits %.3g",
                report["encoder_max_abs"], report["float32_noise"]["transformers_vs_float64"], report["logits_max_abs"])
    return report


def greedy_parity(model: Any, sessions: Mapping[str, Any], features: np.ndarray,
                  options: GreedyOptions) -> dict[str, Any]:
    """Greedy tokens with the KV cache (onnxruntime) vs without (transformers), per clip."""
    cached, reference = ort_greedy(sessions, features, options), torch_greedy(model, features, options)
    mismatch = [next((i for i, (a, b) in enumerate(zip(c, r)) if a != b), min(len(c), len(r)))
                for c, r in zip(cached, reference) if c != r]
    report = {"tokens_match": not mismatch, "batch": len(cached), "steps": max(len(r) for r in reference) + 1,
              "first_mismatch_step": min(mismatch) if mismatch else None}
    logger.info("greedy with KV cache vs without: %s", "identical" if not mismatch else f"differ at {min(mismatch)}")
    return report


def fp32_parity(graphs: Mapping[str, ComponentGraph], sessions: Mapping[str, Any], records: Mapping[str, GoldenRecord],
                model: Any, features: np.ndarray, options: GreedyOptions, seed: int) -> dict[str, Any]:
    """Every fp32 check (module docstring); ParityError when one fails, else the report."""
    cases = random_cases(graphs, model.config, seed)
    report: dict[str, Any] = {"limits": {c: tolerances(c)["fp32"].max_abs for c in graphs}, "components": {
        c: component_parity(graphs[c], sessions[c], cases[c], [(records[c].inputs, records[c].outputs)])
        for c in graphs}}
    prompt = np.tile(np.asarray(options.prompt, dtype=np.int64), (1, 1))
    report["transformers"] = transformers_parity(model, sessions, features[:1], prompt)
    report["greedy"] = greedy_parity(model, sessions, features, options)
    problems = [f"{c}: max abs {e['max_abs']:.3g} > {report['limits'][c]:g} (worst: {e['real']['worst_output']})"
                for c, e in report["components"].items() if not e["max_abs"] <= report["limits"][c]]
    hf = report["transformers"]
    if not hf["encoder_max_abs"] <= hf["encoder_limit"]:
        problems.append(f"encoder vs transformers {hf['encoder_max_abs']:.3g} > {hf['encoder_limit']:g}")
    if not hf["logits_max_abs"] <= hf["logits_limit"]:
        problems.append(f"logits vs transformers {hf['logits_max_abs']:.3g} > {hf['logits_limit']:g}")
    if not report["greedy"]["tokens_match"]:
        problems.append(f"greedy tokens with and without the KV cache differ from step "
                        f"{report['greedy']['first_mismatch_step']}")
    if problems:
        raise ParityError("the exported Whisper graphs do not match torch/transformers: " + "; ".join(problems)
                          + ". Check export/whisper_onnx.py against the transformers version; nothing was written")
    return report
