"""Whisper: a CTranslate2 or Hugging Face checkpoint directory -> a verified tinymm bundle.

``export(HFExportRequest(source, out, precisions=("fp32", "int8")))`` does, in order:

1. load the checkpoint into transformers' WhisperForConditionalGeneration, float32
   (export/whisper_source.py; CTranslate2's model.bin through export/ctranslate2_whisper.py);
2. export encoder, decoder_first and decoder_with_past to ONNX (export/whisper_onnx.py);
3. parity (export/whisper_parity.py): each graph against its torch wrapper on random and real
   inputs, encoder states and logits against transformers on a full window (logits <= 1e-4,
   encoder states <= 1e-3: float32 noise), and greedy decoding with the KV cache in onnxruntime
   against transformers without a cache (identical tokens); a failure stops here and nothing is
   written;
4. fp16 variants (export/fp16.py) and int8 variants behind the WER gate (export/whisper_gate.py);
   every variant is checked against its golden tolerance (an int8 one that fails is not shipped);
5. write the bundle (manifest with ``architecture="whisper"`` and tensor roles, ONNX files, the
   decoders' shared weights, tokenizer.json, golden pairs, README.md, LICENSE.whisper) and
   verify it.

Clips (golden pairs, int8 calibration and gate): export/whisper_clips.py.
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
from tqdm import tqdm

from export.families import ExportResult, HFExportRequest
from export.golden import record_golden
from export.onnx_common import bundle_name, export_onnx
from export.parity import check_golden_variants, load_session
from export.share_weights import WEIGHTS_STEM, WEIGHTS_SUFFIX, share_initializers
from export.whisper_card import LICENSE_FILE, WHISPER_LICENSE, model_card, whisper_model_info, whisper_preprocess
from export.whisper_clips import Clips, load_clips
from export.whisper_decode import GreedyOptions, decode_text, load_text_tokenizer, ort_greedy
from export.whisper_gate import DECODERS, WhisperGateOptions, build_int8
from export.whisper_onnx import CONV_STRIDE, ROLES, whisper_graphs
from export.whisper_parity import chain_cases, evaluate_golden, fp32_parity, golden_pair
from export.whisper_source import KIND_CT2, TOKENIZER_FILE, WhisperSource, load_whisper_source, source_kind
from tinymm.bundle import PRECISIONS, Bundle, BundleWriter, Component, Variant, read_bundle, verify_bundle

logger = logging.getLogger(__name__)

NAME = "whisper"
DESCRIPTION = "OpenAI Whisper, a CTranslate2 (model.bin + config.json) or Hugging Face (model_type whisper) directory"
FAMILY, ARCHITECTURE, TASKS = "speech", "whisper", ("transcribe", "command")
GOLDEN_ENC_FRAMES = 100  # encoder frames (2 s) in the decoders' golden inputs: a full window's cross K/V
#                          would add ~70 MB per decoder to a whisper-base bundle
GREEDY_CLIPS = 4  # clips of the KV-cache-vs-no-cache greedy check
TRANSCRIBE_BATCH = 8  # clips per onnxruntime batch in the gate


def detect(source: Path) -> bool:
    """Whether ``source`` is a Whisper checkpoint directory this exporter reads."""
    return source_kind(Path(source)) is not None


def _window(source: WhisperSource, features: np.ndarray) -> np.ndarray:
    """Clips' (N, n_mels, 3000) windows cut to the model's audio context (tiny test models have less)."""
    return np.ascontiguousarray(features[:, :, : CONV_STRIDE * source.model.config.max_source_positions])


def _transcriber(features: np.ndarray, options: GreedyOptions, tokenizer: Any):
    def transcribe(files: Mapping[str, Path]) -> list[str]:
        sessions = {c: load_session(p) for c, p in files.items()}
        texts = []
        for start in range(0, len(features), TRANSCRIBE_BATCH):
            ids = ort_greedy(sessions, features[start:start + TRANSCRIBE_BATCH], options)
            texts += [decode_text(tokenizer, row) for row in ids]
        return texts

    return transcribe


def _gate_options(request: HFExportRequest) -> WhisperGateOptions:
    defaults = WhisperGateOptions()
    return WhisperGateOptions(
        max_wer=defaults.max_wer if request.max_metric_drop is None else request.max_metric_drop,
        gate_clips=defaults.gate_clips if request.eval_samples is None else request.eval_samples)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    from tinymm import __version__

    return {"tinymm": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def share_weights(files: Mapping[str, Mapping[str, Path]]) -> dict[str, Path]:
    """Store the decoders' weights once per precision (export/share_weights.py); returns precision ->
    weights file. A lone int8 decoder (its sibling refused by the gate) joins the fp32 group: the
    float tensors it keeps, above all the 100 MB token table of whisper-base, are the fp32 ones."""
    groups: dict[str, list[Path]] = {}
    for precision in PRECISIONS:
        paths = [files[c][precision] for c in DECODERS if precision in files[c]]
        if len(paths) == len(DECODERS) or precision == "fp32":
            groups[precision] = paths
        elif paths:
            groups["fp32"] += paths
    shared = {}
    for precision, paths in groups.items():
        result = share_initializers(paths, paths[0].parent / f"{WEIGHTS_STEM}.{precision}{WEIGHTS_SUFFIX}")
        if result is not None:
            shared[precision] = result.weights
    return shared


def loaded_bytes(bundle: Bundle, precision: str) -> int:
    """Bytes a runtime reads to run ``precision``: each component's variant (fp32 where it has none,
    as tinymm.load does) and the external weights files those reference."""
    import onnx

    files = set()
    for name, component in bundle.manifest.components.items():
        path = bundle.component_path(name, precision if precision in component.variants else "fp32")
        files.add(path.name)
        for init in onnx.load(str(path), load_external_data=False).graph.initializer:
            files.update(e.value for e in init.external_data if e.key == "location")
    return sum(bundle.manifest.files[f].size for f in files)


def _summary(bundle: Bundle, provenance: Mapping[str, Any]) -> dict[str, Any]:
    manifest = bundle.manifest
    precisions = sorted({p for c in manifest.components.values() for p in c.variants})
    per_precision = {p: loaded_bytes(bundle, p) for p in precisions}
    export = provenance["export"]
    return {"bundle": str(bundle.root), "name": manifest.name, "family": FAMILY, "architecture": ARCHITECTURE,
            "total_bytes": manifest.total_bytes, "bytes_per_precision": per_precision,  # as loaded
            "files": {name: entry.size for name, entry in manifest.files.items()},
            "variants": {c: sorted(comp.variants) for c, comp in manifest.components.items()},
            "seconds": export["seconds"], "total_seconds": export["total_seconds"],
            "parity": {"transformers": export["parity"]["transformers"], "greedy": export["parity"]["greedy"],
                       "max_abs": {c: e["max_abs"] for c, e in export["parity"]["components"].items()}},
            "int8_gate": export["parity"].get("int8_gate", {}), "source_sha256": provenance["source"]["sha256"]}


def export(request: HFExportRequest) -> ExportResult:
    """Export the Whisper checkpoint of ``request`` into a verified bundle (see the module docstring)."""
    started = time.perf_counter()
    quantized = [p for p in request.precisions if p != "fp32"]
    gate_options = _gate_options(request)
    seconds: dict[str, float] = {}
    with BundleWriter(request.out, overwrite=request.force) as writer, \
            tempfile.TemporaryDirectory(prefix="tinymm-whisper-") as tmp, \
            tqdm(total=6 + len(quantized), desc="export whisper", unit="step", disable=not request.progress) as bar:
        work = Path(tmp)

        def step(label: str, t0: float) -> None:
            seconds[label] = round(time.perf_counter() - t0, 2)
            bar.update()

        t = time.perf_counter()
        bar.set_postfix_str("load")
        source = load_whisper_source(request.source)
        graphs = whisper_graphs(source.model)
        options = GreedyOptions.from_tokens(source.tokens, max_new_tokens=min(
            96, source.model.config.max_target_positions - len(source.tokens.prompt())))
        tokenizer = load_text_tokenizer(source.tokenizer_path)
        wanted = 1 + (gate_options.gate_clips + gate_options.calibration_clips if "int8" in quantized else GREEDY_CLIPS)
        clips = load_clips(wanted, source.model.config.num_mel_bins, request.data_dir, request.seed)
        features = _window(source, clips.features)
        step("load", t)
        files: dict[str, dict[str, Path]] = {}
        for component, graph in graphs.items():
            t = time.perf_counter()
            bar.set_postfix_str(f"onnx {component}")
            files[component] = {"fp32": export_onnx(graph, work / f"{component}.onnx", request.options)}
            seconds[f"onnx {component}"] = round(time.perf_counter() - t, 2)
        bar.update()

        t = time.perf_counter()
        bar.set_postfix_str("parity")
        sessions = {c: load_session(paths["fp32"]) for c, paths in files.items()}
        prompt = np.asarray([options.prompt], dtype=np.int64)
        records = record_golden(graphs, chain_cases(graphs, features[:1], prompt, None, GOLDEN_ENC_FRAMES))
        parity = fp32_parity(graphs, sessions, records, source.model, features[:GREEDY_CLIPS], options, request.seed)
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
            gate_clips = features[1:1 + gate_options.gate_clips]
            calibration = features[1 + gate_options.gate_clips:] if len(features) > 1 + gate_options.gate_clips \
                else features[:1]
            calibration = calibration[: gate_options.calibration_clips]
            rank_feeds = {c: [record.inputs] for c, record in records.items()}
            rank_feeds["encoder"] = [{"input_features": calibration[i:i + 1]} for i in range(min(2, len(calibration)))]
            result = build_int8({c: v["fp32"] for c, v in files.items()}, work, calibration,
                                _transcriber(gate_clips if len(gate_clips) else features[:1], options, tokenizer),
                                rank_feeds, gate_options)
            for component, path in result.files.items():
                final = work / f"{component}.int8.onnx"
                path.replace(final)
                files[component]["int8"] = final
            parity["int8_gate"] = dict(result.report)
            step("int8", t)

        t = time.perf_counter()
        bar.set_postfix_str("golden")
        shared = share_weights(files)
        golden = check_golden_variants(files, lambda c, p, path: evaluate_golden(path, records[c], p))
        step("golden", t)

        bar.set_postfix_str("write")
        provenance = _provenance(request, source, clips, parity, golden, seconds, started)
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
        writer.add_text(LICENSE_FILE, WHISPER_LICENSE)
        for record in records.values():
            writer.add_arrays(record.inputs_file, record.inputs)
            writer.add_arrays(record.outputs_file, record.outputs)
        pairs = [golden_pair(records[c], list(v)) for c, v in files.items()]
        name = bundle_name(request.name, request.out)
        writer.add_text("README.md", model_card(name, source, files, shared, golden, provenance))
        writer.write(name=name, family=FAMILY, tasks=TASKS, components=components,
                     preprocess=whisper_preprocess(source), golden=pairs, provenance=provenance,
                     model={**whisper_model_info(source), **({"vad": request.vad} if request.vad else {})},
                     architecture=ARCHITECTURE)
        bar.update()
    bundle = read_bundle(request.out)
    verify_bundle(bundle)
    logger.info("whisper bundle %s written to %s in %.1f s", name, request.out, time.perf_counter() - started)
    return ExportResult(bundle, _summary(bundle, provenance))


def _provenance(request: HFExportRequest, source: WhisperSource, clips: Clips, parity: Mapping[str, Any],
                golden: Mapping[str, Any], seconds: Mapping[str, float], started: float) -> dict[str, Any]:
    from export.bundle_build import _json_safe

    return _json_safe({
        "source": {"path": request.source_label or str(source.directory), "kind": source.kind, "weights": source.weights_path.name,
                   "sha256": source.weights_sha256, "dtype": source.source_dtype,
                   "converter": "export/ctranslate2_whisper.py" if source.kind == KIND_CT2 else "transformers"},
        "export": {"command": request.command, "exporter": f"torch.onnx ({request.options.exporter})",
                   "opset": request.options.opset, "precisions": list(request.precisions),
                   "seconds": dict(seconds), "total_seconds": round(time.perf_counter() - started, 1),
                   "sources": {"golden_clip": clips.names[0], "gate_clips": clips.source},
                   "parity": parity, "golden": golden,
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "versions": _versions(),
    })
