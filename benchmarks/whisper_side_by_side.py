"""Whisper side by side in one process: tinymm (onnxruntime int8, fp32) against CTranslate2 (int8,
float32: the engine of faster-whisper) and transformers in torch eager fp32, on the same clips.

Usage:
    python benchmarks/whisper_side_by_side.py --bundle BUNDLE --ct2 CT2_DIR --clips CLIPS_DIR
        [--threads 1,2] [--runs 10] [--warmup 2] [--out benchmarks/results] [--no-torch]
        [--audio-context full,clip:10]

BUNDLE is a whisper bundle with fp32 and int8 variants (``python scripts/make_whisper_bundle.py``),
CT2_DIR the CTranslate2 model it was converted from (model.bin, tokenizer.json, config.json),
CLIPS_DIR a clip set of ``benchmarks/whisper_clips.py``. Every engine decodes greedily with the
same start sequence (<|startoftranscript|><|en|><|transcribe|><|notimestamps|>), so transcripts are
comparable word for word.

Two passes:

1. accuracy (once, at the first thread count: greedy transcripts do not depend on it): every variant transcribes every clip once; WER against the reference text (both
   sides through the project's transcript normalisation) per clip group, and how often the
   transcript is identical to CTranslate2 float32's;
2. latency, per thread count: round-robin over the variants (the starting one rotated each round, so the noise of a
   shared machine hits all alike) on the latency clips (the 4 sample commands, 8 synthesized
   commands, the 30 s clip); per variant and group p50/p90/p99 end to end and per stage
   (preprocess, encode, decode; tinymm reports its own stages), and for tinymm the runtime's
   overhead: end to end minus the time inside onnxruntime's run calls.

Then the peak RSS of a fresh process per engine that loads the model and transcribes one clip.
Targets of the issue are judged as measured, never loosened. Writes
``whisper_side_by_side.json`` / ``.md`` / ``_latency.png`` under --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: train/, export/ and benchmarks/ live in the checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.whisper_clips import load_clips  # noqa: E402
from benchmarks.whisper_engines import ENGINE_LABELS, Engine, make_engines, ort_clock  # noqa: E402
from tinymm.bench import collect_machine_facts, summarize  # noqa: E402
from train.metrics_speech import word_error_rate  # noqa: E402

logger = logging.getLogger("whisper_side_by_side")

SAMPLES_DIR = ROOT / "tinymm" / "assets" / "samples" / "audio"
LATENCY_COMMANDS = 8  # synthesized command clips in the latency pass (the first ones of the set)
REFERENCE_VARIANT = "ct2-float32"  # transcripts are compared with this engine's
TINYMM_DEFAULT = "tinymm-int8-full"  # what tinymm.load(whisper-base) runs on a CPU by default
MS_PER_S = 1000.0
# The targets, judged as measured.
TARGET_SHORT_SPEEDUP = 3.0  # tinymm int8 vs CTranslate2 int8 p50, 1-5 s commands
TARGET_WER_POINTS = 1.0  # ... at a WER within this many points of CTranslate2 int8's
TARGET_LONG_SPEEDUP = 1.0  # the 30 s clip: not slower than CTranslate2 int8
TARGET_OVERHEAD_SHARE = 0.05  # runtime overhead / end-to-end p50


@dataclass(frozen=True)
class Clip:
    group: str  # samples | commands | 30s
    path: str
    text: str
    seconds: float


def sample_clips() -> list[Clip]:
    """The demo's spoken commands, with their reference text from samples.json."""
    document = json.loads((SAMPLES_DIR.parent / "samples.json").read_text(encoding="utf-8"))
    clips = []
    for entry in document["clips"]:
        if entry["kind"] == "command":
            path = SAMPLES_DIR.parent / entry["file"]
            clips.append(Clip("samples", str(path), entry["transcript"], float(entry["duration_s"])))
    return clips


def clip_set(clips_dir: Path) -> list[Clip]:
    entries = load_clips(clips_dir)
    clips = sample_clips()
    clips += [Clip("commands", e["path"], e["text"], e["seconds"]) for e in entries if e["kind"] == "command"]
    clips += [Clip("30s", e["path"], e["text"], e["seconds"]) for e in entries if e["file"].endswith("read-30s.wav")]
    return clips


def accuracy_pass(engines: dict[str, Engine], clips: list[Clip]) -> dict[str, Any]:
    """Transcribe every clip with every engine once; WER per group and agreement with the reference."""
    texts: dict[str, list[str]] = {name: [] for name in engines}
    for clip in clips:
        for name, engine in engines.items():
            texts[name].append(engine.transcribe(clip.path).text)
    groups = sorted({c.group for c in clips})
    report: dict[str, Any] = {}
    for name in engines:
        per_group = {}
        for group in groups:
            idx = [i for i, c in enumerate(clips) if c.group == group]
            refs = [clips[i].text for i in idx]
            hyps = [texts[name][i] for i in idx]
            same = sum(texts[name][i].strip() == texts[REFERENCE_VARIANT][i].strip() for i in idx) \
                if REFERENCE_VARIANT in texts else None
            per_group[group] = {"clips": len(idx), "wer": word_error_rate(refs, hyps),
                                "identical_to_reference": same}
        report[name] = per_group
    report["transcripts"] = {name: [{"clip": Path(c.path).name, "text": t} for c, t in zip(clips, texts[name])]
                             for name in engines}
    return report


def latency_pass(engines: dict[str, Engine], clips: list[Clip], runs: int, warmup: int) -> dict[str, Any]:
    """Round-robin timing; returns variant -> group -> end-to-end and stage summaries (ms)."""
    clock = ort_clock()
    names = list(engines)
    samples: dict[str, dict[str, list[dict[str, float]]]] = {n: {c.group: [] for c in clips} for n in names}
    for round_index in range(warmup + runs):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            for clip in clips:
                clock.take()
                start = time.perf_counter()
                result = engines[name].transcribe(clip.path)
                total = time.perf_counter() - start
                inside = clock.take()
                if round_index >= warmup:
                    row = {"total": total, **result.stages}
                    if engines[name].is_tinymm:
                        row["onnxruntime"] = inside
                    samples[name][clip.group].append(row)
    out: dict[str, Any] = {}
    for name in names:
        out[name] = {}
        for group, rows in samples[name].items():
            keys = dict.fromkeys(k for row in rows for k in row)
            out[name][group] = {k: _ms(summarize([row.get(k, 0.0) for row in rows])) for k in keys}
            if "onnxruntime" in keys:
                overhead = [row["total"] - row["onnxruntime"] for row in rows]
                out[name][group]["overhead"] = _ms(summarize(overhead))
    return out


def _ms(summary: Any) -> dict[str, float]:
    return {"p50": summary.p50_s * MS_PER_S, "p90": summary.p90_s * MS_PER_S, "p99": summary.p99_s * MS_PER_S,
            "mean": summary.mean_s * MS_PER_S, "n": summary.count}


def peak_rss(args: argparse.Namespace, clip: str, threads: int) -> dict[str, float]:
    """Peak RSS (MB) of a fresh process per engine that loads it and transcribes ``clip``."""
    out = {}
    for name in (TINYMM_DEFAULT, "ct2-int8"):
        command = [sys.executable, str(ROOT / "benchmarks" / "whisper_engines.py"), "--rss", name,
                   "--bundle", str(args.bundle), "--ct2", str(args.ct2), "--clip", clip, "--threads", str(threads)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    return out


def judge(acc: dict[str, Any], lat: dict[str, Any], rss: dict[str, float]) -> list[dict[str, Any]]:
    """The issue's targets, each met or missed, with the measured values."""
    rows = []
    for variant in [v for v in lat if v.startswith("tinymm-int8")]:
        short = lat[variant]["commands"]["total"]["p50"]
        ct2_short = lat["ct2-int8"]["commands"]["total"]["p50"]
        wer, ct2_wer = acc[variant]["commands"]["wer"], acc["ct2-int8"]["commands"]["wer"]
        speedup = ct2_short / short
        rows.append({"target": f"{variant}: 1-5 s commands >= {TARGET_SHORT_SPEEDUP:g}x faster than ct2-int8 at "
                               f"WER within {TARGET_WER_POINTS:g} point",
                     "measured": f"{speedup:.2f}x; WER {wer:.1%} vs {ct2_wer:.1%}",
                     "met": speedup >= TARGET_SHORT_SPEEDUP and (wer - ct2_wer) * 100 <= TARGET_WER_POINTS})
        long_ratio = lat["ct2-int8"]["30s"]["total"]["p50"] / lat[variant]["30s"]["total"]["p50"]
        rows.append({"target": f"{variant}: 30 s clip not slower than ct2-int8", "measured": f"{long_ratio:.2f}x",
                     "met": long_ratio >= TARGET_LONG_SPEEDUP})
        share = lat[variant]["commands"]["overhead"]["p50"] / short
        rows.append({"target": f"{variant}: runtime overhead <= {TARGET_OVERHEAD_SHARE:.0%}",
                     "measured": f"{share:.1%} of the commands' p50", "met": share <= TARGET_OVERHEAD_SHARE})
    if rss:
        rows.append({"target": f"peak RSS of {TINYMM_DEFAULT} <= ct2-int8's",
                     "measured": f"{rss[TINYMM_DEFAULT]:.0f} MB vs {rss['ct2-int8']:.0f} MB",
                     "met": rss[TINYMM_DEFAULT] <= rss["ct2-int8"]})
    return rows


def render_markdown(doc: dict[str, Any]) -> str:
    lines = [f"# Whisper side by side ({doc['model']})", "", f"Command: `{doc['command']}`", "",
             f"Machine: {doc['machine_summary']}", ""]
    for threads, part in doc["threads"].items():
        lines += [f"## {threads} thread(s)", "", "### Accuracy (WER vs the reference text; identical = same "
                  f"transcript as {REFERENCE_VARIANT})", "",
                  "| variant | " + " | ".join(f"{g} WER | {g} identical" for g in doc["groups"]) + " |",
                  "|---|" + "---:|---:|" * len(doc["groups"])]
        for variant, groups in part["accuracy"].items():
            if variant == "transcripts":
                continue
            cells = []
            for g in doc["groups"]:
                same = groups[g]["identical_to_reference"]
                cells += [f"{groups[g]['wer']:.1%}", f"{same}/{groups[g]['clips']}" if same is not None else "-"]
            lines.append(f"| {ENGINE_LABELS.get(variant, variant)} | " + " | ".join(cells) + " |")
        lines += ["", "### Latency per clip (ms): end-to-end p50 / p90 / p99, then stage p50s", "",
                  "| variant | group | p50 | p90 | p99 | stages p50 |", "|---|---|---:|---:|---:|---|"]
        for variant, groups in part["latency"].items():
            for g, stats in groups.items():
                total = stats["total"]
                stages = ", ".join(f"{k} {v['p50']:.1f}" for k, v in stats.items() if k != "total")
                lines.append(f"| {ENGINE_LABELS.get(variant, variant)} | {g} | {total['p50']:.1f} | "
                             f"{total['p90']:.1f} | {total['p99']:.1f} | {stages} |")
        lines += ["", "### Targets", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {r['target']} | {r['measured']} | {'yes' if r['met'] else 'no'} |" for r in part["targets"]]
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = doc["threads"]
    fig, axes = plt.subplots(1, len(parts), figsize=(6 * len(parts), 4.5), squeeze=False)
    for ax, (threads, part) in zip(axes[0], parts.items()):
        variants = list(part["latency"])
        groups = doc["groups"]
        width = 0.8 / len(variants)
        for i, variant in enumerate(variants):
            values = [part["latency"][variant].get(g, {}).get("total", {}).get("p50", 0.0) for g in groups]
            ax.bar(np.arange(len(groups)) + i * width, values, width, label=ENGINE_LABELS.get(variant, variant))
        ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups)
        ax.set_yscale("log")
        ax.set_ylabel("end-to-end p50 per clip (ms, log)")
        ax.set_title(f"whisper-base, {threads} thread(s)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="whisper bundle with fp32 and int8 variants")
    parser.add_argument("--ct2", type=Path, required=True, help="the CTranslate2 model directory")
    parser.add_argument("--clips", type=Path, required=True, help="a clip set of benchmarks/whisper_clips.py")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--audio-context", default="full,clip:10",
                        help="tinymm int8 audio contexts to time (comma-separated: full, clip, clip:S)")
    parser.add_argument("--no-torch", action="store_true", help="leave out transformers torch eager")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="whisper_side_by_side", help="file name stem of the results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("tinymm", "export"):  # per-session load messages
        logging.getLogger(noisy).setLevel(logging.WARNING)
    clips = clip_set(args.clips)
    latency_clips = [c for c in clips if c.group != "commands"] + [c for c in clips if c.group == "commands"][
        :LATENCY_COMMANDS]
    groups = sorted({c.group for c in clips})
    doc: dict[str, Any] = {
        "model": "whisper-base", "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "groups": groups, "clips": {g: sum(c.group == g for c in clips) for g in groups},
        "latency_clips": {g: sum(c.group == g for c in latency_clips) for g in groups},
        "threads": {},
    }
    facts = collect_machine_facts()
    doc["machine"] = facts if isinstance(facts, dict) else getattr(facts, "to_dict", lambda: str(facts))()
    doc["machine_summary"] = f"{platform.machine()}, {os.cpu_count()} cores, load average " \
                             f"{os.getloadavg()[0]:.2f} at start"
    acc: dict[str, Any] | None = None
    for threads in (int(t) for t in args.threads.split(",")):
        engines = make_engines(args.bundle, args.ct2, threads, contexts=tuple(args.audio_context.split(",")),
                               torch=not args.no_torch)
        if acc is None:  # greedy transcripts do not depend on the thread count: one accuracy pass
            logger.info("%d thread(s): accuracy pass over %d clips", threads, len(clips))
            acc = accuracy_pass(engines, clips)
        logger.info("%d thread(s): latency pass, %d rounds over %d clips", threads, args.runs, len(latency_clips))
        lat = latency_pass(engines, latency_clips, args.runs, args.warmup)
        rss = {} if args.no_rss else peak_rss(args, latency_clips[0].path, threads)
        doc["threads"][str(threads)] = {"accuracy": acc, "latency": lat, "peak_rss_mb": rss,
                                        "targets": judge(acc, lat, rss)}
    doc["machine_summary"] += f", {os.getloadavg()[0]:.2f} at the end"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    (args.out / f"{args.name}.md").write_text(render_markdown(doc), encoding="utf-8")
    plot(doc, args.out / f"{args.name}_latency.png")
    print(render_markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
