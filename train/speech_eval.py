"""Scoring the speech recipe's models: greedy CTC decoding of every evaluation set with every
checkpoint, raw, with the runtime's lexicon correction and with its grammar decoding, and the
markdown tables of train/RESULTS.md."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from tinymm.decoding.grammar import GrammarDecoder
from tinymm.decoding.lexicon import Lexicon
from tinymm.robot.intent import IntentParser
from tinymm.robot.transcripts import normalize_transcript
from train.checkpoint import load_checkpoint
from train.metrics_speech import score_transcripts
from train.models.layers import param_count
from train.models.speech import SpeechConfig, SpeechCTCModel
from train.speech_features import FeatureSet
from train.speech_train import decode

logger = logging.getLogger(__name__)


def evaluate(finals: dict[str, Path], splits: dict[str, FeatureSet], tokenizer, show: bool,
             lexicon: Lexicon | None = None, grammar: GrammarDecoder | None = None,
             groups: dict[str, dict[str, list[str]]] | None = None) -> dict[str, Any]:
    """Greedy-decode every split with every model; scores raw, with ``lexicon`` correction (key
    "lexicon") and with ``grammar`` decoding (key "grammar"), as the runtime applies them: the
    grammar's sentence, or for clips outside it the free transcript (greedy, lexicon-corrected).

    ``groups[split][name]`` labels each clip of a split (e.g. "condition": "telephone", ...); the
    runtime's decoding is then also scored per label, under ``[split]["by_" + name][label]``."""
    parser = IntentParser()
    models: dict[str, Any] = {}
    for name, path in finals.items():
        model, config, meta = load_checkpoint(path, SpeechCTCModel, SpeechConfig)
        extra = meta.get("extra") or {}
        entry = {"parameters": param_count(model), "steps": meta["step"], "checkpoint": str(path),
                 "train_minutes": round(extra.get("train_seconds", 0.0) / 60, 1),
                 "first_loss": extra.get("first_loss"), "last_loss": extra.get("last_loss"),
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
            final = said if grammar is not None else free
            for group, labels in (groups or {}).get(split, {}).items():
                entry[split][f"by_{group}"] = {
                    label: score_transcripts([data.transcripts[i] for i in idx], [final[i] for i in idx],
                                             [data.intents[i] for i in idx], parser).to_dict()
                    for label in sorted(set(labels)) for idx in [[i for i, x in enumerate(labels) if x == label]]}
        models[name] = entry
        logger.info("evaluated %s: %s", name, {split: round(entry[split]["wer"], 4) for split in splits})
    return models


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def markdown_table(models: dict[str, Any], split: str = "test") -> str:
    """One split: every model, with each decoding."""
    lines = ["| model | parameters | steps | train min | decoding | WER | CER | sentence acc | intent acc (commands) "
             "| intent acc (questions) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        for decoding, s in (("greedy", m[split]), ("greedy + lexicon", m[split].get("lexicon")),
                            ("greedy + grammar", m[split].get("grammar"))):
            if s is None:
                continue
            lines.append(f"| {name} | {m['parameters'] / 1e6:.2f}M | {m['steps']} | {m['train_minutes']} | {decoding} "
                         f"| {_pct(s['wer'])} | {_pct(s['cer'])} | {_pct(s['sentence_accuracy'])} "
                         f"| {_pct(s['command_intent_accuracy'])} | {_pct(s['question_intent_accuracy'])} |")
    return "\n".join(lines)


def summary_table(models: dict[str, Any], splits: list[str]) -> str:
    """Every model on every split, with the runtime's decoding (grammar, where there is one):
    WER / intent accuracy, plus the greedy WER."""
    head = "| model | " + " | ".join(f"{s}: WER, intent (greedy WER)" for s in splits) + " |"
    lines = [head, "|---|" + "---|" * len(splits)]
    for name, m in models.items():
        cells = []
        for split in splits:
            s = m.get(split)
            if s is None:
                cells.append("n/a")
                continue
            g = s.get("grammar", s)
            cells.append(f"{_pct(g['wer'])}, {_pct(g['intent_accuracy'])} ({_pct(s['wer'])})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def group_table(models: dict[str, Any], split: str, name: str) -> str:
    """WER / intent accuracy of every model per label of ``split``'s "by_" + ``name`` breakdown."""
    labels = sorted({label for m in models.values() for label in m.get(split, {}).get(f"by_{name}", {})})
    if not labels:
        return ""
    lines = ["| model | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for model, m in models.items():
        groups = m[split].get(f"by_{name}", {})
        lines.append(f"| {model} | " + " | ".join(
            f"{_pct(groups[x]['wer'])}, {_pct(groups[x]['intent_accuracy'])}" if x in groups else "n/a"
            for x in labels) + " |")
    return "\n".join(lines)
