"""Build the default bundles that ship inside the tinymm package, from two train/ checkpoints.

    python scripts/make_default_bundles.py runs/vlm/distill/final runs/speech/student_kd/final \\
        [--precision fp32,int8] [--max-total-mb 20] [--threads 1]

Exports the vision-language checkpoint to ``scene-vlm`` and the speech checkpoint to
``speech-commands`` (``python -m export CKPT --out ... --precision ...``, one subprocess each),
checks that both bundles together stay within ``--max-total-mb`` (the package's size budget),
reruns their golden pairs with ``tinymm verify``, and only then replaces the bundles in
``--out-dir`` (default tinymm/assets/bundles, where ``tinymm.load("scene-vlm")`` and ``tinymm
demo`` find them). Everything is built in a hidden staging directory next to them, so a failed
or interrupted run leaves the installed bundles as they were; rerun it to swap in newer students.

Exit codes: 0 built, checked and installed; the export's own code when an export fails (3 bad
checkpoint, 6 parity, ...); 4 the bundles exceed the size budget; 6 ``tinymm verify`` found an
output outside its tolerance. Needs the train extra (torch) for the export.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: export/ lives in the checkout, it is not installed
    sys.path.insert(0, str(ROOT))

from tinymm.errors import EXIT_BUNDLE, EXIT_TOLERANCE, EXIT_USAGE  # noqa: E402
from tinymm.bundle.names import DEFAULT_BUNDLES_DIR, DEFAULT_SPEECH_BUNDLE, DEFAULT_VISION_BUNDLE  # noqa: E402

logger = logging.getLogger("make_default_bundles")

BYTES_PER_MB = 1_000_000  # sizes are decimal megabytes
DEFAULT_MAX_TOTAL_MB = 20.0  # the package's budget for both default bundles together
DEFAULT_PRECISIONS = "fp32,int8"
STAGING_PREFIX = ".staging-"  # hidden: default_bundle_names() skips dot-directories
OLD_PREFIX = ".old-"
# How the summary groups a bundle's files.
MODEL_SUFFIXES = (".onnx", ".weights")
TOKENIZER_SUFFIX = ".model"
GOLDEN_DIR = "golden"
# One real input per golden pair: the VLM's decoder pairs carry every layer's cross-attention K/V,
# so each input costs ~0.6 MB of the package's size budget; one still checks every component.
GOLDEN_BATCH = 1


class BuildError(Exception):
    """A step failed; carries the exit code (the message is already clear)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Target:
    """One default bundle: its name and the checkpoint it is exported from."""

    name: str
    checkpoint: Path
    data: Path | None  # a written dataset for real calibration and golden inputs (None: generated)


def bundle_sizes(root: Path) -> dict[str, int]:
    """Bytes of a bundle directory by kind of file: models, golden, tokenizer, other, total."""
    sizes = {"models": 0, "golden": 0, "tokenizer": 0, "other": 0}
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        relative = path.relative_to(root)
        if relative.parts[0] == GOLDEN_DIR:
            kind = "golden"
        elif path.suffix in MODEL_SUFFIXES:
            kind = "models"
        elif path.suffix == TOKENIZER_SUFFIX:
            kind = "tokenizer"
        else:
            kind = "other"
        sizes[kind] += path.stat().st_size
    sizes["total"] = sum(sizes.values())
    return sizes


def mb(size: int) -> str:
    return f"{size / BYTES_PER_MB:.2f} MB"


def from_root(path: Path) -> str:
    """``path`` relative to the repository when it lies inside (the export runs there): the bundles'
    provenance then names train/students/vlm, not a path on the machine that built them."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(resolved)


def export(target: Target, out: Path, precisions: str, threads: int) -> None:
    """``python -m export`` of ``target`` into ``out`` (its progress bar goes to this stderr)."""
    command = [sys.executable, "-m", "export", from_root(target.checkpoint), "--out", from_root(out), "--name",
               target.name, "--precision", precisions, "--threads", str(threads), "--golden-batch", str(GOLDEN_BATCH)]
    if target.data is not None:
        command += ["--data", from_root(target.data)]
    logger.info("exporting %s from %s: %s", target.name, target.checkpoint, " ".join(command[1:]))
    code = subprocess.run(command, cwd=ROOT, check=False).returncode
    if code != 0:
        raise BuildError(f"python -m export failed for {target.checkpoint} (exit {code}); its message is above. "
                         "Nothing was installed", code)


def verify(bundle: Path) -> tuple[int, int]:
    """``tinymm verify BUNDLE``: (passed, failed) golden checks; BuildError when it cannot run or a check fails."""
    command = [sys.executable, "-m", "tinymm", "verify", str(bundle), "--json"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        report = {}
    if done.returncode != 0 or not report.get("ok"):
        failures = [f"{r['component']} {r['precision']}: {'; '.join(r['failures'])}"
                    for r in report.get("results", []) if not r.get("passed")]
        detail = "; ".join(failures) or done.stderr.strip() or f"exit {done.returncode}"
        raise BuildError(f"tinymm verify {bundle.name} failed: {detail}. Nothing was installed", EXIT_TOLERANCE)
    return int(report["passed"]), int(report["failed"])


def check_budget(sizes: dict[str, dict[str, int]], max_total_mb: float) -> None:
    total = sum(s["total"] for s in sizes.values())
    if total > max_total_mb * BYTES_PER_MB:
        each = ", ".join(f"{name} {mb(s['total'])} (models {mb(s['models'])}, golden {mb(s['golden'])})"
                         for name, s in sizes.items())
        raise BuildError(
            f"the default bundles take {mb(total)} together, over the {max_total_mb:g} MB budget: {each}. "
            "Export smaller students or fewer precisions, or pass a larger --max-total-mb for a development "
            "build (do not ship it). Nothing was installed", EXIT_BUNDLE)


def install(staged: dict[str, Path], out_dir: Path) -> None:
    """Move each staged bundle to ``out_dir/<name>``, replacing the old one by renames in one directory."""
    moved: list[tuple[Path, Path | None]] = []  # (installed path, the old bundle it replaced)
    try:
        for name, path in staged.items():
            target = out_dir / name
            old = out_dir / f"{OLD_PREFIX}{name}-{os.getpid()}" if target.exists() else None
            if old is not None:
                target.rename(old)
            moved.append((target, old))
            path.rename(target)
    except OSError:
        for target, old in reversed(moved):  # put the old bundles back
            shutil.rmtree(target, ignore_errors=True)
            if old is not None:
                old.rename(target)
        raise
    for _, old in moved:
        if old is not None:
            shutil.rmtree(old)


def remove_leftovers(out_dir: Path) -> None:
    """Remove staging and old directories that an interrupted run left (they would ship in a wheel)."""
    for path in out_dir.iterdir():
        if path.is_dir() and path.name.startswith((STAGING_PREFIX, OLD_PREFIX)):
            logger.warning("removing %s, left by an interrupted run", path)
            shutil.rmtree(path)


def build(targets: Sequence[Target], out_dir: Path, precisions: str, max_total_mb: float,
          threads: int) -> dict[str, dict[str, int]]:
    """Export, size-check, verify, install; returns each bundle's sizes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    try:
        staged = {}
        for number, target in enumerate(targets, 1):
            logger.info("[%d/%d] export %s", number, len(targets), target.name)
            export(target, staging / target.name, precisions, threads)
            staged[target.name] = staging / target.name
        sizes = {name: bundle_sizes(path) for name, path in staged.items()}
        for name, size in sizes.items():
            logger.info("%s: %s", name, mb(size["total"]))
        check_budget(sizes, max_total_mb)
        for name, path in staged.items():
            passed, _ = verify(path)
            logger.info("tinymm verify %s: %d golden checks passed", name, passed)
        install(staged, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sizes


def summary(sizes: dict[str, dict[str, int]], out_dir: Path, max_total_mb: float, seconds: float) -> str:
    rows = [("bundle", "total", "models", "golden", "tokenizer", "other")]
    rows += [(name, *(mb(s[k]) for k in ("total", "models", "golden", "tokenizer", "other")))
             for name, s in sizes.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    total = sum(s["total"] for s in sizes.values())
    lines.append(f"installed in {out_dir}: {mb(total)} of the {max_total_mb:g} MB budget, verified, "
                 f"in {seconds:.0f} s")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("vlm_checkpoint", type=Path, help="vision-language checkpoint directory (train/)")
    parser.add_argument("speech_checkpoint", type=Path, help="speech checkpoint directory (train/)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_BUNDLES_DIR,
                        help=f"where the default bundles live (default {DEFAULT_BUNDLES_DIR})")
    parser.add_argument("--precision", default=DEFAULT_PRECISIONS,
                        help=f"precisions to ship, as python -m export takes them (default {DEFAULT_PRECISIONS})")
    parser.add_argument("--max-total-mb", type=float, default=DEFAULT_MAX_TOTAL_MB,
                        help=f"size budget of both bundles together, MB of 10^6 bytes (default {DEFAULT_MAX_TOTAL_MB:g})")
    parser.add_argument("--vlm-data", type=Path, help="scene dataset for real export inputs (default: generated)")
    parser.add_argument("--speech-data", type=Path, help="speech dataset for real export inputs (default: generated)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the export (default 0: torch's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="make_default_bundles: %(message)s")
    if args.max_total_mb <= 0 or args.threads < 0:
        sys.stderr.write("make_default_bundles: error: --max-total-mb must be > 0 and --threads >= 0\n")
        return EXIT_USAGE
    for flag, path in (("VLM_CHECKPOINT", args.vlm_checkpoint), ("SPEECH_CHECKPOINT", args.speech_checkpoint)):
        if not path.is_dir():
            sys.stderr.write(f"make_default_bundles: error: {flag} {path} is not a checkpoint directory\n")
            return EXIT_USAGE
    targets = (Target(DEFAULT_VISION_BUNDLE, args.vlm_checkpoint.resolve(), args.vlm_data and args.vlm_data.resolve()),
               Target(DEFAULT_SPEECH_BUNDLE, args.speech_checkpoint.resolve(),
                      args.speech_data and args.speech_data.resolve()))
    started = time.perf_counter()
    try:
        sizes = build(targets, args.out_dir.resolve(), args.precision, args.max_total_mb, args.threads)
    except BuildError as e:
        sys.stderr.write(f"make_default_bundles: error: {e}\n")
        return e.exit_code
    sys.stdout.write(summary(sizes, args.out_dir, args.max_total_mb, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
