"""``tinymm command CLIP``: understand a spoken robot command (transcript + intent).

``CLIP`` is a WAV file, or ``-`` for WAV bytes on stdin. Prints the transcript and the intent
(``{"action": "move", "direction": "forward", "distance_m": 3}``), or ``intent: none`` when the
words are outside the command grammar (still exit 0: the audio was understood, it is just not a
command), or ``intent: none (rejected: REASON)`` when the evidence did not hold: no speech in the
clip (``no_speech``, by the Silero VAD bundle), or a command score below ``--reject-threshold``
(``low_confidence``; 0..1, default tinymm.pipelines.speech.DEFAULT_REJECT_THRESHOLD, picked from
benchmarks/results/speech_rejection.md). ``--json`` prints ``{"ok": true, "bundle": ...,
"input": ..., "transcript": ..., "in_grammar": ..., "intent": {...} | null, "confidence": ...,
"duration_s": ..., "rejected": bool, "reject_reason": str | null, "score": ..., "speech_ratio":
..., "timings": {...}}``. A bundle with a command grammar decodes with it; ``--no-grammar``
decodes freely (see ``tinymm transcribe``). Whisper bundles also take ``--language`` and
``--beam-size`` (the intent is parsed from Whisper's free transcript). Empty or unreadable audio
exits 3; a missing bundle 4.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tinymm.commands.transcribe import (
    add_grammar_flag,
    add_reject_flag,
    add_whisper_flags,
    apply_grammar_flag,
    apply_reject_flag,
    whisper_options,
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from tinymm.bundle.names import DEFAULT_SPEECH_BUNDLE
    from tinymm.pipelines.load_options import LoadOptions

    parser = subparsers.add_parser(
        "command", help="understand a spoken command", description="Transcribe a spoken command and parse its intent."
    )
    parser.add_argument("clip", metavar="CLIP", help="WAV file, or - for WAV bytes on stdin")
    add_grammar_flag(parser)
    add_reject_flag(parser)
    add_whisper_flags(parser, ("--language", "--beam-size"))
    LoadOptions.add_arguments(parser, default_bundle=DEFAULT_SPEECH_BUNDLE)
    return parser


def run(args: argparse.Namespace) -> int:
    from tinymm.pipelines.load_options import LoadOptions
    from tinymm.pipelines.loading import load_with

    speech = load_with(args.bundle, LoadOptions.from_args(args), family="speech", task="command")
    apply_grammar_flag(speech, args)
    apply_reject_flag(speech, args)
    options = whisper_options(speech, args)
    result = speech.command(sys.stdin.buffer.read() if args.clip == "-" else args.clip, **options)
    if args.json:
        payload = {"ok": True, "bundle": speech.name, "input": args.clip, **result.to_dict()}
        sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    else:
        intent = "none" if result.intent is None else json.dumps(result.intent.to_dict(), ensure_ascii=False)
        if getattr(result, "rejected", False):
            intent += f" (rejected: {result.reject_reason})"
        sys.stdout.write(f"transcript: {result.text}\nintent: {intent}\n")
    return 0
