"""Inputs and checks of a SmolVLM export: sample images, the reference processor's tensors, golden
cases, fp32 parity with torch and transformers, and the int8 decoders' greedy agreement gate.

The reference tensors come from transformers' own Pillow image processor and the processor's
image-token expansion (``reference_inputs``), never from tinymm's preprocessing, so the checks
here test the graphs alone; tests/test_smolvlm_export.py holds the runtime's preprocessing to the
same reference.

Tolerances: fp32 components within PARITY_MAX_ABS of their torch wrappers and of transformers'
logits (float32 noise of a deep decoder on long prompts is larger than the project's 1e-4
default); greedy tokens of onnxruntime with the KV cache identical to transformers' ``generate``.
The int8 gate holds the decoders to a teacher-forced greedy agreement with fp32: the fraction of
generated positions where the int8 decoder picks the fp32 decoder's token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from export.golden import TOLERANCES, GoldenRecord
from export.onnx_common import ComponentGraph, kv_names
from export.parity import ParityError, component_parity
from export.smolvlm_onnx import DECODERS
from export.smolvlm_source import SmolVLMSource, prompt_templates
from tinymm.bundle import GoldenPair, Tolerance
from tinymm.commands.verify import GoldenResult, run_golden
from tinymm.decoding.prefix_embeds import PrefixEmbedsInference
from tinymm.decoding.search import greedy_search

logger = logging.getLogger(__name__)

PARITY_MAX_ABS = 1e-3  # fp32 graphs vs torch and transformers (module docstring)
GOLDEN_SEQ = 16  # prompt positions in the decoders' golden inputs (a full prompt's logits are ~200 MB)
GOLDEN_TILES = 2  # tiles in the vision encoder's golden input
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
QUESTIONS = ("What is in this image?", "What color is the largest shape?", "How many objects are there?",
             "Is there any text in the picture?")
DEFAULT_MIN_AGREEMENT = 95.0  # percent of teacher-forced greedy tokens the int8 decoders must share with fp32
SIZES = ((48, 64), (64, 48), (80, 80), (30, 100), (120, 90), (40, 40))  # (height, width) of generated images


@dataclass(frozen=True)
class Sample:
    """One image and prompt, as the reference processor makes them."""

    name: str
    pixels: np.ndarray  # (tiles, 3, S, S) float32
    ids: np.ndarray  # (T,) int64


def generated_images(count: int, seed: int, scale: int = 1) -> list[np.ndarray]:
    """``count`` RGB uint8 scenes of colored shapes on gradients, of varied sizes and aspect ratios."""
    import cv2

    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        h, w = (s * scale for s in SIZES[i % len(SIZES)])
        ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
        image = np.clip(ramp * rng.uniform(0.2, 1.0, 3) + rng.uniform(0, 80, 3), 0, 255).astype(np.uint8)
        image = np.ascontiguousarray(np.broadcast_to(image, (h, w, 3)))
        for _ in range(int(rng.integers(1, 4))):
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(3, max(4, min(h, w) // 3)))
            cv2.circle(image, (x, y), r, color, -1) if rng.random() < 0.5 else \
                cv2.rectangle(image, (x - r, y - r), (x + r, y + r), color, -1)
        images.append(image)
    return images


def folder_images(data_dir: Path, count: int) -> list[np.ndarray]:
    """Up to ``count`` RGB uint8 images from a folder (sorted by name)."""
    from tinymm.preprocess.image import load_image

    paths = sorted(p for p in Path(data_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    return [np.ascontiguousarray(load_image(p)[:, :, ::-1]) for p in paths]


def image_processor(source: SmolVLMSource) -> Any:
    """transformers' Pillow image processor of the checkpoint, from its preprocessor_config.json."""
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    kind = SmolVLMImageProcessorPil if source.kind == "smolvlm" else Idefics3ImageProcessorPil
    settings = {k: v for k, v in source.image_processor.items() if k not in ("image_processor_type", "processor_class")}
    return kind(**settings)


def reference_inputs(source: SmolVLMSource, processor: Any, image: np.ndarray, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    """(pixel_values (tiles, 3, S, S) float32, ids (T,) int64): the reference processor's tensors for one
    RGB image and a rendered prompt with one image token."""
    from tokenizers import Tokenizer
    from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

    out = processor(images=[[image]], return_row_col_info=True, return_tensors="np")
    rows, cols = out["rows"][0][0], out["cols"][0][0]
    t = source.tokens
    expanded = prompt.replace(t["image"], get_image_prompt_string(rows, cols, source.image_seq_len, t["fake"], t["image"],
                                                                  t["global"]), 1)
    ids = Tokenizer.from_file(str(source.tokenizer_path)).encode(expanded, add_special_tokens=False).ids
    return np.asarray(out["pixel_values"][0], dtype=np.float32), np.asarray(ids, dtype=np.int64)


def make_samples(source: SmolVLMSource, images: Sequence[np.ndarray]) -> list[Sample]:
    """One sample per image: the caption prompt for even ones, a question for odd ones."""
    processor, templates = image_processor(source), prompt_templates(source)
    samples = []
    for i, image in enumerate(images):
        prompt = templates["caption"] if i % 2 == 0 else \
            templates["ask"].replace("{question}", QUESTIONS[(i // 2) % len(QUESTIONS)])
        pixels, ids = reference_inputs(source, processor, image, prompt)
        samples.append(Sample(f"image{i}", pixels, ids))
    return samples


def golden_cases(graphs: Mapping[str, ComponentGraph], sample: Sample, image_token_id: int) -> dict[str, dict[str, np.ndarray]]:
    """Feeds of every component from one sample, each fed by the torch outputs of the one before it."""
    pixels = sample.pixels[[0, -1]][:GOLDEN_TILES]
    ids = sample.ids[None, :]
    features = graphs["vision_encoder"].run_torch({"pixel_values": sample.pixels})["image_features"]
    embeds = graphs["embed_tokens"].run_torch({"input_ids": ids})["inputs_embeds"]
    embeds[ids == image_token_id] = features.reshape(-1, features.shape[-1])
    prefix = np.ascontiguousarray(embeds[:, -GOLDEN_SEQ:])
    first = graphs["decoder_first"].run_torch({"inputs_embeds": prefix[:, :-1]})
    num_layers = len(graphs["decoder_with_past"].input_names) // 2
    past = {p: first[q] for p, q in zip(kv_names("past_key_values", num_layers), kv_names("present", num_layers))}
    return {"vision_encoder": {"pixel_values": np.ascontiguousarray(pixels)},
            "embed_tokens": {"input_ids": np.ascontiguousarray(ids[:, -GOLDEN_SEQ:])},
            "decoder_first": {"inputs_embeds": prefix},
            "decoder_with_past": {"inputs_embeds": np.ascontiguousarray(prefix[:, -1:]), **past}}


def tolerances(component: str) -> dict[str, Tolerance]:
    return {**TOLERANCES, "fp32": Tolerance(max_abs=PARITY_MAX_ABS)}


def golden_pair(record: GoldenRecord, precisions: Sequence[str]) -> GoldenPair:
    limits = tolerances(record.component)
    return GoldenPair(record.component, record.inputs_file, record.outputs_file, {p: limits[p] for p in precisions})


def evaluate_golden(session: Any, record: GoldenRecord, precision: str) -> GoldenResult:
    return run_golden(session, record.inputs, record.outputs, component=record.component, precision=precision,
                      tolerance=tolerances(record.component)[precision])


def _random_cases(graphs: Mapping[str, ComponentGraph], seed: int) -> dict[str, list[dict[str, np.ndarray]]]:
    """Inputs of two sizes per component beyond the tracing examples (batch 1 and 3, other lengths)."""
    rng = np.random.default_rng(seed)
    vocab = graphs["decoder_first"].outputs[0].shape[-1]
    cases: dict[str, list[dict[str, np.ndarray]]] = {}
    for name, graph in graphs.items():
        cases[name] = []
        for batch, seq, past in ((1, 5, 3), (3, 2, 7)):
            feeds = {}
            for spec in graph.inputs:
                dims = {"tiles": batch, "batch": batch, "seq": seq, "new": seq, "past": past}
                shape = tuple(dims[d] if isinstance(d, str) else d for d in spec.shape)
                feeds[spec.name] = rng.integers(0, vocab, shape) if spec.dtype == "int64" else rng.standard_normal(shape).astype(np.float32)
            cases[name].append(feeds)
    return cases


def ort_greedy(sessions: Mapping[str, Any], sample: Sample, image_token_id: int, eos_id: int, steps: int,
               cache: bool = True) -> list[int]:
    """Greedy tokens (EOS included when reached) of the ONNX components for one sample."""
    features = sessions["vision_encoder"].run({"pixel_values": sample.pixels})["image_features"]
    num_layers = sum(1 for s in sessions["decoder_first"].outputs if s.name.endswith(".key"))
    inference = PrefixEmbedsInference(sessions["embed_tokens"], sessions["decoder_first"],
                                      sessions["decoder_with_past"] if cache else None,
                                      features.reshape(-1, features.shape[-1]), image_token_id, num_layers)
    hyp = greedy_search(inference, sample.ids[None, :], eos_id=eos_id, max_new_tokens=steps).best[0]
    return [*hyp.tokens, *([eos_id] if hyp.finished else [])]


def torch_greedy(model: Any, sample: Sample, eos_id: int, steps: int) -> list[int]:
    """transformers' greedy ``generate`` for one sample (EOS included when reached)."""
    import torch

    ids = torch.from_numpy(sample.ids[None, :])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             pixel_values=torch.from_numpy(sample.pixels[None]), max_new_tokens=steps,
                             do_sample=False, num_beams=1, eos_token_id=eos_id, pad_token_id=eos_id)
    return out[0, ids.shape[1]:].tolist()


def spliced_embeds(sessions: Mapping[str, Any], ids: np.ndarray, features: np.ndarray, image_token_id: int,
                   prompt_length: int) -> np.ndarray:
    """embed_tokens of ids (1, T), the image features (tiles, N, C) over the prompt's image tokens."""
    embeds = sessions["embed_tokens"].run({"input_ids": ids})["inputs_embeds"].copy()
    image = ids == image_token_id
    image[:, prompt_length:] = False
    embeds[image] = features.reshape(-1, features.shape[-1])
    return embeds


def transformers_logits(model: Any, sessions: Mapping[str, Any], sample: Sample, image_token_id: int) -> float:
    """Max abs difference of the last position's logits: ONNX components vs transformers' forward."""
    import torch

    with torch.no_grad():
        expected = model(input_ids=torch.from_numpy(sample.ids[None, :]),
                         pixel_values=torch.from_numpy(sample.pixels[None])).logits[0, -1].numpy()
    features = sessions["vision_encoder"].run({"pixel_values": sample.pixels})["image_features"]
    embeds = spliced_embeds(sessions, sample.ids[None, :], features, image_token_id, len(sample.ids))
    logits = sessions["decoder_first"].run({"inputs_embeds": embeds}, ["logits"])["logits"][0, -1]
    return float(np.abs(logits - expected).max())


def fp32_parity(graphs: Mapping[str, ComponentGraph], sessions: Mapping[str, Any], records: Mapping[str, GoldenRecord],
                source: SmolVLMSource, samples: Sequence[Sample], steps: int, seed: int) -> dict[str, Any]:
    """Every fp32 check; ParityError when one fails, else the report."""
    cases = _random_cases(graphs, seed)
    report: dict[str, Any] = {"limit": PARITY_MAX_ABS, "components": {
        c: component_parity(graphs[c], sessions[c], cases[c], [(records[c].inputs, records[c].outputs)])
        for c in graphs}}
    image_id, eos = source.token_ids["image"], source.eos_id
    report["transformers"] = {"logits_max_abs": max(transformers_logits(source.model, sessions, s, image_id)
                                                    for s in samples)}
    mismatched = [s.name for s in samples
                  if ort_greedy(sessions, s, image_id, eos, steps) != torch_greedy(source.model, s, eos, steps)]
    report["greedy"] = {"samples": len(samples), "steps": steps, "identical": len(samples) - len(mismatched),
                        "mismatched": mismatched}
    problems = [f"{c}: max abs {e['max_abs']:.3g} > {PARITY_MAX_ABS:g} (worst: {e['real']['worst_output']})"
                for c, e in report["components"].items() if not e["max_abs"] <= PARITY_MAX_ABS]
    if not report["transformers"]["logits_max_abs"] <= PARITY_MAX_ABS:
        problems.append(f"logits vs transformers {report['transformers']['logits_max_abs']:.3g} > {PARITY_MAX_ABS:g}")
    if mismatched:
        problems.append(f"greedy tokens (onnxruntime, KV cache) differ from transformers' generate on {mismatched}")
    if problems:
        raise ParityError("the exported SmolVLM graphs do not match torch/transformers: " + "; ".join(problems)
                          + ". Check export/smolvlm_onnx.py against the transformers version; nothing was written")
    logger.info("SmolVLM fp32 parity: logits %.3g vs transformers, greedy identical on %d samples",
                report["transformers"]["logits_max_abs"], len(samples))
    return report


def teacher_forced_agreement(fp32: Mapping[str, Any], int8: Mapping[str, Any], samples: Sequence[Sample],
                             image_token_id: int, eos_id: int, steps: int) -> dict[str, Any]:
    """The int8 decoders against the fp32 ones: free-running greedy sequences, and the percentage of
    positions of the fp32 greedy sequence where int8 (fed the same prefix) picks the same token."""
    agreed = total = identical = 0
    for sample in samples:
        reference = ort_greedy(fp32, sample, image_token_id, eos_id, steps)
        identical += ort_greedy(int8, sample, image_token_id, eos_id, steps) == reference
        ids = np.concatenate([sample.ids, np.asarray(reference[:-1], dtype=np.int64)])[None, :]
        features = int8["vision_encoder"].run({"pixel_values": sample.pixels})["image_features"]
        embeds = spliced_embeds(int8, ids, features, image_token_id, len(sample.ids))
        logits = int8["decoder_first"].run({"inputs_embeds": embeds}, ["logits"])["logits"][0]
        picks = logits[len(sample.ids) - 1:].argmax(axis=-1)
        agreed += int(np.sum(picks == np.asarray(reference)))
        total += len(reference)
    return {"metric": "teacher-forced greedy token agreement (%)", "agreement": round(100.0 * agreed / max(total, 1), 2),
            "tokens": total, "samples": len(samples), "identical_sequences": identical}


def int8_decoders(files: Mapping[str, Path], work: Path) -> dict[str, Path]:
    """Dynamic int8 (per-channel, reduced-range weights) of both decoders."""
    from export.quantize import quantize_dynamic_int8

    return {c: quantize_dynamic_int8(files[c], work / f"{c}.int8.onnx") for c in DECODERS}


def int8_vision(fp32: Path, samples: Sequence[Sample], work: Path) -> Path:
    """Static QDQ int8 (per-channel, reduced-range weights) of the vision encoder, calibrated on the
    samples' tiles: the vision tower is a ViT, where static activations quantize well."""
    from export.quantize import quantize_static_qdq

    calibration = [{"pixel_values": tile[None]} for sample in samples for tile in sample.pixels]
    return quantize_static_qdq(fp32, work / "vision_encoder.int8.onnx", calibration)
