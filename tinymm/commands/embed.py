"""``tinymm embed IMAGE...`` / ``tinymm embed --text TEXT...``: L2-normalised embeddings from a bundle.

Images (``-`` reads one encoded image from stdin) go through the bundle's image encoder, texts
through its text encoder (scene-vlm: through its ``classify`` template; CLIP and SigLIP: as
given). Prints one line per input, ``INPUT: dim=E norm=1.000 [e0, e1, e2, ...]``; ``--json``
prints ``{"ok": true, "bundle": ..., "kind": "image" | "text", "dim": E, "results": [{"input":
..., "embedding": [...]}]}`` with every value. The cosine of two embeddings is their dot product.
A bundle without the encoder asked for is a bundle error (exit 4); a corrupt image exit 3.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

PREVIEW_VALUES = 4  # values shown per embedding in the text output


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from tinymm.bundle.names import DEFAULT_VISION_BUNDLE
    from tinymm.pipelines.load_options import LoadOptions

    parser = subparsers.add_parser("embed", help="image or text embeddings",
                                   description="L2-normalised image embeddings, or text embeddings with --text.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files ('-' for image bytes on stdin), or texts with --text")
    parser.add_argument("--text", action="store_true", help="the inputs are texts, not images")
    LoadOptions.add_arguments(parser, default_bundle=DEFAULT_VISION_BUNDLE)
    return parser


def run(args: argparse.Namespace) -> int:
    from tinymm.errors import BundleError
    from tinymm.pipelines.load_options import LoadOptions
    from tinymm.pipelines.loading import load_with

    vlm = load_with(args.bundle, LoadOptions.from_args(args), family="vision-language")
    method = "embed_text" if args.text else "embed_image"
    if not callable(getattr(vlm, method, None)):
        raise BundleError(f"bundle {vlm.name!r} has no {'text' if args.text else 'image'} embeddings ({method})")
    if args.text:
        embeddings = vlm.embed_text(list(args.inputs))
    else:
        embeddings = vlm.embed_image([sys.stdin.buffer.read() if name == "-" else name for name in args.inputs])
    if args.json:
        items = [{"input": name, "embedding": [round(float(v), 7) for v in row]}
                 for name, row in zip(args.inputs, embeddings)]
        payload = {"ok": True, "bundle": vlm.name, "kind": "text" if args.text else "image",
                   "dim": int(embeddings.shape[1]), "results": items}
        sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
        return 0
    for name, row in zip(args.inputs, embeddings):
        preview = ", ".join(f"{v:.4f}" for v in row[:PREVIEW_VALUES])
        sys.stdout.write(f"{name}: dim={row.shape[0]} norm={float((row ** 2).sum()) ** 0.5:.3f} [{preview}, ...]\n")
    return 0
