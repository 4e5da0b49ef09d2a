"""``tinymm classify IMAGE...``: rank labels for images (zero-shot, by embedding similarity).

Labels come from ``--labels "a red circle,a blue square"``, ``--labels-file FILE`` (one per
line, blank lines and ``#`` comments skipped) or, by default, the bundle's own label set.
``-`` reads one encoded image from stdin. Prints the top labels with their probability;
``--json`` prints ``{"ok": true, "bundle": ..., "results": [{"input": ..., "label": ...,
"labels": [{"label", "score", "probability"}], "timings": {...}}]}``.

Exit codes: an empty label list, an empty or unreadable labels file, or a bundle that ships no
label set when no labels are given are bad input (3), as are corrupt images; ``--labels`` with
``--labels-file``, or a ``--top-k`` below 1, is a usage error (2); a missing bundle is 4.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_TOP_K = 5
LABEL_SEPARATOR = ","
COMMENT = "#"


def _top_k(text: str) -> int:
    """argparse type of --top-k: a positive integer."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def add_label_arguments(parser: argparse.ArgumentParser) -> None:
    """``--labels``, ``--labels-file`` (exclusive) and ``--top-k``; ``tinymm watch`` shares them."""
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--labels", help="comma-separated labels (default: the bundle's label set)")
    labels.add_argument("--labels-file", metavar="FILE", help="labels, one per line")
    parser.add_argument("--top-k", type=_top_k, default=DEFAULT_TOP_K, help=f"labels to keep (default {DEFAULT_TOP_K})")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from tinymm.bundle.names import DEFAULT_VISION_BUNDLE
    from tinymm.commands.domain_args import add_domain_argument
    from tinymm.pipelines.load_options import LoadOptions

    parser = subparsers.add_parser("classify", help="rank labels for images", description="Zero-shot image classification.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image file, or - for image bytes on stdin")
    add_label_arguments(parser)
    LoadOptions.add_arguments(parser, default_bundle=DEFAULT_VISION_BUNDLE)
    add_domain_argument(parser)
    return parser


def read_labels(args: argparse.Namespace) -> list[str] | None:
    """The labels the flags give (None: the bundle's); InputError for an empty or unreadable list."""
    from tinymm.errors import InputError

    if args.labels is not None:
        labels = [label.strip() for label in args.labels.split(LABEL_SEPARATOR) if label.strip()]
        source = f"--labels {args.labels!r}"
    elif args.labels_file is not None:
        try:
            lines = Path(args.labels_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read the labels file {args.labels_file!r}: {e}") from e
        labels = [line.strip() for line in lines if line.strip() and not line.strip().startswith(COMMENT)]
        source = f"labels file {args.labels_file!r}"
    else:
        return None
    if not labels:
        raise InputError(f"{source} holds no label; give at least one, e.g. --labels 'a red circle,a blue square'")
    return labels


def run(args: argparse.Namespace) -> int:
    from tinymm.commands.domain_args import apply_domain_threshold, rejection_note
    from tinymm.pipelines.load_options import LoadOptions
    from tinymm.pipelines.loading import load_with

    labels = read_labels(args)
    vlm = load_with(args.bundle, LoadOptions.from_args(args), family="vision-language")
    apply_domain_threshold(vlm, args)
    images = [sys.stdin.buffer.read() if name == "-" else name for name in args.images]
    results = vlm.classify(images, labels, top_k=args.top_k)
    if args.json:
        items = [{"input": name, **result.to_dict()} for name, result in zip(args.images, results)]
        payload = {"ok": True, "bundle": vlm.name, "results": items}
        sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        return 0
    for name, result in zip(args.images, results):
        note = rejection_note(result.to_dict(), vlm.domain_threshold)
        if len(results) > 1 or note:
            sys.stdout.write(f"{name}:{note}\n")
        for label, probability in zip(result.labels, result.probabilities):
            sys.stdout.write(f"  {probability:7.2%}  {label}\n")
    return 0
