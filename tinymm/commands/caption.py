"""``tinymm caption IMAGE...``: describe images with a vision-language bundle.

``-`` reads one encoded image (JPEG, PNG, BMP, WebP) from stdin. Several images are captioned as
one batch. Prints one caption per line (``IMAGE: caption`` when there are several); ``--json``
prints ``{"ok": true, "bundle": ..., "results": [{"input": ..., "text": ..., "confidence": ...,
"rejected": ..., "reject_reason": ..., "domain_score": ..., "timings": {...}}]}``; a frame outside
the model's domain is marked ``[rejected: out_of_domain, ...]`` after its caption (``--domain-threshold``). A corrupt or empty image is a bad input (exit 3); a missing bundle exit 4.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from tinymm.bundle.names import DEFAULT_VISION_BUNDLE
    from tinymm.commands.domain_args import add_domain_argument
    from tinymm.decoding.options import DecodingOptions
    from tinymm.pipelines.load_options import LoadOptions

    parser = subparsers.add_parser("caption", help="describe images", description="Describe images (one batch).")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image file, or - for image bytes on stdin")
    LoadOptions.add_arguments(parser, default_bundle=DEFAULT_VISION_BUNDLE)
    DecodingOptions.add_arguments(parser)
    add_domain_argument(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from tinymm.commands.domain_args import apply_domain_threshold, rejection_note
    from tinymm.decoding.options import DecodingOptions
    from tinymm.pipelines.load_options import LoadOptions
    from tinymm.pipelines.loading import load_with

    vlm = load_with(args.bundle, LoadOptions.from_args(args), family="vision-language")
    apply_domain_threshold(vlm, args)
    images = [sys.stdin.buffer.read() if name == "-" else name for name in args.images]
    results = vlm.caption(images, decoding=DecodingOptions.from_args(args))
    if args.json:
        items = [{"input": name, **result.to_dict()} for name, result in zip(args.images, results)]
        payload = {"ok": True, "bundle": vlm.name, "results": items}
        sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    else:
        for name, result in zip(args.images, results):
            line = result.text + rejection_note(result.to_dict(), vlm.domain_threshold)
            sys.stdout.write(f"{name}: {line}\n" if len(results) > 1 else f"{line}\n")
    return 0
