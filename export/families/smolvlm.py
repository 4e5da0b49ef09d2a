"""SmolVLM / Idefics3: a Hugging Face checkpoint directory -> a verified tinymm bundle.

``export(HFExportRequest(source, out, precisions=("fp32", "int8")))`` does, in order:

1. load the checkpoint into transformers' SmolVLM / Idefics3 ForConditionalGeneration, float32,
   and render its chat template into the caption and ask prompts (export/smolvlm_source.py);
2. export vision_encoder, embed_tokens, decoder_first and decoder_with_past to ONNX
   (export/smolvlm_onnx.py);
3. parity (export/smolvlm_check.py): each graph against its torch wrapper on random and real
   inputs, logits against transformers' forward, and greedy decoding in onnxruntime with the KV
   cache against transformers' ``generate`` (identical tokens); a failure stops here and nothing
   is written. Inputs: images of ``--data`` (a folder), else generated scenes, through
   transformers' own image processor;
4. fp16 variants (export/fp16.py), dynamic int8 decoders and a static QDQ int8 vision encoder, each
   behind the greedy agreement gate
   (teacher-forced agreement with fp32 >= 100 - max_metric_drop percent); every variant is checked
   against its golden tolerance (an int8 one that fails is not shipped);
5. write the bundle (manifest with ``architecture="smolvlm"`` and tensor roles, ONNX files, the
   decoders' shared weights, tokenizer.json, golden pairs, README.md) and verify it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from tqdm import tqdm

from export.families import ExportResult, HFExportRequest
from export.golden import record_golden
from export.onnx_common import bundle_name, export_onnx
from export.parity import check_golden_variants, load_session
from export.share_weights import WEIGHTS_STEM, WEIGHTS_SUFFIX, share_initializers
from export.smolvlm_check import (
    DEFAULT_MIN_AGREEMENT,
    evaluate_golden,
    folder_images,
    fp32_parity,
    generated_images,
    golden_cases,
    golden_pair,
    int8_decoders,
    int8_vision,
    make_samples,
    teacher_forced_agreement,
)
from export.smolvlm_onnx import DECODERS, ROLES, smolvlm_graphs
from export.smolvlm_source import TOKENIZER_FILE, load_smolvlm_source, model_type, smolvlm_model_info, smolvlm_preprocess
from tinymm.bundle import PRECISIONS, BundleWriter, Component, Variant, read_bundle, verify_bundle

logger = logging.getLogger(__name__)

NAME = "smolvlm"
DESCRIPTION = "SmolVLM / Idefics3 (e.g. HuggingFaceTB/SmolVLM-256M-Instruct), a Hugging Face directory"
FAMILY, ARCHITECTURE, TASKS = "vision-language", "smolvlm", ("caption", "ask")
GREEDY_SAMPLES = 4  # image/prompt pairs of the greedy parity check with transformers
GREEDY_STEPS = 16  # tokens generated per pair in the parity check and the int8 gate
DEFAULT_GATE_SAMPLES = 8  # image/prompt pairs of the int8 agreement gate


def detect(source: Path) -> bool:
    """Whether ``source`` is a SmolVLM / Idefics3 checkpoint directory this exporter reads."""
    return model_type(Path(source)) is not None


def _versions() -> dict[str, str]:
    from export.families.whisper import _versions as versions

    return versions()


def _share(files: Mapping[str, dict[str, Path]]) -> dict[str, Path]:
    """The two decoders of each precision store their weights once; returns precision -> weights file."""
    shared = {}
    for precision in PRECISIONS:
        paths = [files[c][precision] for c in DECODERS if precision in files[c]]
        if len(paths) == len(DECODERS):
            result = share_initializers(paths, paths[0].parent / f"{WEIGHTS_STEM}.{precision}{WEIGHTS_SUFFIX}")
            if result is not None:
                shared[precision] = result.weights
    return shared


def export(request: HFExportRequest) -> ExportResult:
    """Export the SmolVLM checkpoint of ``request`` into a verified bundle (see the module docstring)."""
    started = time.perf_counter()
    quantized = [p for p in request.precisions if p != "fp32"]
    gate_samples = request.eval_samples or DEFAULT_GATE_SAMPLES
    min_agreement = 100.0 - (request.max_metric_drop if request.max_metric_drop is not None
                             else 100.0 - DEFAULT_MIN_AGREEMENT)
    seconds: dict[str, float] = {}
    with BundleWriter(request.out, overwrite=request.force) as writer, \
            tempfile.TemporaryDirectory(prefix="tinymm-smolvlm-") as tmp, \
            tqdm(total=5 + len(quantized), desc="export smolvlm", unit="step", disable=not request.progress) as bar:
        work = Path(tmp)

        def step(label: str, t0: float) -> None:
            seconds[label] = round(time.perf_counter() - t0, 2)
            bar.update()

        t = time.perf_counter()
        bar.set_postfix_str("load")
        source = load_smolvlm_source(request.source)
        graphs = smolvlm_graphs(source.model)
        wanted = GREEDY_SAMPLES + (gate_samples if "int8" in quantized else 0)
        images = folder_images(request.data_dir, wanted) if request.data_dir is not None else []
        images += generated_images(wanted - len(images), request.seed,
                                   scale=max(1, source.model.config.vision_config.image_size // 32))
        samples = make_samples(source, images)
        step("load", t)

        t = time.perf_counter()
        bar.set_postfix_str("onnx")
        files = {c: {"fp32": export_onnx(g, work / f"{c}.onnx", request.options)} for c, g in graphs.items()}
        step("onnx", t)

        t = time.perf_counter()
        bar.set_postfix_str("parity")
        sessions = {c: load_session(v["fp32"]) for c, v in files.items()}
        records = record_golden(graphs, golden_cases(graphs, samples[0], source.token_ids["image"]))
        parity = fp32_parity(graphs, sessions, records, source, samples[:GREEDY_SAMPLES], GREEDY_STEPS, request.seed)
        step("parity", t)

        if "fp16" in quantized:
            from export.fp16 import convert_fp16

            t = time.perf_counter()
            bar.set_postfix_str("fp16")
            for component in graphs:
                files[component]["fp16"] = convert_fp16(files[component]["fp32"], work / f"{component}.fp16.onnx")
            step("fp16", t)
        if "int8" in quantized:
            t = time.perf_counter()
            bar.set_postfix_str("int8 gate")
            int8 = int8_decoders({c: files[c]["fp32"] for c in DECODERS}, work)
            int8_sessions = {**sessions, **{c: load_session(p) for c, p in int8.items()}}
            report = teacher_forced_agreement(sessions, int8_sessions, samples[GREEDY_SAMPLES:] or samples,
                                              source.token_ids["image"], source.eos_id, GREEDY_STEPS)
            report.update(min_agreement=min_agreement, shipped=report["agreement"] >= min_agreement)
            if report["shipped"]:
                for component, path in int8.items():
                    files[component]["int8"] = path
            else:
                logger.warning("int8 decoders agree with fp32 on %.1f%% of greedy tokens (< %.1f%%): not shipped",
                               report["agreement"], min_agreement)
            parity["int8_gate"] = report
            # The vision tower: static int8, judged with the fp32 decoders by the same agreement.
            vision = int8_vision(files["vision_encoder"]["fp32"], samples, work)
            vision_report = teacher_forced_agreement(sessions, {**sessions, "vision_encoder": load_session(vision)},
                                                     samples[GREEDY_SAMPLES:] or samples, source.token_ids["image"],
                                                     source.eos_id, GREEDY_STEPS)
            vision_report.update(min_agreement=min_agreement, shipped=vision_report["agreement"] >= min_agreement)
            if vision_report["shipped"]:
                files["vision_encoder"]["int8"] = vision
            else:
                logger.warning("the int8 vision encoder agrees with fp32 on %.1f%% of greedy tokens (< %.1f%%): "
                               "not shipped", vision_report["agreement"], min_agreement)
            parity["int8_gate_vision"] = vision_report
            step("int8", t)

        t = time.perf_counter()
        bar.set_postfix_str("golden")
        shared = _share(files)
        golden = check_golden_variants(files, lambda c, p, path: evaluate_golden(load_session(path), records[c], p),
                                       tied=DECODERS)
        if "int8_gate" in parity:
            parity["int8_gate"]["shipped"] = all("int8" in files[c] for c in DECODERS)
            parity["int8_gate_vision"]["shipped"] = "int8" in files["vision_encoder"]
        step("golden", t)

        bar.set_postfix_str("write")
        provenance = _provenance(request, source, len(images), parity, golden, seconds, started)
        components = {}
        for component, variants in files.items():
            for path in variants.values():
                writer.add_file(path.name, path)
            graph = graphs[component]
            components[component] = Component(component, graph.inputs, graph.outputs,
                                               {p: Variant(path.name) for p, path in variants.items()},
                                               roles=ROLES[component])
        for path in shared.values():
            writer.add_file(path.name, path)
        writer.add_file(TOKENIZER_FILE, source.tokenizer_path)
        for record in records.values():
            writer.add_arrays(record.inputs_file, record.inputs)
            writer.add_arrays(record.outputs_file, record.outputs)
        pairs = [golden_pair(records[c], list(v)) for c, v in files.items()]
        name = bundle_name(request.name, request.out)
        writer.add_text("README.md", _model_card(name, files, golden, provenance))
        decoder = graphs["decoder_with_past"].module
        writer.write(name=name, family=FAMILY, tasks=TASKS, components=components,
                     preprocess=smolvlm_preprocess(source), golden=pairs, provenance=provenance,
                     model=smolvlm_model_info(source, len(decoder.layers), decoder.nkv, decoder.hs),
                     architecture=ARCHITECTURE)
        bar.update()
    bundle = read_bundle(request.out)
    verify_bundle(bundle)
    logger.info("smolvlm bundle %s written to %s in %.1f s", name, request.out, time.perf_counter() - started)
    summary = {"bundle": str(bundle.root), "name": name, "family": FAMILY, "architecture": ARCHITECTURE,
               "total_bytes": bundle.manifest.total_bytes,
               "variants": {c: sorted(comp.variants) for c, comp in bundle.manifest.components.items()},
               "seconds": seconds, "parity": {k: v for k, v in parity.items() if k != "components"},
               "max_abs": {c: e["max_abs"] for c, e in parity["components"].items()}}
    return ExportResult(bundle, summary)


def _model_card(name: str, files: Mapping[str, Mapping[str, Path]], golden: Mapping[str, Any],
                provenance: Mapping[str, Any]) -> str:
    export = provenance["export"]
    parity = export["parity"]
    lines = [f"# {name}", "", f"A SmolVLM / Idefics3 checkpoint (`{provenance['source']['path']}`, "
             f"{provenance['source']['model_type']}) as a tinymm bundle of family `{FAMILY}`, architecture "
             f"`{ARCHITECTURE}` (tasks: caption, ask). Licence: the checkpoint's.", "",
             f"- export: `{export['command']}` ({export['exporter']}, {export['total_seconds']} s)",
             f"- greedy tokens identical to transformers' generate on {parity['greedy']['identical']} of "
             f"{parity['greedy']['samples']} image/prompt pairs; logits within "
             f"{parity['transformers']['logits_max_abs']:.3g} of transformers", ""]
    gate = parity.get("int8_gate")
    if gate:
        lines += [f"- int8 decoders: {gate['agreement']}% teacher-forced greedy agreement with fp32 over "
                  f"{gate['tokens']} tokens ({gate['identical_sequences']} of {gate['samples']} sequences identical); "
                  f"{'shipped' if gate['shipped'] else 'not shipped'} (gate {gate['min_agreement']}%)"]
    vision = parity.get("int8_gate_vision")
    if vision:
        lines += [f"- int8 vision encoder (static QDQ) with the fp32 decoders: {vision['agreement']}% agreement; "
                  f"{'shipped' if vision['shipped'] else 'not shipped'}"]
    if gate or vision:
        lines += [""]
    lines += ["| component | precision | file | size (bytes) | max abs error | min cosine |", "|---|---|---|---:|---:|---:|"]
    for component, variants in files.items():
        for precision, path in variants.items():
            r = golden[component][precision]
            lines.append(f"| {component} | {precision} | {path.name} | {path.stat().st_size} | {r['max_abs']:.3g} | "
                         f"{r['min_cosine']:.6f} |")
    return "\n".join(lines) + "\n"


def _provenance(request: HFExportRequest, source: Any, images: int, parity: Mapping[str, Any],
                golden: Mapping[str, Any], seconds: Mapping[str, float], started: float) -> dict[str, Any]:
    from export.bundle_build import _json_safe
    from tinymm.hashing import sha256_file

    return _json_safe({
        "source": {"path": request.source_label or str(source.directory), "model_type": source.kind,
                   "weights": source.weights_path.name, "sha256": sha256_file(source.weights_path)},
        "export": {"command": request.command, "exporter": f"torch.onnx ({request.options.exporter})",
                   "opset": request.options.opset, "precisions": list(request.precisions),
                   "seconds": dict(seconds), "total_seconds": round(time.perf_counter() - started, 1),
                   "sources": {"images": str(request.data_dir) if request.data_dir else "generated scenes",
                               "count": images},
                   "parity": parity, "golden": golden,
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "versions": _versions(),
    })
