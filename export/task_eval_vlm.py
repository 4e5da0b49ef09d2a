"""Task metrics of a vision-language model on a scene test split: VQA, caption facts, zero-shot top-1.

The definitions are train/vlm_eval.py's (metrics from train/metrics_vision.py), in points:

- ``vqa_accuracy`` (the gate's metric): exact match of the greedy answer (at most
  ``ANSWER_MAX_TOKENS`` tokens) to every question of the evaluated scenes; ``vqa.{type}`` per type;
- ``caption_fact_accuracy``: greedy captions (up to the decoder's context) that state at least
  one fact and only true ones;
- ``zero_shot_top1``: the best of the full scene label set (through the classify template) is
  one of the scene's labels.

The runtime side runs ``VisionLanguagePipeline.caption``, ``ask``, ``embed_image`` and
``embed_text`` on onnxruntime sessions; the torch side runs the same items through the model
with train/vlm_eval.py's ``greedy_decode`` (KV cache), on the same pixels and prompts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from export.task_eval import POINTS, TEST_SPLIT, TaskEvaluator, TaskScores, batch_slices

if TYPE_CHECKING:
    from export.onnx_common import Prepared
    from tinymm.backends.base import Session

logger = logging.getLogger(__name__)

BATCH = 64  # images or questions per pipeline call
METRIC = "vqa_accuracy"


class VLMTaskEvaluator(TaskEvaluator):
    """The first `count` scenes of `data_dir`'s test split, every question about them, the full label set."""

    metric = METRIC
    higher_is_better = True
    columns = (("vqa_accuracy", "VQA accuracy"), ("caption_fact_accuracy", "caption facts"),
               ("zero_shot_top1", "zero-shot top-1"))

    def __init__(self, prepared: Prepared, data_dir: Path, count: int, threads: int) -> None:
        from tinymm.preprocess.image import ImagePreprocessor
        from tinymm.preprocess.text import Tokenizer
        from train.data.scene_dataset import SceneDataset
        from train.data.scene_language import all_labels

        super().__init__(prepared, threads)
        scenes = SceneDataset(data_dir, TEST_SPLIT)
        n = min(count, len(scenes))
        self.data_dir = data_dir
        self.images = [scenes[i][0] for i in range(n)]  # (H, W, 3) uint8 RGB each
        self.truths = [scenes.scene(i) for i in range(n)]
        annotations = scenes.annotations[:n]
        self.questions = [(i, qa) for i, ann in enumerate(annotations) for qa in ann["qa"]]
        self.labels = all_labels()
        index = {label: j for j, label in enumerate(self.labels)}
        self.label_sets = [[index[label] for label in ann["labels"] if label in index] for ann in annotations]
        self.tokenizer = Tokenizer(prepared.tokenizer_path, prepared.preprocess.text)
        self.preprocessor = ImagePreprocessor(prepared.preprocess.image)
        # The decoder context the runtime uses (VisionLanguageSettings): captions may fill it.
        self.max_length = min(int(prepared.model_info["max_length"]), self.tokenizer.config.context_length)

    @property
    def description(self) -> str:
        return (f"{len(self.images)} scenes ({len(self.questions)} questions, {len(self.labels)} labels) of the "
                f"{TEST_SPLIT} split of {self.data_dir}")

    @property
    def counts(self) -> dict[str, int]:
        return {"scenes": len(self.images), "questions": len(self.questions), "labels": len(self.labels)}

    def _scores(self, captions: Sequence[str], answers: Sequence[str], similarity: np.ndarray,
                outputs: Sequence[tuple[int, ...]]) -> TaskScores:
        """Metrics (points) of captions (one per scene), answers (one per question), similarity (N, L)."""
        from train.metrics_vision import caption_fact_accuracy, vqa_accuracy, zero_shot_top1

        vqa = vqa_accuracy(answers, [qa["answer"] for _, qa in self.questions],
                           [qa["type"] for _, qa in self.questions])
        metrics: dict[str, float | None] = {
            "vqa_accuracy": POINTS * vqa["overall"],
            "caption_fact_accuracy": POINTS * caption_fact_accuracy(self.truths, captions),
            "zero_shot_top1": POINTS * zero_shot_top1(similarity, self.label_sets),
            **{f"vqa.{kind}": POINTS * value for kind, value in vqa.items() if kind != "overall"},
        }
        return TaskScores(METRIC, True, metrics, tuple(outputs))

    def _run_pipeline(self, sessions: Mapping[str, Session]) -> TaskScores:
        from tinymm.decoding import DecodingOptions
        from tinymm.pipelines.vision_language import VisionLanguagePipeline
        from train.vlm_eval import ANSWER_MAX_TOKENS

        pipeline = VisionLanguagePipeline(
            image_encoder=sessions["image_encoder"], decoder_first=sessions["decoder_first"],
            decoder_with_past=sessions.get("decoder_with_past"), text_encoder=sessions.get("text_encoder"),
            preprocessor=self.preprocessor, tokenizer=self.tokenizer, model_info=self.prepared.model_info,
            name="task-eval",
        )
        captions = []
        for part in batch_slices(len(self.images), BATCH):
            captions += pipeline.caption(self.images[part], rgb=True,
                                         decoding=DecodingOptions(max_new_tokens=self.max_length))
        answers = []
        for part in batch_slices(len(self.questions), BATCH):
            rows = self.questions[part]
            answers += pipeline.ask([self.images[i] for i, _ in rows], [qa["question"] for _, qa in rows], rgb=True,
                                    decoding=DecodingOptions(max_new_tokens=ANSWER_MAX_TOKENS))
        similarity = pipeline.embed_image(self.images, rgb=True) @ pipeline.embed_text(self.labels).T  # (N, L)
        return self._scores([c.text for c in captions], [a.answer for a in answers], similarity,
                            [r.token_ids for r in (*captions, *answers)])

    def _run_torch(self) -> TaskScores:
        import torch

        from train.vlm_data import label_token_batch
        from train.vlm_eval import ANSWER_MAX_TOKENS, greedy_decode

        model, graphs, eos = self.prepared.model, self.prepared.graphs, self.tokenizer.config.eos_id
        pixels = self.preprocessor(self.images, rgb=True)  # (N, 3, S, S) float32, the runtime's own
        encoded = graphs["image_encoder"].run_torch({"pixel_values": pixels})
        embeds = torch.from_numpy(encoded["image_embeds"])  # (N, N_img, Cd)

        def decode(rows: np.ndarray, prompts: np.ndarray, budget: int) -> list[tuple[int, ...]]:
            ids = greedy_decode(model, embeds[torch.from_numpy(rows)], torch.from_numpy(prompts), budget, eos)
            out = []
            for row in ids.numpy().tolist():  # rows that ended repeat eos: keep the tokens before it
                out.append(tuple(row[: row.index(eos)] if eos in row else row))
            return out

        prompt = self.tokenizer.encode_prompt("caption") if "caption" in self.tokenizer.tasks else \
            np.asarray([max(self.tokenizer.config.bos_id, 0)], dtype=np.int64)
        captions = []
        for part in batch_slices(len(self.images), BATCH):
            rows = np.arange(part.start, part.stop)
            captions += decode(rows, np.tile(prompt, (len(rows), 1)), self.max_length - len(prompt))
        prompts = [self.tokenizer.encode_prompt("ask", max_new_tokens=ANSWER_MAX_TOKENS, question=qa["question"])
                   for _, qa in self.questions]
        answers: list[tuple[int, ...]] = [()] * len(prompts)
        by_length: dict[int, list[int]] = {}
        for j, p in enumerate(prompts):
            by_length.setdefault(len(p), []).append(j)
        for members in by_length.values():
            for part in batch_slices(len(members), BATCH):
                chosen = members[part]
                rows = np.asarray([self.questions[j][0] for j in chosen])
                for j, tokens in zip(chosen, decode(rows, np.stack([prompts[j] for j in chosen]), ANSWER_MAX_TOKENS)):
                    answers[j] = tokens
        label_ids, label_mask = label_token_batch(self.tokenizer, self.labels)
        text = graphs["text_encoder"].run_torch({"input_ids": label_ids.numpy(),
                                                 "attention_mask": label_mask.numpy().astype(np.int64)})
        similarity = encoded["image_embedding"] @ text["text_embedding"].T  # (N, L)
        return self._scores([self.tokenizer.decode(list(t)).strip() for t in captions],
                            [self.tokenizer.decode(list(t)).strip() for t in answers], similarity,
                            [*captions, *answers])

