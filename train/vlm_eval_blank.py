"""Evaluate a vision-language model on frames without scene objects: does it claim objects?

A caption *claims objects* when the caption parser finds any fact in it other than "no objects"
(count 0); an answer claims one when it is not the empty answer of its question ("zero" for how
many, "no" for is there, "none" for the rest). Reported overall and by frame kind
(``train/data/blank_frames.py``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from tinymm.preprocess.text import Tokenizer
from train.data.blank_frames import BlankFrames
from train.data.scene_language import parse_caption_facts
from train.models.vlm import VisionLanguageModel
from train.vlm_eval import answer_questions, encode_scenes, generate_captions

NO_OBJECTS_FACT = ("count", ("any",), 0)


def caption_claims_objects(text: str) -> bool:
    """True when the caption states anything but "there are no objects"."""
    facts = parse_caption_facts(text)
    return bool(facts - {NO_OBJECTS_FACT}) or not facts


def evaluate_blank(model: VisionLanguageModel, tokenizer: Tokenizer, frames: BlankFrames, device: torch.device,
                   batch_size: int = 128) -> dict[str, Any]:
    """Claim rates (fractions in [0, 1]) of captions and answers on every frame of ``frames``, overall and by kind."""
    model.to(device).eval()
    count = len(frames)
    image_embeds, _ = encode_scenes(model, frames, count, batch_size, device)
    captions = generate_captions(model, tokenizer, image_embeds, batch_size)
    picked = [(i, qa) for i in range(count) for qa in frames.annotations[i]["qa"]]
    answers = answer_questions(model, tokenizer, image_embeds, [i for i, _ in picked],
                               [qa["question"] for _, qa in picked], batch_size)
    caption_claims = [caption_claims_objects(c) for c in captions]
    answer_claims = [a.strip() != qa["answer"] for (_, qa), a in zip(picked, answers)]
    by_kind: dict[str, dict[str, list[bool]]] = defaultdict(lambda: {"captions": [], "answers": []})
    for i, claim in enumerate(caption_claims):
        by_kind[frames.kind(i)]["captions"].append(claim)
    for (i, _), claim in zip(picked, answer_claims):
        by_kind[frames.kind(i)]["answers"].append(claim)
    by_type: dict[str, list[bool]] = defaultdict(list)
    for (_, qa), claim in zip(picked, answer_claims):
        by_type[qa["type"]].append(claim)

    def rate(values: list[bool]) -> float:
        return float(np.mean(values)) if values else 0.0

    return {
        "frames": count,
        "questions": len(picked),
        "caption_claims_rate": rate(caption_claims),
        "answer_claims_rate": rate(answer_claims),
        "by_kind": {k: {"caption_claims_rate": rate(v["captions"]), "answer_claims_rate": rate(v["answers"])}
                    for k, v in sorted(by_kind.items())},
        "answer_claims_by_type_rate": {k: rate(v) for k, v in sorted(by_type.items())},
        "examples": [{"kind": frames.kind(i), "caption": captions[i]} for i in range(min(9, count))]
                    + [{"question": qa["question"], "predicted": a} for (_, qa), a in list(zip(picked, answers))[:8]],
    }
