"""Speech recipe: synthetic data -> tokenizer -> CTC teacher -> distilled student and scratch student -> evaluation.

    python -m train speech --out runs/speech --budget-minutes 90          # the default preset
    python -m train speech --out /tmp/s --preset tiny --clips 16 --eval-clips 4 --max-steps 20

Stages (each skips when its output exists, and a training stage resumes from its last checkpoint):

1. data      OUT/data/speech/...            ``train.data.speech_dataset`` (test = held-out voices)
   features  OUT/features/{split}.npz       log-mels from the runtime's ``AudioPreprocessor.features``
2. tokenizer OUT/tokenizer/speech.model     sentencepiece (characters by default) on the training
                                            transcripts, pad 0 = blank
3. teacher   OUT/teacher/final              ``SpeechConfig.teacher()``, CTC + SpecAugment
4. student   OUT/student_kd/final           ``SpeechConfig.student()``: CTC + (annealed to 0) CTC-posterior KD at a
                                            temperature + hidden-state matching through projections
   whisper   OUT/student_whisper/final      (with --students whisper) the same student distilled from
                                            Whisper's pseudo-labels (train/whisper_distill.py): CTC on
                                            Whisper's words for unlabeled clips + (annealed) matching of
                                            Whisper's encoder states through a projection
5. scratch   OUT/student_scratch/final      the same student, same init, data order and steps, CTC only
6. evaluate  OUT/results.json, results.md   greedy CTC decoding on test, val, each --extra-data val
                                            split and --heldout: WER, CER, intents, raw, with the
                                            runtime's lexicon correction (OUT/tokenizer/lexicon.txt: the
                                            training words) and with the runtime's grammar decoding
                                            (OUT/tokenizer/grammar.txt); every student finished in OUT

The training budget (``--budget-minutes``) is shared: the teacher gets TEACHER_SHARE of it and
the distilled student STUDENT_SHARE; the scratch student runs the distilled student's step count
(capped at the same time). With ``--teacher DIR`` (a finished teacher checkpoint with its
tokenizer, such as the committed ``train/teachers/speech``) the teacher stage is not run, the
tokenizer is the teacher's, and the teacher's share of the budget goes to the distilled student.

``--students`` picks the student stages (default kd,scratch). ``--init-student CKPT`` starts every student
from a trained checkpoint (continued training). ``--extra-data DIR`` adds another dataset's train
clips (e.g. Piper speech, ``python -m train.data.piper_dataset``), and ``--heldout DIR`` scores a
held-out set (``python -m train.data.speech_heldout``). The whisper stage reads Whisper's labels
from DATASET/whisper-labels/train of the data and of each extra set, written beforehand by
``python -m train.whisper_teacher --data DATASET --split train --out DATASET/whisper-labels/train``;
train/RESULTS.md has the full commands.

Several processes (CPU cores, GPUs or machines) train each stage with DistributedDataParallel when
started by torchrun; ``--batch-size`` stays the global batch, which the ranks share:

    torchrun --nproc_per_node 2 -m train speech --out runs/speech --threads 1      # 2 CPU processes, gloo
    torchrun --nproc_per_node 4 -m train speech --out runs/speech --device cuda    # 4 GPUs, nccl

Rank 0 prepares the data, tokenizer and features first, writes every checkpoint, metric and
result, and its clock ends the time budget for all ranks (``train/speech_train.py`` says how the
losses are shared; OUT must be readable by every rank). A step-limited stage (``--max-steps``)
on N processes ends with the weights of one process up to float rounding, when the model has no
dropout (the tiny preset; with dropout each rank draws its own masks).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
from pathlib import Path

import torch

from tinymm.decoding.grammar import GrammarDecoder
from tinymm.decoding.lexicon import Lexicon
from tinymm.errors import BundleError, InputError
from tinymm.preprocess.config import AudioConfig
from tinymm.robot.grammar import ROBOT_COMMANDS, builtin_grammar
from train import distributed as ddp
from train.checkpoint import adopt_files, load_checkpoint, read_checkpoint_meta
from train.data.speech_dataset import SPLITS, SpeechDataset
from train.loop import seed_everything, set_threads
from train.models.speech import CTC_BLANK_ID, SpeechConfig, SpeechCTCModel
from train.speech_features import FeatureSet, ensure_data, ensure_features, load_features
from train.speech_tokenizer import GRAMMAR_FILE, LEXICON_FILE, MODEL_TYPES, SpeechTokenizerConfig, \
    load_speech_tokenizer, read_grammar, read_lexicon, train_speech_tokenizer, write_grammar, write_lexicon
from train.speech_eval import evaluate, group_table, markdown_table, summary_table
from train.speech_train import FINAL_DIR, DistillConfig, Distiller, TrainConfig, train_stage
from train.whisper_distill import WhisperDistillConfig, WhisperDistiller, attach_teacher_labels
from train.whisper_teacher import read_label_dir

logger = logging.getLogger(__name__)

TEACHER_SHARE = 0.5  # of --budget-minutes
STUDENT_SHARE = 0.3  # of --budget-minutes; the scratch student is capped at the same time
STUDENT_STAGES = {"kd": "student_kd", "whisper": "student_whisper", "scratch": "student_scratch"}  # in run order
WHISPER_LABELS = "whisper-labels"  # DATASET/whisper-labels/train: python -m train.whisper_teacher --out ...


def model_configs(preset: str, vocab_size: int, teacher_width: int | None = None,
                  teacher_layers: int | None = None) -> tuple[SpeechConfig, SpeechConfig]:
    """(teacher, student) configs of a preset; the teacher's width (MLP 4x) and depth may be overridden."""
    if preset == "tiny":
        student = SpeechConfig.tiny(vocab_size=vocab_size, max_frames=3000)
        teacher = dataclasses.replace(student, d_model=48, layers=3, ff_dim=96)
    else:
        teacher, student = SpeechConfig.teacher(vocab_size=vocab_size), SpeechConfig.student(vocab_size=vocab_size)
    if teacher_width is not None:
        teacher = dataclasses.replace(teacher, d_model=teacher_width, ff_dim=4 * teacher_width)
    if teacher_layers is not None:
        teacher = dataclasses.replace(teacher, layers=teacher_layers)
    return teacher, student


def grammar_decoder(tokenizer_path: Path, tokenizer) -> GrammarDecoder | None:
    """The runtime's decoder of the clips' grammar (tinymm.robot's, which train.data.speech_grammar
    speaks), recorded next to the tokenizer for the export (OUT/tokenizer/grammar.txt); None when the
    tokenizer cannot spell the grammar (a tiny run's vocabulary may lack letters)."""
    path = tokenizer_path.with_name(GRAMMAR_FILE)
    if path.is_file():
        return GrammarDecoder.from_tokenizer(builtin_grammar(read_grammar(path)), tokenizer, CTC_BLANK_ID)
    try:
        decoder = GrammarDecoder.from_tokenizer(builtin_grammar(ROBOT_COMMANDS), tokenizer, CTC_BLANK_ID)
    except BundleError as e:
        logger.warning("no grammar decoding: %s", e)
        return None
    write_grammar(ROBOT_COMMANDS, path)
    return decoder


def adopt_teacher_tokenizer(teacher_dir: Path, tokenizer_dir: Path) -> None:
    """Copy a committed teacher's tokenizer files (DIR/tokenizer) to OUT/tokenizer; a different
    tokenizer already there is an error, since the student must share the teacher's output ids."""
    source = teacher_dir / "tokenizer"
    if not (source / "speech.model").is_file():
        raise InputError(f"--teacher {teacher_dir} has no tokenizer/speech.model; pass a checkpoint directory "
                         f"with its tokenizer, such as train/teachers/speech")
    adopt_files(source, tokenizer_dir, "use another --out for this teacher")


# ----------------------------------------------------------------------------------------------
# Command line


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("speech", help="teacher -> distilled and scratch students on synthetic speech",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="run directory (data, checkpoints, results)")
    p.add_argument("--preset", choices=("tiny", "default"), default="default", help="model sizes")
    p.add_argument("--clips", type=int, default=16000, help="training clips to synthesize")
    p.add_argument("--eval-clips", type=int, default=500, help="val and test clips each (test = held-out voices)")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help=f"training time of all stages: teacher {TEACHER_SHARE * 100:.0f}%%, student {STUDENT_SHARE * 100:.0f}%%, "
                        "scratch the student's steps (default: 90, or none with --max-steps)")
    p.add_argument("--max-steps", type=int, default=None, help="steps per stage (teacher and student)")
    p.add_argument("--teacher", type=Path, default=None,
                   help="a trained teacher checkpoint with its tokenizer in DIR/tokenizer (e.g. train/teachers/speech): "
                        "no teacher stage, and its share of the budget goes to the distilled student")
    p.add_argument("--teacher-width", type=int, default=None, help="teacher d_model (default: the preset's)")
    p.add_argument("--teacher-layers", type=int, default=None, help="teacher blocks (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--tokenizer", choices=MODEL_TYPES, default="char",
                   help="sentencepiece model type of the CTC vocabulary (char learned several times faster "
                        "than 128 unigram pieces on this data; see train/RESULTS.md)")
    p.add_argument("--vocab-size", type=int, default=128,
                   help="most sentencepiece pieces, id 0 = CTC blank (a char vocabulary stops at the letters)")
    p.add_argument("--kd-temperature", type=float, default=DistillConfig.temperature)
    p.add_argument("--kd-weight", type=float, default=DistillConfig.kd_weight)
    p.add_argument("--hidden-weight", type=float, default=DistillConfig.hidden_weight)
    p.add_argument("--kd-anneal", action=argparse.BooleanOptionalAction, default=DistillConfig.anneal,
                   help="the teacher's loss terms fall linearly to 0 over the distilled student's stage "
                        "(default; --no-kd-anneal keeps them constant)")
    p.add_argument("--checkpoint-minutes", type=float, default=10.0, help="minutes between resume checkpoints")
    p.add_argument("--log-every", type=int, default=10, help="steps per metrics.jsonl row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (per process under torchrun)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the stages train; under torchrun, cuda gives each process the GPU LOCAL_RANK")
    p.add_argument("--workers", type=int, default=2, help="speech synthesis processes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("students, data and the Whisper teacher")
    g.add_argument("--students", default="kd,scratch",
                   help=f"student stages to train, comma separated, of {', '.join(STUDENT_STAGES)}: kd = distilled "
                        "from the project's teacher, scratch = CTC only, whisper = distilled from Whisper's labels")
    g.add_argument("--init-student", type=Path, default=None,
                   help="a student checkpoint (e.g. train/students/speech) every student starts from, instead of "
                        "random weights; it must share the tokenizer (pass --teacher with the same one)")
    g.add_argument("--extra-data", type=Path, action="append", default=[],
                   help="another speech dataset in the same layout (e.g. python -m train.data.piper_dataset) whose "
                        "train split joins training and whose val split is scored; repeatable")
    g.add_argument("--heldout", type=Path, default=None,
                   help="a dataset whose test split is scored as 'heldout' (python -m train.data.speech_heldout)")
    g.add_argument("--whisper-words", choices=("extra", "all", "none"), default="extra",
                   help="where Whisper's transcripts replace the CTC targets in the whisper stage: on the "
                        "--extra-data clips (treated as unlabeled; default), on every labelled clip, or nowhere")
    g.add_argument("--whisper-weight", type=float, default=WhisperDistillConfig.state_weight,
                   help="weight of the Whisper state-matching term (0: transcripts only)")
    return p


def run(args: argparse.Namespace) -> int:
    with ddp.process_group(torch.device(args.device)) as device:  # one process without torchrun
        return run_on(args, device)


def load_set(data_dir: Path, out: Path, split: str, audio: AudioConfig, tokenizer, show: bool,
             name: str = "") -> FeatureSet:
    """One split of a dataset directory as log-mels (cached in OUT/features under ``name``)."""
    return load_features(data_dir, ensure_features(data_dir, out, split, audio, show, name), split, tokenizer)


def whisper_labelled(part: FeatureSet, data_dir: Path, tokenizer, use_words: bool) -> FeatureSet:
    """``part`` (a train split of ``data_dir``) with Whisper's pseudo-labels from
    DATA_DIR/whisper-labels/train when they are there (train/whisper_teacher.py), else as it is."""
    labels_dir = data_dir / WHISPER_LABELS / "train"
    if not labels_dir.is_dir():
        logger.info("no Whisper labels in %s: its clips train on CTC alone", labels_dir)
        return part
    labels = read_label_dir(labels_dir)
    logger.info("Whisper labels: %d of %d clips of %s%s", len(labels), len(part), data_dir,
                " (its words are the targets)" if use_words else "")
    return attach_teacher_labels(part, labels, tokenizer, use_words)


def heldout_voice(voice: str) -> str:
    """A held-out clip's voice family for the breakdown: "piper-shifted" or "espeak-ng"."""
    return voice if voice.startswith("piper") else "espeak-ng"


def parse_students(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(STUDENT_STAGES))
    if unknown or not names:
        raise InputError(f"--students {text!r}: name one or more of {', '.join(STUDENT_STAGES)}")
    return names


def run_on(args: argparse.Namespace, device: torch.device) -> int:
    """The recipe on this process's ``device``: every rank trains, rank 0 alone evaluates."""
    out: Path = args.out
    show = not args.quiet and ddp.is_main()
    students = parse_students(args.students)
    set_threads(args.threads)
    seed_everything(args.seed)
    budget = args.budget_minutes if args.budget_minutes is not None else (None if args.max_steps else 90.0)
    tokenizer_path = out / "tokenizer" / "speech.model"
    with ddp.main_first():  # rank 0 writes the data, tokenizer and features; the others then read them
        out.mkdir(parents=True, exist_ok=True)
        data_dir = ensure_data(out, args.clips, args.eval_clips, args.seed, args.workers, show)
        if args.teacher is not None:
            adopt_teacher_tokenizer(args.teacher, tokenizer_path.parent)
        if not tokenizer_path.is_file():
            logger.info("stage tokenizer")
            train_speech_tokenizer((item["transcript"] for item in SpeechDataset(data_dir, "train").items),
                                   tokenizer_path,
                                   SpeechTokenizerConfig(vocab_size=args.vocab_size, model_type=args.tokenizer))
        tokenizer = load_speech_tokenizer(tokenizer_path)
        lexicon_path = tokenizer_path.with_name(LEXICON_FILE)
        if not lexicon_path.is_file():
            write_lexicon((item["transcript"] for item in SpeechDataset(data_dir, "train").items), lexicon_path)
        lexicon = Lexicon(read_lexicon(lexicon_path))
        grammar = grammar_decoder(tokenizer_path, tokenizer)
        teacher_cfg, student_cfg = model_configs(args.preset, tokenizer.vocab_size, args.teacher_width,
                                                 args.teacher_layers)
        if args.init_student is not None:
            student_cfg = load_checkpoint(args.init_student, SpeechCTCModel, SpeechConfig)[1]
            if student_cfg.vocab_size != tokenizer.vocab_size:
                raise InputError(f"--init-student {args.init_student} has {student_cfg.vocab_size} output ids but "
                                 f"the tokenizer {tokenizer_path} {tokenizer.vocab_size}; pass --teacher with the "
                                 f"same tokenizer")
        audio = AudioConfig(n_mels=student_cfg.n_mels)
        splits = {split: load_set(data_dir, out, split, audio, tokenizer, show) for split in SPLITS}
        extras = {path.name: path for path in args.extra_data}
        extra_train = {name: load_set(path, out, "train", audio, tokenizer, show, f"{name}-")
                       for name, path in extras.items()}
        scored = {"test": splits["test"], "val": splits["val"]}
        for name, path in extras.items():
            if SpeechDataset(path, "val").items:
                scored[f"{name}-val"] = load_set(path, out, "val", audio, tokenizer, show, f"{name}-")
        groups: dict[str, dict[str, list[str]]] = {}
        if args.heldout is not None:
            scored["heldout"] = load_set(args.heldout, out, "test", audio, tokenizer, show, "heldout-")
            items = SpeechDataset(args.heldout, "test").items
            groups["heldout"] = {"condition": [item.get("condition", "-") for item in items],
                                 "voice": [heldout_voice(item.get("voice", "-")) for item in items]}
        train_set = FeatureSet.concat([splits["train"], *extra_train.values()])
        whisper_train = None
        if "whisper" in students:
            whisper_train = FeatureSet.concat(
                [whisper_labelled(splits["train"], data_dir, tokenizer, args.whisper_words == "all")]
                + [whisper_labelled(part, extras[name], tokenizer, args.whisper_words != "none")
                   for name, part in extra_train.items()])
            if whisper_train.teacher_states is None:
                raise InputError("--students whisper needs Whisper's labels in DATASET/whisper-labels/train of the "
                                 "data or an --extra-data set: python -m train.whisper_teacher --data DATASET "
                                 "--split train --out DATASET/whisper-labels/train")

    def stage_config(share: float | None, max_steps: int | None, seed: int) -> TrainConfig:
        return TrainConfig(minutes=None if budget is None or share is None else budget * share, max_steps=max_steps,
                           batch_size=args.batch_size, peak_lr=args.lr, warmup_steps=args.warmup_steps,
                           checkpoint_minutes=args.checkpoint_minutes, log_every=args.log_every, seed=seed)

    def fresh(config: SpeechConfig, seed: int, init: Path | None = None) -> SpeechCTCModel:
        torch.manual_seed(seed)
        model = SpeechCTCModel(config)
        if init is not None:
            model.load_state_dict(load_checkpoint(init, SpeechCTCModel, SpeechConfig)[0].state_dict())
        return model

    common = dict(out=out, train=train_set, val=splits["val"], tokenizer=tokenizer, show=show, device=device)
    finals: dict[str, Path] = {}
    if args.teacher is not None:
        finals["teacher"] = args.teacher
        student_share = STUDENT_SHARE + TEACHER_SHARE
    elif "kd" in students:
        finals["teacher"] = train_stage("teacher", model=fresh(teacher_cfg, args.seed),
                                        cfg=stage_config(TEACHER_SHARE, args.max_steps, args.seed), **common)
        student_share = STUDENT_SHARE
    else:
        student_share = STUDENT_SHARE + TEACHER_SHARE
    if args.init_student is not None:
        finals["initial"] = args.init_student
    student_seed = args.seed + 1  # the students start from the same weights and see the same batches
    steps = args.max_steps
    if "kd" in students:
        teacher, _, _ = load_checkpoint(finals["teacher"], SpeechCTCModel, SpeechConfig)
        if teacher.config.vocab_size != tokenizer.vocab_size:
            raise InputError(f"the teacher {finals['teacher']} has {teacher.config.vocab_size} output ids but the "
                             f"tokenizer {tokenizer_path} {tokenizer.vocab_size}; use the teacher's tokenizer")
        distill = DistillConfig(kd_weight=args.kd_weight, temperature=args.kd_temperature,
                                hidden_weight=args.hidden_weight, anneal=args.kd_anneal)
        kd_final = train_stage(STUDENT_STAGES["kd"], model=fresh(student_cfg, student_seed, args.init_student),
                               distiller=Distiller(teacher, student_cfg, distill),
                               cfg=stage_config(student_share, args.max_steps, student_seed), **common)
        steps = read_checkpoint_meta(kd_final)["step"]
    if whisper_train is not None:
        width = next(s for s in whisper_train.teacher_states if s is not None).shape[1]
        whisper = WhisperDistiller(student_cfg, width, WhisperDistillConfig(state_weight=args.whisper_weight,
                                                                            anneal=args.kd_anneal))
        train_stage(STUDENT_STAGES["whisper"], model=fresh(student_cfg, student_seed, args.init_student),
                    distiller=whisper, cfg=stage_config(student_share, steps, student_seed),
                    **{**common, "train": whisper_train})
    if "scratch" in students:
        train_stage(STUDENT_STAGES["scratch"], model=fresh(student_cfg, student_seed, args.init_student),
                    cfg=stage_config(student_share, steps, student_seed), **common)

    if not ddp.is_main():  # evaluation and results are rank 0's
        return 0
    logger.info("stage evaluate")
    for stage in STUDENT_STAGES.values():  # every finished student of this run, also from earlier invocations
        if (out / stage / FINAL_DIR / "config.json").is_file():
            finals[stage] = out / stage / FINAL_DIR
    models = evaluate(finals, scored, tokenizer, show, lexicon, grammar, groups)
    results = {
        "models": models,
        "data": {"train": len(train_set), **{split: len(data) for split, data in scored.items()}},
        "tokenizer": {"vocab_size": tokenizer.vocab_size, "file": str(tokenizer_path)},
        "budget_minutes": budget,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "processes": ddp.world_size(), "device": str(device)},
        "args": {key: str(value) for key, value in vars(args).items() if not key.startswith("_")},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    breakdowns = [group_table(models, split, name) for split, named in groups.items() for name in named]
    table = "\n\n".join([summary_table(models, list(scored)), *filter(None, breakdowns), markdown_table(models)])
    (out / "results.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0
