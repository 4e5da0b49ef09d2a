"""A question about an image, asked out loud: transcribe, understand, answer.

Data path (``ask``)::

    audio -> SpeechPipeline.command -> transcript + Intent (decoded with the speech bundle's
             grammar when it has one, as ``tinymm command`` does)
          -> a question intent gives the canonical question ("what color is the star?"),
             the text the vision-language model was trained on
    image + question -> VisionLanguagePipeline.ask -> answer

Speech that is not a question of the grammar (a command, or words outside it) gives a result
with ``answer=None``: the intent (or its absence) says what was heard instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinymm.decoding import DecodingOptions
from tinymm.errors import BundleError
from tinymm.pipelines.results import SpokenAnswerResult
from tinymm.pipelines.speech import SpeechPipeline
from tinymm.pipelines.vision_language import VisionLanguagePipeline


class SpokenQuestionPipeline:
    """Joins a speech pipeline (what was asked) and a vision-language pipeline (the answer)."""

    def __init__(self, vision: VisionLanguagePipeline, speech: SpeechPipeline) -> None:
        if not isinstance(vision, VisionLanguagePipeline):
            raise BundleError(f"vision must be a vision-language pipeline, got {type(vision).__name__}")
        if not isinstance(speech, SpeechPipeline):
            raise BundleError(f"speech must be a speech pipeline, got {type(speech).__name__}")
        self.vision, self.speech = vision, speech

    @classmethod
    def from_bundles(cls, vision: str | Path, speech: str | Path, **load_options: Any) -> SpokenQuestionPipeline:
        """Load both bundles (paths or default names) with the same ``tinymm.load`` options."""
        from tinymm.pipelines.loading import load

        vision_pipeline, speech_pipeline = load(vision, **load_options), load(speech, **load_options)
        for pipeline, family, which in ((vision_pipeline, "vision-language", vision), (speech_pipeline, "speech", speech)):
            if pipeline.family != family:
                raise BundleError(f"bundle {str(which)!r} is a {pipeline.family} bundle; a {family} bundle is needed here")
        return cls(vision_pipeline, speech_pipeline)  # type: ignore[arg-type]

    def ask(
        self,
        image: Any,
        audio: Any,
        *,
        sample_rate: int | None = None,
        decoding: DecodingOptions | None = None,
        rgb: bool = False,
    ) -> SpokenAnswerResult:
        """Answer the question spoken in ``audio`` about ``image``.

        Args:
            image: a path, encoded bytes or an (H, W, 3) uint8 array (BGR unless ``rgb``).
            audio: a path, WAV bytes or a (samples,) float array (with ``sample_rate``).
        """
        heard = self.speech.command(audio, sample_rate)
        question = None if heard.intent is None else heard.intent.question
        if question is None:
            return SpokenAnswerResult(heard, None)  # type: ignore[arg-type]
        answer = self.vision.ask(image, question, decoding=decoding, rgb=rgb)
        return SpokenAnswerResult(heard, answer)  # type: ignore[arg-type]
