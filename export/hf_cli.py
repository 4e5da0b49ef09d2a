"""``python -m export hf SOURCE --out BUNDLE``: export a downloaded public checkpoint (export/families/).

    python -m export hf ~/models/whisper-base-ct2 --out bundles/whisper-base --precision fp32,int8
    python -m export hf ~/models/whisper-tiny-hf --out /tmp/wt --precision fp32,fp16,int8 --data clips/ --json
    python -m export hf ~/models/clip-vit-base-patch32 --out bundles/clip-b32 --precision fp32,int8
    python -m export hf ~/models/SmolVLM-256M-Instruct --out bundles/smolvlm --precision fp32,int8 --data frames/

SOURCE is a checkpoint directory on disk (nothing is downloaded); the first family in
export/families/ that recognizes it exports it: whisper (CTranslate2 or Hugging Face), clip and
siglip (Hugging Face CLIPModel / SiglipModel), smolvlm (Hugging Face SmolVLM / Idefics3). With
``--json`` a JSON object describing what was written (files and sizes per precision, seconds,
parity, the int8 gate) goes to stdout.

Exit codes: 0 written and verified; 3 bad input (no family recognizes SOURCE, missing tokenizer);
4 the bundle could not be written (e.g. --out not empty: pass --force); 6 parity or golden
tolerance failed (nothing is written); 1 an export or quantization step failed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Sequence

from export.cli_args import configure_logging, export_failed, precision_list, set_torch_threads, usage_error
from tinymm.errors import TinymmError

PROG = "python -m export hf"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export a downloaded public checkpoint directory to a verified tinymm bundle: ONNX components, "
        "parity with torch/transformers, golden pairs, fp16/int8 variants. Families: whisper (CTranslate2 or Hugging "
        "Face directory), clip and siglip (Hugging Face CLIPModel / SiglipModel directory), smolvlm (Hugging Face "
        "SmolVLM / Idefics3 directory); the directory's files decide which.")
    parser.add_argument("source", type=Path,
                        help="checkpoint directory (e.g. a CTranslate2 whisper-base, or a Hugging Face clip, siglip "
                        "or smolvlm directory)")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write (absent or empty)")
    parser.add_argument("--precision", type=precision_list, default=("fp32",),
                        help="comma-separated precisions to ship: fp32 (always), fp16, int8 (default fp32)")
    parser.add_argument("--data", type=Path, default=None,
                        help="whisper: a folder of speech clips for golden pairs, int8 calibration and the int8 gate "
                        "(default: sentences synthesized with espeak-ng); smolvlm: a folder of images for parity and "
                        "the int8 gate (default: generated scenes); clip and siglip use generated scenes")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    parser.add_argument("--name", default=None, help="bundle name (default: the --out directory's name)")
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="torchscript",
                        help="torch.onnx exporter (default torchscript: several times faster on Whisper, same graphs "
                        "within 1e-6)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's lowest)")
    parser.add_argument("--max-metric-drop", type=float, default=None, metavar="POINTS",
                        help="int8 gate: metric points an int8 component may lose (whisper: WER of int8 vs fp32 "
                        "transcripts, default 2; clip/siglip: zero-shot top-1 agreement with fp32, default 4; "
                        "smolvlm: teacher-forced greedy token agreement with fp32, default 5)")
    parser.add_argument("--eval-samples", type=int, default=None, metavar="N",
                        help="int8 gate: samples per evaluation (whisper: clips, default 24; clip/siglip: scenes, "
                        "default 48; smolvlm: image/prompt pairs, default 8)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of synthesized clips, generated scenes and random inputs (default 0)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's default)")
    parser.add_argument("--vad", default=None, metavar="BUNDLE",
                        help="whisper only: VAD bundle the runtime checks every clip with before decoding (e.g. "
                             "silero-vad; default: none)")
    parser.add_argument("--json", action="store_true", help="print what was written as JSON on stdout")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step (info level)")
    return parser


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        from export.families import HFExportRequest, export_source
        from export.onnx_common import ExportOptions

        try:
            set_torch_threads(args.threads)
            request = HFExportRequest(
                source=args.source, out=args.out, precisions=args.precision, data_dir=args.data, name=args.name,
                force=args.force, options=ExportOptions(opset=args.opset, exporter=args.exporter),
                progress=not args.no_progress, command=shlex.join(["python", "-m", "export", "hf", *argv]),
                seed=args.seed, max_metric_drop=args.max_metric_drop, eval_samples=args.eval_samples, vad=args.vad)
        except ValueError as e:
            return usage_error(PROG, e)
        result = export_source(request)
    except TinymmError as e:
        return export_failed(PROG, e, args.verbose)
    if args.json:
        sys.stdout.write(json.dumps(result.summary, indent=2) + "\n")
    sys.stderr.write(f"wrote bundle {result.bundle.name!r} to {result.bundle.root} "
                     f"({result.bundle.manifest.total_bytes} bytes, verified)\n")
    return 0
