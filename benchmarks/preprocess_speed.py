"""Preprocessing speed: camera frame -> image tensor, and audio clip -> log-mel, on this machine.

Usage:
    python benchmarks/preprocess_speed.py [--runs N] [--warmup N] [--json PATH] [--check]

Measures the runtime's public API only (no torch):

- a decoded 640x480 BGR uint8 frame -> (1, 3, 64, 64) and (1, 3, 96, 96) float32 tensors
  (default ImageConfig: stretch, area filter, RGB, mean/std 0.5);
- 2 s of decoded 16 kHz mono float32 audio -> (1, 80, 201) log-mel (default AudioConfig);
- 2 s of 48 kHz mono audio -> the same, resampling included (informational, no target).

Prints a Markdown table of median / p90 / p99 milliseconds per item, the machine and the exact
command. ``--check`` exits 1 when a median misses its target (frame <= 2 ms, 2 s clip <= 3 ms).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from tinymm.bench.machine import collect_machine_facts
from tinymm.preprocess.audio import AudioPreprocessor
from tinymm.preprocess.config import AudioConfig, ImageConfig
from tinymm.preprocess.image import ImagePreprocessor

FRAME_HEIGHT, FRAME_WIDTH = 480, 640  # pixels, a VGA camera frame
CLIP_SECONDS = 2.0
MODEL_RATE_HZ = 16000
MIC_RATE_HZ = 48000
FRAME_TARGET_MS = 2.0
CLIP_TARGET_MS = 3.0
MS_PER_S = 1000.0


@dataclass(frozen=True)
class Result:
    name: str
    output_shape: tuple[int, ...]
    median_ms: float
    p90_ms: float
    p99_ms: float
    target_ms: float | None  # None: informational

    @property
    def passed(self) -> bool:
        return self.target_ms is None or self.median_ms <= self.target_ms


def _time(name: str, fn: Callable[[], object], runs: int, warmup: int, target_ms: float | None) -> Result:
    out = fn()
    shape = tuple(out[0].shape if isinstance(out, tuple) else out.shape)
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    ms = times * MS_PER_S
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return Result(name, shape, float(p50), float(p90), float(p99), target_ms)


def machine_info() -> dict[str, object]:
    """The runtime's machine facts, plus OpenCV's thread count (it drives the resize speed)."""
    facts = collect_machine_facts()
    return {**facts.to_dict(), "opencv_threads": cv2.getNumThreads(), "summary": facts.summary()}


def run(runs: int, warmup: int) -> list[Result]:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (FRAME_HEIGHT, FRAME_WIDTH, 3), dtype=np.uint8)  # BGR
    clip_16k = (0.1 * rng.standard_normal(int(CLIP_SECONDS * MODEL_RATE_HZ))).astype(np.float32)
    clip_48k = (0.1 * rng.standard_normal(int(CLIP_SECONDS * MIC_RATE_HZ))).astype(np.float32)
    image_64 = ImagePreprocessor(ImageConfig(64, 64))
    image_96 = ImagePreprocessor(ImageConfig(96, 96))
    audio = AudioPreprocessor(AudioConfig())
    cases: list[tuple[str, Callable[[], object], float | None]] = [
        ("frame 640x480 BGR uint8 -> 64x64", lambda: image_64(frame), FRAME_TARGET_MS),
        ("frame 640x480 BGR uint8 -> 96x96", lambda: image_96(frame), FRAME_TARGET_MS),
        ("2 s 16 kHz float32 -> log-mel", lambda: audio(clip_16k, sample_rate=MODEL_RATE_HZ), CLIP_TARGET_MS),
        ("2 s 48 kHz float32 -> resample -> log-mel", lambda: audio(clip_48k, sample_rate=MIC_RATE_HZ), None),
    ]
    return [_time(name, fn, runs, warmup, target) for name, fn, target in cases]


def markdown(results: list[Result], machine: dict[str, object], command: str) -> str:
    lines = [
        "| case | output | median ms | p90 ms | p99 ms | target ms | ok |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        target = "-" if r.target_ms is None else f"{r.target_ms:.1f}"
        ok = "info" if r.target_ms is None else ("yes" if r.passed else "NO")
        lines.append(
            f"| {r.name} | {r.output_shape} | {r.median_ms:.3f} | {r.p90_ms:.3f} | {r.p99_ms:.3f} | {target} | {ok} |"
        )
    lines.append("")
    lines.append(f"Machine: {machine['summary']}, OpenCV threads {machine['opencv_threads']}")
    lines.append(f"Command: `{command}`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="timed runs per case (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed runs first (default 30)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this path")
    parser.add_argument("--check", action="store_true", help="exit 1 if a median misses its target")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")

    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    machine = machine_info()
    results = run(args.runs, args.warmup)
    print(markdown(results, machine, command))
    if args.json:
        payload = {
            "command": command,
            "machine": machine,
            "runs": args.runs,
            "warmup": args.warmup,
            "results": [{**asdict(r), "passed": r.passed} for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    failed = [r for r in results if not r.passed]
    if args.check and failed:
        for r in failed:
            print(f"MISSED: {r.name}: median {r.median_ms:.3f} ms > target {r.target_ms} ms", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
