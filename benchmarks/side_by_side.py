"""Side by side in one process: torch eager fp32 vs tinymm on onnxruntime fp32 and int8.

Usage:
    python benchmarks/side_by_side.py [--vlm-checkpoint DIR] [--speech-checkpoint DIR] [--runs N]
        [--warmup N] [--threads 2] [--out benchmarks/results] [--work DIR] [--tasks caption,ask,...]
        [--no-cold-start] [--no-plots] [--profile]

Without checkpoints, freshly initialised students (VLMConfig.student(), SpeechConfig.student(),
seeded) are saved and exported with ``python -m export CKPT --out BUNDLE --precision fp32,int8``:
random weights run the same graphs at the same speed as trained ones, except that they never emit
EOS, so every caption runs the full max_new_tokens (a worst case for the decoder's share).

Per task (caption, ask, classify on a rendered scene; transcribe on a synthesized clip) the
variants - the train/ model in torch eager (``torch.inference_mode``, its own KV-cache greedy
``generate`` / CTC greedy), and tinymm on onnxruntime fp32 and int8 (TensorRT fp16/int8 when the
provider is present) - run round-robin, one call each per round with the starting variant
rotated, so that the noise of a shared machine hits all of them alike; ratios are the point.
Every variant gets the same input, the same tokens budget, greedy decoding and ``--threads``.

Reported: end-to-end p50/p90/p99 and per-stage times, tokens/s, speed-up over torch eager, the
runtime's own overhead (end-to-end minus the time inside onnxruntime's run calls) as a share of
the end-to-end p50, the cold start of ``tinymm caption``, the peak RSS of a process that loads
both bundles with only the runtime imported, the roofline rows (benchmarks/roofline.py), the
load average, the machine and this command; targets are judged met or missed, never loosened.
Writes ``side_by_side_threads{N}.json`` / ``.md`` (and PNGs, benchmarks/plots.py) under ``--out``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: train/, export/ and benchmarks/ live in the checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.variants import (  # noqa: E402
    SEED, SPEECH_RATE_HZ, TORCH, Measurement, Variant, decoder_step_feeds, encoder_features, encoder_pixels,
    interleave, scene_input, speech_input, tinymm_variants, torch_variants,
)
from tinymm.bench import StageRecorder, collect_machine_facts, measure_cold_start, summarize  # noqa: E402
from tinymm.bench.stats import RunRecord  # noqa: E402
from tinymm.hashing import sha256_file  # noqa: E402
from tinymm.commands.bench import write_wav  # noqa: E402

logger = logging.getLogger("side_by_side")

TASKS = ("caption", "ask", "classify", "transcribe")
DEFAULT_RUNS, DEFAULT_WARMUP, DEFAULT_THREADS = 30, 3, 2
COLD_START_REPEATS = 3
PROFILE_TOP = 25  # functions listed per profile
EXPORTERS = ("dynamo", "torchscript")  # python -m export --exporter
ROOFLINE_DECODER_PAST = 24  # cached tokens of the decoder step in the roofline: mid-caption
MS_PER_S, BYTES_PER_MB = 1000.0, 1e6
VLM_TOKENIZER = ROOT / "runs" / "vlm" / "tokenizer" / "tokenizer.model"  # the default recipe's, when trained
SPEECH_TOKENIZER = ROOT / "runs" / "speech" / "tokenizer" / "speech.model"
# The targets; reported as met or missed.
TARGET_SPEEDUP = 3.0  # tinymm int8 end-to-end p50 vs torch eager fp32, caption and transcribe
TARGET_OVERHEAD_SHARE = 0.05  # runtime overhead / end-to-end p50
TARGET_COLD_START_S = 1.0  # `tinymm caption`: process start -> first result
TARGET_PEAK_RSS_MB = 300.0  # a process holding both default bundles


@dataclass(frozen=True)
class StudyOptions:
    """What the study runs; checked once (ValueError per bad value)."""

    vlm_checkpoint: Path | None = None  # None: a freshly initialised student
    speech_checkpoint: Path | None = None
    runs: int = DEFAULT_RUNS  # timed rounds (each runs every variant once)
    warmup: int = DEFAULT_WARMUP  # untimed rounds first
    threads: int = DEFAULT_THREADS  # torch intra-op threads and onnxruntime intra-op threads per model
    out: Path = ROOT / "benchmarks" / "results"
    work: Path | None = None  # checkpoints and bundles; None: a temporary directory
    tasks: tuple[str, ...] = TASKS
    cold_start: bool = True
    plots: bool = True
    profile: bool = False  # cProfile the int8 caption and transcribe calls
    command: str = ""
    # torch.onnx exporter of the bundles: dynamo, as scripts/make_default_bundles.py ships them
    exporter: str = "dynamo"

    def __post_init__(self) -> None:
        for name, low in (("runs", 1), ("warmup", 0), ("threads", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} must be an integer >= {low}")
        if self.exporter not in EXPORTERS:
            raise ValueError(f"exporter={self.exporter!r} must be one of {list(EXPORTERS)}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"tasks={list(self.tasks)}: choose among {list(TASKS)}")


# ---- checkpoints, bundles, inputs --------------------------------------------------------------


def fresh_checkpoints(work: Path, seed: int) -> tuple[Path, Path]:
    """Freshly initialised default students, with the tokenizers the export looks for next to them."""
    import torch

    from train.checkpoint import save_checkpoint
    from train.models import SpeechConfig, SpeechCTCModel, VisionLanguageModel, VLMConfig
    from train.speech_tokenizer import load_speech_tokenizer
    from train.vlm_data import AUX_CLASSES
    from train.vlm_tokenizer import load_tokenizer

    vlm_dir, speech_dir = work / "vlm", work / "speech"
    _tokenizers(vlm_dir / "tokenizer", speech_dir / "tokenizer")
    torch.manual_seed(seed)
    vocab = load_tokenizer(vlm_dir / "tokenizer", VLMConfig().max_text_len).vocab_size
    config = VLMConfig.student(vocab_size=vocab, aux_attribute_classes=AUX_CLASSES)
    if not (vlm_dir / "student" / "config.json").is_file():
        save_checkpoint(vlm_dir / "student", VisionLanguageModel(config), config, step=0, extra={"weights": "random"})
    speech_vocab = load_speech_tokenizer(speech_dir / "tokenizer" / "speech.model").vocab_size
    speech = SpeechConfig.student(vocab_size=speech_vocab)
    if not (speech_dir / "student" / "config.json").is_file():
        save_checkpoint(speech_dir / "student", SpeechCTCModel(speech), speech, step=0, extra={"weights": "random"})
    return vlm_dir / "student", speech_dir / "student"


def _tokenizers(vlm_dir: Path, speech_dir: Path) -> None:
    """The default recipes' tokenizers when they were trained (runs/), else small ones trained here."""
    import shutil

    from train.data.scene_dataset import generate_example
    from train.data.scene_language import all_labels
    from train.data.scene_render import RenderConfig
    from train.data.scene_world import WorldConfig
    from train.data.speech_grammar import all_intents, all_transcripts
    from train.speech_tokenizer import SpeechTokenizerConfig, train_speech_tokenizer
    from train.vlm_tokenizer import scene_corpus, train_tokenizer

    if not (vlm_dir / "tokenizer.model").is_file():
        if VLM_TOKENIZER.is_file():
            vlm_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(VLM_TOKENIZER, vlm_dir / "tokenizer.model")
        else:
            notes = [generate_example(WorldConfig(), RenderConfig(), SEED, 0, i)[1] for i in range(200)]
            train_tokenizer(scene_corpus(notes, all_labels()), vlm_dir, vocab_size=512, context_length=64)
    if not (speech_dir / "speech.model").is_file():
        if SPEECH_TOKENIZER.is_file():
            speech_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(SPEECH_TOKENIZER, speech_dir / "speech.model")
        else:
            lines = [t for intent in all_intents() for t in all_transcripts(intent)]
            train_speech_tokenizer(lines, speech_dir / "speech.model", SpeechTokenizerConfig())


def export_bundle(checkpoint: Path, out: Path, precisions: str, exporter: str) -> str:
    """``python -m export`` the checkpoint to ``out`` unless ``out`` already holds its export; the command."""
    from tinymm.bundle import read_bundle

    command = [sys.executable, "-m", "export", str(checkpoint), "--out", str(out), "--precision", precisions,
               "--threads", "1", "--no-progress", "--force", "--exporter", exporter]
    if (out / "manifest.json").is_file():
        with read_bundle(out, verify_checksums=False) as bundle:
            done = bundle.manifest.provenance.get("checkpoint", {}).get("sha256")
            have = set(bundle.manifest.components[next(iter(bundle.manifest.components))].precisions)
        weights = sha256_file(checkpoint / "model.safetensors")
        if done == weights and set(precisions.split(",")) <= have:
            return shlex.join(["python", *command[1:]]) + "  # reused"
    subprocess.run(command, check=True, cwd=ROOT)
    return shlex.join(["python", *command[1:]])


# ---- summarizing -------------------------------------------------------------------------------


def _ms(seconds: float) -> float:
    return round(seconds * MS_PER_S, 3)


def summarize_variant(label: str, runs: list[Measurement], baseline: list[Measurement] | None) -> dict[str, Any]:
    """Latency, stages, tokens/s, overhead and the speed-up over ``baseline`` (paired by round)."""
    recorder = StageRecorder()
    for m in runs:
        recorder.record(RunRecord(m.total_s, m.stages, 1, m.tokens, m.token_times_s))
    latency = summarize([m.total_s for m in runs])
    total_s = sum(m.total_s for m in runs)
    tokens = [m.tokens for m in runs if m.tokens is not None]
    steps = [t for m in runs for t in m.token_times_s]
    out: dict[str, Any] = {
        "label": label,
        "latency_ms": latency.to_dict(),
        "stages_ms": {name: s.to_dict() for name, s in recorder.stage_summaries().items()},
        "stage_check": recorder.check().to_dict(),
        "tokens_per_run": sorted(set(tokens)) if tokens else None,
        "tokens_per_s": round(sum(tokens) / total_s, 2) if tokens else None,
        "decode_ms_per_token_p50": _ms(summarize(steps).p50_s) if steps else None,
        "token_ids": list(runs[0].token_ids) if runs[0].token_ids else None,
    }
    timed = [m for m in runs if m.model_s is not None]
    if timed:  # overhead: outside onnxruntime; glue: outside onnxruntime, preprocessing and postprocessing
        overhead = summarize([m.total_s - m.model_s for m in timed])
        glue = summarize([m.total_s - m.model_s - m.stages.get("preprocess", 0.0) - m.stages.get("postprocess", 0.0)
                          for m in timed])
        out["model_ms_p50"] = _ms(summarize([m.model_s for m in timed]).p50_s)
        out["overhead_ms_p50"] = _ms(overhead.p50_s)
        out["overhead_share"] = round(overhead.p50_s / latency.p50_s, 4)
        out["glue_ms_p50"] = _ms(glue.p50_s)
        out["glue_share"] = round(glue.p50_s / latency.p50_s, 4)
    if baseline is not None:
        base = summarize([m.total_s for m in baseline])
        out["speedup_vs_torch"] = round(base.p50_s / latency.p50_s, 3)
        paired = summarize([b.total_s / m.total_s for b, m in zip(baseline, runs)])  # round by round
        out["speedup_vs_torch_paired"] = round(paired.p50_s, 3)
        out["tokens_match_torch"] = bool(baseline[0].token_ids == runs[0].token_ids) if runs[0].token_ids else None
    return out


# ---- cold start, memory, profile ---------------------------------------------------------------

RSS_CHILD = r"""
import json, resource, sys
import tinymm

def rss():
    try:
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return {k: int(status[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"VmRSS": None, "VmHWM": peak}

vlm_path, speech_path, image, clip, threads = sys.argv[1:6]
vlm = tinymm.load(vlm_path, provider="cpu", threads=int(threads))
asr = tinymm.load(speech_path, provider="cpu", threads=int(threads))
loaded = rss()
vlm.caption(image)
asr.transcribe(clip)
print(json.dumps({"after_load": loaded, "after_inference": rss(), "torch_imported": "torch" in sys.modules,
                  "precision": "auto (int8 on CPU)"}))
"""


def peak_rss(vlm_bundle: Path, speech_bundle: Path, image: Path, clip: Path, threads: int) -> dict[str, Any]:
    """RSS of a fresh process that imports only tinymm, loads both bundles and runs each once.

    The peak is VmHWM, which starts afresh at exec (ru_maxrss would inherit this large process's)."""
    argv = [sys.executable, "-c", RSS_CHILD, str(vlm_bundle), str(speech_bundle), str(image), str(clip), str(threads)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["peak_mb"] = round(result["after_inference"]["VmHWM"] / BYTES_PER_MB, 1)
    result["command"] = "python -c RSS_CHILD " + shlex.join(argv[3:])
    return result


def profile_calls(variant: Variant, runs: int) -> str:
    """cProfile of ``runs`` calls of ``variant``: the top functions by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        variant.call()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).strip_dirs().sort_stats("tottime").print_stats(PROFILE_TOP)
    return text.getvalue()


# ---- the study -------------------------------------------------------------------------------


def _targets(tasks: dict[str, Any], cold: dict[str, Any] | None, rss: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    for task in ("caption", "transcribe"):
        int8 = tasks.get(task, {}).get("ort-int8")
        if int8 is not None:
            rows.append({"target": f"{task}: tinymm int8 vs torch eager fp32 (end-to-end p50)",
                         "required": f">= {TARGET_SPEEDUP:g}x", "measured": f"{int8['speedup_vs_torch']:.2f}x",
                         "met": int8["speedup_vs_torch"] >= TARGET_SPEEDUP})
            rows.append({"target": f"{task}: runtime overhead / end-to-end p50 (int8)",
                         "required": f"<= {TARGET_OVERHEAD_SHARE:.0%}", "measured": f"{int8['overhead_share']:.1%}",
                         "met": int8["overhead_share"] <= TARGET_OVERHEAD_SHARE})
    if cold is not None:
        rows.append({"target": "cold start of `tinymm caption` (median)", "required": f"<= {TARGET_COLD_START_S:g} s",
                     "measured": f"{cold['median_first_result_s']:.2f} s",
                     "met": cold["median_first_result_s"] <= TARGET_COLD_START_S})
    if rss is not None:
        rows.append({"target": "peak RSS, both bundles loaded and run once",
                     "required": f"<= {TARGET_PEAK_RSS_MB:g} MB", "measured": f"{rss['peak_mb']:.0f} MB",
                     "met": rss["peak_mb"] <= TARGET_PEAK_RSS_MB})
    return rows


def prepare_bundles(options: StudyOptions, work: Path) -> dict[str, Any]:
    """Checkpoints (given or fresh) exported under ``work/bundles``: paths, export commands, TensorRT."""
    from tinymm.backends.base import get_backend

    fresh = {name: getattr(options, f"{name}_checkpoint") is None for name in ("vlm", "speech")}
    vlm, speech = fresh_checkpoints(work / "fresh", SEED) if any(fresh.values()) else (None, None)
    checkpoints = {"vlm": options.vlm_checkpoint or vlm, "speech": options.speech_checkpoint or speech}
    tensorrt = "tensorrt" in get_backend("onnxruntime").available_providers()
    precisions = "fp32,fp16,int8" if tensorrt else "fp32,int8"
    exports = [export_bundle(path, work / "bundles" / name, precisions, options.exporter)
               for name, path in checkpoints.items()]
    weights = ", ".join(f"{name} {'fresh random' if new else 'from its checkpoint'}" for name, new in fresh.items())
    if any(fresh.values()):
        weights += (" (random weights run at the speed of trained ones, but never emit EOS: captions run the full "
                    "max_new_tokens)")
    return {"checkpoints": checkpoints, "vlm": work / "bundles" / "vlm", "speech": work / "bundles" / "speech",
            "exports": exports, "tensorrt": tensorrt, "weights": weights}


def measure_tasks(by_variant: list[dict[str, Variant]], options: StudyOptions) -> dict[str, Any]:
    """Task -> variant name -> summary, every task's variants interleaved."""
    tasks: dict[str, Any] = {}
    for task in options.tasks:
        logger.info("%s: %d variants x (%d warmup + %d runs), interleaved", task, len(by_variant),
                    options.warmup, options.runs)
        variants = [v[task] for v in by_variant]
        labels = {v.name: v.label for v in variants}
        results = interleave(variants, options.runs, options.warmup)
        tasks[task] = {name: summarize_variant(labels[name], runs, None if name == TORCH else results[TORCH])
                       for name, runs in results.items()}
    return tasks


def _torch_version() -> str:
    import torch

    return torch.__version__


def run_study(options: StudyOptions) -> dict[str, Any]:
    """Prepare the models, run every variant interleaved, and return the JSON-ready study."""
    import cv2

    from benchmarks.roofline import roofline

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as scratch:
        work = options.work or Path(scratch)
        models = prepare_bundles(options, work)
        vlm_bundle, speech_bundle, checkpoints = models["vlm"], models["speech"], models["checkpoints"]
        image, question = scene_input()
        clip, clip_note = speech_input()
        inputs = {"image": image, "question": question, "clip": clip}
        by_variant = [torch_variants(checkpoints["vlm"], checkpoints["speech"], vlm_bundle, speech_bundle,
                                     options.threads, inputs)]
        ort = [("ort-fp32", "cpu", "fp32"), ("ort-int8", "cpu", "int8")]
        ort += [("trt-fp16", "tensorrt", "fp16"), ("trt-int8", "tensorrt", "int8")] if models["tensorrt"] else []
        by_variant += [tinymm_variants(vlm_bundle, speech_bundle, n, p, q, options.threads, inputs) for n, p, q in ort]
        tasks = measure_tasks(by_variant, options)
        int8 = next(v for v in by_variant if v["caption"].name == "ort-int8")
        profiles = {task: profile_calls(int8[task], options.runs) for task in ("caption", "transcribe")
                    if options.profile}
        image_path, clip_path = work / "scene.png", work / "clip.wav"
        cv2.imwrite(str(image_path), image)
        write_wav(clip_path, clip, SPEECH_RATE_HZ)
        cold = None
        if options.cold_start:
            command = [sys.executable, "-m", "tinymm", "caption", str(image_path), "--bundle", str(vlm_bundle),
                       "--provider", "cpu", "--precision", "int8", "--threads", str(options.threads), "--json"]
            cold = measure_cold_start(command, repeats=COLD_START_REPEATS).to_dict()
        rss = peak_rss(vlm_bundle, speech_bundle, image_path, clip_path, options.threads)
        graphs = ((vlm_bundle, "image_encoder", {"pixel_values": encoder_pixels(vlm_bundle, image)}),
                  (vlm_bundle, "decoder_with_past", decoder_step_feeds(vlm_bundle, ROOFLINE_DECODER_PAST)),
                  (speech_bundle, "speech_encoder", encoder_features(speech_bundle, clip)))
        roof = [roofline(bundle, component, p, threads=options.threads, runs=options.runs, feeds=feeds).to_dict()
                for bundle, component, feeds in graphs for p in ("fp32", "int8")]
    machine = collect_machine_facts(options.threads)
    return {
        "format_version": 1, "command": options.command, "machine": machine.to_dict(),
        "machine_summary": machine.summary(),
        "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"runs": options.runs, "warmup": options.warmup, "threads": options.threads, "seed": SEED,
                     "weights": models["weights"], "vlm_checkpoint": str(checkpoints["vlm"]),
                     "speech_checkpoint": str(checkpoints["speech"]), "exports": models["exports"],
                     "image": f"rendered scene {image.shape[1]}x{image.shape[0]}", "question": question,
                     "clip": f"{clip_note}, {len(clip) / SPEECH_RATE_HZ:.2f} s",
                     "decoding": "greedy, the bundle's max_new_tokens", "torch": _torch_version()},
        "tasks": tasks, "targets": _targets(tasks, cold, rss), "cold_start": cold, "peak_rss": rss, "roofline": roof,
        "profiles": profiles,
    }


# ---- the report ------------------------------------------------------------------------------


def _cell(value: Any, fmt: str = "{:.2f}") -> str:
    return "" if value is None else fmt.format(value)


def render_markdown(study: dict[str, Any], images: dict[str, str] | None = None) -> str:
    """The study as Markdown: targets, end-to-end and stage tables, cold start, memory, roofline."""
    from benchmarks.roofline import RooflineRow, render_rows

    s, load = study["settings"], study["load_average"]
    cores = study["machine"].get("cores_available") or study["machine"].get("cores_logical")
    lines = [f"# Side by side: torch eager vs tinymm, {s['threads']} thread(s)", "",
             f"- command: `{study['command']}`",
             f"- machine: {study['machine_summary']}" + (f", torch {s['torch']}" if s.get("torch") else ""),
             f"- load average (1, 5, 15 min) on {cores} cores: {load['start']} at the start, {load['end']} at the end",
             f"- weights: {s['weights']}", f"- inputs: {s['image']}; question {s['question']!r}; {s['clip']}; "
             f"{s['decoding']}", f"- {s['runs']} timed rounds after {s['warmup']} warmup, variants interleaved", "",
             "## Targets", "", "| target | required | measured | met |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['required']} | {t['measured']} | {'met' if t['met'] else '**missed**'} |"
              for t in study["targets"]]
    lines += ["", "## End to end (ms)", "",
              "| task | variant | p50 | p90 | p99 | tokens/s | vs torch (p50) | vs torch (paired) | runtime overhead "
              "| of which glue |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for task, variants in study["tasks"].items():
        for v in variants.values():
            lat = v["latency_ms"]
            lines.append(f"| {task} | {v['label']} | {lat['p50_ms']:.2f} | {lat['p90_ms']:.2f} | {lat['p99_ms']:.2f} | "
                         f"{_cell(v['tokens_per_s'], '{:.1f}')} | {_cell(v.get('speedup_vs_torch'), '{:.2f}x')} | "
                         f"{_cell(v.get('speedup_vs_torch_paired'), '{:.2f}x')} | "
                         f"{_cell(v.get('overhead_share'), '{:.1%}')} | {_cell(v.get('glue_share'), '{:.1%}')} |")
    stages = ("preprocess", "encode", "prefill", "decode", "postprocess", "overhead")
    lines += ["", "## Stages (p50 ms; overhead: time outside every stage)", "",
              f"| task | variant | {' | '.join(stages)} | decode ms/token | in onnxruntime | tokens |",
              "|---|---|" + "---:|" * (len(stages) + 3)]
    for task, variants in study["tasks"].items():
        for v in variants.values():
            cells = [_cell(v["stages_ms"].get(n, {}).get("p50_ms")) for n in stages]
            lines.append(f"| {task} | {v['label']} | {' | '.join(cells)} | {_cell(v['decode_ms_per_token_p50'])} | "
                         f"{_cell(v.get('model_ms_p50'))} | {v['tokens_per_run'] or ''} |")
    mismatched = [f"{task} {v['label']}" for task, vs in study["tasks"].items() for v in vs.values()
                  if v.get("tokens_match_torch") is False]
    lines += ["", "Runtime overhead: end-to-end minus the time inside onnxruntime's run calls (preprocessing and "
              "postprocessing included); glue: what is left of it outside preprocessing and postprocessing "
              "(feed checks, the decoding loop, copies).", "",
              "Generated tokens identical to torch eager's in every variant." if not mismatched
              else f"Generated tokens differ from torch eager's in: {', '.join(mismatched)} (numerical differences "
              "flip near-tied greedy choices; random weights have many near ties)."]
    if study["cold_start"] is not None:
        c = study["cold_start"]
        firsts = ", ".join(f"{x:.2f}" for x in c["first_result_s"])
        lines += ["", "## Cold start", "", f"`{shlex.join(c['command'])}`: process start to first result "
                  f"{firsts} s (median {c['median_first_result_s']:.2f} s)."]
    r = study["peak_rss"]
    lines += ["", "## Memory", "", f"A fresh process importing only tinymm (torch imported: {r['torch_imported']}) "
              f"loads both bundles ({r['precision']}) and runs each once: RSS after loading "
              f"{r['after_load']['VmRSS'] / BYTES_PER_MB:.0f} MB, peak {r['peak_mb']:.0f} MB (VmHWM)."]
    lines += ["", "## Roofline", "", render_rows([RooflineRow(**row) for row in study["roofline"]]).rstrip("\n")]
    if images:
        lines += ["", "## Plots", ""] + [f"![{name}]({path})" for name, path in images.items()]
    return "\n".join(lines) + "\n"


def write_outputs(study: dict[str, Any], options: StudyOptions) -> list[Path]:
    """JSON, Markdown, PNGs and profiles under ``options.out``; the paths written."""
    out, stem = options.out, f"side_by_side_threads{options.threads}"
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{stem}.json"]
    written[0].write_text(json.dumps(study, indent=2) + "\n", encoding="utf-8")
    images: dict[str, str] = {}
    if options.plots:
        from benchmarks.plots import write_plots

        images = {name: path.name for name, path in write_plots(study, out, stem).items()}
        written += [out / name for name in images.values()]
    for task, text in study["profiles"].items():
        written.append(out / f"{stem}_profile_{task}_int8.txt")
        written[-1].write_text(f"# {study['command']}\n# cProfile of tinymm int8 {task}, by own time\n{text}")
    written.append(out / f"{stem}.md")
    written[-1].write_text(render_markdown(study, images), encoding="utf-8")
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/side_by_side.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vlm-checkpoint", type=Path, help="VLM checkpoint (default: a fresh student)")
    parser.add_argument("--speech-checkpoint", type=Path, help="speech checkpoint (default: a fresh student)")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help=f"timed rounds (default {DEFAULT_RUNS})")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help=f"untimed rounds (default {DEFAULT_WARMUP})")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="intra-op threads, torch and onnxruntime")
    parser.add_argument("--out", type=Path, default=StudyOptions.out, help="results directory")
    parser.add_argument("--work", type=Path,
                        help="keep checkpoints and bundles here and reuse them (default: a temporary directory)")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, among {','.join(TASKS)}")
    parser.add_argument("--no-cold-start", action="store_true", help="skip the cold start of tinymm caption")
    parser.add_argument("--no-plots", action="store_true", help="no PNGs (matplotlib is in the bench extra)")
    parser.add_argument("--profile", action="store_true", help="also cProfile the int8 caption and transcribe calls")
    parser.add_argument("--exporter", choices=EXPORTERS, default=StudyOptions.exporter,
                        help="torch.onnx exporter of the bundles (default dynamo, as the shipped bundles)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("tinymm", "matplotlib"):  # one line per loaded model otherwise
        logging.getLogger(chatty).setLevel(logging.WARNING)
    command = shlex.join(["python", "benchmarks/side_by_side.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        tasks = tuple(t for t in args.tasks.split(",") if t)
        options = StudyOptions(args.vlm_checkpoint, args.speech_checkpoint, args.runs, args.warmup, args.threads,
                               args.out, args.work, tasks, not args.no_cold_start, not args.no_plots, args.profile,
                               command, args.exporter)
    except ValueError as e:
        build_parser().error(str(e))
    study = run_study(options)
    for path in write_outputs(study, options):
        logger.info("wrote %s", path)
    sys.stdout.write(render_markdown(study))
    return 0


if __name__ == "__main__":
    sys.exit(main())
