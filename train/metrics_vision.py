"""Evaluation metrics of the vision-language models: captions, VQA and zero-shot classification.

- Caption fact accuracy: a caption is correct when it states at least one fact and every object,
  colour, size, count, position, relation and sign it states is true of the scene (the scene
  package's ``parse_caption_facts`` and ``false_facts``). Fluent but wrong captions score 0.
  ``caption_facts_by_kind`` counts the stated and the false facts of each kind.
- BLEU-4: corpus-level (Papineni et al. 2002), clipped n-gram precisions for n = 1..4 pooled
  over the corpus, geometric mean, brevity penalty against the reference closest in length.
- VQA accuracy: exact match of the normalised one-word answer, per question type and overall.
- Zero-shot top-1: the best-scoring label of the whole label set must be one of the scene's labels.

Pure numpy and the scene language: no model code here.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from typing import Iterable, Mapping, Sequence

import numpy as np

from tinymm.errors import InputError
from train.data.scene_language import false_facts, parse_caption_facts
from train.data.scene_world import Scene

BLEU_MAX_N = 4  # BLEU-4
_WORD_RE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def _same_length(what: str, a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise InputError(f"{what}: got {len(a)} predictions for {len(b)} references; pass one per item")


def caption_correct(scene: Scene, caption: str) -> bool:
    """True when the caption states at least one fact and all of them hold in the scene."""
    facts = parse_caption_facts(caption)
    return bool(facts) and not false_facts(scene, facts)


def caption_fact_accuracy(scenes: Sequence[Scene], captions: Sequence[str]) -> float:
    """Fraction of captions (one per scene) that are entirely true of their scene, in [0, 1]."""
    _same_length("caption_fact_accuracy", captions, scenes)
    if not captions:
        return 0.0
    return sum(caption_correct(s, c) for s, c in zip(scenes, captions)) / len(captions)


def caption_facts_by_kind(scenes: Sequence[Scene], captions: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per fact kind (object, count, position, relation): how many facts the captions state and how
    many of those are false; it shows which kind of claim makes captions wrong."""
    _same_length("caption_facts_by_kind", captions, scenes)
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"stated": 0, "false": 0})
    for scene, caption in zip(scenes, captions):
        facts = parse_caption_facts(caption)
        for fact in facts:
            out[fact[0]]["stated"] += 1
        for fact in false_facts(scene, facts):
            out[fact[0]]["false"] += 1
    return dict(sorted(out.items()))


def tokenize_words(text: str) -> list[str]:
    """Lowercased words and punctuation marks, the unit BLEU counts."""
    return _WORD_RE.findall(text.lower())


def _ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = BLEU_MAX_N) -> float:
    """Corpus BLEU in [0, 1] of hypotheses against one or more references each.

    Clipped n-gram matches and counts are summed over the corpus before the geometric mean of the
    n = 1..max_n precisions; the brevity penalty uses, per sentence, the reference length closest
    to the hypothesis length (ties to the shorter). Any precision of 0 gives 0 (no smoothing).
    """
    _same_length("corpus_bleu", hypotheses, references)
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp_text, refs_text in zip(hypotheses, references):
        if isinstance(refs_text, str):
            raise InputError("corpus_bleu: references must be a list of reference lists, got a string for an item")
        hyp = tokenize_words(hyp_text)
        refs = [tokenize_words(r) for r in refs_text]
        if not refs:
            raise InputError("corpus_bleu: an item has no reference; give at least one per hypothesis")
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
        for n in range(1, max_n + 1):
            counts = _ngrams(hyp, n)
            best: Counter = Counter()
            for r in refs:
                best |= _ngrams(r, n)
            matches[n - 1] += sum(min(c, best[g]) for g, c in counts.items())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


def normalize_answer(text: str) -> str:
    """Lowercase, strip punctuation and surrounding space: "Red." -> "red"."""
    return " ".join(w for w in tokenize_words(text) if w.isalnum())


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[str], types: Sequence[str]) -> dict[str, float]:
    """Exact-match accuracy per question type and ``overall`` (over all questions), each in [0, 1]."""
    _same_length("vqa_accuracy", predictions, answers)
    _same_length("vqa_accuracy (types)", types, answers)
    hits: dict[str, list[bool]] = defaultdict(list)
    for pred, answer, kind in zip(predictions, answers, types):
        hits[kind].append(normalize_answer(pred) == normalize_answer(answer))
    out = {kind: float(np.mean(v)) for kind, v in sorted(hits.items())}
    out["overall"] = float(np.mean([h for v in hits.values() for h in v])) if hits else 0.0
    return out


def zero_shot_top1(similarity: np.ndarray, label_sets: Sequence[Iterable[int]]) -> float:
    """Fraction of images whose highest-scoring label is one of theirs, in [0, 1].

    similarity is (N, L) float (image-label scores, e.g. cosine); label_sets[i] holds the label
    indices present in image i.
    """
    similarity = np.asarray(similarity)
    if similarity.ndim != 2:
        raise InputError(f"zero_shot_top1: similarity must be (N, L), got shape {similarity.shape}")
    _same_length("zero_shot_top1", similarity, label_sets)
    if len(similarity) == 0:
        return 0.0
    top = similarity.argmax(axis=1)  # (N,)
    return float(np.mean([int(t) in set(s) for t, s in zip(top, label_sets)]))


def markdown_table(rows: Mapping[str, Mapping[str, float | int | str]], columns: Sequence[str]) -> str:
    """A Markdown table: one row per model (key), one column per metric; floats as percentages."""
    def cell(value: float | int | str | None) -> str:
        if isinstance(value, float):
            return f"{100 * value:.1f}"
        return "" if value is None else f"{value:,}" if isinstance(value, int) else str(value)

    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(metrics.get(c)) for c in columns) + " |")
    return "\n".join(lines)
