"""Task metrics of a vision-language model on a scene test split: VQA, caption facts, zero-shot top-1.

The definitions are train/vlm_eval.py's (metrics from train/metrics_vision.py), in points:

- ``vqa_accuracy`` (the main metric): exact match of the greedy answer (at most
  ``ANSWER_MAX_TOKENS`` tokens) to every question of the first ``count`` scenes; ``vqa.{type}``
  per type;
- ``caption_fact_accuracy``: greedy captions (up to the decoder's context) of the same scenes
  that state at least one fact and only true ones;
- ``zero_shot_top1``: the best of the full scene label set (through the classify template) is
  one of the scene's labels, on the first ``max(count, ZERO_SHOT_SCENES)`` scenes: it needs only
  the two encoders' embeddings, so more scenes cost little and take its noise down.

The int8 gate judges each component on the metrics it can change (``GATE_METRICS``): the text
encoder feeds only zero-shot classification, the decoder steps only generation, the image
encoder both.

The runtime side runs ``VisionLanguagePipeline.caption``, ``ask``, ``embed_image`` and
``embed_text`` on onnxruntime sessions; the torch side runs the same items through the model
with train/vlm_eval.py's ``greedy_decode`` (KV cache), on the same pixels and prompts. The
generated texts and the zero-shot similarities are kept per set of files they depend on
(``GENERATION``, ``ZERO_SHOT``), so a model that differs from an evaluated one only in its text
encoder costs one zero-shot pass, not a generation pass.
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
    from tinymm.pipelines.vision_language import VisionLanguagePipeline

logger = logging.getLogger(__name__)

BATCH = 64  # images or questions per pipeline call
METRIC = "vqa_accuracy"
ZERO_SHOT = ("image_encoder", "text_encoder")  # the components zero-shot top-1 depends on
GENERATION = ("image_encoder", "decoder_first", "decoder_with_past")  # ... captions and answers depend on
GATE_METRICS = {  # component -> the metrics it can change, which the int8 gate judges it on
    "image_encoder": (METRIC, "zero_shot_top1"),
    "text_encoder": ("zero_shot_top1",),
    "decoder_first": (METRIC,),
    "decoder_with_past": (METRIC,),
}
# Scenes of the zero-shot top-1 (at least the VQA scenes; capped at the split). One scene moves
# the metric by 100/N points: 3.1 on 32 scenes, 0.39 on 256, so a 1-point gate can resolve it.
# Cost on the 2-core CPU, 1 thread, committed student VLM (train/students/vlm, runs/vlm2):
# one zero-shot pass (image and label embeddings) 0.63 s on 256 scenes, 1.2-1.5 s on the whole
# 500-scene split, 0.1 s on 32; captions and answers on 32 scenes ~1.9 s; loading the 256
# scenes once 0.1-0.4 s; the torch reference 1.9 s (1.0 s with 32 zero-shot scenes).
ZERO_SHOT_SCENES = 256


class VLMTaskEvaluator(TaskEvaluator):
    """The first `count` scenes of `data_dir`'s test split and every question about them (VQA,
    captions); the first max(count, ZERO_SHOT_SCENES) scenes and the full label set (zero-shot)."""

    metric = METRIC
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
        # (H, W, 3) uint8 RGB each: the zero-shot scenes; the first n of them are the VQA/caption scenes
        self.zero_shot_images = [scenes[i][0] for i in range(min(max(count, ZERO_SHOT_SCENES), len(scenes)))]
        self.images = self.zero_shot_images[:n]
        self.truths = [scenes.scene(i) for i in range(n)]
        self.questions = [(i, qa) for i, ann in enumerate(scenes.annotations[:n]) for qa in ann["qa"]]
        self.labels = all_labels()
        index = {label: j for j, label in enumerate(self.labels)}
        self.label_sets = [[index[label] for label in ann["labels"] if label in index]
                           for ann in scenes.annotations[:len(self.zero_shot_images)]]
        # (generated captions, answers, token ids) per GENERATION files; (Nz, L) similarity per ZERO_SHOT files
        self._generated: dict[tuple[tuple[str, str], ...], tuple[list[str], list[str], list[tuple[int, ...]]]] = {}
        self._similarity: dict[tuple[tuple[str, str], ...], np.ndarray] = {}
        self.tokenizer = Tokenizer(prepared.tokenizer_path, prepared.preprocess.text)
        self.preprocessor = ImagePreprocessor(prepared.preprocess.image)
        # The decoder context the runtime uses (VisionLanguageSettings): captions may fill it.
        self.max_length = min(int(prepared.model_info["max_length"]), self.tokenizer.config.context_length)

    @property
    def description(self) -> str:
        return (f"{len(self.images)} scenes ({len(self.questions)} questions) for VQA and captions and "
                f"{len(self.zero_shot_images)} scenes ({len(self.labels)} labels) for zero-shot top-1, of the "
                f"{TEST_SPLIT} split of {self.data_dir}")

    @property
    def counts(self) -> dict[str, int]:
        return {"scenes": len(self.images), "questions": len(self.questions),
                "zero_shot_scenes": len(self.zero_shot_images), "labels": len(self.labels)}

    @property
    def metric_items(self) -> dict[str, str]:
        return {"vqa_accuracy": f"{len(self.images)} scenes, {len(self.questions)} questions",
                "caption_fact_accuracy": f"{len(self.images)} scenes",
                "zero_shot_top1": f"{len(self.zero_shot_images)} scenes, {len(self.labels)} labels"}

    def gate_metrics(self, component: str) -> tuple[str, ...]:
        return GATE_METRICS.get(component, (METRIC,))

    def _scores(self, captions: Sequence[str], answers: Sequence[str], similarity: np.ndarray,
                outputs: Sequence[tuple[int, ...]]) -> TaskScores:
        """Metrics (points) of captions (one per VQA scene), answers (one per question), similarity
        (Nz, L) float32 of the zero-shot scenes and the labels."""
        from train.metrics_vision import caption_fact_accuracy, vqa_accuracy, zero_shot_top1

        vqa = vqa_accuracy(answers, [qa["answer"] for _, qa in self.questions],
                           [qa["type"] for _, qa in self.questions])
        metrics: dict[str, float | None] = {
            "vqa_accuracy": POINTS * vqa["overall"],
            "caption_fact_accuracy": POINTS * caption_fact_accuracy(self.truths, captions),
            "zero_shot_top1": POINTS * zero_shot_top1(similarity, self.label_sets),
            **{f"vqa.{kind}": POINTS * value for kind, value in vqa.items() if kind != "overall"},
        }
        return TaskScores(METRIC, self.higher_is_better, metrics, tuple(outputs))

    def _evaluate(self, paths: Mapping[str, Path], digests: Mapping[str, str]) -> TaskScores:
        generation = tuple((c, digests.get(c, "")) for c in GENERATION)
        zero_shot = tuple((c, digests.get(c, "")) for c in ZERO_SHOT)
        if generation not in self._generated or zero_shot not in self._similarity:
            pipeline = self._pipeline(self._sessions(paths))
            if generation not in self._generated:
                self._generated[generation] = self._generate(pipeline)
            if zero_shot not in self._similarity:
                self._similarity[zero_shot] = self._zero_shot(pipeline)
        captions, answers, outputs = self._generated[generation]
        return self._scores(captions, answers, self._similarity[zero_shot], outputs)

    def _pipeline(self, sessions: Mapping[str, Session]) -> VisionLanguagePipeline:
        from tinymm.pipelines.vision_language import VisionLanguagePipeline

        return VisionLanguagePipeline(
            image_encoder=sessions["image_encoder"], decoder_first=sessions["decoder_first"],
            decoder_with_past=sessions.get("decoder_with_past"), text_encoder=sessions.get("text_encoder"),
            preprocessor=self.preprocessor, tokenizer=self.tokenizer, model_info=self.prepared.model_info,
            name="task-eval",
        )

    def _generate(self, pipeline: VisionLanguagePipeline) -> tuple[list[str], list[str], list[tuple[int, ...]]]:
        """(caption per VQA scene, answer per question, token ids of every caption then answer)."""
        from tinymm.decoding import DecodingOptions
        from train.vlm_eval import ANSWER_MAX_TOKENS

        captions = []
        for part in batch_slices(len(self.images), BATCH):
            captions += pipeline.caption(self.images[part], rgb=True,
                                         decoding=DecodingOptions(max_new_tokens=self.max_length))
        answers = []
        for part in batch_slices(len(self.questions), BATCH):
            rows = self.questions[part]
            answers += pipeline.ask([self.images[i] for i, _ in rows], [qa["question"] for _, qa in rows], rgb=True,
                                    decoding=DecodingOptions(max_new_tokens=ANSWER_MAX_TOKENS))
        return ([c.text for c in captions], [a.answer for a in answers], [r.token_ids for r in (*captions, *answers)])

    def _zero_shot(self, pipeline: VisionLanguagePipeline) -> np.ndarray:
        """(Nz, L) float32 cosine of every zero-shot scene with every label."""
        images = np.concatenate([pipeline.embed_image(self.zero_shot_images[part], rgb=True)
                                 for part in batch_slices(len(self.zero_shot_images), BATCH)])  # (Nz, E)
        return images @ pipeline.embed_text(self.labels).T

    def _run_torch(self) -> TaskScores:
        import torch

        from train.vlm_data import label_token_batch
        from train.vlm_eval import ANSWER_MAX_TOKENS, greedy_decode

        model, graphs, eos = self.prepared.model, self.prepared.graphs, self.tokenizer.config.eos_id
        encoded = [graphs["image_encoder"].run_torch({"pixel_values": pixels})  # the runtime's own pixels
                   for pixels in (self.preprocessor(self.zero_shot_images[part], rgb=True)  # (B, 3, S, S)
                                  for part in batch_slices(len(self.zero_shot_images), BATCH))]
        image_embeds = np.concatenate([e["image_embeds"] for e in encoded])  # (Nz, N_img, Cd)
        embeds = torch.from_numpy(image_embeds[: len(self.images)])  # (N, N_img, Cd): the VQA scenes
        image_embedding = np.concatenate([e["image_embedding"] for e in encoded])  # (Nz, E)

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
        similarity = image_embedding @ text["text_embedding"].T  # (Nz, L)
        return self._scores([self.tokenizer.decode(list(t)).strip() for t in captions],
                            [self.tokenizer.decode(list(t)).strip() for t in answers], similarity,
                            [*captions, *answers])

