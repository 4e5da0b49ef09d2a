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
5. scratch   OUT/student_scratch/final      the same student, same init, data order and steps, CTC only
6. evaluate  OUT/results.json, results.md   greedy CTC decoding on test (and val): WER, CER, intents,
                                            raw, with the runtime's lexicon correction
                                            (OUT/tokenizer/lexicon.txt: the training words) and with
                                            the runtime's grammar decoding (OUT/tokenizer/grammar.txt)

The training budget (``--budget-minutes``) is shared: the teacher gets TEACHER_SHARE of it and
the distilled student STUDENT_SHARE; the scratch student runs the distilled student's step count
(capped at the same time). With ``--teacher DIR`` (a finished teacher checkpoint with its
tokenizer, such as the committed ``train/teachers/speech``) the teacher stage is not run, the
tokenizer is the teacher's, and the teacher's share of the budget goes to the distilled student.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tinymm.decoding.grammar import GrammarDecoder, GrammarHypothesis
from tinymm.decoding.lexicon import Lexicon
from tinymm.errors import BundleError, InputError
from tinymm.preprocess.config import AudioConfig
from tinymm.robot.grammar import ROBOT_COMMANDS, builtin_grammar
from tinymm.robot.intent import IntentParser
from tinymm.robot.transcripts import normalize_transcript
from train.checkpoint import adopt_files, latest_checkpoint, load_checkpoint, load_optimizer_state, \
    read_checkpoint_meta, save_checkpoint, step_dir_name
from train.data.speech_dataset import SPLITS, SpeechDataset
from train.loop import MetricsLogger, TimeBudget, progress, seed_everything, set_lr, set_threads, \
    teacher_anneal_scale, warmup_cosine_lr
from train.losses import ctc_posterior_kd_loss, hidden_match_loss
from train.metrics_speech import score_transcripts
from train.models.layers import key_padding_mask, param_count
from train.models.speech import CTC_BLANK_ID, SpeechConfig, SpeechCTCModel, SpeechOutput
from train.speech_features import FeatureSet, batches, collate, ensure_data, ensure_features, load_features
from train.speech_tokenizer import GRAMMAR_FILE, LEXICON_FILE, MODEL_TYPES, SpeechTokenizerConfig, \
    load_speech_tokenizer, read_grammar, read_lexicon, train_speech_tokenizer, write_grammar, write_lexicon

logger = logging.getLogger(__name__)

TEACHER_SHARE = 0.5  # of --budget-minutes
STUDENT_SHARE = 0.3  # of --budget-minutes; the scratch student is capped at the same time
FINAL_DIR = "final"
PROJECTIONS_FILE = "projections.pt"  # the distillation projections, saved next to step checkpoints
EVAL_BATCH = 32  # clips per inference batch
VAL_CLIPS_DURING_TRAINING = 200  # val clips decoded at each checkpoint (the val WER in metrics.jsonl)


@dataclass(frozen=True)
class SpecAugmentConfig:
    """SpecAugment-style masking of training features (no time warp)."""

    freq_masks: int = 2  # masks per clip over mel bands
    freq_width: int = 10  # mel bands, largest width of a mask (80 mels)
    time_masks: int = 2  # masks per clip over frames
    time_width: int = 25  # frames (10 ms each), largest width of a mask
    time_fraction: float = 0.15  # a time mask covers at most this share of the clip


@dataclass(frozen=True)
class TrainConfig:
    """One training stage."""

    minutes: float | None  # wall-clock budget (None: steps only)
    max_steps: int | None  # step budget (None: time only)
    batch_size: int = 16  # clips per step
    peak_lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max global gradient norm
    checkpoint_minutes: float = 10.0  # wall-clock minutes between resume checkpoints
    log_every: int = 10  # steps per metrics.jsonl row
    seed: int = 0  # init, batch order and masks
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)

    def __post_init__(self) -> None:
        if self.minutes is None and self.max_steps is None:
            raise ValueError("a training stage needs a time budget (minutes) or max_steps, or both")


@dataclass(frozen=True)
class DistillConfig:
    """Loss weights of the distilled student: ctc * CTC + kd * KL(posteriors, T) + hidden * MSE(states)."""

    ctc_weight: float = 1.0
    kd_weight: float = 1.0
    temperature: float = 2.0  # softens the teacher's peaky CTC posteriors
    hidden_weight: float = 0.5
    hidden_layers: int = 3  # student blocks matched to teacher blocks, spaced evenly, last to last
    # The teacher's terms fall linearly to 0 over the stage, so that a student that outgrows its
    # teacher ends on the ground truth alone (train/RESULTS.md: trained 3x longer than its teacher,
    # a student with constant weights lost to its scratch twin; annealed, it beat it).
    anneal: bool = True

    def layer_pairs(self, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
        """(student block, teacher block) 0-based pairs at evenly spaced relative depths, ending at both last blocks."""
        n = min(self.hidden_layers, student_layers)
        pairs = []
        for k in range(1, n + 1):
            s = round(k * student_layers / n) - 1
            pairs.append((s, round((s + 1) * teacher_layers / student_layers) - 1))
        return pairs


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


def spec_augment(x: torch.Tensor, lengths: torch.Tensor, cfg: SpecAugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Zero random mel bands and frame spans of (B, n_mels, T) features; returns a new tensor."""
    x = x.clone()
    n_mels = x.shape[1]
    for b in range(x.shape[0]):
        for _ in range(cfg.freq_masks):
            width = int(torch.randint(0, min(cfg.freq_width, n_mels // 4) + 1, (1,), generator=gen))
            start = int(torch.randint(0, n_mels - width + 1, (1,), generator=gen))
            x[b, start:start + width, :] = 0.0
        length = int(lengths[b])
        for _ in range(cfg.time_masks):
            width = int(torch.randint(0, min(cfg.time_width, int(cfg.time_fraction * length)) + 1, (1,), generator=gen))
            start = int(torch.randint(0, max(length - width, 0) + 1, (1,), generator=gen))
            x[b, :, start:start + width] = 0.0
    return x


def ctc_loss(log_probs: torch.Tensor, out_lengths: torch.Tensor, labels: list[list[int]]) -> torch.Tensor:
    """Mean CTC loss (per target token) of (B, T', V) log-probs against label id lists."""
    targets = torch.tensor([t for label in labels for t in label], dtype=torch.int64)
    target_lengths = torch.tensor([len(label) for label in labels], dtype=torch.int64)
    return F.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, target_lengths, blank=CTC_BLANK_ID,
                      zero_infinity=True)


# ----------------------------------------------------------------------------------------------
# Training


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """(B, T', V) log-probs, (B,) valid frames -> token ids per clip: argmax, collapse repeats, drop blanks."""
    best = log_probs.argmax(dim=-1)  # (B, T')
    out = []
    for row, n in zip(best.tolist(), lengths.tolist()):
        ids, previous = [], None
        for token in row[:n]:
            if token != previous and token != CTC_BLANK_ID:
                ids.append(token)
            previous = token
        out.append(ids)
    return out


@torch.inference_mode()
def decode(model: SpeechCTCModel, data: FeatureSet, tokenizer, limit: int | None = None, show: bool = False,
           grammar: GrammarDecoder | None = None) -> tuple[list[str], list[GrammarHypothesis | None]]:
    """Greedy CTC transcripts (normalized) of the first ``limit`` clips of ``data``, and each clip's
    best sentence of ``grammar`` (the runtime's decoder; None without one)."""
    was_training = model.training
    model.eval()
    n = len(data) if limit is None else min(limit, len(data))
    order = np.argsort([f.shape[1] for f in data.features[:n]], kind="stable")
    texts: list[str] = [""] * n
    best: list[GrammarHypothesis | None] = [None] * n
    for start in progress(range(0, n, EVAL_BATCH), enabled=show, desc="decode", leave=False):
        idx = order[start:start + EVAL_BATCH]
        log_probs, out_lengths = model(*collate(data, idx))
        for row, (i, ids) in enumerate(zip(idx, greedy_decode(log_probs, out_lengths))):
            texts[i] = normalize_transcript(tokenizer.decode(ids))
            if grammar is not None:
                best[i] = grammar.decode(log_probs[row, : out_lengths[row]].numpy())
    model.train(was_training)
    return texts, best


def transcribe(model: SpeechCTCModel, data: FeatureSet, tokenizer, limit: int | None = None, show: bool = False) -> list[str]:
    """Greedy CTC transcripts (normalized) of the first ``limit`` clips of ``data``."""
    return decode(model, data, tokenizer, limit, show)[0]


class Distiller:
    """The teacher side of the distilled student's loss: the frozen teacher and the trained projections."""

    def __init__(self, teacher: SpeechCTCModel, student: SpeechConfig, cfg: DistillConfig) -> None:
        if teacher.config.subsampling_layers != student.subsampling_layers:
            raise ValueError("frame-level distillation needs teacher and student at the same frame rate "
                             f"(subsampling_layers {teacher.config.subsampling_layers} != {student.subsampling_layers})")
        self.teacher = teacher.eval().requires_grad_(False)
        self.cfg = cfg
        self.pairs = cfg.layer_pairs(student.layers, teacher.config.layers)
        self.projections = nn.ModuleList(nn.Linear(student.d_model, teacher.config.d_model) for _ in self.pairs)

    def losses(self, out: SpeechOutput, features: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """KD and hidden-state losses of a student forward on (B, n_mels, T) unmasked features."""
        with torch.no_grad():
            target = self.teacher.forward_features(features, lengths)  # the teacher hears the unmasked clip
        valid = key_padding_mask(out.lengths, out.log_probs.shape[1])  # (B, T')
        width = (self.teacher.config.d_model,)
        hidden = [hidden_match_loss(out.hidden_states[s], F.layer_norm(target.hidden_states[t], width), proj, valid)
                  for (s, t), proj in zip(self.pairs, self.projections)]
        return {"kd": ctc_posterior_kd_loss(out.log_probs, target.log_probs, out.lengths, self.cfg.temperature),
                "hidden": sum(hidden) / len(hidden)}

    def teacher_scale(self, progress: float) -> float:
        """Factor on the teacher's terms at ``progress`` (0..1) of the stage."""
        return teacher_anneal_scale(self.cfg.anneal, progress)

    def total(self, losses: dict[str, torch.Tensor], progress: float = 0.0) -> torch.Tensor:
        scale = self.teacher_scale(progress)
        return (self.cfg.ctc_weight * losses["ctc"]
                + scale * (self.cfg.kd_weight * losses["kd"] + self.cfg.hidden_weight * losses["hidden"]))


def train_stage(name: str, out: Path, model: SpeechCTCModel, train: FeatureSet, val: FeatureSet, tokenizer,
                cfg: TrainConfig, show: bool, distiller: Distiller | None = None) -> Path:
    """Train ``model`` with CTC (plus ``distiller``'s losses when given); returns the final checkpoint.

    Skips when OUT/name/final exists; resumes from the newest OUT/name/step_* checkpoint.
    """
    run_dir = out / name
    final = run_dir / FINAL_DIR
    if (final / "config.json").is_file():
        logger.info("stage %s: done (%s)", name, final)
        return final
    projections = distiller.projections if distiller is not None else nn.ModuleList()
    params = list(model.parameters()) + list(projections.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.peak_lr, weight_decay=cfg.weight_decay)
    step, spent_s, first_loss = 0, 0.0, None
    resume = latest_checkpoint(run_dir)
    if resume is not None:
        restored, _, meta = load_checkpoint(resume, SpeechCTCModel, SpeechConfig)
        model.load_state_dict(restored.state_dict())
        load_optimizer_state(resume, optimizer)
        if (run_dir / PROJECTIONS_FILE).is_file():
            projections.load_state_dict(torch.load(run_dir / PROJECTIONS_FILE, weights_only=True))
        step, spent_s, first_loss = meta["step"], meta["extra"]["train_seconds"], meta["extra"].get("first_loss")
        logger.info("stage %s: resuming from %s (step %d)", name, resume, step)
    budget = TimeBudget(cfg.minutes, spent_s=spent_s)
    rng = np.random.default_rng([cfg.seed, step])
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    model.train()
    logger.info("stage %s: %d parameters, %s steps, %s minutes", name, param_count(model), cfg.max_steps, cfg.minutes)

    def checkpoint(path: Path, last_loss: float | None) -> None:
        if len(projections):
            tmp = run_dir / (PROJECTIONS_FILE + ".tmp")
            run_dir.mkdir(parents=True, exist_ok=True)
            torch.save(projections.state_dict(), tmp)
            os.replace(tmp, run_dir / PROJECTIONS_FILE)
        extra = {"train_seconds": round(budget.elapsed(), 1), "first_loss": first_loss, "last_loss": last_loss,
                 "stage": name, "train_config": dataclasses.asdict(cfg),
                 "distill": dataclasses.asdict(distiller.cfg) if distiller else None, "train_clips": len(train)}
        save_checkpoint(path, model, model.config, step=step, optimizer=optimizer, extra=extra)

    last_save = budget.elapsed()
    running: dict[str, list[float]] = {}
    last_loss = None
    with MetricsLogger(run_dir / "metrics.jsonl") as metrics, \
            progress(total=cfg.max_steps, initial=step, enabled=show, desc=name, unit="step") as bar:
        for idx in batches(train, cfg.batch_size, rng):
            if (cfg.max_steps is not None and step >= cfg.max_steps) or budget.expired():
                break
            fraction = max(step / cfg.max_steps if cfg.max_steps else 0.0, budget.fraction())
            set_lr(optimizer, warmup_cosine_lr(step, fraction, cfg.peak_lr, cfg.warmup_steps, cfg.min_lr))
            x, lengths = collate(train, idx)
            out = model.forward_features(spec_augment(x, lengths, cfg.spec_augment, gen), lengths)
            losses = {"ctc": ctc_loss(out.log_probs, out.lengths, [train.labels[i] for i in idx])}
            if distiller is not None:
                losses.update(distiller.losses(out, x, lengths))
            loss = distiller.total(losses, fraction) if distiller is not None else losses["ctc"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            step += 1
            bar.update(1)
            for key, value in {"loss": loss, **losses}.items():
                running.setdefault(key, []).append(float(value.detach()))
            if step % cfg.log_every == 0:
                means = {k: round(float(np.mean(v)), 4) for k, v in running.items()}
                first_loss = means["loss"] if first_loss is None else first_loss
                last_loss = means["loss"]
                if distiller is not None:
                    means["teacher_scale"] = round(distiller.teacher_scale(fraction), 4)
                metrics.log(step, lr=optimizer.param_groups[0]["lr"], grad_norm=float(grad_norm), **means)
                bar.set_postfix(loss=means["loss"])
                running = {}
            if budget.elapsed() - last_save > cfg.checkpoint_minutes * 60:
                val_wer = score_transcripts(val.transcripts[:VAL_CLIPS_DURING_TRAINING],
                                            transcribe(model, val, tokenizer, VAL_CLIPS_DURING_TRAINING)).wer
                metrics.log(step, val_wer=round(val_wer, 4))
                logger.info("stage %s: step %d, val WER %.3f on %d clips", name, step, val_wer,
                            min(len(val), VAL_CLIPS_DURING_TRAINING))
                checkpoint(run_dir / step_dir_name(step), last_loss)
                last_save = budget.elapsed()
        if running:  # a partial logging window at the end
            last_loss = round(float(np.mean(running["loss"])), 4)
            first_loss = last_loss if first_loss is None else first_loss
            metrics.log(step, **{k: round(float(np.mean(v)), 4) for k, v in running.items()})
    checkpoint(final, last_loss)
    logger.info("stage %s: finished at step %d after %.1f min, loss %s -> %s", name, step, budget.elapsed() / 60,
                first_loss, last_loss)
    return final


# ----------------------------------------------------------------------------------------------
# Evaluation


def evaluate(finals: dict[str, Path], splits: dict[str, FeatureSet], tokenizer, show: bool,
             lexicon: Lexicon | None = None, grammar: GrammarDecoder | None = None) -> dict[str, Any]:
    """Greedy-decode every split with every model; scores raw, with ``lexicon`` correction (key
    "lexicon") and with ``grammar`` decoding (key "grammar"), as the runtime applies them: the
    grammar's sentence, or for clips outside it the free transcript (greedy, lexicon-corrected)."""
    parser = IntentParser()
    models: dict[str, Any] = {}
    for name, path in finals.items():
        model, config, meta = load_checkpoint(path, SpeechCTCModel, SpeechConfig)
        entry = {"parameters": param_count(model), "steps": meta["step"],
                 "train_minutes": round(meta["extra"]["train_seconds"] / 60, 1),
                 "first_loss": meta["extra"].get("first_loss"), "last_loss": meta["extra"].get("last_loss"),
                 "config": dataclasses.asdict(config)}
        for split, data in splits.items():
            hyps, best = decode(model, data, tokenizer, show=show, grammar=grammar)
            entry[split] = score_transcripts(data.transcripts, hyps, data.intents, parser).to_dict()
            entry[split]["examples"] = [{"ref": r, "hyp": h} for r, h in zip(data.transcripts[:5], hyps[:5])]
            free = [lexicon.correct(h) for h in hyps] if lexicon is not None else hyps
            if lexicon is not None:
                entry[split]["lexicon"] = score_transcripts(data.transcripts, free, data.intents, parser).to_dict()
            if grammar is not None:
                said = [normalize_transcript(tokenizer.decode(list(b.tokens))) if b is not None and b.in_grammar else f
                        for b, f in zip(best, free)]
                entry[split]["grammar"] = score_transcripts(data.transcripts, said, data.intents, parser).to_dict()
                entry[split]["grammar"]["in_grammar"] = sum(b is not None and b.in_grammar for b in best) / len(best)
        models[name] = entry
        logger.info("evaluated %s: test WER %.4f", name, entry["test"]["wer"])
    return models


def markdown_table(models: dict[str, Any], split: str = "test") -> str:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    lines = ["| model | parameters | steps | train min | decoding | WER | CER | sentence acc | intent acc (commands) "
             "| intent acc (questions) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        for decoding, s in (("greedy", m[split]), ("greedy + lexicon", m[split].get("lexicon")),
                            ("greedy + grammar", m[split].get("grammar"))):
            if s is None:
                continue
            lines.append(f"| {name} | {m['parameters'] / 1e6:.2f}M | {m['steps']} | {m['train_minutes']} | {decoding} "
                         f"| {pct(s['wer'])} | {pct(s['cer'])} | {pct(s['sentence_accuracy'])} "
                         f"| {pct(s['command_intent_accuracy'])} | {pct(s['question_intent_accuracy'])} |")
    return "\n".join(lines)


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
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--workers", type=int, default=2, help="speech synthesis processes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    show = not args.quiet
    set_threads(args.threads)
    seed_everything(args.seed)
    budget = args.budget_minutes if args.budget_minutes is not None else (None if args.max_steps else 90.0)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = ensure_data(out, args.clips, args.eval_clips, args.seed, args.workers, show)

    tokenizer_path = out / "tokenizer" / "speech.model"
    if args.teacher is not None:
        adopt_teacher_tokenizer(args.teacher, tokenizer_path.parent)
    if not tokenizer_path.is_file():
        logger.info("stage tokenizer")
        train_speech_tokenizer((item["transcript"] for item in SpeechDataset(data_dir, "train").items), tokenizer_path,
                               SpeechTokenizerConfig(vocab_size=args.vocab_size, model_type=args.tokenizer))
    tokenizer = load_speech_tokenizer(tokenizer_path)
    lexicon_path = tokenizer_path.with_name(LEXICON_FILE)
    if not lexicon_path.is_file():
        write_lexicon((item["transcript"] for item in SpeechDataset(data_dir, "train").items), lexicon_path)
    lexicon = Lexicon(read_lexicon(lexicon_path))
    grammar = grammar_decoder(tokenizer_path, tokenizer)
    teacher_cfg, student_cfg = model_configs(args.preset, tokenizer.vocab_size, args.teacher_width, args.teacher_layers)
    audio = AudioConfig(n_mels=student_cfg.n_mels)
    splits = {split: load_features(data_dir, ensure_features(data_dir, out, split, audio, show), split, tokenizer)
              for split in SPLITS}

    def stage_config(share: float | None, max_steps: int | None, seed: int) -> TrainConfig:
        return TrainConfig(minutes=None if budget is None or share is None else budget * share, max_steps=max_steps,
                           batch_size=args.batch_size, peak_lr=args.lr, warmup_steps=args.warmup_steps,
                           checkpoint_minutes=args.checkpoint_minutes, log_every=args.log_every, seed=seed)

    def fresh(config: SpeechConfig, seed: int) -> SpeechCTCModel:
        torch.manual_seed(seed)
        return SpeechCTCModel(config)

    common = dict(out=out, train=splits["train"], val=splits["val"], tokenizer=tokenizer, show=show)
    if args.teacher is not None:
        finals = {"teacher": args.teacher}
        student_share = STUDENT_SHARE + TEACHER_SHARE
    else:
        finals = {"teacher": train_stage("teacher", model=fresh(teacher_cfg, args.seed),
                                         cfg=stage_config(TEACHER_SHARE, args.max_steps, args.seed), **common)}
        student_share = STUDENT_SHARE
    teacher, _, _ = load_checkpoint(finals["teacher"], SpeechCTCModel, SpeechConfig)
    if teacher.config.vocab_size != tokenizer.vocab_size:
        raise InputError(f"the teacher {finals['teacher']} has {teacher.config.vocab_size} output ids but the "
                         f"tokenizer {tokenizer_path} {tokenizer.vocab_size}; use the teacher's tokenizer")
    distill = DistillConfig(kd_weight=args.kd_weight, temperature=args.kd_temperature, hidden_weight=args.hidden_weight,
                             anneal=args.kd_anneal)
    student_seed = args.seed + 1  # both students start from the same weights and see the same batches
    student = fresh(student_cfg, student_seed)
    finals["student_kd"] = train_stage("student_kd", model=student, distiller=Distiller(teacher, student_cfg, distill),
                                       cfg=stage_config(student_share, args.max_steps, student_seed), **common)
    kd_steps = read_checkpoint_meta(finals["student_kd"])["step"]
    finals["student_scratch"] = train_stage("student_scratch", model=fresh(student_cfg, student_seed),
                                            cfg=stage_config(student_share, kd_steps, student_seed), **common)

    logger.info("stage evaluate")
    models = evaluate(finals, {"test": splits["test"], "val": splits["val"]}, tokenizer, show, lexicon, grammar)
    results = {
        "models": models,
        "data": {split: len(data) for split, data in splits.items()},
        "tokenizer": {"vocab_size": tokenizer.vocab_size, "file": str(tokenizer_path)},
        "budget_minutes": budget,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "args": {key: str(value) for key, value in vars(args).items() if not key.startswith("_")},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    table = markdown_table(models)
    (out / "results.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0
