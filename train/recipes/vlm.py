"""The vision-language recipe: scenes -> tokenizer -> teacher -> distilled student, scratch student ->
zero-shot heads -> eval.

``python -m train vlm --out runs/vlm [--budget-minutes M] [--scenes N] [--size 64] [--preset tiny|default]``

Stages, each skipped when its outputs exist and resumed from its latest checkpoint otherwise:

1. ``OUT/scenes``: the synthetic scene dataset (train, val, test, and heldout: sign fonts and a
   rasterization never seen in training).
2. ``OUT/tokenizer``: sentencepiece on the training captions, questions, answers and labels.
3. ``OUT/teacher``: VLMConfig.teacher() on the multi-task mix (captions, VQA, CLIP loss over the
   label set, per-cell attribute loss) with a curriculum from one-object scenes.
4. ``OUT/distill``: VLMConfig.student() distilled from the teacher: ground-truth CE, logit KL at a
   temperature on the same prompts, sequence-level KD on the teacher's checked greedy captions,
   hidden-state matching through projections, TinyCLIP affinity distillation.
5. ``OUT/scratch``: the same student, data and budget, without the teacher.
6. ``OUT/<stage>/zero_shot_head``: each model's contrastive head retrained on its locked image
   tokens (``train/vlm_head_tuning.py``, --head-steps; captions and answers are unchanged).
7. ``OUT/eval``: each model (its zero_shot_head checkpoint when there is one) on the test and
   heldout splits; ``OUT/results.json`` and ``OUT/results.md`` (also printed).

The training budget (--budget-minutes) goes 50% to the teacher and 30% to the distilled student.
The scratch student is compared at equal steps on the same data: it runs the distilled student's
step count on the same batches (the same images at every step; the seed fixes them), capped at the
distilled student's time; it has no teacher forward, so it needs less. Data generation, the
zero-shot heads (about 10 minutes for the three models on 2 CPU threads) and evaluation come on
top. CUDA with mixed precision is used when present.

With --teacher DIR (a committed teacher such as ``train/teachers/vlm``, its tokenizer in
DIR/tokenizer) the teacher is copied in as the finished stage 3 and its tokenizer as stage 2, and
the teacher's share of the budget goes to the students.

With --init-student CKPT both students start from that checkpoint's weights and config instead of
a fresh model (a continuation of a trained student, e.g. the shipped ``train/students/vlm``): their
peak learning rate is halved and the one-object curriculum is skipped; the scratch student is then
the same continuation without the teacher. A checkpoint without the preset's memory positions gains
them, zero at start.

The teacher's loss terms (not its pseudo-captions, which stay in the data) fall linearly to 0 over
the distillation stage unless --no-kd-anneal.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from tinymm.preprocess.text import Tokenizer
from tinymm.hashing import sha256_file
from tinymm.errors import InputError
from train.checkpoint import WEIGHTS_FILE, adopt_files, load_checkpoint, save_checkpoint
from train.data.blank_frames import BlankFrames, SceneMix
from train.data.scene_dataset import SCENES_DIR, SPLITS, SceneDataset, build_specs, write_dataset
from train.data.scene_language import all_labels
from train.loop import seed_everything, set_threads, setup_device
from train.metrics_vision import markdown_table
from train.models.layers import param_count
from train.models.vlm import VisionLanguageModel, VLMConfig
from train.vlm_data import AUX_CLASSES, TaskMix, VLMSceneDataset
from train.vlm_eval import EvalOptions, evaluate, pseudo_captions
from train.vlm_eval_blank import evaluate_blank
from train.vlm_head_tuning import HeadTuningOptions, tune_zero_shot_head
from train.vlm_tokenizer import TOKENIZER_FILE, load_tokenizer, scene_corpus, train_tokenizer
from train.vlm_train import FINAL_DIR, MEMORY_POSITIONS_PARAM, LossWeights, StageOptions, train_stage

logger = logging.getLogger(__name__)

PRESETS = ("default", "tiny")
DEFAULT_BLANK_FRACTION = 0.1  # blank frames per training scene (train/RESULTS.md, run vlm11)
DEFAULT_BUDGET_MINUTES = 100.0  # training only; with data, zero-shot heads and evaluation about 2 h on a 2-core CPU
STAGE_SHARES = {"teacher": 0.5, "distill": 0.3, "scratch": 0.3}  # of the training budget; scratch: a cap
ADOPTED_TEACHER_SHARES = {"teacher": 0.0, "distill": 0.8, "scratch": 0.8}  # with --teacher: no teacher stage
STAGE_LR = {"teacher": 5e-4, "distill": 1e-3, "scratch": 1e-3}  # peak AdamW learning rates
CONTINUATION_LR_FACTOR = 0.5  # on STAGE_LR for students started from --init-student (already trained)
VOCAB_LIMIT = {"default": 512, "tiny": 128}  # most sentencepiece pieces
MAX_TEXT_LEN = {"default": 64, "tiny": 48}  # decoder context, prompt included
BATCH_SIZE = {"cpu": 32, "cuda": 128}  # images per step; each carries --texts-per-image texts
EVAL_SPLITS = ("test", "heldout")
MODELS = ("teacher", "distilled", "scratch")
STAGE_DIRS = {"teacher": "teacher", "distilled": "distill", "scratch": "scratch"}
PSEUDO_FILE = "pseudo_captions.json"
HEAD_DIR = "zero_shot_head"  # the checkpoint with the retrained contrastive head, next to FINAL_DIR
SCRATCH_COMPARISON = ("equal steps on the same data: the scratch student runs the distilled student's step count, "
                      "seeing the same images at every step, without the teacher")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``vlm`` on the ``python -m train`` dispatcher."""
    p = subparsers.add_parser("vlm", help="vision-language recipe: teacher, distilled and scratch students",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run directory (scenes, tokenizer, checkpoints, results)")
    p.add_argument("--budget-minutes", type=float, default=DEFAULT_BUDGET_MINUTES,
                   help=f"training time of all three stages together (default {DEFAULT_BUDGET_MINUTES:g})")
    p.add_argument("--scenes", type=int, default=10000, help="training scenes to generate (default 10000)")
    p.add_argument("--eval-scenes", type=int, default=1000,
                   help="scenes in each of val/test/heldout (default 1000; at most --scenes)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--preset", choices=PRESETS, default="default", help="model sizes (tiny: tests)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps per stage at most (default: budget only)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default 32 on CPU, 128 on CUDA)")
    p.add_argument("--texts-per-image", type=int, default=4,
                   help="caption/VQA texts per image per step; the image is encoded once (default 4)")
    p.add_argument("--questions-per-type", type=int, default=300, help="VQA questions per type evaluated (default 300)")
    p.add_argument("--pseudo-scenes", type=int, default=2000,
                   help="training scenes the teacher captions for sequence-level KD (default 2000; 0 disables)")
    p.add_argument("--head-steps", type=int, default=HeadTuningOptions.steps,
                   help=f"steps retraining each model's zero-shot head on locked image tokens "
                        f"(default {HeadTuningOptions.steps}; 0 skips the stage)")
    p.add_argument("--head-scenes", type=int, default=HeadTuningOptions.scenes,
                   help=f"training scenes the zero-shot head is retrained on (default {HeadTuningOptions.scenes})")
    p.add_argument("--teacher", type=Path, default=None, metavar="DIR",
                   help="a trained teacher with its tokenizer in DIR/tokenizer (e.g. train/teachers/vlm): no teacher "
                        "stage, and its share of the budget goes to the students")
    p.add_argument("--init-student", type=Path, default=None, metavar="CKPT",
                   help="start both students from this trained student checkpoint (a continuation; "
                        "its config is kept, the lr halved, the curriculum skipped)")
    p.add_argument("--blank-fraction", type=float, default=DEFAULT_BLANK_FRACTION,
                   help="frames without scene objects (train/data/blank_frames.py) added to training, as a fraction "
                        f"of --scenes; they teach the empty answers (default {DEFAULT_BLANK_FRACTION:g}; 0: none)")
    p.add_argument("--students", choices=("both", "scratch"), default="both",
                   help="both: the distilled student and its scratch twin (default); scratch: only the student "
                        "without the teacher, for --max-steps (a continuation that needs no comparison)")
    p.add_argument("--kd-anneal", action=argparse.BooleanOptionalAction, default=LossWeights.teacher_anneal,
                   help="let the teacher's loss terms fall linearly to 0 over the distillation stage "
                        "(default; --no-kd-anneal keeps them constant)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--precision", default="auto", help="auto (bf16/fp16 autocast on CUDA, fp32 on CPU), fp32, bf16, fp16")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--workers", type=int, default=2, help="processes generating scenes (default 2)")
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _command_line() -> str:
    """The command that started this process, as ``python -m train vlm ...`` or ``python -m train.recipes.vlm ...``."""
    argv = sys.argv[1:]
    if argv[:1] == ["vlm"]:
        return "python -m train " + shlex.join(argv)
    return "python -m train.recipes.vlm " + shlex.join(argv)


def model_configs(preset: str, size: int, vocab_size: int) -> dict[str, VLMConfig]:
    """Teacher and student configs of a preset, sized to the image and the trained tokenizer."""
    common = dict(image_size=size, vocab_size=vocab_size, max_text_len=MAX_TEXT_LEN[preset],
                  aux_attribute_classes=AUX_CLASSES)
    if preset == "tiny":
        configs = {"teacher": VLMConfig.tiny(enc_dim=48, dec_dim=48, **common), "student": VLMConfig.tiny(**common)}
    else:
        configs = {"teacher": VLMConfig.teacher(**common), "student": VLMConfig.student(**common)}
    # One dataset feeds both models: the attribute targets and the hidden-state matching need one token grid.
    if configs["teacher"].grid_size != configs["student"].grid_size:
        raise ValueError(f"preset {preset!r}: teacher and student token grids differ "
                         f"({configs['teacher'].grid_size} vs {configs['student'].grid_size})")
    return configs


def make_scenes(out: Path, args: argparse.Namespace) -> None:
    """Stage 1: write OUT/scenes unless it is there."""
    if (out / SCENES_DIR / "meta.json").is_file():
        logger.info("scenes: %s exists, skipping", out / SCENES_DIR)
        return
    held = min(args.eval_scenes, args.scenes)
    counts = {"train": args.scenes, "val": held, "test": held, "heldout": held}
    command = _command_line()
    summary = write_dataset(out, build_specs(counts, args.size, args.seed), workers=args.workers,
                            command=command, progress=not args.no_progress)
    logger.info("scenes: %s", summary)


def adopt_teacher(teacher_dir: Path, out: Path) -> None:
    """--teacher: copy the teacher to OUT/teacher/final and its tokenizer to OUT/tokenizer, so that
    stages 2 and 3 are found finished (a different tokenizer or teacher there is an error)."""
    if not (teacher_dir / "config.json").is_file() or not (teacher_dir / "tokenizer" / TOKENIZER_FILE).is_file():
        raise InputError(f"--teacher {teacher_dir}: needs config.json and tokenizer/{TOKENIZER_FILE}; pass a "
                         f"checkpoint directory with its tokenizer, such as train/teachers/vlm")
    hint = "use another --out for this teacher"
    adopt_files(teacher_dir / "tokenizer", out / "tokenizer", hint)
    adopt_files(teacher_dir, out / STAGE_DIRS["teacher"] / FINAL_DIR, hint)


def make_tokenizer(out: Path, train: SceneDataset, preset: str) -> None:
    """Stage 2: train OUT/tokenizer unless it is there."""
    if (out / "tokenizer" / TOKENIZER_FILE).is_file():
        logger.info("tokenizer: %s exists, skipping", out / "tokenizer" / TOKENIZER_FILE)
        return
    train_tokenizer(scene_corpus(train.annotations, all_labels()), out / "tokenizer", VOCAB_LIMIT[preset],
                    MAX_TEXT_LEN[preset])


def _load(path: Path) -> VisionLanguageModel:
    model, _, _ = load_checkpoint(path, VisionLanguageModel, VLMConfig)
    return model


def stage_shares(args: argparse.Namespace) -> dict[str, float]:
    """Each stage's share of --budget-minutes: with --teacher there is no teacher stage to pay for."""
    return ADOPTED_TEACHER_SHARES if args.teacher is not None else STAGE_SHARES


def _stage_options(args: argparse.Namespace, stage: str, device: torch.device,
                   max_steps: int | None = None) -> StageOptions:
    """A stage's options; max_steps (the scratch student's: the distilled student's count) overrides --max-steps."""
    continuation = args.init_student is not None and stage != "teacher"
    return StageOptions(budget_minutes=args.budget_minutes * stage_shares(args)[stage],
                        max_steps=max_steps if max_steps is not None else args.max_steps,
                        batch_size=args.batch_size or BATCH_SIZE.get(device.type, BATCH_SIZE["cpu"]),
                        texts_per_image=args.texts_per_image,
                        lr=STAGE_LR[stage] * (CONTINUATION_LR_FACTOR if continuation else 1.0),
                        curriculum_fraction=0.0 if continuation else StageOptions.curriculum_fraction, seed=args.seed)


def new_student(config: VLMConfig, init: Path | None) -> VisionLanguageModel:
    """A fresh student of ``config``, or the trained student at ``init`` when it fits the run's data and
    tokenizer. A trained student without the memory positions ``config`` has gains them, at zero, so
    it starts out computing exactly what it was trained to."""
    if init is None:
        return VisionLanguageModel(config)
    model = _load(init)  # InputError when init is not a checkpoint
    for field in ("image_size", "patch_size", "vocab_size", "max_text_len", "aux_attribute_classes"):
        if getattr(model.config, field) != getattr(config, field):
            raise InputError(f"--init-student {init}: its {field} is {getattr(model.config, field)!r} but this run "
                             f"needs {getattr(config, field)!r} (same --size and tokenizer as the student's run)")
    if config.memory_positions and not model.config.memory_positions:
        grown = VisionLanguageModel(dataclasses.replace(model.config, memory_positions=True))
        missing = grown.load_state_dict(model.state_dict(), strict=False).missing_keys
        if missing != [MEMORY_POSITIONS_PARAM]:  # only the new positions, which keep their zero init
            raise RuntimeError(f"adding memory positions to {init} left {missing} unloaded")
        logger.info("--init-student %s: added memory positions (zero at start)", init)
        model = grown
    return model


def make_pseudo_captions(out: Path, teacher: VisionLanguageModel, tokenizer: Tokenizer, train: SceneDataset,
                         args: argparse.Namespace, device: torch.device) -> dict[int, list[str]]:
    """Stage 4a: the teacher's checked greedy captions of the first --pseudo-scenes training scenes."""
    path = out / STAGE_DIRS["distilled"] / PSEUDO_FILE
    if path.is_file():
        return {int(k): v for k, v in json.loads(path.read_text())["captions"].items()}
    count = min(args.pseudo_scenes, len(train))
    kept, fraction = pseudo_captions(teacher, tokenizer, train, count, 128, device) if count else ({}, 0.0)
    logger.info("pseudo-captions: kept %d of %d teacher captions (%.1f%% fully correct)", len(kept), count, 100 * fraction)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"scenes": count, "kept_fraction": fraction, "captions": kept}) + "\n")
    return kept


def tune_heads(out: Path, dataset: VLMSceneDataset, check: VLMSceneDataset, args: argparse.Namespace,
               device: torch.device) -> None:
    """Stage 6: OUT/<stage>/zero_shot_head for every model that lacks it (none with --head-steps 0);
    zero-shot top-1 before and after is measured on ``check`` (the val split)."""
    if args.head_steps == 0:
        return
    options = HeadTuningOptions(steps=args.head_steps, scenes=args.head_scenes, seed=args.seed)
    for name in trained_models(out, args):
        stage_dir = out / STAGE_DIRS[name]
        if (stage_dir / HEAD_DIR / "config.json").is_file():
            continue
        model, _, meta = load_checkpoint(stage_dir / FINAL_DIR, VisionLanguageModel, VLMConfig)
        tuned, summary = tune_zero_shot_head(model, dataset, options, device,
                                             show_progress=not args.no_progress, check=check)
        save_checkpoint(stage_dir / HEAD_DIR, tuned, tuned.config, step=meta["step"],
                        extra={**meta.get("extra", {}), "zero_shot_head": summary})


def trained_models(out: Path, args: argparse.Namespace) -> list[str]:
    """The models the later stages treat: every finished one of MODELS, or only the scratch student
    with --students scratch (an adopted teacher is then not tuned or evaluated again)."""
    names = ("scratch",) if args.students == "scratch" else MODELS
    return [name for name in names if (out / STAGE_DIRS[name] / FINAL_DIR / "config.json").is_file()]


def evaluated_checkpoint(stage_dir: Path) -> Path:
    """The checkpoint a stage is evaluated (and shipped) from: its zero-shot head one when present."""
    return stage_dir / HEAD_DIR if (stage_dir / HEAD_DIR / "config.json").is_file() else stage_dir / FINAL_DIR


def evaluate_all(out: Path, tokenizer: Tokenizer, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Stage 7: every model on every eval split, cached per (model, split) in OUT/eval; a cached
    result of other weights (e.g. before the zero-shot head stage) is measured again."""
    results: dict[str, Any] = {}
    options = EvalOptions(max_questions_per_type=args.questions_per_type)
    blanks = BlankFrames(min(args.eval_scenes, args.scenes), args.size, args.seed, SPLITS.index("test"))
    for name in trained_models(out, args):
        stage_dir = out / STAGE_DIRS[name]
        checkpoint = evaluated_checkpoint(stage_dir)
        weights = sha256_file(checkpoint / WEIGHTS_FILE)
        model, _, meta = load_checkpoint(checkpoint, VisionLanguageModel, VLMConfig)
        entry: dict[str, Any] = {"params": param_count(model), "config": dataclasses.asdict(model.config),
                                 "checkpoint": str(checkpoint)}
        stage_file = stage_dir / "stage.json"
        entry["training"] = json.loads(stage_file.read_text()) if stage_file.is_file() else {}
        entry["zero_shot_head"] = meta.get("extra", {}).get("zero_shot_head")
        for split in EVAL_SPLITS:
            path = out / "eval" / f"{name}_{split}.json"
            cached = json.loads(path.read_text()) if path.is_file() else {}
            if cached.get("weights_sha256") != weights:
                metrics = {**evaluate(model, tokenizer, SceneDataset(out, split), options, device),
                           "weights_sha256": weights}
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(metrics, indent=2) + "\n")
            entry[split] = json.loads(path.read_text())
        path = out / "eval" / f"{name}_blank_test.json"
        cached = json.loads(path.read_text()) if path.is_file() else {}
        if cached.get("weights_sha256") != weights:
            path.write_text(json.dumps({**evaluate_blank(model, tokenizer, blanks, device), "weights_sha256": weights},
                                       indent=2) + "\n")
        entry["blank_test"] = json.loads(path.read_text())
        results[name] = entry
    return results


def results_table(models: dict[str, Any]) -> str:
    """Markdown table of the headline metrics, one row per model and split."""
    rows = {}
    for name, entry in models.items():
        for split in EVAL_SPLITS:
            m = entry[split]
            rows[f"{name} ({split})"] = {
                "params": entry["params"], "caption facts %": m["caption_fact_accuracy"], "BLEU-4 %": m["bleu4"],
                "VQA %": m["vqa_overall"], **{f"{k} %": v for k, v in m["vqa"].items() if k != "overall"},
                "zero-shot top-1 %": m["zero_shot_top1"],
                "blank caption claims %": entry["blank_test"]["caption_claims_rate"] if split == "test" else None,
                "blank answer claims %": entry["blank_test"]["answer_claims_rate"] if split == "test" else None,
                "train examples": entry["training"].get("examples"),
            }
    columns = list(dict.fromkeys(c for r in rows.values() for c in r))
    return markdown_table(rows, columns)


def run(args: argparse.Namespace) -> int:
    """Run every stage of the recipe (see the module docstring); 0 on success."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed)
    set_threads(args.threads)
    setup = setup_device(args.device, args.precision)
    show = not args.no_progress
    logger.info("device %s, autocast %s", setup.device, setup.amp_dtype)

    make_scenes(out, args)
    if args.teacher is not None:
        adopt_teacher(args.teacher, out)
    train = SceneDataset(out, "train")
    make_tokenizer(out, train, args.preset)
    tokenizer = load_tokenizer(out / "tokenizer", MAX_TEXT_LEN[args.preset])
    configs = model_configs(args.preset, args.size, tokenizer.vocab_size)
    weights = LossWeights(teacher_anneal=args.kd_anneal)

    if args.blank_fraction < 0:
        raise InputError(f"--blank-fraction {args.blank_fraction} must be >= 0")
    blanks = BlankFrames(round(args.blank_fraction * len(train)), args.size, args.seed, SPLITS.index("train"))
    frames = SceneMix(train, blanks) if len(blanks) else train  # scenes first: pseudo-caption indices hold

    def dataset(pseudo: dict[int, list[str]] | None = None) -> VLMSceneDataset:
        return VLMSceneDataset(frames, tokenizer, args.size, configs["student"].patch_size, TaskMix(), pseudo, args.seed)

    if args.teacher is not None or args.students == "scratch":
        teacher_final = out / STAGE_DIRS["teacher"] / FINAL_DIR  # adopted above, or not needed
    else:
        teacher_final = train_stage("teacher", VisionLanguageModel(configs["teacher"]), dataset(), out / "teacher",
                                    _stage_options(args, "teacher", setup.device), weights, setup, show_progress=show)
    distill_dir = out / STAGE_DIRS["distilled"]
    if args.students == "both" and not (distill_dir / FINAL_DIR / "config.json").is_file():
        teacher = _load(teacher_final)
        pseudo = make_pseudo_captions(out, teacher, tokenizer, train, args, setup.device)
        seed_everything(args.seed)
        train_stage("distill", new_student(configs["student"], args.init_student), dataset(pseudo), distill_dir,
                    _stage_options(args, "distill", setup.device), weights, setup, teacher=teacher, show_progress=show)
    seed_everything(args.seed)  # the scratch student starts from the distilled student's initial weights
    distill_steps = int(json.loads((distill_dir / "stage.json").read_text())["steps"]) if args.students == "both" else None
    train_stage("scratch", new_student(configs["student"], args.init_student), dataset(), out / STAGE_DIRS["scratch"],
                _stage_options(args, "scratch", setup.device, max_steps=distill_steps), weights, setup,
                show_progress=show)

    val = VLMSceneDataset(SceneDataset(out, "val"), tokenizer, args.size, configs["student"].patch_size, TaskMix(),
                          None, args.seed)
    tune_heads(out, dataset(), val, args, setup.device)
    models = evaluate_all(out, tokenizer, args, setup.device)
    results = {
        "command": _command_line(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "device": str(setup.device),
                    "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0)
                    if setup.device.type == "cuda" else None},
        "preset": args.preset, "budget_minutes": args.budget_minutes,
        "stage_shares": stage_shares(args),
        "teacher": str(args.teacher) if args.teacher else None,
        "init_student": str(args.init_student) if args.init_student else None,
        "scratch_comparison": SCRATCH_COMPARISON,
        "data": {split: len(SceneDataset(out, split)) for split in ("train", "val", "test", "heldout")},
        "blank_frames": {"train": len(blanks), "test": args.eval_scenes if args.blank_fraction else 0},
        "tokenizer_vocab": tokenizer.vocab_size,
        "loss_weights": dataclasses.asdict(weights),
        "models": models,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = results_table(models)
    (out / "results.md").write_text(table + "\n")
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.recipes.vlm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
