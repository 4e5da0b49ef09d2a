"""argparse types shared by the export command lines (``python -m export``, ``python -m export hf``,
scripts/make_whisper_bundle.py), so that none of them imports another's ``__main__``."""

from __future__ import annotations

import argparse


def precision_list(text: str) -> tuple[str, ...]:
    """argparse type of --precision: "fp32,int8" -> ("fp32", "int8"), each one of the bundle precisions."""
    from tinymm.bundle import PRECISIONS

    values = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in values if p not in PRECISIONS]
    if unknown or not values:
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated list of {', '.join(PRECISIONS)}")
    return values
