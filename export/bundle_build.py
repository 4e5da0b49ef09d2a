"""From a train/ checkpoint to a validated bundle: export, parity, golden pairs, quantization, writing.

``build_bundle(ExportRequest(...))`` does, in order:

1. read the checkpoint (train/checkpoint.py) and pick the family module from its model kind; find
   the tokenizer and the preprocessing contract (order below); the family module checks them
   against the model and builds the graphs and the inputs that check them;
2. export every component to ONNX fp32 (export/onnx_vlm.py, export/onnx_speech.py);
3. check parity with torch on random and real inputs, and KV-cache greedy decoding against
   no-cache decoding (export/parity.py); a failure stops here, before anything is written;
4. record golden pairs (real inputs, torch fp32 outputs) and, for --precision fp16/int8, build
   those variants (export/fp16.py, export/quantize.py: static QDQ for encoders, dynamic int8 for
   decoder steps); int8 goes through the accuracy gate (export/task_eval_gate.py): on the task
   metric of the whole model when ``samples.data_dir`` holds a test split (export/task_eval*.py,
   which also records the metrics per precision and the runtime-vs-torch agreement), else on the
   golden cosine; a refused component ships no int8 file. Every variant is then checked against
   its golden tolerance;
5. write the bundle with BundleWriter (manifest with components, preprocess, golden pairs, the
   ``model`` object and provenance; ONNX files; tokenizer; README.md model card), then read and
   verify it again.

Where the tokenizer and the contract come from (first found wins):

- tokenizer: ``--tokenizer``; ``extra["tokenizer"]`` of the checkpoint (relative to it); the
  recipe's file name (tokenizer.model, speech.model) in the checkpoint directory, its parent or
  grandparent, or their ``tokenizer/`` subdirectory (the recipes' OUT/tokenizer/);
- contract sections (image, audio, text): ``--preprocess FILE.json``; ``extra["preprocess"]`` of
  the checkpoint; ``preprocess.json`` next to the checkpoint or in its parent; else the recipe's
  defaults (``contract_defaults`` of the family module).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import platform
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from tqdm import tqdm

from export.golden import TOLERANCES, GoldenRecord, evaluate_variant, record_golden, write_golden
from export.onnx_common import (
    ExportError, ExportOptions, Prepared, SampleOptions, bundle_name, export_onnx, shipped_precisions,
)
from export.parity import ParityError, check_parity, component_parity, load_session
from export.share_weights import share_decoder_weights
from export.task_eval import GateOptions, TaskEvaluator
from export.task_eval_card import bytes_per_precision, gate_lines, task_lines
from export.task_eval_gate import GOLDEN_METRIC, Int8Variants, build_int8_variants, task_metrics
from export.task_evaluators import make_task_evaluator, missing_test_split
from tinymm import __version__
from tinymm.bundle import Bundle, BundleWriter, read_bundle, verify_bundle
from tinymm.commands.verify import GoldenResult
from tinymm.errors import InputError
from tinymm.hashing import sha256_file
from tinymm.preprocess.config import AudioConfig, ImageConfig, TextConfig

logger = logging.getLogger(__name__)

VLM_KIND = "train.models.vlm.VisionLanguageModel"
SPEECH_KIND = "train.models.speech.SpeechCTCModel"
FAMILY_MODULES = {VLM_KIND: "export.onnx_vlm", SPEECH_KIND: "export.onnx_speech"}  # model kind -> family module
PREPROCESS_FILE = "preprocess.json"  # a contract next to a checkpoint: {"image": {...}, "audio": {...}, "text": {...}}
SEARCH_LEVELS = 3  # the checkpoint directory, its parent and its grandparent


@dataclass(frozen=True)
class ExportRequest:
    """What to export and how; checked once here (ValueError per bad field)."""

    checkpoint: Path  # a directory written by train.checkpoint.save_checkpoint
    out: Path  # the bundle directory to write
    precisions: tuple[str, ...] = ("fp32",)  # fp32 is always written; fp16 and int8 on request
    samples: SampleOptions = field(default_factory=SampleOptions)  # real and random inputs that check the export
    tokenizer: Path | None = None  # sentencepiece model; None: found next to the checkpoint
    preprocess: Path | None = None  # JSON contract; None: from the checkpoint or the recipe's defaults
    name: str | None = None  # bundle name; None: the output directory's name
    force: bool = False  # replace an existing bundle at out
    options: ExportOptions = field(default_factory=ExportOptions)
    command: str = ""  # the command line, recorded in the provenance
    progress: bool = True  # show a tqdm bar
    gate: GateOptions = field(default_factory=GateOptions)  # the int8 gate's task metric (with --data)

    def __post_init__(self) -> None:
        for name in ("checkpoint", "out", "tokenizer", "preprocess"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "precisions", shipped_precisions(self.precisions))


def _search_dirs(checkpoint: Path) -> list[Path]:
    return [checkpoint, *list(checkpoint.resolve().parents)[: SEARCH_LEVELS - 1]]


def find_tokenizer(request: ExportRequest, meta: Mapping[str, Any], file_name: str) -> Path:
    """The sentencepiece model to ship (see the module docstring for the search order)."""
    if request.tokenizer is not None:
        if not request.tokenizer.is_file():
            raise InputError(f"--tokenizer {request.tokenizer} is not a file; give the sentencepiece .model file")
        return request.tokenizer
    candidates = []
    if isinstance(meta.get("extra", {}).get("tokenizer"), str):
        candidates.append(request.checkpoint / meta["extra"]["tokenizer"])
    for directory in _search_dirs(request.checkpoint):
        candidates += [directory / file_name, directory / "tokenizer" / file_name]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise InputError(
            f"no tokenizer for checkpoint {request.checkpoint}: looked for {file_name} in "
            f"{', '.join(str(c.parent) for c in candidates)}; pass --tokenizer PATH/TO/{file_name}"
        )
    return found


def _read_contract(path: Path) -> Mapping[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"preprocess contract {path} is not readable JSON ({e}); fix or remove it") from e
    if not isinstance(data, Mapping):
        raise InputError(f"preprocess contract {path} must hold a JSON object with image/audio/text sections")
    return data


def _contract_sources(request: ExportRequest, meta: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(description, {"image"|"audio"|"text": dict}) in priority order."""
    sources = []
    if request.preprocess is not None:
        if not request.preprocess.is_file():
            raise InputError(f"--preprocess {request.preprocess} is not a file; give a JSON file of "
                             "image/audio/text sections")
        sources.append((str(request.preprocess), _read_contract(request.preprocess)))
    extra = meta.get("extra", {}).get("preprocess")
    if isinstance(extra, Mapping):
        sources.append((f"{request.checkpoint}/config.json extra.preprocess", extra))
    for directory in _search_dirs(request.checkpoint)[:2]:
        if (directory / PREPROCESS_FILE).is_file():
            sources.append((str(directory / PREPROCESS_FILE), _read_contract(directory / PREPROCESS_FILE)))
    return sources


def resolve_contract(request: ExportRequest, meta: Mapping[str, Any],
                     defaults: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Each needed section (the keys of ``defaults``: a config) from the first source that has it."""
    classes = {"image": ImageConfig, "audio": AudioConfig, "text": TextConfig}
    sections, origin = {}, {}
    sources = _contract_sources(request, meta)
    for key, default in defaults.items():
        found = next(((where, data[key]) for where, data in sources if key in data), None)
        if found is None:
            logger.warning("no %s contract with the checkpoint; using the training recipe's default "
                           "(pass --preprocess FILE.json to override): %s", key, json.dumps(default.to_dict()))
            sections[key], origin[key] = default, "recipe default"
            continue
        try:
            sections[key], origin[key] = classes[key].from_dict(found[1]), found[0]
        except (TypeError, ValueError) as e:
            raise InputError(f"the {key} contract in {found[0]} is invalid: {e}") from e
    return sections, origin


def load_checkpoint_model(request: ExportRequest) -> tuple[Any, dict[str, Any]]:
    """(model in eval mode, config.json) of the checkpoint; InputError when missing or of an unknown kind."""
    from train.checkpoint import load_checkpoint, read_checkpoint_meta

    if not request.checkpoint.is_dir():
        raise InputError(f"checkpoint {request.checkpoint} does not exist or is not a directory; "
                         "give a directory written by train.checkpoint.save_checkpoint (e.g. runs/vlm/distill/final)")
    meta = read_checkpoint_meta(request.checkpoint)
    if meta["kind"] == VLM_KIND:
        from train.models.vlm import VisionLanguageModel as model_cls, VLMConfig as config_cls
    elif meta["kind"] == SPEECH_KIND:
        from train.models.speech import SpeechConfig as config_cls, SpeechCTCModel as model_cls
    else:
        raise InputError(f"checkpoint {request.checkpoint} holds a {meta['kind']!r}; python -m export knows "
                         f"{list(FAMILY_MODULES)}")
    model, _, meta = load_checkpoint(request.checkpoint, model_cls, config_cls)
    return model.eval(), meta


def prepare(request: ExportRequest) -> Prepared:
    """Load the checkpoint, find its tokenizer and contract, and prepare its family's export."""
    model, meta = load_checkpoint_model(request)
    family = importlib.import_module(FAMILY_MODULES[meta["kind"]])
    tokenizer_path = find_tokenizer(request, meta, family.TOKENIZER_FILE)
    sections, origin = resolve_contract(request, meta, family.contract_defaults(model))
    sources = {"tokenizer": str(tokenizer_path), **{f"preprocess.{k}": v for k, v in origin.items()}}
    return family.prepare(model, meta, tokenizer_path, sections, sources, request.samples)


def _fp16(component: str, fp32: Path, work: Path) -> Path:
    """The fp16 variant of one component (float16 weights and compute, float32 I/O)."""
    try:
        from export.fp16 import convert_fp16
    except ImportError as e:
        raise ExportError(f"--precision fp16 needs export/fp16.py, which failed to import ({e}); export fp32 only "
                          "or fix the installation") from e
    return convert_fp16(fp32, work / f"{component}.fp16.onnx", keep_io_types=True)


def _task_eval(prepared: Prepared, request: ExportRequest, evaluator: TaskEvaluator | None,
               files: Mapping[str, Mapping[str, Path]], int8: Int8Variants | None) -> dict[str, Any]:
    """The provenance's ``task_eval``: task metrics per precision, or why there are none."""
    if evaluator is None:
        return {"metric": GOLDEN_METRIC,
                "reason": f"no task metric: {missing_test_split(prepared.family, request.samples.data_dir)}"}
    task_eval = task_metrics(evaluator, files)
    if int8 is not None and int8.combined is not None:
        task_eval["int8_variant"] = {**int8.combined, "max_drop": request.gate.max_metric_drop}
    return task_eval


def _json_safe(value: Any) -> Any:
    """A copy of a JSON-like value with non-finite floats as strings and tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float)):
        return value
    return str(value)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {"tinymm": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def _model_card(name: str, prepared: Prepared, files: Mapping[str, Mapping[str, Path]],
                shared_weights: Mapping[str, Path], golden: Mapping[str, Mapping[str, GoldenResult]],
                provenance: Mapping[str, Any]) -> str:
    """README.md: what the bundle is, sizes and golden metrics per precision, parity, contract, provenance."""
    checkpoint, parity = provenance["checkpoint"], provenance["export"]["parity"]
    lines = [
        f"# {name}", "",
        f"A tinymm bundle of family `{prepared.family}` (tasks: {', '.join(prepared.tasks)}), exported by "
        f"`python -m export` from checkpoint `{checkpoint['path']}` (step {checkpoint['step']}, "
        f"model.safetensors sha256 `{checkpoint['sha256']}`).", "",
        "## Components", "",
        "Golden metrics: the variant on onnxruntime CPU against torch fp32, on the bundle's golden inputs.", "",
        "| component | precision | file | size (bytes) | max abs error | min cosine | tolerance |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for component, variants in files.items():
        for precision, path in variants.items():
            r = golden[component][precision]
            lines.append(f"| {component} | {precision} | {path.name} | {path.stat().st_size} | {r.max_abs:.3g} | "
                         f"{r.min_cosine:.6f} | {r.tolerance} |")
    for precision, path in shared_weights.items():
        lines.append(f"| decoder weights (shared by both decoder graphs) | {precision} | {path.name} | "
                     f"{path.stat().st_size} | | | |")
    total = bytes_per_precision(files, shared_weights)
    lines += ["", "Total model bytes per precision (ONNX files and shared weights): " + ", ".join(f"{p} {n}" for p, n in total.items()), "",
              *task_lines(provenance["export"]["task_eval"], files, shared_weights),
              *gate_lines(parity.get("int8_gate", {})),
              "## Parity of the fp32 export with torch", "",
              "| component | random inputs max abs | real inputs max abs | min cosine |", "|---|---:|---:|---:|"]
    for component, entry in parity["components"].items():
        lines.append(f"| {component} | {entry['random']['max_abs']:.3g} | {entry['real']['max_abs']:.3g} | "
                     f"{entry['min_cosine']:.7f} |")
    if parity.get("greedy"):
        g = parity["greedy"]
        lines += ["", f"Greedy decoding with the KV cache (onnxruntime) vs without (torch): "
                      f"{'identical' if g['tokens_match'] else 'DIFFERENT'} tokens over {g['steps']} steps x {g['batch']}."]
    info = {k: (f"{len(v)} labels, e.g. {v[0]!r}" if k == "labels" and v else v) for k, v in prepared.model_info.items()
            if k != "domain_check"}
    lines += _domain_lines(prepared.model_info.get("domain_check"))
    lines += ["", "## Preprocessing contract", "",
              *(f"- {section}: `{json.dumps(config)}`" for section, config in prepared.preprocess.to_dict().items()),
              "", "## Model (manifest `model` object)", "", *(f"- {k}: {v}" for k, v in info.items()), "",
              "## Provenance", "",
              f"- export command: `{provenance['export']['command']}`",
              f"- real inputs: {prepared.sources['real_inputs']}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in provenance["versions"].items()),
              f"- created: {provenance['export']['created']}", ""]
    return "\n".join(lines)


def _domain_lines(spec: Mapping[str, Any] | None) -> list[str]:
    """The model card's account of the domain check (export/vlm_domain.py), or nothing without one."""
    if not spec:
        return []
    calibration = spec["calibration"]
    rejected = ", ".join(f"{p} {r['rejected']} of {r['scenes']}" for p, r in calibration["test_rejected"].items())
    return ["", "## Domain check", "",
            f"A frame whose mean image token lies farther than {spec['threshold']} (Mahalanobis distance) from "
            f"the Gaussian of {calibration['reference']} is rejected (`reject_reason: out_of_domain`). The "
            f"threshold is {calibration['threshold_rule']}; test scenes rejected: {rejected}. File "
            f"`{spec['file']}`; see tinymm/pipelines/domain_check.py."]


def _with_domain_check(prepared: Prepared, request: ExportRequest, encoders: Mapping[str, Path],
                       writer: BundleWriter, work: Path) -> Prepared:
    """Fit the domain check on --data's scenes (export/vlm_domain.py) and stage its file; the
    manifest's model object gains ``domain_check``. Unchanged without scene splits."""
    from export.vlm_domain import DOMAIN_FILE, fit_domain_check

    spec = fit_domain_check(request.samples.data_dir, prepared.preprocess.image, encoders, work / DOMAIN_FILE)
    if spec is None:
        return prepared
    writer.add_file(DOMAIN_FILE, work / DOMAIN_FILE)
    return replace(prepared, model_info={**prepared.model_info, "domain_check": spec})


def build_bundle(request: ExportRequest) -> Bundle:
    """Export the checkpoint of ``request`` into a verified bundle at ``request.out``; returns it."""
    started = time.perf_counter()
    prepared = prepare(request)
    name = bundle_name(request.name, request.out)
    quantized = [p for p in request.precisions if p != "fp32"]
    steps = len(prepared.graphs) * (1 + len(quantized)) + 2  # exports, variants, parity, write
    # The writer checks the destination now, before minutes of work; it publishes only at the end.
    with BundleWriter(request.out, overwrite=request.force) as writer, \
            tempfile.TemporaryDirectory(prefix="tinymm-export-") as tmp, \
            tqdm(total=steps, desc="export", unit="step", disable=not request.progress) as bar:
        work = Path(tmp)
        files: dict[str, dict[str, Path]] = {}
        seconds: dict[str, float] = {}
        for component, graph in prepared.graphs.items():
            bar.set_postfix_str(f"onnx {component}")
            t = time.perf_counter()
            files[component] = {"fp32": export_onnx(graph, work / f"{component}.onnx", request.options)}
            seconds[component] = round(time.perf_counter() - t, 3)
            bar.update()
        bar.set_postfix_str("parity")
        sessions = {c: load_session(paths["fp32"]) for c, paths in files.items()}
        records = record_golden(prepared.graphs, prepared.real_cases)
        parity: dict[str, Any] = {"max_abs_limit": TOLERANCES["fp32"].max_abs, "components": {
            c: component_parity(prepared.graphs[c], sessions[c], prepared.random_cases[c],
                                [(records[c].inputs, records[c].outputs)])
            for c in prepared.graphs}}
        if prepared.greedy is not None:
            parity["greedy"] = prepared.greedy(sessions)
        check_parity(parity)
        bar.update()
        fp32 = {c: paths["fp32"] for c, paths in files.items()}
        evaluator = make_task_evaluator(prepared, request.samples.data_dir, request.gate)
        if "fp16" in quantized:
            for component in prepared.graphs:
                bar.set_postfix_str(f"fp16 {component}")
                files[component]["fp16"] = _fp16(component, fp32[component], work)
                bar.update()
        int8 = None
        if "int8" in quantized:
            bar.set_postfix_str("int8 gate")
            int8 = build_int8_variants(prepared, fp32, work, records, evaluator, request.gate)
            for component, path in int8.files.items():
                files[component]["int8"] = path
            bar.update(len(prepared.graphs))
        bar.set_postfix_str("task metrics")
        task_eval = _task_eval(prepared, request, evaluator, files, int8)
        if prepared.family == "vision-language" and "image_encoder" in files:
            prepared = _with_domain_check(prepared, request, files["image_encoder"], writer, work)
        gates = dict(int8.reports) if int8 is not None else {}
        # The two decoder graphs hold the same weights: store them once per precision in a shared
        # external-data file (export/share_weights.py). This rewrites the decoder files, so the golden
        # check runs after it, on the files the bundle ships.
        shared = share_decoder_weights(files)
        golden = {c: {p: evaluate_variant(path, records[c], p) for p, path in variants.items()}
                  for c, variants in files.items()}
        failed = [r for by_precision in golden.values() for r in by_precision.values() if not r.passed]
        if failed:
            raise ParityError(
                "variant(s) outside their golden tolerance: " + "; ".join(
                    f"{r.component} {r.precision} ({', '.join(r.failures)})" for r in failed)
                + ". Export without that precision, or exclude the sensitive nodes from quantization; nothing was written")
        bar.set_postfix_str("write")
        for weights in shared.values():  # listed in the manifest with its sha256, like every bundle file
            writer.add_file(weights.weights.name, weights.weights)
        _write(writer, request, name, prepared, files, records, golden, dict(parity, int8_gate=gates), task_eval,
               seconds, started, {precision: w.weights for precision, w in shared.items()})
        bar.update()
    bundle = read_bundle(request.out)
    report = verify_bundle(bundle)
    logger.info("bundle %s at %s: %d files, %d bytes, verified", name, request.out, report.files_checked,
                report.bytes_checked)
    return bundle


def _write(writer: BundleWriter, request: ExportRequest, name: str, prepared: Prepared,
           files: Mapping[str, Mapping[str, Path]], records: Mapping[str, GoldenRecord],
           golden: Mapping[str, Mapping[str, GoldenResult]], parity: Mapping[str, Any], task_eval: Mapping[str, Any],
           seconds: Mapping[str, float], started: float, shared_weights: Mapping[str, Path]) -> None:
    """Stage every file in ``writer`` and publish the bundle (BundleWriter validates it first)."""
    from train.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_checkpoint_meta

    meta = read_checkpoint_meta(request.checkpoint)
    provenance = _json_safe({
        "checkpoint": {"path": str(request.checkpoint), "kind": meta["kind"], "step": meta["step"],
                       "sha256": sha256_file(request.checkpoint / WEIGHTS_FILE),
                       "config_sha256": sha256_file(request.checkpoint / CONFIG_FILE)},
        "training": meta.get("extra", {}),
        "export": {"command": request.command, "exporter": f"torch.onnx ({request.options.exporter})",
                   "opset": request.options.opset, "precisions": list(request.precisions),
                   "export_seconds": dict(seconds), "total_seconds": round(time.perf_counter() - started, 1),
                   "sources": dict(prepared.sources), "parity": parity, "task_eval": task_eval,
                   "int8_gate_options": {"max_metric_drop": request.gate.max_metric_drop,
                                         "eval_samples": request.gate.samples_for(prepared.family)},
                   "golden": {c: {p: {"max_abs": r.max_abs, "min_cosine": r.min_cosine} for p, r in by_p.items()}
                              for c, by_p in golden.items()},
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "versions": _versions(),
    })
    components = {}
    for component, variants in files.items():
        bundle_files = {}
        for precision, path in variants.items():
            writer.add_file(path.name, path)
            bundle_files[precision] = path.name
        components[component] = prepared.graphs[component].component(bundle_files)
    writer.add_file(prepared.tokenizer_path.name, prepared.tokenizer_path)
    pairs = write_golden(writer, records, {c: list(v) for c, v in files.items()})
    writer.add_text("README.md", _model_card(name, prepared, files, shared_weights, golden, provenance))
    writer.write(name=name, family=prepared.family, tasks=prepared.tasks, components=components,
                 preprocess=prepared.preprocess, golden=pairs, provenance=provenance, model=prepared.model_info)
