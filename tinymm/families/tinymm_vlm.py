"""tinymm's own vision-language architecture: an image encoder giving cross-attention K/V, a
first-step decoder and a decoder with a self-attention KV cache, and a text encoder for
zero-shot classification (export/LAYOUT.md, "Vision-language bundle"). Every format-v1
vision-language bundle runs on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinymm.pipelines.vision_language import VisionLanguagePipeline

if TYPE_CHECKING:
    from tinymm.bundle import Bundle
    from tinymm.pipelines.load_options import LoadOptions

ARCHITECTURE = "tinymm-vlm"


def from_bundle(bundle: Bundle, options: LoadOptions | None = None) -> VisionLanguagePipeline:
    """The caption / ask / classify pipeline of a tinymm-vlm bundle, its components loaded with
    ``options`` (default: LoadOptions())."""
    return VisionLanguagePipeline.from_bundle(bundle, options)
