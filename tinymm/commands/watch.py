"""``tinymm watch SOURCE``: run caption, ask or classify on live video with bounded latency.

``SOURCE`` is a camera index (``0``), a video file or a stream URL (``rtsp://...``). The task
runs on the newest frame every ``--every-n-frames N`` frames or ``--every-s T`` seconds (default:
as often as it can); frames that arrive while it runs are dropped, never queued. ``--pace``
reads a file as a live camera (``realtime``, the default for files) or frame by frame (``all``).
Stops at the end of the source, after ``--max-results`` results, or on Ctrl-C.

Prints one line per result: ``frame 30 @ 1.00 s (latency 41 ms, dropped 3): a red circle ...``;
``--json`` prints one JSON object per line (JSON Lines): ``{"frame", "t_s", "latency_ms",
"task_ms", "dropped", "skipped", "result": {...}}`` with the task's result as ``tinymm caption``,
``ask`` or ``classify --json`` would give it. A source that cannot be opened exits 3.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

TASKS = ("caption", "ask", "classify")
PACES = ("auto", "live", "realtime", "all")


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive {kind.__name__}")
        return value

    return parse


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from tinymm.commands.classify import add_label_arguments
    from tinymm.commands.domain_args import add_domain_argument
    from tinymm.decoding.options import DecodingOptions
    from tinymm.bundle.names import DEFAULT_VISION_BUNDLE
    from tinymm.pipelines.load_options import LoadOptions

    parser = subparsers.add_parser(
        "watch", help="run a vision task on live video", description="Run caption, ask or classify on a video stream."
    )
    parser.add_argument("source", metavar="SOURCE", help="camera index (0), video file or stream URL")
    parser.add_argument("--task", choices=TASKS, default="caption", help="what to run on each chosen frame")
    parser.add_argument("--question", help="the question of --task ask")
    every = parser.add_mutually_exclusive_group()
    every.add_argument("--every-n-frames", type=_positive(int), metavar="N", help="run at most every N frames")
    every.add_argument("--every-s", type=_positive(float), metavar="T", help="run at most every T seconds")
    parser.add_argument("--max-results", type=_positive(int), metavar="N", help="stop after N results")
    parser.add_argument("--pace", choices=PACES, default="auto", help="auto | live | realtime (files) | all (files)")
    add_label_arguments(parser)
    LoadOptions.add_arguments(parser, default_bundle=DEFAULT_VISION_BUNDLE)
    DecodingOptions.add_arguments(parser)
    add_domain_argument(parser)
    return parser


def _summary(task: str, result: dict[str, Any]) -> str:
    if task == "caption":
        return result["text"]
    if task == "ask":
        return result["answer"]
    return ", ".join(f"{item['label']} {item['probability']:.0%}" for item in result["labels"])


def _line(task: str, result: dict[str, Any], threshold: float) -> str:
    from tinymm.commands.domain_args import rejection_note

    return _summary(task, result) + rejection_note(result, threshold)


def run(args: argparse.Namespace) -> int:
    from tinymm.commands.classify import read_labels
    from tinymm.commands.domain_args import apply_domain_threshold
    from tinymm.decoding.options import DecodingOptions
    from tinymm.errors import UsageError
    from tinymm.pipelines.load_options import LoadOptions
    from tinymm.pipelines.loading import load_with
    from tinymm.streams.video import WatchOptions, watch

    if (args.task == "ask") != (args.question is not None):
        raise UsageError("--question goes with --task ask, and --task ask needs a --question")
    labels = read_labels(args)
    options = WatchOptions(every_n_frames=args.every_n_frames, every_s=args.every_s, pace=args.pace,
                           max_results=args.max_results)
    vlm = load_with(args.bundle, LoadOptions.from_args(args), family="vision-language")
    apply_domain_threshold(vlm, args)
    decoding = DecodingOptions.from_args(args)
    tasks = {
        "caption": lambda frame: vlm.caption(frame, decoding=decoding),
        "ask": lambda frame: vlm.ask(frame, args.question, decoding=decoding),
        "classify": lambda frame: vlm.classify(frame, labels, top_k=args.top_k),
    }
    for event in watch(args.source, tasks[args.task], options):
        if args.json:
            sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(
                f"frame {event['frame']} @ {event['t_s']:.2f} s (latency {event['latency_ms']:.0f} ms, dropped "
                f"{event['dropped']}): {_line(args.task, event['result'], vlm.domain_threshold)}\n"
            )
        sys.stdout.flush()
    return 0
