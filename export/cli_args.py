"""argparse types and the run steps shared by the export command lines (``python -m export``,
``python -m export hf``, scripts/make_whisper_bundle.py), so that none of them imports another's
``__main__``."""

from __future__ import annotations

import argparse
import logging
import sys

from tinymm.errors import EXIT_USAGE, TinymmError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

logger = logging.getLogger(__name__)


def precision_list(text: str) -> tuple[str, ...]:
    """argparse type of --precision: "fp32,int8" -> ("fp32", "int8"), each one of the bundle precisions."""
    from tinymm.bundle import PRECISIONS

    values = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in values if p not in PRECISIONS]
    if unknown or not values:
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated list of {', '.join(PRECISIONS)}")
    return values


def configure_logging(verbose: bool) -> None:
    """Log every step (info level) with -v/--verbose, else warnings only."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=LOG_FORMAT)


def usage_error(prog: str, message: object) -> int:
    """Write ``prog: error: message`` to stderr; the exit code of a usage error."""
    sys.stderr.write(f"{prog}: error: {message}\n")
    return EXIT_USAGE


def set_torch_threads(threads: int) -> None:
    """Apply --threads (0: torch's default); ValueError when it is negative."""
    if threads < 0:
        raise ValueError(f"--threads {threads} must be >= 0")
    if threads:
        import torch

        torch.set_num_threads(threads)


def export_failed(prog: str, error: TinymmError, verbose: bool) -> int:
    """Report an export that raised ``error`` (with its traceback when verbose); its exit code."""
    sys.stderr.write(f"{prog}: error: {error}\n")
    if verbose:
        logger.exception("export failed")
    return error.exit_code
