"""What every speech pipeline shares, whatever its model: the rate it listens at and the parser
that turns its transcripts into robot commands (``command``).

``SpeechPipeline`` (CTC bundles) and ``tinymm.families.whisper.WhisperPipeline`` inherit it; each
sets ``preprocessor`` and ``_intent_parser`` in its constructor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tinymm.preprocess.audio import AudioPreprocessor
    from tinymm.robot.intent import IntentParser


class SpeechSurface:
    """The sample rate and the lazily built intent parser of a speech pipeline."""

    preprocessor: AudioPreprocessor
    _intent_parser: IntentParser | None  # None: the robot domain's, built on the first command()

    @property
    def intent_parser(self) -> IntentParser:
        """The parser of ``command``: the one given, else the robot domain's IntentParser (built on first use)."""
        if self._intent_parser is None:
            from tinymm.robot.intent import IntentParser

            self._intent_parser = IntentParser()
        return self._intent_parser

    @property
    def sample_rate(self) -> int:
        """Hz the model listens at; other rates are resampled to it."""
        return self.preprocessor.config.sample_rate
