"""``tinymm listen SOURCE``: transcribe each utterance of an audio stream, and parse commands.

``SOURCE`` is a WAV file, or ``-`` for raw mono PCM on stdin (``--sample-format s16le`` or
``f32le`` at ``--rate`` Hz, default the model's rate), e.g. from a microphone::

    arecord -q -f S16_LE -r 16000 -c 1 -t raw | tinymm listen - --json

A voice activity detector with hangover cuts the stream into utterances: Silero VAD (``--vad
silero``, the default when the silero-vad bundle is installed), or frame energy (``--vad energy``,
tuned with ``--threshold-db``); ``--hangover-ms`` and ``--max-utterance-s`` apply to both. Each
utterance is transcribed and, with ``--task command`` (the default), parsed into an intent, which
is rejected (``intent`` null, ``rejected`` true, ``reject_reason``) when its score is below
``--reject-threshold`` (see ``tinymm command``). Prints one line per utterance:
``[1.20-2.35 s] go forward three meters -> {"action": "move", ...}``; ``--json`` prints one JSON
object per line (JSON Lines): ``{"start_s", "end_s", "transcript", "in_grammar", "intent",
"confidence", "duration_s", "rejected", "reject_reason", "score", "timings"}`` (``--task
transcribe``: ``text`` instead of transcript and intent; an utterance the model cannot take gives ``{"start_s", "end_s", "error"}``). A
bundle with a command grammar decodes with it; ``--no-grammar`` decodes freely (see ``tinymm
transcribe``). Unreadable or empty audio exits 3, a missing bundle 4.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tinymm.commands.transcribe import add_grammar_flag, add_reject_flag, apply_grammar_flag, apply_reject_flag

TASKS = ("command", "transcribe")
DETECTORS = ("silero", "energy")
SAMPLE_FORMATS = ("s16le", "f32le")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _rate(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a sample rate in Hz")
    return int(text)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from tinymm.bundle.names import DEFAULT_SPEECH_BUNDLE
    from tinymm.pipelines.load_options import LoadOptions

    parser = subparsers.add_parser(
        "listen", help="transcribe utterances of an audio stream", description="Voice activity detection + speech."
    )
    parser.add_argument("source", metavar="SOURCE", help="WAV file, or - for raw mono PCM on stdin")
    parser.add_argument("--task", choices=TASKS, default="command", help="command (with intent) or transcribe")
    parser.add_argument("--rate", type=_rate, help="Hz of raw PCM on stdin (default: the model's rate)")
    parser.add_argument("--sample-format", choices=SAMPLE_FORMATS, default="s16le", help="raw PCM sample format")
    vad = parser.add_argument_group("voice activity detection (defaults: tinymm.streams.audio.VADOptions)")
    vad.add_argument("--vad", choices=DETECTORS, default=None,
                     help="silero (default when the silero-vad bundle is installed) or energy")
    vad.add_argument("--threshold-db", type=_number, help="--vad energy: energy a speech frame exceeds, dBFS (-45)")
    vad.add_argument("--hangover-ms", type=_number, help="silence that ends an utterance (300)")
    vad.add_argument("--max-utterance-s", type=_number, help="longer utterances are cut (10)")
    add_grammar_flag(parser)
    add_reject_flag(parser)
    LoadOptions.add_arguments(parser, default_bundle=DEFAULT_SPEECH_BUNDLE)
    return parser


def run(args: argparse.Namespace) -> int:
    from tinymm.errors import InputError
    from tinymm.pipelines.load_options import LoadOptions
    from tinymm.pipelines.loading import load_with
    from tinymm.streams.audio import VADOptions, listen, pcm_chunks, wav_chunks

    given = {"threshold_db": args.threshold_db, "hangover_ms": args.hangover_ms, "max_utterance_s": args.max_utterance_s}
    try:
        vad = VADOptions(**{name: value for name, value in given.items() if value is not None})
    except ValueError as e:
        raise InputError(f"{e}; see tinymm listen --help") from e
    if args.source != "-" and args.rate is not None:
        raise InputError("--rate describes raw PCM on stdin (SOURCE -); a WAV file carries its own rate")
    speech = load_with(args.bundle, LoadOptions.from_args(args), family="speech", task=args.task)
    apply_grammar_flag(speech, args)
    apply_reject_flag(speech, args)
    if args.vad is None and args.threshold_db is not None:
        args.vad = "energy"  # --threshold-db tunes the energy detector: asking for it picks that detector
    if args.source == "-":
        rate = args.rate or speech.sample_rate
        chunks = pcm_chunks(sys.stdin.buffer, rate, args.sample_format)
    else:
        rate, chunks = wav_chunks(args.source)
    for event in listen(speech, chunks, rate, task=args.task, options=vad, detector=args.vad):
        if args.json:
            sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
        else:
            span = f"[{event['start_s']:.2f}-{event['end_s']:.2f} s]"
            if "error" in event:
                line = f"{span} error: {event['error']}"
            elif args.task == "transcribe":
                line = f"{span} {event['text']}"
            else:
                intent = "none" if event["intent"] is None else json.dumps(event["intent"], ensure_ascii=False)
                if event.get("rejected"):
                    intent += f" (rejected: {event['reject_reason']})"
                line = f"{span} {event['transcript']} -> {intent}"
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
    return 0
