"""``tinymm transcribe CLIP...``: transcribe audio clips with a speech bundle.

Clips are WAV files (any rate and channel count: mixed to mono and resampled), or ``-`` for WAV
bytes on stdin. Several clips are one batch. Prints one transcript per line (``CLIP: text``
when there are several); ``--json`` prints ``{"ok": true, "bundle": ..., "results": [{"input":
..., "text": ..., "raw_text": ..., "in_grammar": ..., "token_ids": [...], "confidence": ...,
"duration_s": ..., "timings": {...}}]}``. A bundle with a command grammar decodes with it
(``in_grammar`` true, or false for speech outside it, which keeps the free transcript);
``--no-grammar`` decodes freely (``in_grammar`` null). Empty, unreadable or over-long audio
exits 3; a missing bundle 4. For a live stream, use ``tinymm listen``.

Whisper bundles (architecture ``whisper``) also take ``--language`` (default: detected),
``--task translate``, ``--timestamps`` (prints ``[start -> end] text`` per segment; ``--json``
adds ``segments``), ``--beam-size`` and ``--audio-context``; their results add ``language``, ``no_speech_prob`` and
``windows`` (30 s windows decoded). These flags with a bundle that does not take them exit 2.
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
    add_whisper_flags(parser)
    LoadOptions.add_arguments(parser, default_bundle=DEFAULT_SPEECH_BUNDLE)
    return parser


def _audio_context(text: str) -> str:
    """argparse type of --audio-context: full, clip or clip:S."""
    from tinymm.decoding.whisper_task import check_audio_context

    try:
        check_audio_context(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return text


def _beam_size(text: str) -> int:
    """argparse type of --beam-size: an integer in 1..64."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a beam size; give an integer in 1..64 (1: greedy)")
    return value


# flag -> transcribe() keyword, for the bundles whose pipeline lists the keyword in ``transcribe_options``
WHISPER_FLAGS = {"--language": "language", "--task": "task", "--timestamps": "timestamps", "--beam-size": "beam_size",
                 "--audio-context": "audio_context"}


def add_whisper_flags(parser: argparse.ArgumentParser, flags: tuple[str, ...] = tuple(WHISPER_FLAGS)) -> None:
    """The decoding flags of Whisper bundles (``whisper_options`` reads them); None when not given."""
    group = parser.add_argument_group("Whisper bundles")
    if "--language" in flags:
        group.add_argument("--language", default=None, metavar="CODE", help="language code such as en (default: detected)")
    if "--task" in flags:
        group.add_argument("--task", default=None, choices=("transcribe", "translate"),
                           help="transcribe (default), or translate to English")
    if "--timestamps" in flags:
        group.add_argument("--timestamps", action="store_const", const=True, default=None,
                           help="decode timestamps and print the segments")
    if "--beam-size" in flags:
        group.add_argument("--beam-size", type=_beam_size, default=None, help="1: greedy search (default)")
    if "--audio-context" in flags:
        group.add_argument("--audio-context", type=_audio_context, default=None, metavar="CTX",
                           help="encoder input: full (30 s), clip (the clip's length) or clip:S (at least S s; "
                                "default full)")


def whisper_options(speech: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of the Whisper flags given, checked against what ``speech.transcribe`` takes."""
    from tinymm.errors import UsageError

    given = {flag: getattr(args, key) for flag, key in WHISPER_FLAGS.items() if getattr(args, key, None) is not None}
    supported = getattr(speech, "transcribe_options", ())
    refused = [flag for flag in given if WHISPER_FLAGS[flag] not in supported]
    if refused:
        architecture = speech.bundle.manifest.architecture_name if getattr(speech, "bundle", None) else "?"
        raise UsageError(
            f"bundle {speech.name!r} (architecture {architecture}) does not take {', '.join(refused)}: only Whisper "
            "bundles do; drop the flag(s), or pass a Whisper bundle with --bundle"
        )
    return {WHISPER_FLAGS[flag]: value for flag, value in given.items()}


def add_grammar_flag(parser: argparse.ArgumentParser) -> None:
    """``--no-grammar``, shared by the speech subcommands (``apply_grammar_flag`` reads it)."""
    parser.add_argument("--no-grammar", action="store_true",
                        help="decode freely (best path + lexicon) even when the bundle has a command grammar")


def _reject_threshold(text: str) -> float:
    """argparse type of --reject-threshold: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a threshold; give a number in 0..1 (0: keep every command)")
    return value


def add_reject_flag(parser: argparse.ArgumentParser) -> None:
    """``--reject-threshold``, shared by ``command`` and ``listen`` (``apply_reject_flag`` reads it)."""
    parser.add_argument("--reject-threshold", type=_reject_threshold, default=None, metavar="T",
                        help="reject a command whose score (grammar path probability, discounted by its cost against "
                             "the free path) is below T, 0..1 (default: the pipeline's, "
                             "tinymm.pipelines.speech.DEFAULT_REJECT_THRESHOLD)")


def apply_reject_flag(speech: Any, args: argparse.Namespace) -> None:
    """Set the speech pipeline's reject_threshold when ``--reject-threshold`` was given."""
    from tinymm.errors import UsageError

    if args.reject_threshold is None:
        return
    if not hasattr(speech, "reject_threshold"):
        raise UsageError(f"bundle {speech.name!r} does not take --reject-threshold: only command-grammar speech "
                         "bundles (architecture tinymm-ctc) do; drop the flag")
    speech.reject_threshold = args.reject_threshold


def apply_grammar_flag(speech: Any, args: argparse.Namespace) -> None:
    """Turn the speech pipeline's grammar decoding off when ``--no-grammar`` was given."""
    speech.use_grammar = not args.no_grammar


def run(args: argparse.Namespace) -> int:
    from tinymm.pipelines.load_options import LoadOptions
    from tinymm.pipelines.loading import load_with

    speech = load_with(args.bundle, LoadOptions.from_args(args), family="speech", task="transcribe")
    apply_grammar_flag(speech, args)
    options = whisper_options(speech, args)
    clips = [sys.stdin.buffer.read() if name == "-" else name for name in args.clips]
    results = speech.transcribe(clips, **options)
    if args.json:
        items = [{"input": name, **result.to_dict()} for name, result in zip(args.clips, results)]
        payload = {"ok": True, "bundle": speech.name, "results": items}
        sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    else:
        for name, result in zip(args.clips, results):
            sys.stdout.write(f"{name}: {result.text}\n" if len(results) > 1 else f"{result.text}\n")
            for segment in getattr(result, "segments", None) or ():
                sys.stdout.write(f"  [{segment.start:7.2f} -> {segment.end:7.2f}] {segment.text}\n")
    return 0
