"""``--domain-threshold`` of the vision commands, and how a rejected frame reads in their text output.

A frame outside the model's domain (``tinymm/pipelines/domain_check.py``) still gets the model's
guess, marked: ``one red circle  [rejected: out_of_domain, distance 14.2 > 9.79]``. ``--json``
carries ``rejected``, ``reject_reason`` and ``domain_score``.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Mapping


def _threshold(text: str) -> float:
    """argparse type of --domain-threshold: a positive number, or inf."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number (inf turns the domain check off)")
    return value


def add_domain_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--domain-threshold", type=_threshold, default=None, metavar="D",
        help="reject frames whose distance from the training scenes exceeds D (default: the bundle's calibrated "
             "threshold; inf: never reject)",
    )


def apply_domain_threshold(vlm: Any, args: argparse.Namespace) -> None:
    """Set the pipeline's domain_threshold when --domain-threshold was given."""
    if args.domain_threshold is not None:
        vlm.domain_threshold = args.domain_threshold


def rejection_note(result: Mapping[str, Any], threshold: float) -> str:
    """``"  [rejected: out_of_domain, distance 14.2 > 9.79]"`` for a rejected result's dict, else ``""``."""
    if not result.get("rejected"):
        return ""
    score = result.get("domain_score")
    distance = f", distance {score:.3g} > {threshold:.3g}" if score is not None else ""
    return f"  [rejected: {result.get('reject_reason')}{distance}]"
