"""Pipelines: one readable data path per task, from raw inputs to results with timings.

- ``VisionLanguagePipeline``: ``caption``, ``ask``, ``classify``, ``embed_image``, ``embed_text``;
- ``SpeechPipeline``: ``transcribe``, ``command`` (transcript + intent; rejected when the VAD hears
  no speech or the command scores under ``reject_threshold``);
- ``SileroVAD``: speech probabilities per 32 ms window (the ``silero-vad`` bundle);
- ``SpokenQuestionPipeline``: ``ask(image, audio)``, a spoken question about an image;
- ``load(name_or_path, ...)``: the pipeline of a bundle's architecture (also ``tinymm.load``),
  with ``LoadOptions`` (``load_options``: the loading flags the task subcommands share).

Module map: ``loading`` (load, load_with), ``load_options`` (LoadOptions and its CLI flags),
``sessions`` (the models and tokenizer of a bundle, opened for a family's constructor),
``results``, and one module per task surface (``vision_language``, ``speech``,
``spoken_question``). Bundle names are resolved by ``tinymm.bundle.names``; the architectures
live in ``tinymm.families``.

Each pipeline is built from a bundle with ``from_bundle`` (sherpa-onnx style); its constructor
takes sessions, preprocessors and the manifest's model object, so that any backend Session (or a
test's fake) can be plugged in. Results are in ``results``.

Names are imported from their module on first use (PEP 562): the CLI declares its flags from
``load_options`` without importing numpy, OpenCV or onnxruntime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinymm.lazy_exports import lazy_attributes

_EXPORTS = {
    "LoadOptions": "load_options",
    "load": "loading",
    "AnswerResult": "results",
    "CaptionResult": "results",
    "ClassifyResult": "results",
    "CommandResult": "results",
    "SpokenAnswerResult": "results",
    "Segment": "results",
    "Timings": "results",
    "TranscriptResult": "results",
    "SpeechPipeline": "speech",
    "SpeechSettings": "speech",
    "SileroVAD": "vad",
    "SpokenQuestionPipeline": "spoken_question",
    "VisionLanguagePipeline": "vision_language",
    "VisionLanguageSettings": "vision_language",
}

if TYPE_CHECKING:
    from tinymm.pipelines.load_options import LoadOptions
    from tinymm.pipelines.loading import load
    from tinymm.pipelines.results import (
        AnswerResult,
        CaptionResult,
        ClassifyResult,
        CommandResult,
        Segment,
        SpokenAnswerResult,
        Timings,
        TranscriptResult,
    )
    from tinymm.pipelines.speech import SpeechPipeline, SpeechSettings
    from tinymm.pipelines.vad import SileroVAD
    from tinymm.pipelines.spoken_question import SpokenQuestionPipeline
    from tinymm.pipelines.vision_language import (
        VisionLanguagePipeline,
        VisionLanguageSettings,
    )

__all__ = [
    "AnswerResult",
    "CaptionResult",
    "ClassifyResult",
    "CommandResult",
    "LoadOptions",
    "Segment",
    "SpeechPipeline",
    "SpeechSettings",
    "SileroVAD",
    "SpokenAnswerResult",
    "SpokenQuestionPipeline",
    "Timings",
    "TranscriptResult",
    "VisionLanguagePipeline",
    "VisionLanguageSettings",
    "load",
]


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
