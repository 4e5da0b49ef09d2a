"""Evaluate a vision-language model on a scene split: captions, VQA, zero-shot labels, size.

Every image is encoded once; captions and answers are then decoded greedily from the cached image
embeds with the model's KV-cache decoder pieces (the ones export/ turns into ONNX graphs), and the
contrastive head scores every image against the full label set. The numbers come from
train/metrics_vision.py.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from tinymm.preprocess.image import ImagePreprocessor
from tinymm.preprocess.text import Tokenizer
from train.data.scene_dataset import SceneDataset
from train.data.scene_language import all_labels
from train.metrics_vision import caption_correct, caption_facts_by_kind, corpus_bleu, vqa_accuracy, zero_shot_top1
from train.models.layers import param_count
from train.models.vlm import VisionLanguageModel
from train.vlm_data import image_config, label_token_batch

logger = logging.getLogger(__name__)

# Answers are one word, mostly 1-2 pieces; a rare word is spelled piece by piece ("unclear" is 8 in
# the default tokenizer), so the cap holds the longest answer word spelled out, plus EOS.
ANSWER_MAX_TOKENS = 12


@dataclass(frozen=True)
class EvalOptions:
    """How much of a split is evaluated, and in what batches."""

    max_scenes: int | None = None  # first N scenes of the split (None: all)
    max_questions_per_type: int | None = 300  # VQA questions per type (None: all), taken in scene order
    batch_size: int = 128  # images or prompts per forward

    def __post_init__(self) -> None:
        for name in ("max_scenes", "max_questions_per_type"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"EvalOptions.{name}={value!r} must be positive or None")
        if self.batch_size < 1:
            raise ValueError(f"EvalOptions.batch_size={self.batch_size!r} must be positive")


@torch.no_grad()
def greedy_decode(model: VisionLanguageModel, image_embeds: torch.Tensor, prompt_ids: torch.Tensor,
                  max_new_tokens: int, eos_id: int) -> torch.Tensor:
    """Greedy tokens from cached image embeds (B, N_img, Cd) and equal-length prompts (B, T0) int64.

    Returns (B, <= max_new_tokens) int64; rows that ended repeat eos_id.
    """
    cross = model.cross_kv(image_embeds)
    logits, past = model.decode_first(prompt_ids, cross)
    done = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    out = []
    for step in range(max_new_tokens):
        token = logits[:, -1].argmax(-1).masked_fill(done, eos_id)  # (B,)
        out.append(token)
        done |= token == eos_id
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        logits, past = model.decode_with_past(token[:, None], past, cross)
    return torch.stack(out, dim=1)


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def encode_scenes(model: VisionLanguageModel, scenes: SceneDataset, count: int, batch_size: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Image embeds (N, N_img, Cd) and contrastive embeddings (N, E) of the first `count` scenes."""
    return encode_scenes_range(model, scenes, slice(0, count), batch_size, device)


def generate_captions(model: VisionLanguageModel, tokenizer: Tokenizer, image_embeds: torch.Tensor,
                      batch_size: int) -> list[str]:
    """One greedy caption per image embed (N, N_img, Cd)."""
    prompt = torch.from_numpy(tokenizer.encode_prompt("caption")).to(image_embeds.device)
    room = model.config.max_text_len - len(prompt)
    captions = []
    for part in _batches(len(image_embeds), batch_size):
        embeds = image_embeds[part]
        ids = greedy_decode(model, embeds, prompt.expand(len(embeds), -1), room, tokenizer.config.eos_id)
        captions.extend(tokenizer.decode(row) for row in ids.cpu().numpy())
    return captions


def answer_questions(model: VisionLanguageModel, tokenizer: Tokenizer, image_embeds: torch.Tensor,
                     scene_index: Sequence[int], questions: Sequence[str], batch_size: int) -> list[str]:
    """Greedy answers to questions[i] about image scene_index[i]; prompts are batched by length."""
    prompts = [tokenizer.encode_prompt("ask", max_new_tokens=ANSWER_MAX_TOKENS, question=q) for q in questions]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_length[len(p)].append(i)
    answers = [""] * len(questions)
    device = image_embeds.device
    for members in by_length.values():
        for part in _batches(len(members), batch_size):
            rows = members[part]
            ids = torch.from_numpy(np.stack([prompts[i] for i in rows])).to(device)
            embeds = image_embeds[torch.tensor([scene_index[i] for i in rows], device=device)]
            out = greedy_decode(model, embeds, ids, ANSWER_MAX_TOKENS, tokenizer.config.eos_id)
            for i, row in zip(rows, out.cpu().numpy()):
                answers[i] = tokenizer.decode(row).strip()
    return answers


def _pick_questions(annotations: Sequence[dict], limit: int | None) -> list[tuple[int, dict]]:
    taken: dict[str, int] = defaultdict(int)
    picked = []
    for i, ann in enumerate(annotations):
        for qa in ann["qa"]:
            if limit is None or taken[qa["type"]] < limit:
                taken[qa["type"]] += 1
                picked.append((i, qa))
    return picked


@torch.no_grad()
def evaluate(model: VisionLanguageModel, tokenizer: Tokenizer, scenes: SceneDataset, options: EvalOptions,
             device: torch.device) -> dict[str, Any]:
    """Caption fact accuracy (and its stated and false facts by kind), BLEU-4, VQA accuracy (per type
    and overall), zero-shot top-1 and size.

    Returns a JSON-ready dict; ``examples`` holds a few captions and answers to read.
    """
    model.to(device).eval()
    count = len(scenes) if options.max_scenes is None else min(len(scenes), options.max_scenes)
    annotations = scenes.annotations[:count]
    image_embeds, pooled = encode_scenes(model, scenes, count, options.batch_size, device)

    captions = generate_captions(model, tokenizer, image_embeds, options.batch_size)
    truths = [scenes.scene(i) for i in range(count)]
    correct = [caption_correct(s, c) for s, c in zip(truths, captions)]
    references = [[c["text"] for c in ann["captions"]] for ann in annotations]

    picked = _pick_questions(annotations, options.max_questions_per_type)
    answers = answer_questions(model, tokenizer, image_embeds, [i for i, _ in picked],
                               [qa["question"] for _, qa in picked], options.batch_size)
    vqa = vqa_accuracy(answers, [qa["answer"] for _, qa in picked], [qa["type"] for _, qa in picked])

    labels = all_labels()
    label_ids, label_mask = (t.to(device) for t in label_token_batch(tokenizer, labels))
    label_embedding = model.embed_text(label_ids, label_mask)  # (L, E)
    similarity = (pooled @ label_embedding.t()).float().cpu().numpy()  # (N, L)
    index = {label: i for i, label in enumerate(labels)}
    zero_shot = zero_shot_top1(similarity, [[index[label] for label in ann["labels"]] for ann in annotations])

    return {
        "scenes": count,
        "questions": len(picked),
        "params": param_count(model),
        "caption_fact_accuracy": float(np.mean(correct)) if correct else 0.0,
        "caption_facts_by_kind": caption_facts_by_kind(truths, captions),
        "bleu4": corpus_bleu(captions, references),
        "vqa": vqa,
        "vqa_overall": vqa["overall"],
        "zero_shot_top1": zero_shot,
        "examples": [{"caption": captions[i], "correct": bool(correct[i]), "reference": references[i][0]}
                     for i in range(min(5, count))]
                    + [{"question": qa["question"], "answer": qa["answer"], "predicted": a}
                       for (_, qa), a in list(zip(picked, answers))[:8]],
    }


@torch.no_grad()
def pseudo_captions(model: VisionLanguageModel, tokenizer: Tokenizer, scenes: SceneDataset, count: int,
                    batch_size: int, device: torch.device) -> tuple[dict[int, list[str]], float]:
    """Greedy captions of the first `count` scenes, kept only where every stated fact is true.

    Returns ({scene index: [caption]}, fraction kept): sequence-level distillation targets.
    """
    model.to(device).eval()
    kept: dict[int, list[str]] = {}
    for part in _batches(count, max(batch_size, 1) * 8):
        embeds, _ = encode_scenes_range(model, scenes, part, batch_size, device)
        for i, caption in zip(range(part.start, part.stop), generate_captions(model, tokenizer, embeds, batch_size)):
            if caption_correct(scenes.scene(i), caption):
                kept[i] = [caption]
    return kept, len(kept) / max(count, 1)


@torch.no_grad()
def encode_scenes_range(model: VisionLanguageModel, scenes: SceneDataset, part: slice, batch_size: int,
                        device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """encode_scenes over scenes[part] (image embeds (n, N_img, Cd), embeddings (n, E))."""
    preprocessor = ImagePreprocessor(image_config(model.config.image_size))
    embeds, pooled = [], []
    for sub in _batches(part.stop - part.start, batch_size):
        idx = range(part.start + sub.start, part.start + sub.stop)
        pixels = torch.from_numpy(preprocessor([scenes[i][0] for i in idx], rgb=True)).to(device)
        tokens, _ = model.image_encoder(pixels)
        embeds.append(model.projector(tokens))
        pooled.append(model._pool_image(tokens))
    return torch.cat(embeds), torch.cat(pooled)
