"""``tinymm ask IMAGE QUESTION``: answer a question about an image; or ``--audio`` for a spoken one.

The question may also be given as ``--question QUESTION``. ``IMAGE`` may be ``-`` (image bytes
on stdin). With ``--audio CLIP`` (a WAV file, or ``-`` for WAV bytes on stdin; IMAGE must then
be a file) the question is spoken: the speech bundle (``--speech-bundle``) transcribes it, the
intent parser turns it into the grammar's question, and the vision-language bundle answers.
Speech that is not a question prints what was heard and no answer (exit 0).

Prints the answer; ``--json`` prints ``{"ok": true, "bundle": ..., "input": ..., "question":
..., "answer": ..., "confidence": ..., "truncated": ..., "timings": {...}}`` (spoken: also
``transcript`` and ``intent``, and timings per pipeline); ``truncated`` is true when the question
was cut to fit the prompt budget (also logged); ``rejected``, ``reject_reason`` and
``domain_score`` say whether the image is outside the model's domain (``--domain-threshold``). No question, or two, exits 2; a corrupt image or
empty audio 3, a missing bundle 4.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from tinymm.bundle.names import DEFAULT_SPEECH_BUNDLE, DEFAULT_VISION_BUNDLE
    from tinymm.commands.domain_args import add_domain_argument
    from tinymm.decoding.options import DecodingOptions
    from tinymm.pipelines.load_options import LoadOptions

    parser = subparsers.add_parser(
        "ask", help="answer a question about an image", description="Answer a question (typed or spoken) about an image."
    )
    parser.add_argument("image", metavar="IMAGE", help="image file, or - for image bytes on stdin")
    parser.add_argument("question", metavar="QUESTION", nargs="?", help="the question (or give --audio)")
    parser.add_argument("--question", dest="question_flag", metavar="QUESTION", help="the question, as a flag")
    parser.add_argument("--audio", metavar="CLIP", help="a spoken question: WAV file, or - for WAV bytes on stdin")
    LoadOptions.add_arguments(parser, default_bundle=DEFAULT_VISION_BUNDLE)
    LoadOptions.add_arguments(parser, default_bundle=DEFAULT_SPEECH_BUNDLE, bundle_flag="--speech-bundle")
    DecodingOptions.add_arguments(parser)
    add_domain_argument(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from tinymm.commands.domain_args import apply_domain_threshold, rejection_note
    from tinymm.decoding.options import DecodingOptions
    from tinymm.errors import UsageError
    from tinymm.pipelines.load_options import LoadOptions
    from tinymm.pipelines.loading import load_with

    if args.question is not None and args.question_flag is not None:
        raise UsageError("give the question once: as QUESTION or as --question, not both")
    args.question = args.question if args.question is not None else args.question_flag
    if (args.question is None) == (args.audio is None):
        raise UsageError("give the question either as text (tinymm ask IMAGE 'what color is the star?') or as --audio CLIP")
    if args.image == "-" and args.audio == "-":
        raise UsageError("the image and the audio cannot both come from stdin; give one of them as a file")
    image = sys.stdin.buffer.read() if args.image == "-" else args.image
    options, decoding = LoadOptions.from_args(args), DecodingOptions.from_args(args)
    vlm = load_with(args.bundle, options, family="vision-language")
    apply_domain_threshold(vlm, args)
    if args.audio is None:
        result = vlm.ask(image, args.question, decoding=decoding)
        text = f"{result.answer}{rejection_note(result.to_dict(), vlm.domain_threshold)}\n"
    else:
        from tinymm.pipelines.spoken_question import SpokenQuestionPipeline

        speech = load_with(args.speech_bundle, options, family="speech")
        audio = sys.stdin.buffer.read() if args.audio == "-" else args.audio
        result = SpokenQuestionPipeline(vlm, speech).ask(image, audio, decoding=decoding)
        heard = f"heard: {result.command.text!r}\n"
        text = heard + (f"question: {result.question}\nanswer: {result.answer.answer}\n" if result.answer
                        else "not a question about the scene; nothing to answer\n")
    if args.json:
        payload = {"ok": True, "bundle": vlm.name, "input": args.image, **result.to_dict()}
        sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(text)
    return 0
