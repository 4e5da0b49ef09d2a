"""Training examples for the vision-language model, built from the synthetic scene dataset.

One example is one scene with one text task drawn from it:

- ``caption``: prompt ``<bos> caption:``, target one of the scene's captions (or, for sequence-level
  distillation, a teacher's checked pseudo-caption);
- ``vqa``: prompt ``<bos> question: ... answer:``, target the one-word answer;

plus, whatever the task, the targets of the two image-only heads: the scene's labels as a
multi-hot row over the full label set (contrastive head) and, per encoder token cell, the
attributes of the object whose centre lies in it (auxiliary attribute head).

Images are normalised by ``tinymm.preprocess.image.ImagePreprocessor`` with the bundle's
ImageConfig, and prompts are encoded by ``tinymm.preprocess.text.Tokenizer``: the runtime code,
so training and serving see identical tensors.

Token sequences are laid out for teacher forcing: ``full = prompt + target + <eos>``,
``input_ids = full[:-1]``, ``labels = full[1:]`` with the prompt positions set to IGNORE_INDEX.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from tinymm.errors import InputError
from tinymm.preprocess.config import ImageConfig
from tinymm.preprocess.image import ImagePreprocessor
from tinymm.preprocess.text import Tokenizer
from train.data.scene_dataset import SceneDataset
from train.data.scene_language import all_labels
from train.data.scene_world import COLORS, SHAPES, SIGN_TEXTS, SIZES
from train.vlm_grounding import caption_targets, object_cells, question_objects

IGNORE_INDEX = -100  # label value the losses skip (prompt positions, padding, non-applicable attributes)
NO_LABEL = -1  # label_index of a frame without objects: the affinity loss skips it
TASKS = ("caption", "vqa")
NONE_CLASS = "none"  # attribute class of a cell without an object centre
NONE_CLASS_ID = 0  # its index: first in every AUX_ATTRIBUTES entry
SIGN_SHAPE = "sign"  # the "shape" class of a sign
# Auxiliary attributes and their classes, "none" first; a sign has no colour or size (ignored there).
AUX_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": (NONE_CLASS, *SHAPES, SIGN_SHAPE),
    "color": (NONE_CLASS, *COLORS),
    "size": (NONE_CLASS, *SIZES),
    "sign": (NONE_CLASS, *SIGN_TEXTS),
}
AUX_CLASSES = tuple(len(v) for v in AUX_ATTRIBUTES.values())  # VLMConfig.aux_attribute_classes


@dataclass(frozen=True)
class TaskMix:
    """How often each text task is drawn, and the curriculum over scene complexity."""

    caption: float = 0.25  # relative weight of caption examples
    vqa: float = 0.75  # relative weight of question-answer examples
    pseudo_caption: float = 0.5  # chance a caption example uses the teacher's pseudo-caption, where one exists
    balance_question_types: bool = True  # draw a question type uniformly, then a question of that type
    # With balance_question_types, these types are drawn this many times as often as the others:
    # the two the models learn slowest. A 400-step continuation of the shipped student took position
    # accuracy to 87% with position at 2x and to 95% at 4x (train/RESULTS.md, run vlm6).
    type_emphasis: tuple[tuple[str, float], ...] = (("position", 4.0), ("sign", 2.0))

    def __post_init__(self) -> None:
        for name in ("caption", "vqa"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"TaskMix.{name}={value!r} must be a non-negative weight")
        if self.caption + self.vqa <= 0:
            raise ValueError("TaskMix needs a positive caption or vqa weight")
        if not 0.0 <= self.pseudo_caption <= 1.0:
            raise ValueError(f"TaskMix.pseudo_caption={self.pseudo_caption!r} must be a probability in [0, 1]")
        for kind, weight in self.type_emphasis:
            if not isinstance(weight, (int, float)) or weight <= 0:
                raise ValueError(f"TaskMix.type_emphasis: {kind!r} has weight {weight!r}; weights must be positive")

    def type_weight(self, kind: str) -> float:
        """Relative chance of drawing question type `kind` when types are balanced (1 unless emphasised)."""
        return dict(self.type_emphasis).get(kind, 1.0)

    @property
    def probabilities(self) -> np.ndarray:
        """(len(TASKS),) float64 summing to 1, in TASKS order."""
        w = np.array([self.caption, self.vqa], dtype=np.float64)
        return w / w.sum()


def image_config(size: int) -> ImageConfig:
    """The preprocessing contract of the recipe's models: square RGB, stretch, area, mean/std 0.5."""
    return ImageConfig(height=size, width=size)


def aux_targets(annotation: Mapping[str, Any], image_size: int, patch_size: int) -> np.ndarray:
    """Per-cell attribute classes of a scene: (len(AUX_ATTRIBUTES), G, G) int64, G = image_size // patch_size.

    Cell (r, c) holds the attributes of the object whose centre (scaled from the scene's size to
    image_size) lies in it, NONE_CLASS (0) where no centre does, IGNORE_INDEX where an attribute
    does not apply (a sign's colour and size).
    """
    g = image_size // patch_size
    out = np.zeros((len(AUX_ATTRIBUTES), g, g), dtype=np.int64)
    for obj, cell in zip(annotation["objects"], object_cells(annotation, image_size, patch_size)):
        r, c = divmod(int(cell), g)
        if obj["kind"] == "sign":
            values = (SIGN_SHAPE, None, None, obj["text"])
        else:
            values = (obj["shape"], obj["color"], obj["size"], NONE_CLASS)
        for a, (classes, value) in enumerate(zip(AUX_ATTRIBUTES.values(), values)):
            out[a, r, c] = IGNORE_INDEX if value is None else classes.index(value)
    return out


def teacher_forcing(prompt: Sequence[int], target: Sequence[int], eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids (T,), labels (T,)) int64 with T = len(prompt) + len(target); prompt labels ignored."""
    full = np.concatenate([np.asarray(prompt, np.int64), np.asarray(target, np.int64), [eos_id]])
    labels = full[1:].copy()
    labels[: len(prompt) - 1] = IGNORE_INDEX
    return full[:-1], labels


class VLMSceneDataset(Dataset):
    """Examples over a SceneDataset split; ``ds.example(i, rng)`` draws a task, ``ds[i]`` is seeded by i.

    pseudo_captions maps a scene index to extra caption texts (sequence-level distillation).
    Each example is a dict of numpy arrays: ``pixel_values`` (3, S, S) float32, ``input_ids`` (T,)
    int64, ``labels`` (T,) int64, ``task`` int (index in TASKS), ``label_targets`` (L,) float32
    multi-hot over ``all_labels()``, ``label_index`` int (one of the scene's labels, drawn; NO_LABEL
    for a frame without objects),
    ``aux`` (A, G, G) int64, ``ground`` (T, G*G) float32 (the cells each position's target is about).
    """

    def __init__(self, scenes: SceneDataset, tokenizer: Tokenizer, image_size: int, patch_size: int,
                 mix: TaskMix = TaskMix(), pseudo_captions: Mapping[int, Sequence[str]] | None = None,
                 seed: int = 0) -> None:
        if image_size % patch_size:
            raise InputError(f"image_size={image_size} is not a multiple of the model's patch size {patch_size}")
        self.scenes = scenes
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.patch_size = patch_size
        self.mix = mix
        self.pseudo_captions = dict(pseudo_captions or {})
        self.seed = seed
        self.preprocessor = ImagePreprocessor(image_config(image_size))
        self.labels = all_labels()
        self._label_index = {label: i for i, label in enumerate(self.labels)}
        self.object_counts = np.array([len(a["objects"]) for a in scenes.annotations], dtype=np.int64)  # (N,)
        self.prompt_ids = {"caption": tokenizer.encode_prompt("caption")}
        self.grid_cells = (image_size // patch_size) ** 2

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.example(index, np.random.default_rng([self.seed, index]))

    def pixels(self, index: int) -> np.ndarray:
        """(3, S, S) float32: scene `index` through the runtime's ImagePreprocessor."""
        image, _ = self.scenes[index]
        return self.preprocessor(image, rgb=True)[0]

    def label_targets(self, annotation: Mapping[str, Any]) -> np.ndarray:
        """(L,) float32 multi-hot of the scene's labels over all_labels()."""
        out = np.zeros(len(self.labels), dtype=np.float32)
        for label in annotation["labels"]:
            out[self._label_index[label]] = 1.0
        return out

    def text_example(self, annotation: Mapping[str, Any], index: int,
                     rng: np.random.Generator) -> tuple[int, np.ndarray, list[int], np.ndarray]:
        """(task index, prompt ids (P,), target ids (K,), grounding rows (K, G*G)) of one task drawn
        from the scene; row k holds the cells of the objects target token k is about (vlm_grounding)."""
        task = TASKS[int(rng.choice(len(TASKS), p=self.mix.probabilities))]
        cells = object_cells(annotation, self.image_size, self.patch_size)  # (n_objects,) flat cell per object
        pseudo = self.pseudo_captions.get(index)
        if task == "vqa" and not annotation["qa"]:
            task = "caption"
        elif task == "caption" and not annotation["captions"] and not pseudo and annotation["qa"]:
            task = "vqa"  # the generator writes no caption for a few scenes (e.g. a lone sign)
        if task == "caption" and not annotation["captions"] and not pseudo:
            raise InputError(f"scene {index} has no caption and no question to train on; regenerate the dataset")
        if task == "caption":
            if pseudo and (rng.random() < self.mix.pseudo_caption or not annotation["captions"]):
                text = pseudo[int(rng.integers(len(pseudo)))]
            else:
                text = annotation["captions"][int(rng.integers(len(annotation["captions"])))]["text"]
            rows = caption_targets(annotation, text, self.tokenizer, cells, self.grid_cells)
            return TASKS.index("caption"), self.prompt_ids["caption"], self.tokenizer.encode(text), rows
        qa = self._draw_question(annotation["qa"], rng)
        answer = self.tokenizer.encode(qa["answer"])
        prompt = self.tokenizer.encode_prompt("ask", max_new_tokens=len(answer) + 1, question=qa["question"])
        rows = np.zeros((len(answer), self.grid_cells), dtype=np.float32)
        rows[:, cells[question_objects(annotation, qa)]] = 1.0
        return TASKS.index("vqa"), prompt, answer, rows

    def _draw_question(self, qa: Sequence[Mapping[str, str]], rng: np.random.Generator) -> Mapping[str, str]:
        """One of the scene's questions. The generator asks many more "exist" and "how many" questions
        than sign or position ones; with balance_question_types every type present is equally likely,
        times its TaskMix.type_emphasis weight."""
        if not self.mix.balance_question_types:
            return qa[int(rng.integers(len(qa)))]
        types = sorted({q["type"] for q in qa})
        weights = np.array([self.mix.type_weight(t) for t in types], dtype=np.float64)
        kind = types[int(rng.choice(len(types), p=weights / weights.sum()))]
        same = [q for q in qa if q["type"] == kind]
        return same[int(rng.integers(len(same)))]

    def example(self, index: int, rng: np.random.Generator, texts: int = 1) -> dict[str, Any]:
        """One example of scene `index` with `texts` text tasks drawn with rng (see the class docstring).

        ``input_ids`` and ``labels`` are then lists of `texts` (T_k,) arrays, ``task`` a list of ints.
        """
        image, annotation = self.scenes[index]
        ids, labels, tasks, grounds = [], [], [], []
        for _ in range(texts):
            task, prompt, target, rows = self.text_example(annotation, index, rng)
            room = self.tokenizer.config.context_length - len(prompt)  # target + eos must fit after the prompt
            kept = max(room - 1, 0)
            x, y = teacher_forcing(prompt, target[:kept], self.tokenizer.config.eos_id)
            ground = np.zeros((len(x), self.grid_cells), dtype=np.float32)  # position p predicts y[p]
            ground[len(prompt) - 1: len(prompt) - 1 + len(rows[:kept])] = rows[:kept]
            ids.append(x)
            labels.append(y)
            tasks.append(task)
            grounds.append(ground)
        label_targets = self.label_targets(annotation)
        return {
            "pixel_values": self.preprocessor(image, rgb=True)[0],
            "input_ids": ids if texts > 1 else ids[0],
            "labels": labels if texts > 1 else labels[0],
            "task": tasks if texts > 1 else tasks[0],
            "ground": grounds if texts > 1 else grounds[0],
            "label_targets": label_targets,
            # A frame without objects (train/data/blank_frames.py) has no label: NO_LABEL.
            "label_index": int(rng.choice(present)) if len(present := np.flatnonzero(label_targets)) else NO_LABEL,
            "aux": aux_targets(annotation, self.image_size, self.patch_size),
        }


def collate(examples: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack examples into a batch of B images and N >= B texts, right-padding ids with pad_id and
    labels with IGNORE_INDEX; an example may carry several texts about its image (see ``example``).

    Returns pixel_values (B, 3, S, S) float32, input_ids (N, T) int64, labels (N, T) int64,
    attention_mask (N, T) bool, image_index (N,) int64 (the image of each text), task (N,) int64,
    label_targets (B, L) float32, label_index (B,) int64 (one label of each image), aux (B, A, G, G) int64,
    ground (N, T, G*G) float32 (the cells each position's target token is about; vlm_grounding).
    """
    if not examples:
        raise InputError("collate got an empty batch")

    def listed(value: Any) -> list:
        return value if isinstance(value, list) else [value]

    rows = [(b, x, y, t, gr) for b, e in enumerate(examples)
            for x, y, t, gr in zip(listed(e["input_ids"]), listed(e["labels"]), listed(e["task"]),
                                   listed(e["ground"]))]
    width = max(len(x) for _, x, _, _, _ in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=bool)
    ground = np.zeros((len(rows), width, rows[0][4].shape[1]), dtype=np.float32)
    for i, (_, x, y, _, gr) in enumerate(rows):
        ids[i, : len(x)], labels[i, : len(x)], mask[i, : len(x)], ground[i, : len(x)] = x, y, True, gr
    return {
        "pixel_values": torch.from_numpy(np.stack([e["pixel_values"] for e in examples])),
        "input_ids": torch.from_numpy(ids),
        "labels": torch.from_numpy(labels),
        "attention_mask": torch.from_numpy(mask),
        "image_index": torch.tensor([b for b, _, _, _, _ in rows], dtype=torch.long),
        "task": torch.tensor([t for _, _, _, t, _ in rows], dtype=torch.long),
        "ground": torch.from_numpy(ground),
        "label_targets": torch.from_numpy(np.stack([e["label_targets"] for e in examples])),
        "label_index": torch.tensor([e["label_index"] for e in examples], dtype=torch.long),
        "aux": torch.from_numpy(np.stack([e["aux"] for e in examples])),
    }


def label_token_batch(tokenizer: Tokenizer, labels: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every label through the ``classify`` prompt: ids (L, T) int64 and attention_mask (L, T) bool."""
    rows = [tokenizer.encode_prompt("classify", label=label) for label in labels]
    ids, lengths = tokenizer.encode_batch(rows)
    mask = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    return torch.from_numpy(ids), torch.from_numpy(mask)


def curriculum_pool(object_counts: np.ndarray, progress: float, warmup_fraction: float) -> np.ndarray:
    """Scene indices allowed at training progress in [0, 1]: one-object scenes first, then all.

    During the first warmup_fraction of training the allowed object count grows linearly from 1
    to the maximum; object_counts is (N,) int64, the result (M,) int64 (never empty).
    """
    top = int(object_counts.max())
    if warmup_fraction <= 0 or progress >= warmup_fraction:
        return np.arange(len(object_counts))
    allowed = 1 + int((top - 1) * progress / warmup_fraction)
    pool = np.flatnonzero(object_counts <= allowed)
    return pool if len(pool) else np.arange(len(object_counts))
