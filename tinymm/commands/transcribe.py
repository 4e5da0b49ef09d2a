"""``tinymm transcribe CLIP...``: transcribe audio clips with a speech bundle.

Clips are WAV files (any rate and channel count: mixed to mono and resampled), or ``-`` for WAV
bytes on stdin. Several clips are one batch. Prints one transcript per line (``CLIP: text``
when there are several); ``--json`` prints ``{"ok": true, "bundle": ..., "results": [{"input":
..., "text": ..., "raw_text": ..., "in_grammar": ..., "token_ids": [...], "confidence": ...,
"duration_s": ..., "timings": {...}}]}``. A bundle with a command grammar decodes with it
(``in_grammar`` true, or false for speech outside it, which keeps the free transcript);
``--no-grammar`` decodes freely (``in_grammar`` null). Empty, unreadable or over-long audio
exits 3; a missing bundle 4. For a live stream, use ``tinymm listen``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from tinymm.bundle.names import DEFAULT_SPEECH_BUNDLE
    from tinymm.pipelines.load_options import LoadOptions

    parser = subparsers.add_parser("transcribe", help="transcribe audio clips", description="Transcribe audio clips.")
    parser.add_argument("clips", nargs="+", metavar="CLIP", help="WAV file, or - for WAV bytes on stdin")
    add_grammar_flag(parser)
    LoadOptions.add_arguments(parser, default_bundle=DEFAULT_SPEECH_BUNDLE)
    return parser


def add_grammar_flag(parser: argparse.ArgumentParser) -> None:
    """``--no-grammar``, shared by the speech subcommands (``apply_grammar_flag`` reads it)."""
    parser.add_argument("--no-grammar", action="store_true",
                        help="decode freely (best path + lexicon) even when the bundle has a command grammar")


def apply_grammar_flag(speech: Any, args: argparse.Namespace) -> None:
    """Turn the speech pipeline's grammar decoding off when ``--no-grammar`` was given."""
    speech.use_grammar = not args.no_grammar


def run(args: argparse.Namespace) -> int:
    from tinymm.pipelines.load_options import LoadOptions
    from tinymm.pipelines.loading import load_with

    speech = load_with(args.bundle, LoadOptions.from_args(args), family="speech")
    apply_grammar_flag(speech, args)
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
