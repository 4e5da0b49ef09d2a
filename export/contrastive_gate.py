"""INT8 variants of the CLIP/SigLIP towers, shipped only when zero-shot labels survive them.

Recipes (export/QUANTIZATION.md): the image encoder gets static QDQ (symmetric int8, per-channel
7-bit weights, MinMax calibration on generated scenes: the file TensorRT builds from); the text
encoder gets dynamic int8 weight MatMuls (per channel, 7-bit weights).

The gate's metric is zero-shot top-1 agreement with fp32, in points (higher is better): each
gate scene is classified over GATE_LABELS with the int8 component swapped into the fp32 pair,
and the label must be the one fp32 picks. ``accuracy_gate.run_int8_gate`` decides (no sweep by
default: a refused component ships no int8 file). The report also gives the embedding cosine of
each int8 component against fp32 on the same inputs, and the bundle's golden check then holds a
shipped int8 file to cosine >= 0.99.

Scenes (``scene_images``): OpenCV shapes (circles, squares, triangles, stars) of named colours on
plain, noisy or gradient backgrounds, at varied sizes and aspect ratios (so CLIP's shortest-edge
crop is exercised), deterministic per seed. They are inputs to compare fp32 and int8 on, not a
benchmark of the checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np

from export.accuracy_gate import run_int8_gate
from export.parity import load_session
from export.quantize import quantize_dynamic_int8, quantize_static_qdq

logger = logging.getLogger(__name__)

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}  # RGB
SHAPES = ("circle", "square", "triangle", "star")
GATE_LABELS = [f"a photo of a {color} {shape}" for color in COLORS for shape in SHAPES[:3]]
DEFAULT_GATE_IMAGES = 48  # scenes classified per evaluation
CALIBRATION_IMAGES = 16  # scenes calibrating the static image encoder (not gate scenes)
DEFAULT_MAX_DROP = 4.0  # agreement points an int8 component may lose (about 2 of 48 scenes)
SIDE_RANGE = (48, 192)  # pixels of each image side
RECIPES = {"image_encoder": "static QDQ (MinMax, per-channel 7-bit weights)",
           "text_encoder": "dynamic int8 MatMul (per-channel 7-bit weights)"}


def _star(center: tuple[int, int], radius: int) -> np.ndarray:
    angles = np.arange(10) * np.pi / 5 - np.pi / 2
    radii = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
    return np.stack([center[0] + radii * np.cos(angles), center[1] + radii * np.sin(angles)], 1).astype(np.int32)


def scene_images(count: int, seed: int) -> list[np.ndarray]:
    """``count`` (H, W, 3) uint8 RGB scenes: one to three shapes each, deterministic per ``seed``."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        h, w = (int(x) for x in rng.integers(*SIDE_RANGE, size=2))
        background = rng.integers(0, 256, 3)
        image = np.empty((h, w, 3), np.uint8)
        image[:] = background
        kind = rng.integers(3)
        if kind == 1:  # noise
            image = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
        elif kind == 2:  # vertical gradient
            ramp = np.linspace(0.6, 1.2, h)[:, None, None]
            image = np.clip(image * ramp, 0, 255).astype(np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            color = tuple(int(c) for c in list(COLORS.values())[rng.integers(len(COLORS))])
            shape = SHAPES[rng.integers(len(SHAPES))]
            r = int(rng.integers(min(h, w) // 8, min(h, w) // 3))
            cx, cy = int(rng.integers(r, w - r + 1)), int(rng.integers(r, h - r + 1))
            if shape == "circle":
                cv2.circle(image, (cx, cy), r, color, -1, cv2.LINE_AA)
            elif shape == "square":
                cv2.rectangle(image, (cx - r, cy - r), (cx + r, cy + r), color, -1)
            elif shape == "triangle":
                points = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
                cv2.fillPoly(image, [points], color, cv2.LINE_AA)
            else:
                cv2.fillPoly(image, [_star((cx, cy), r)], color, cv2.LINE_AA)
        images.append(image)
    return images


def zero_shot(sessions: Mapping[str, Any], pixels: np.ndarray, text_feeds: Mapping[str, np.ndarray]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top-1 label index (N,), image embeddings (N, E), text embeddings (L, E)) from onnxruntime sessions."""
    image = sessions["image_encoder"].run({"pixel_values": pixels})["image_embedding"]
    text = sessions["text_encoder"].run(dict(text_feeds))["text_embedding"]
    return (image @ text.T).argmax(axis=1), image, text


@dataclass(frozen=True)
class Int8Result:
    files: Mapping[str, Path]  # accepted component -> its int8 file
    report: Mapping[str, Any]  # images, labels, max_drop, components: per component the gate's report


def build_int8(source: Any, fp32: Mapping[str, Path], work: Path, request: Any) -> Int8Result:
    """Build and gate the int8 variants of both towers (``source``: a ContrastiveSource)."""
    from tinymm.preprocess.hf_image import HFImagePreprocessor

    count = request.eval_samples or DEFAULT_GATE_IMAGES
    max_drop = DEFAULT_MAX_DROP if request.max_metric_drop is None else request.max_metric_drop
    preprocess = HFImagePreprocessor(source.image)
    pixels = preprocess(scene_images(count, request.seed + 1), rgb=True)  # (N, 3, S, S)
    calibration = preprocess(scene_images(CALIBRATION_IMAGES, request.seed + 2), rgb=True)
    feeds = source.text_feeds(GATE_LABELS)
    fp32_sessions = {name: load_session(path) for name, path in fp32.items()}
    reference, ref_image, ref_text = zero_shot(fp32_sessions, pixels, feeds)

    def build(component: str):
        def make(excluded):
            out = work / f"{component}.int8-candidate.onnx"
            if component == "image_encoder":
                samples = [{"pixel_values": calibration[i:i + 1]} for i in range(len(calibration))]
                return quantize_static_qdq(fp32[component], out, samples, nodes_to_exclude=list(excluded))
            return quantize_dynamic_int8(fp32[component], out, nodes_to_exclude=list(excluded))
        return make

    cosines: dict[str, float] = {}

    def evaluate(component: str, path: Path) -> float:
        sessions = {**fp32_sessions, component: load_session(path)}
        top1, image, text = zero_shot(sessions, pixels, feeds)
        got, want = (image, ref_image) if component == "image_encoder" else (text, ref_text)
        cosines[str(path)] = float(np.min(np.sum(got * want, axis=1)))  # both L2-normalised
        return 100.0 * float(np.mean(top1 == reference))

    files, components = {}, {}
    for component in fp32:
        gate = run_int8_gate(fp32[component], build(component), lambda p, c=component: evaluate(c, p),
                             max_drop=max_drop, max_excluded=0, candidates=[], max_sweep=0)
        components[component] = {**gate.to_dict(), "recipe": RECIPES[component], "agreement": gate.int8_score,
                                 "min_cosine": cosines.get(str(gate.int8_path), float("nan"))}
        if gate.accepted:
            files[component] = gate.int8_path
        logger.info("int8 %s: %s, agreement %.1f%%, min cosine %.4f", component, gate.verdict, gate.int8_score,
                    components[component]["min_cosine"])
    report = {"metric": "zero-shot top-1 agreement with fp32 (%)", "images": int(len(pixels)),
              "labels": len(GATE_LABELS), "max_drop": max_drop, "components": components}
    return Int8Result(files, report)
