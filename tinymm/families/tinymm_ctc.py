"""tinymm's own speech architecture: one CTC speech encoder over log-mel features, decoded by
best path (and, when the bundle names one, by a grammar), with a sentencepiece tokenizer
(export/LAYOUT.md, "Speech bundle"). Every format-v1 speech bundle runs on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinymm.pipelines.speech import SpeechPipeline

if TYPE_CHECKING:
    from tinymm.bundle import Bundle
    from tinymm.pipelines.load_options import LoadOptions

ARCHITECTURE = "tinymm-ctc"


def from_bundle(bundle: Bundle, options: LoadOptions | None = None) -> SpeechPipeline:
    """The transcribe / command pipeline of a tinymm-ctc bundle, its encoder loaded with
    ``options`` (default: LoadOptions())."""
    return SpeechPipeline.from_bundle(bundle, options)
