"""How much of the 30 s window Whisper's encoder needs: WER and latency per audio context.

Usage:
    python benchmarks/whisper_audio_context.py --bundle BUNDLE --clips CLIPS_DIR
        [--contexts full,clip:10,clip:5,clip] [--threads 2] [--out benchmarks/results]

The demo's sample clips and every command clip of CLIPS_DIR (``benchmarks/whisper_clips.py``) are
transcribed once per audio context by ``tinymm.load(BUNDLE)`` (int8 where the bundle has it),
greedy, the language detected as in a user's call (``--language en`` forces it); reported per
context: WER against the reference text, how many transcripts equal the full window's, and the
p50/p90 latency per clip. The runtime's default context (DEFAULT_AUDIO_CONTEXT in
tinymm/decoding/whisper_task.py) is chosen from this table. Writes whisper_audio_context.json/.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.whisper_clips import load_clips  # noqa: E402
from tinymm.bench import summarize  # noqa: E402
from train.metrics_speech import word_error_rate  # noqa: E402

MS_PER_S = 1000.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="a whisper bundle")
    parser.add_argument("--clips", type=Path, required=True, help="a clip set of benchmarks/whisper_clips.py")
    parser.add_argument("--contexts", default="full,clip:10,clip:5,clip", help="comma-separated audio contexts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--language", default=None, help="language code; default: detected, as a user's call does")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    import tinymm

    pipeline = tinymm.load(args.bundle, threads=args.threads)
    samples = json.loads((ROOT / "tinymm" / "assets" / "samples" / "samples.json").read_text(encoding="utf-8"))
    clips = [{"path": str(ROOT / "tinymm" / "assets" / "samples" / c["file"]), "text": c["transcript"]}
             for c in samples["clips"]]  # the demo's spoken commands and questions
    clips += [c for c in load_clips(args.clips) if c["kind"] == "command"]
    references = [c["text"] for c in clips]
    rows, texts = {}, {}
    for context in args.contexts.split(","):
        hyps, times = [], []
        for clip in clips:
            start = time.perf_counter()
            hyps.append(pipeline.transcribe(clip["path"], language=args.language, audio_context=context).text.strip())
            times.append(time.perf_counter() - start)
        texts[context] = hyps
        summary = summarize(times)
        rows[context] = {"wer": word_error_rate(references, hyps), "p50_ms": summary.p50_s * MS_PER_S,
                         "p90_ms": summary.p90_s * MS_PER_S}
    full = texts.get("full")
    for context, row in rows.items():
        row["same_as_full"] = None if full is None else sum(a == b for a, b in zip(texts[context], full))
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    doc = {"command": command, "clips": len(clips), "threads": args.threads,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}",
           "contexts": rows, "transcripts": texts}
    lines = ["# Whisper audio context: WER and latency per context", "", f"Command: `{command}`", "",
             f"{len(clips)} clips of 1-5 s (the {len(samples['clips'])} demo samples and synthesized commands), "
             f"language {args.language or 'detected'}, {args.threads} threads, {doc['machine']}.", "",
             "| audio context | WER | same transcript as full | p50 ms | p90 ms |", "|---|---:|---:|---:|---:|"]
    for context, row in rows.items():
        same = "-" if row["same_as_full"] is None else f"{row['same_as_full']}/{len(clips)}"
        lines.append(f"| {context} | {row['wer']:.1%} | {same} | {row['p50_ms']:.0f} | {row['p90_ms']:.0f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "whisper_audio_context.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (args.out / "whisper_audio_context.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
