"""Task metrics of a CTC speech model on a speech test split: WER, CER, intent accuracy.

The definitions are train/metrics_speech.py's (``score_transcripts``), in points:

- ``wer`` (the gate's metric for ``speech_encoder``, lower is better): corpus word error rate of the runtime's
  transcripts against the references, both normalised by ``tinymm.robot.transcripts.normalize_transcript``;
- ``cer``: the same over characters; ``sentence_accuracy``: transcripts exactly right;
- ``intent_accuracy``: the runtime's ``IntentParser`` reads the transcript as the clip's intent.

The runtime side runs ``SpeechPipeline.transcribe`` (its preprocessing, onnxruntime, CTC best
path, detokenization, lexicon correction when the bundle has a lexicon, grammar decoding when it
has a grammar: the decoding the bundle will use by default) on the clips; the torch
side runs the same pipeline with the torch model in place of the onnxruntime session
(``TorchSession``), so only the model's arithmetic differs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from export.task_eval import POINTS, TEST_SPLIT, TaskEvaluator, TaskScores, TorchSession, batch_slices

if TYPE_CHECKING:
    from export.onnx_common import Prepared
    from tinymm.backends.base import Session

logger = logging.getLogger(__name__)

BATCH = 16  # clips per pipeline call
METRIC = "wer"


class SpeechTaskEvaluator(TaskEvaluator):
    """The first `count` clips of `data_dir`'s test split that fit the model's longest input."""

    metric = METRIC
    lower_is_better = ("wer", "cer")
    columns = (("wer", "WER"), ("cer", "CER"), ("intent_accuracy", "intent accuracy"))

    def __init__(self, prepared: Prepared, data_dir: Path, count: int, threads: int) -> None:
        from tinymm.preprocess.audio import AudioPreprocessor
        from tinymm.preprocess.text import Tokenizer
        from train.data.speech_dataset import SpeechDataset

        super().__init__(prepared, threads)
        clips = SpeechDataset(data_dir, TEST_SPLIT)
        self.data_dir, self.sample_rate = data_dir, clips.sample_rate
        audio = prepared.preprocess.audio
        self.preprocessor = AudioPreprocessor(audio)
        self.tokenizer = Tokenizer(prepared.tokenizer_path, prepared.preprocess.text)
        self.waves, self.references, self.intents = [], [], []
        self.skipped = 0  # clips longer than the contract's max_seconds
        for i in range(len(clips)):
            if len(self.waves) == count:
                break
            wave, item = clips[i]
            if audio.max_seconds is not None and len(wave) / clips.sample_rate > audio.max_seconds:
                self.skipped += 1
                continue
            self.waves.append(wave)
            self.references.append(item["transcript"])
            self.intents.append(item.get("intent"))
        if self.skipped:
            logger.warning("task metric: %d test clip(s) longer than %.1f s were left out", self.skipped,
                           audio.max_seconds)

    @property
    def description(self) -> str:
        skipped = f", {self.skipped} longer clips left out" if self.skipped else ""
        return f"{len(self.waves)} clips of the {TEST_SPLIT} split of {self.data_dir}{skipped}"

    @property
    def counts(self) -> dict[str, int]:
        return {"clips": len(self.waves), "skipped": self.skipped}

    @property
    def metric_items(self) -> dict[str, str]:
        with_intent = sum(intent is not None for intent in self.intents)
        clips = f"{len(self.waves)} clips"
        return {"wer": clips, "cer": clips, "intent_accuracy": f"{with_intent} clips with an intent"}

    def _scores(self, transcripts: Sequence[str], outputs: Sequence[tuple[int, ...]]) -> TaskScores:
        from train.metrics_speech import score_transcripts

        s = score_transcripts(self.references, transcripts, self.intents)

        def points(value: float | None) -> float | None:
            return None if value is None else POINTS * value

        metrics = {"wer": points(s.wer), "cer": points(s.cer), "sentence_accuracy": points(s.sentence_accuracy),
                   "intent_accuracy": points(s.intent_accuracy)}
        return TaskScores(METRIC, self.higher_is_better, metrics, tuple(outputs))

    def _evaluate(self, paths: Mapping[str, Path], digests: Mapping[str, str]) -> TaskScores:
        return self._run_pipeline(self._sessions(paths))

    def _run_pipeline(self, sessions: Mapping[str, Session]) -> TaskScores:
        """The metrics of the runtime pipeline built on `sessions` (component -> session)."""
        from tinymm.pipelines.speech import COMPONENT, SpeechPipeline

        pipeline = SpeechPipeline(encoder=sessions[COMPONENT], preprocessor=self.preprocessor,
                                  tokenizer=self.tokenizer, model_info=self.prepared.model_info, name="task-eval")
        results = []
        for part in batch_slices(len(self.waves), BATCH):
            results += pipeline.transcribe(self.waves[part], sample_rate=self.sample_rate)
        return self._scores([r.text for r in results], [r.token_ids for r in results])

    def _run_torch(self) -> TaskScores:
        from tinymm.pipelines.speech import COMPONENT

        return self._run_pipeline({COMPONENT: TorchSession(self.prepared.graphs[COMPONENT])})
