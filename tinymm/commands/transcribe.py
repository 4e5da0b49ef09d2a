"""``tinymm transcribe CLIP...``: transcribe audio clips with a speech bundle.

Clips are WAV files (any rate and channel count: mixed to mono and resampled), or ``-`` for WAV
bytes on stdin. Several clips are one batch. Prints one transcript per line (``CLIP: text``
when there are several); ``--json`` prints ``{"ok": true, "bundle": ..., "results": [{"input":
..., "text": ..., "confidence": ..., "duration_s": ..., "timings": {...}}]}``. Empty, unreadable
or over-long audio exits 3; a missing bundle 4. For a live stream, use ``tinymm listen``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from tinymm.pipelines.loading import DEFAULT_SPEECH_BUNDLE, LoadOptions

    parser = subparsers.add_parser("transcribe", help="transcribe audio clips", description="Transcribe audio clips.")
    parser.add_argument("clips", nargs="+", metavar="CLIP", help="WAV file, or - for WAV bytes on stdin")
    LoadOptions.add_arguments(parser, default_bundle=DEFAULT_SPEECH_BUNDLE)
    return parser


def run(args: argparse.Namespace) -> int:
    from tinymm.pipelines.loading import LoadOptions, load_with

    speech = load_with(args.bundle, LoadOptions.from_args(args), family="speech")
    clips = [sys.stdin.buffer.read() if name == "-" else name for name in args.clips]
    results = speech.transcribe(clips)
    if args.json:
        items = [{"input": name, **result.to_dict()} for name, result in zip(args.clips, results)]
        payload = {"ok": True, "bundle": speech.name, "results": items}
        sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    else:
        for name, result in zip(args.clips, results):
            sys.stdout.write(f"{name}: {result.text}\n" if len(results) > 1 else f"{result.text}\n")
    return 0
