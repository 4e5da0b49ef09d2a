"""CLIP and SigLIP: a Hugging Face directory -> a verified tinymm bundle (export/families/clip.py, siglip.py).

``export_contrastive(request, spec)`` does, in order:

1. load the checkpoint and its contracts (export/contrastive_source.py);
2. make images (``scene_images``: OpenCV shapes on varied backgrounds, sizes and aspect ratios),
   check the runtime's preprocessing (tinymm.preprocess.hf_image) against the transformers
   processor's pixel_values on them, and export the two towers to ONNX;
3. parity: each graph against its torch wrapper, and the embeddings and classify probabilities
   of onnxruntime against transformers (``get_image_features``/``get_text_features``,
   ``logits_per_image`` through softmax or sigmoid) from the processor's own pixel_values;
   a failure stops here and nothing is written;
4. fp16 variants, and int8 variants (static QDQ image encoder calibrated on scenes, dynamic int8
   text encoder) behind the gate of export/contrastive_gate.py; every variant is held to its
   golden tolerance (an int8 one that fails is not shipped);
5. write the bundle (two components with roles, tokenizer.json, golden pairs, README.md) and verify it.
"""

from __future__ import annotations

import logging
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from tqdm import tqdm

from export.contrastive_gate import GATE_LABELS, build_int8, scene_images
from export.contrastive_source import IMAGE_ENCODER, ROLES, TEXT_ENCODER, ContrastiveSource, FamilySpec, \
    load_contrastive_source
from export.families import ExportResult, HFExportRequest
from export.golden import evaluate_variant, record_golden
from export.onnx_common import bundle_name, export_onnx
from export.parity import PARITY_MAX_ABS, ParityError, check_golden_variants, component_parity, load_session
from tinymm.bundle import Component, Preprocess, Variant, read_bundle, verify_bundle
from tinymm.bundle.writer import BundleWriter
from tinymm.preprocess.hf_image import HFImagePreprocessor

logger = logging.getLogger(__name__)

FAMILY, TASKS = "vision-language", ("classify", "embed_image", "embed_text")
GOLDEN_IMAGES = 2  # images (and label texts) per golden pair
# Runtime vs processor pixel_values. The runtime's resize equals Pillow's (tinymm/preprocess/pil_resize.py),
# so the two differ only by float32 rounding of the normalisation; anything more is a contract error.
LEVEL = 1.01 / 255  # one uint8 level, before the division by std
PIXEL_MAX_LEVELS = 1  # the largest difference, in uint8 levels
PIXEL_MAX_OFF_FRACTION = 0.0  # values more than one level apart, at most this fraction
MAX_BATCH = 64  # the largest batch a TensorRT profile is built for (model.dynamic_dims)
GOLDEN_TEXTS = ["a photo of a red circle", "two blue squares on a white background"]


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import transformers

    from tinymm import __version__

    return {"tinymm": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def preprocess_parity(source: ContrastiveSource, images: list[np.ndarray]) -> dict[str, Any]:
    """The runtime's pixel_values against the transformers processor's on RGB ``images``."""
    ours = HFImagePreprocessor(source.image)(images, rgb=True)
    theirs = np.asarray(source.processor(images=images, return_tensors="np")["pixel_values"], dtype=np.float32)
    if ours.shape != theirs.shape:
        raise ParityError(f"the runtime makes pixel_values of shape {ours.shape}, transformers {theirs.shape}; "
                          "the preprocessing contract is wrong. Nothing was written")
    levels = np.abs(ours - theirs) * np.asarray(source.image.std, np.float32).reshape(1, 3, 1, 1) / LEVEL
    report = {"images": len(images), "max_abs": float(np.abs(ours - theirs).max()),
              "max_levels": float(levels.max()), "off_by_more_than_one_level": float(np.mean(levels > 1.0))}
    if not (report["max_levels"] <= PIXEL_MAX_LEVELS and report["off_by_more_than_one_level"] <= PIXEL_MAX_OFF_FRACTION):
        raise ParityError(f"the runtime's pixel_values differ from transformers' by up to {report['max_levels']:.1f} "
                          f"uint8 levels ({report['off_by_more_than_one_level']:.2%} of values by more than one; limits "
                          f"{PIXEL_MAX_LEVELS} and {PIXEL_MAX_OFF_FRACTION:.0%}): the preprocessing contract is wrong. "
                          "Nothing was written")
    return report


@torch.no_grad()
def transformers_parity(source: ContrastiveSource, sessions: Mapping[str, Any], images: list[np.ndarray],
                        labels: list[str]) -> dict[str, Any]:
    """onnxruntime (fp32) against transformers from the processor's pixel_values: embeddings and probabilities."""
    model = source.model
    pixels = np.asarray(source.processor(images=images, return_tensors="np")["pixel_values"], dtype=np.float32)
    feeds = source.text_feeds(labels)
    torch_feeds = {k: torch.from_numpy(v) for k, v in feeds.items()}
    out = model(pixel_values=torch.from_numpy(pixels), **torch_feeds)
    ref_image, ref_text = out.image_embeds.numpy(), out.text_embeds.numpy()
    logits = out.logits_per_image.numpy().astype(np.float64)  # (N, L)
    ref_prob = _probabilities(source.spec.probability, logits)
    image = sessions[IMAGE_ENCODER].run({"pixel_values": pixels})["image_embedding"]
    text = sessions[TEXT_ENCODER].run(feeds)["text_embedding"]
    prob = _probabilities(source.spec.probability,
                          source.logit_scale * (image @ text.T).astype(np.float64) + source.logit_bias)
    report = {"images": len(images), "labels": len(labels),
              "image_embedding_max_abs": float(np.abs(image - ref_image).max()),
              "text_embedding_max_abs": float(np.abs(text - ref_text).max()),
              "probability_max_abs": float(np.abs(prob - ref_prob).max()), "limit": PARITY_MAX_ABS}
    bad = [k for k in ("image_embedding_max_abs", "text_embedding_max_abs", "probability_max_abs")
           if not report[k] <= PARITY_MAX_ABS]
    if bad:
        raise ParityError(f"onnxruntime and transformers differ: {', '.join(f'{k} {report[k]:.3g}' for k in bad)} "
                          f"(limit {PARITY_MAX_ABS:g}). Nothing was written")
    logger.info("transformers parity: %s", report)
    return report


def _probabilities(rule: str, logits: np.ndarray) -> np.ndarray:
    if rule == "softmax":
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-logits))


def model_info(source: ContrastiveSource, embed_dim: int) -> dict[str, Any]:
    """The manifest's ``model`` object (keys: tinymm/pipelines/contrastive.py)."""
    info = {"embed_dim": embed_dim, "image_size": source.image.height, "logit_scale": source.logit_scale,
            "logit_bias": source.logit_bias, "probability": source.spec.probability,
            "text_padding": source.spec.text_padding, "max_text_length": source.text.context_length,
            "labels": [], "dynamic_dims": {"batch": MAX_BATCH, "seq": source.text.context_length}}
    return info


def export_contrastive(request: HFExportRequest, spec: FamilySpec) -> ExportResult:
    """Export the CLIP or SigLIP checkpoint of ``request`` into a verified bundle (module docstring)."""
    started = time.perf_counter()
    quantized = [p for p in request.precisions if p != "fp32"]
    seconds: dict[str, float] = {}
    with BundleWriter(request.out, overwrite=request.force) as writer, \
            tempfile.TemporaryDirectory(prefix=f"tinymm-{spec.architecture}-") as tmp, \
            tqdm(total=5 + len(quantized), desc=f"export {spec.architecture}", unit="step",
                 disable=not request.progress) as bar:
        work = Path(tmp)

        def step(label: str, t0: float) -> None:
            seconds[label] = round(time.perf_counter() - t0, 2)
            bar.update()

        t = time.perf_counter()
        source = load_contrastive_source(request.source, spec)
        check_images = scene_images(8, request.seed)
        pixels = HFImagePreprocessor(source.image)(check_images[:GOLDEN_IMAGES], rgb=True)
        graphs = source.graphs(pixels, GOLDEN_TEXTS)
        parity: dict[str, Any] = {"preprocess": preprocess_parity(source, check_images)}
        step("load", t)

        t = time.perf_counter()
        files = {name: {"fp32": export_onnx(graph, work / f"{name}.onnx", request.options)}
                 for name, graph in graphs.items()}
        step("onnx", t)

        t = time.perf_counter()
        sessions = {name: load_session(paths["fp32"]) for name, paths in files.items()}
        records = record_golden(graphs, {IMAGE_ENCODER: {"pixel_values": pixels},
                                         TEXT_ENCODER: source.text_feeds(GOLDEN_TEXTS)})
        extra_pixels = HFImagePreprocessor(source.image)(check_images[GOLDEN_IMAGES:GOLDEN_IMAGES + 3], rgb=True)
        random_cases = {IMAGE_ENCODER: [{"pixel_values": np.random.default_rng(request.seed).standard_normal(
                            (3, *pixels.shape[1:])).astype(np.float32)}, {"pixel_values": extra_pixels}],
                        TEXT_ENCODER: [source.text_feeds(GATE_LABELS[:3]), source.text_feeds(GATE_LABELS[:1])]}
        parity["components"] = {
            name: component_parity(graphs[name], sessions[name], random_cases[name],
                                   [(records[name].inputs, records[name].outputs)]) for name in graphs}
        worst = {n: e["max_abs"] for n, e in parity["components"].items() if not e["max_abs"] <= PARITY_MAX_ABS}
        if worst:
            raise ParityError(f"ONNX and torch differ: {worst} (limit {PARITY_MAX_ABS:g}). Nothing was written")
        parity["transformers"] = transformers_parity(source, sessions, check_images, GATE_LABELS)
        step("parity", t)

        if "fp16" in quantized:
            from export.fp16 import convert_fp16

            t = time.perf_counter()
            for name in graphs:
                files[name]["fp16"] = convert_fp16(files[name]["fp32"], work / f"{name}.fp16.onnx")
            step("fp16", t)
        if "int8" in quantized:
            t = time.perf_counter()
            result = build_int8(source, {n: v["fp32"] for n, v in files.items()}, work, request)
            for name, path in result.files.items():
                final = work / f"{name}.int8.onnx"
                path.replace(final)
                files[name]["int8"] = final
            parity["int8_gate"] = dict(result.report)
            step("int8", t)

        t = time.perf_counter()
        golden = check_golden_variants(files, lambda c, p, path: evaluate_variant(path, records[c], p))
        for name, entry in parity.get("int8_gate", {}).get("components", {}).items():
            entry["shipped"] = "int8" in files[name]
        step("golden", t)

        provenance = _provenance(request, source, parity, golden, seconds, started)
        components = {}
        for name, variants in files.items():
            for path in variants.values():
                writer.add_file(path.name, path)
            graph = graphs[name]
            roles = {r: n for r, n in ROLES[name].items() if n in graph.input_names + graph.output_names}
            components[name] = Component(name, graph.inputs, graph.outputs,
                                         {p: Variant(path.name) for p, path in variants.items()}, roles=roles)
        writer.add_file(source.text.tokenizer, source.tokenizer_path)
        for record in records.values():
            writer.add_arrays(record.inputs_file, record.inputs)
            writer.add_arrays(record.outputs_file, record.outputs)
        name = bundle_name(request.name, request.out)
        embed_dim = graphs[IMAGE_ENCODER].outputs[0].shape[1]
        writer.add_text("README.md", _card(name, source, files, golden, provenance))
        writer.write(name=name, family=FAMILY, tasks=TASKS, components=components,
                     preprocess=Preprocess(image=source.image, text=source.text),
                     golden=[records[c].pair(list(v)) for c, v in files.items()], provenance=provenance,
                     model=model_info(source, embed_dim), architecture=spec.architecture)
        bar.update()
    bundle = read_bundle(request.out)
    verify_bundle(bundle)
    logger.info("%s bundle %s written to %s in %.1f s", spec.architecture, name, request.out,
                time.perf_counter() - started)
    return ExportResult(bundle, _summary(bundle, spec, provenance))


def _summary(bundle: Any, spec: FamilySpec, provenance: Mapping[str, Any]) -> dict[str, Any]:
    manifest, export = bundle.manifest, provenance["export"]
    return {"bundle": str(bundle.root), "name": manifest.name, "family": FAMILY, "architecture": spec.architecture,
            "total_bytes": manifest.total_bytes, "files": {n: e.size for n, e in manifest.files.items()},
            "variants": {c: sorted(comp.variants) for c, comp in manifest.components.items()},
            "seconds": export["seconds"], "total_seconds": export["total_seconds"],
            "parity": {k: export["parity"][k] for k in ("preprocess", "transformers")},
            "int8_gate": export["parity"].get("int8_gate", {}), "source_sha256": provenance["source"]["sha256"]}


def _provenance(request: HFExportRequest, source: ContrastiveSource, parity: Mapping[str, Any],
                golden: Mapping[str, Any], seconds: Mapping[str, float], started: float) -> dict[str, Any]:
    from export.bundle_build import _json_safe

    return _json_safe({
        "source": {"path": request.source_label or str(source.directory), "kind": "transformers",
                   "model_type": source.spec.model_type, "weights": source.weights_path.name,
                   "sha256": source.weights_sha256},
        "export": {"command": request.command, "exporter": f"torch.onnx ({request.options.exporter})",
                   "opset": request.options.opset, "precisions": list(request.precisions),
                   "seconds": dict(seconds), "total_seconds": round(time.perf_counter() - started, 1),
                   "sources": {"images": "export/contrastive_gate.py scene_images (OpenCV shapes)",
                               "labels": list(GATE_LABELS)},
                   "parity": parity, "golden": golden,
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "versions": _versions(),
    })


def _card(name: str, source: ContrastiveSource, files: Mapping[str, Mapping[str, Path]],
          golden: Mapping[str, Mapping[str, Any]], provenance: Mapping[str, Any]) -> str:
    """README.md of the bundle: source, sizes, parity, int8 gate, contract."""
    export, parity, spec = provenance["export"], provenance["export"]["parity"], source.spec
    hf = parity["transformers"]
    lines = [f"# {name}", "", f"{spec.display} as a tinymm bundle of family `{FAMILY}`, architecture "
             f"`{spec.architecture}` (tasks: {', '.join(TASKS)}; no decoder: no caption or ask).", "",
             f"- source: `{provenance['source']['path']}`, weights `{source.weights_path.name}`, sha256 "
             f"`{source.weights_sha256}`; the checkpoint's licence applies to this bundle",
             f"- export: `{export['command']}` ({export['exporter']}, opset {export['opset']}, "
             f"{export['total_seconds']} s)",
             f"- probabilities: {spec.probability}(logit_scale {source.logit_scale:.4g} x cosine"
             f"{f' + logit_bias {source.logit_bias:.4g}' if spec.probability == 'sigmoid' else ''})", "",
             "| component | precision | file | size (bytes) | max abs error | min cosine |", "|---|---|---|---:|---:|---:|"]
    for component, variants in files.items():
        for precision, path in variants.items():
            r = golden[component][precision]
            lines.append(f"| {component} | {precision} | {path.name} | {path.stat().st_size} | {r['max_abs']:.3g} | "
                         f"{r['min_cosine']:.6f} |")
    lines += ["", f"Against transformers on {hf['images']} images x {hf['labels']} labels: image embedding max abs "
              f"{hf['image_embedding_max_abs']:.3g}, text {hf['text_embedding_max_abs']:.3g}, probabilities "
              f"{hf['probability_max_abs']:.3g}; preprocessing (numpy Pillow-bicubic vs the processor) max abs "
              f"{parity['preprocess']['max_abs']:.3g}.", ""]
    gate = parity.get("int8_gate")
    if gate:
        lines += ["## INT8 gate", "", f"Zero-shot top-1 agreement with fp32 on {gate['images']} scenes x "
                  f"{gate['labels']} labels (at most {gate['max_drop']:g} points lost), and embedding cosine:", "",
                  "| component | recipe | verdict | agreement % | min cosine | shipped |", "|---|---|---|---:|---:|---|"]
        for component, g in gate["components"].items():
            lines.append(f"| {component} | {g['recipe']} | {g['verdict']} | {g['agreement']:.1f} | "
                         f"{g['min_cosine']:.4f} | {'yes' if g.get('shipped') else 'no'} |")
        lines.append("")
    lines += ["## Preprocessing contract", "", f"- image: `{source.image.to_dict()}`",
              f"- text: `{source.text.to_dict()}`, padding `{spec.text_padding}`", ""]
    return "\n".join(lines)
