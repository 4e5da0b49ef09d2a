"""``tinymm bench BUNDLE --task caption|ask|classify|transcribe``: latency of a task on this device.

Loads the bundle with ``tinymm.load`` (backend, provider, precision, threads), builds its own
input - a synthetic scene drawn with OpenCV for the vision tasks, a tone in noise for
transcription - or reads ``--input FILE``, then runs ``--warmup`` untimed and ``--runs`` timed
calls of the task (``--batch`` items each) and prints a Markdown table of the per-stage and
end-to-end latency (mean, p50, p90, p99), throughput, tokens/s, memory, tegrastats power on a
Jetson, the machine facts and the exact command. ``--json`` prints the report as one JSON object
instead; ``--output FILE`` also writes it to FILE, ``--markdown FILE`` the table.
``--cold-start`` also times a fresh ``python -m tinymm TASK ...`` process from start to its first
result line (``--cold-start-command`` replaces that command).

Exit codes: 0 measured; 2 bad arguments; 3 an unreadable ``--input``; 4 a bad bundle; 5 the
backend failed; 1 the cold-start command failed.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tinymm.errors import EXIT_OK, InputError, TinymmError

if TYPE_CHECKING:
    import numpy as np

    from tinymm.bench import BenchReport

logger = logging.getLogger(__name__)

TASKS = ("caption", "ask", "classify", "transcribe")
VISION_TASKS = ("caption", "ask", "classify")
PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")
PRECISION_CHOICES = ("auto", "fp32", "fp16", "int8")
GPU_PROVIDERS = ("cuda", "tensorrt")
DEFAULT_RUNS = 50
DEFAULT_WARMUP = 5
DEFAULT_QUESTION = "what color is the circle?"
# The synthetic inputs: a VGA-like camera frame, and a clip of a spoken-command length.
SCENE_HEIGHT, SCENE_WIDTH = 240, 320  # pixels
SCENE_SEED = 0
SCENE_NOISE_STD = 4.0  # pixel noise, in 8-bit levels
AUDIO_RATE_HZ = 16000
AUDIO_SECONDS = 2.0
AUDIO_SAMPLES = int(AUDIO_RATE_HZ * AUDIO_SECONDS)
TONE_HZ = 440.0
TONE_AMPLITUDE = 0.3  # of full scale
NOISE_AMPLITUDE = 0.02  # standard deviation, of full scale
PCM16_FULL_SCALE = 32767


def _positive(text: str) -> int:
    return _count(text, 1)


def _non_negative(text: str) -> int:
    return _count(text, 0)


def _count(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from e
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        help="measure a task's latency on this device (per stage, p50/p90/p99, throughput, memory, power)",
        description="Measure a task's latency on this device: warmup, timed runs, per-stage and end-to-end "
        "p50/p90/p99, throughput, tokens/s, memory, power on a Jetson, and the machine facts.",
    )
    parser.add_argument("bundle", help="bundle directory or archive, or the name of a default bundle")
    parser.add_argument("--task", required=True, choices=TASKS, help="what to time")
    parser.add_argument("--backend", default="onnxruntime", help="inference backend (default onnxruntime)")
    parser.add_argument("--provider", default="auto", choices=PROVIDER_CHOICES, help="execution provider")
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES, help="model variant")
    parser.add_argument("--threads", type=_non_negative, default=0, help="CPU threads (default 0: the library's)")
    parser.add_argument("--runs", type=_positive, default=DEFAULT_RUNS, help=f"timed runs (default {DEFAULT_RUNS})")
    parser.add_argument("--warmup", type=_non_negative, default=DEFAULT_WARMUP,
                        help=f"untimed runs first (default {DEFAULT_WARMUP})")
    parser.add_argument("--batch", type=_positive, default=1, help="items per call (default 1)")
    parser.add_argument("--input", type=Path, help="an image (vision tasks) or audio file (transcribe) to use "
                        "instead of the synthetic one")
    parser.add_argument("--question", default=DEFAULT_QUESTION, help="the question for --task ask")
    parser.add_argument("--labels", help="comma-separated labels for --task classify (default: the bundle's)")
    parser.add_argument("--output", "-o", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown report to this file")
    parser.add_argument("--cold-start", action="store_true",
                        help="also time a fresh process from start to its first result line")
    parser.add_argument("--cold-start-command", help="the command --cold-start times (default: "
                        "python -m tinymm TASK INPUT --bundle BUNDLE ... with the same settings)")
    parser.add_argument("--cold-start-repeats", type=_positive, default=1, help="fresh processes to time")
    parser.add_argument("--tegrastats-interval", type=_positive, default=100, metavar="MS",
                        help="tegrastats sampling interval on a Jetson (default 100 ms)")
    parser.add_argument("--no-tegrastats", action="store_true", help="do not sample power with tegrastats")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress line on stderr")
    return parser


# ---- sample inputs ---------------------------------------------------------------------------


def synthetic_scene(height: int = SCENE_HEIGHT, width: int = SCENE_WIDTH, seed: int = SCENE_SEED) -> "np.ndarray":
    """A small scene drawn with OpenCV: a gradient, a red circle, a blue square, a green triangle
    and a sign with text, plus mild noise. Returns (height, width, 3) uint8 BGR."""
    import cv2
    import numpy as np

    rows = np.linspace(90, 200, height, dtype=np.float32)[:, None, None]
    gradient = np.broadcast_to(rows * np.array([1.0, 0.95, 0.85], np.float32), (height, width, 3))
    image = np.ascontiguousarray(gradient, dtype=np.uint8)  # OpenCV draws text on 8-bit images only
    s = min(height, width)
    cv2.circle(image, (width // 4, height // 2), s // 8, (40, 40, 220), -1, cv2.LINE_AA)
    cv2.rectangle(image, (width // 2 - s // 10, height // 3), (width // 2 + s // 10, height // 3 + s // 5),
                  (200, 60, 30), -1)
    triangle = np.array([[3 * width // 4, height // 3], [3 * width // 4 - s // 8, 2 * height // 3],
                         [3 * width // 4 + s // 8, 2 * height // 3]], np.int32)
    cv2.fillPoly(image, [triangle], (40, 180, 40), cv2.LINE_AA)
    cv2.rectangle(image, (width // 2 - s // 6, 5 * height // 6 - 14), (width // 2 + s // 6, 5 * height // 6 + 8),
                  (245, 245, 245), -1)
    cv2.putText(image, "STOP 7", (width // 2 - s // 7, 5 * height // 6 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (20, 20, 20), 1, cv2.LINE_AA)
    noise = np.random.default_rng(seed).normal(0.0, SCENE_NOISE_STD, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def synthetic_clip(seed: int = SCENE_SEED) -> "np.ndarray":
    """AUDIO_SECONDS of a TONE_HZ tone with a fade in/out, in white noise. Returns (samples,) float32
    at AUDIO_RATE_HZ."""
    import numpy as np

    t = np.arange(AUDIO_SAMPLES, dtype=np.float64) / AUDIO_RATE_HZ
    envelope = np.sin(np.pi * t / AUDIO_SECONDS) ** 2
    tone = TONE_AMPLITUDE * envelope * np.sin(2 * np.pi * TONE_HZ * t)
    noise = NOISE_AMPLITUDE * np.random.default_rng(seed).standard_normal(AUDIO_SAMPLES)
    return (tone + noise).astype(np.float32)


def write_wav(path: Path, samples: "np.ndarray", rate: int) -> None:
    """Write mono float samples in [-1, 1] as 16-bit PCM WAV."""
    import wave

    import numpy as np

    pcm = (np.clip(samples, -1.0, 1.0) * PCM16_FULL_SCALE).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())


def _labels(text: str | None) -> list[str] | None:
    if text is None:
        return None  # the bundle's label set
    labels = [label.strip() for label in text.split(",") if label.strip()]
    if not labels:
        raise InputError(f"--labels {text!r} holds no label; give comma-separated labels, e.g. --labels 'cat,dog'")
    return labels


def _load_input(args: argparse.Namespace) -> Any:
    """The input of one item: a BGR image (H, W, 3) uint8, or (samples,) float32 audio at its rate."""
    if args.task in VISION_TASKS:
        if args.input is None:
            return synthetic_scene()
        from tinymm.preprocess.image import load_image

        return load_image(args.input)
    if args.input is None:
        return synthetic_clip(), AUDIO_RATE_HZ
    from tinymm.preprocess.audio_io import load_audio, to_mono

    samples, rate = load_audio(args.input)
    return to_mono(samples), rate


# ---- the task and the cold-start command -----------------------------------------------------


def _load_pipeline(args: argparse.Namespace) -> Any:
    import tinymm

    load = getattr(tinymm, "load", None)
    if load is None:
        raise TinymmError("this tinymm has no pipelines (tinymm.load is missing); reinstall tinymm")
    family = "speech" if args.task == "transcribe" else "vision-language"
    try:
        return load(args.bundle, backend=args.backend, provider=args.provider, precision=args.precision,
                    threads=args.threads, family=family)
    except ValueError as e:  # tinymm.load's documented answer to a backend or option it does not know
        raise InputError(f"tinymm bench: {e}; see tinymm bench --help for the choices") from e


def make_task(pipeline: Any, task: str, item: Any, *, batch: int, question: str = DEFAULT_QUESTION,
              labels: list[str] | None = None) -> Callable[[], Any]:
    """The function run_benchmark calls: one call of the pipeline's task on ``batch`` copies of ``item``.

    Vision tasks pass one image, or a list of ``batch`` images; transcribe passes ``(samples, rate)``
    items the same way (``sample_rate=`` keyword).
    """
    if task in VISION_TASKS:
        images = item if batch == 1 else [item] * batch
        if task == "caption":
            return lambda: pipeline.caption(images)
        if task == "ask":
            return lambda: pipeline.ask(images, question)
        return lambda: pipeline.classify(images, labels)
    if task == "transcribe":
        samples, rate = item
        audio = samples if batch == 1 else [samples] * batch
        return lambda: pipeline.transcribe(audio, sample_rate=rate)
    raise InputError(f"--task {task!r} is not one of {list(TASKS)}")


def _default_cold_start_command(args: argparse.Namespace, workdir: Path, item: Any) -> list[str]:
    """``python -m tinymm TASK INPUT --bundle ...``, with the input written to ``workdir``."""
    if args.input is not None:
        path = args.input
    elif args.task in VISION_TASKS:
        import cv2

        path = workdir / "scene.png"
        cv2.imwrite(str(path), item)
    else:
        path = workdir / "clip.wav"
        write_wav(path, item[0], item[1])
    command = [sys.executable, "-m", "tinymm", args.task, str(path), "--bundle", str(args.bundle),
               "--backend", args.backend, "--provider", args.provider, "--precision", args.precision,
               "--threads", str(args.threads), "--json"]
    if args.task == "ask":
        command += ["--question", args.question]
    if args.task == "classify" and args.labels is not None:
        command += ["--labels", args.labels]
    return command


def _command_line() -> str:
    return shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))


def measure(args: argparse.Namespace) -> "BenchReport":
    """Run the benchmark ``args`` describe and return its report (machine facts included)."""
    from tinymm.bench import (
        TegrastatsSampler, collect_machine_facts, measure_cold_start, memory_snapshot, run_benchmark,
        tegrastats_available,
    )

    labels = _labels(args.labels) if args.task == "classify" else None
    item = _load_input(args)
    machine = collect_machine_facts(args.threads)
    gpu = args.provider in GPU_PROVIDERS or (args.provider == "auto" and bool(machine.gpus))
    before_load = memory_snapshot(gpu=gpu)
    pipeline = _load_pipeline(args)
    after_load = memory_snapshot(gpu=gpu)
    sampler = None
    if not args.no_tegrastats and tegrastats_available():
        sampler = TegrastatsSampler(args.tegrastats_interval)
    task_fn = make_task(pipeline, args.task, item, batch=args.batch, question=args.question, labels=labels)
    report = run_benchmark(task_fn, runs=args.runs, warmup=args.warmup, batch=args.batch,
                           progress=not args.quiet, task=args.task, sampler=sampler,
                           gpu_memory=gpu)
    cold_start = None
    if args.cold_start:
        with tempfile.TemporaryDirectory(prefix="tinymm-bench-") as workdir:
            command = (shlex.split(args.cold_start_command) if args.cold_start_command
                       else _default_cold_start_command(args, Path(workdir), item))
            cold_start = measure_cold_start(command, repeats=args.cold_start_repeats)
    settings = {"bundle": str(args.bundle), "backend": args.backend, "provider": args.provider,
                "precision": args.precision, "threads": args.threads,
                "input": str(args.input) if args.input else "synthetic"}
    return report.with_context(
        machine=machine, command=_command_line(), settings=settings, cold_start=cold_start,
        memory={"before_load": before_load, "after_load": after_load, **report.memory},
    )


def run(args: argparse.Namespace) -> int:
    import json

    from tinymm.bench import render_markdown, report_to_dict, write_json

    report = measure(args)
    if args.output is not None:
        write_json(report, args.output)
    markdown = render_markdown(report)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown, encoding="utf-8")
    if args.json:
        sys.stdout.write(json.dumps(report_to_dict(report), indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(markdown)
    return EXIT_OK
