"""``python -m export CHECKPOINT --out BUNDLE``: export a train/ checkpoint into a verified bundle.

    python -m export runs/vlm/distill/final --out bundles/scene-vlm --precision fp32,int8 --data runs/vlm
    python -m export runs/speech/student_kd/final --out bundles/speech --data runs/speech/data
    python -m export hf ~/models/whisper-base-ct2 --out bundles/whisper-base --precision fp32,int8  (export/hf_cli.py)

With ``--data`` holding a test split, each int8 component is gated on the task metrics of the
whole model that it can change (vision-language: text encoder on zero-shot top-1, image encoder on
VQA accuracy and zero-shot top-1, decoder steps on VQA accuracy; speech: WER), each allowed to
drop ``--max-metric-drop`` points at most, on ``--eval-samples`` test items (zero-shot top-1 uses
at least 256 scenes), and the model card lists the task metrics per precision; without it, the
gate uses the golden outputs' cosine.

Exit codes: 0 written and verified; 3 bad input (missing checkpoint, unknown model kind, no
tokenizer, a contract that does not fit the model); 4 the bundle could not be written (e.g. the
output directory is not empty: pass --force); 6 parity or golden tolerance failed (nothing is
written); 1 an export or quantization step failed. See bundle_build.py for the steps and
export/LAYOUT.md for the bundle layout.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Sequence

from export.cli_args import configure_logging, export_failed, precision_list, set_torch_threads, usage_error
from tinymm.errors import TinymmError

DEFAULT_MAX_DROP = 1.0  # metric points; the same as export.accuracy_gate.DEFAULT_MAX_DROP (checked by a test)
PROG = "python -m export"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export a train/ checkpoint (model.safetensors + config.json) to a tinymm bundle: ONNX "
        "components, parity checks against torch, golden pairs, optional fp16/int8 variants, model card.",
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint directory written by train.checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write (absent or empty)")
    parser.add_argument("--precision", type=precision_list, default=("fp32",),
                        help="comma-separated precisions to ship: fp32 (always), fp16, int8 (default fp32)")
    parser.add_argument("--data", type=Path, default=None,
                        help="a written scene or speech dataset for real inputs (default: generated ones)")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="sentencepiece .model to ship (default: found next to the checkpoint)")
    parser.add_argument("--preprocess", type=Path, default=None,
                        help="JSON file with image/audio/text contract sections (default: from the checkpoint, "
                        "a preprocess.json next to it, or the training recipe's defaults)")
    parser.add_argument("--name", default=None, help="bundle name (default: the --out directory's name)")
    parser.add_argument("--golden-batch", type=int, default=2, help="real inputs per golden pair (default 2)")
    parser.add_argument("--calibration", type=int, default=256,
                        help="real inputs calibrating int8, from the data's train split (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of generated and random inputs (default 0)")
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                        help="torch.onnx exporter (default dynamo; torchscript is the deprecated one, faster to run)")
    parser.add_argument("--opset", type=int, default=None,
                        help="ONNX opset (default: the exporter's lowest, 18 for dynamo, 17 for torchscript)")
    parser.add_argument("--max-metric-drop", type=float, default=None, metavar="POINTS",
                        help="int8 gate: points each task metric an int8 component is judged on may lose vs "
                        "fp32 (WER: may gain); a component is judged on the metrics it can change (text encoder: "
                        "zero-shot top-1; image encoder: VQA accuracy and zero-shot top-1; decoder steps: VQA "
                        f"accuracy; speech encoder: WER); default {DEFAULT_MAX_DROP:g}")
    parser.add_argument("--eval-samples", type=int, default=None, metavar="N",
                        help="int8 gate and model card: test-split scenes (VQA accuracy, caption facts) or clips "
                        "evaluated per model (default: 32 scenes or 256 clips, ~3-4 s each on 2 CPU cores; needs --data "
                        "with a test split). Zero-shot top-1 uses max(N, 256) scenes, capped at the split: it needs "
                        "only the encoders and is noisy on few scenes (1 scene of 32 = 3.1 points)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch and evaluation CPU threads (default 0: the libraries' default; 1 is fastest "
                        "on a busy machine)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step (info level)")
    return parser


HF_SUBCOMMAND = "hf"  # python -m export hf SOURCE ...: a public checkpoint (export/hf_cli.py)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [HF_SUBCOMMAND]:
        from export.hf_cli import main as hf_main

        return hf_main(argv[1:])
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        from export.bundle_build import ExportRequest, build_bundle
        from export.onnx_common import ExportOptions, SampleOptions
        from export.task_eval import GateOptions

        try:
            set_torch_threads(args.threads)
            gate = GateOptions(
                max_metric_drop=DEFAULT_MAX_DROP if args.max_metric_drop is None else args.max_metric_drop,
                eval_samples=args.eval_samples,
                threads=args.threads)
            samples = SampleOptions(data_dir=args.data, golden_batch=args.golden_batch,
                                    calibration_samples=args.calibration, seed=args.seed)
            request = ExportRequest(
                checkpoint=args.checkpoint, out=args.out, precisions=args.precision, samples=samples,
                tokenizer=args.tokenizer, preprocess=args.preprocess, name=args.name, force=args.force,
                options=ExportOptions(opset=args.opset, exporter=args.exporter), progress=not args.no_progress,
                command=shlex.join(["python", "-m", "export", *argv]), gate=gate,
            )
        except ValueError as e:
            return usage_error(PROG, e)
        bundle = build_bundle(request)
    except TinymmError as e:
        return export_failed(PROG, e, args.verbose)
    sys.stderr.write(f"wrote bundle {bundle.name!r} to {bundle.root} ({bundle.manifest.total_bytes} bytes, verified)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
