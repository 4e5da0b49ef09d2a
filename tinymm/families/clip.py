"""CLIP: a dual encoder whose zero-shot probabilities are a softmax over the labels (the bundle
written by export/families/clip.py; its layout: tinymm/pipelines/contrastive.py).

The image and text towers, the preprocessing (shortest-edge resize with Pillow's bicubic, centre
crop, CLIP's mean/std) and the text contract (``<|startoftext|> ... <|endoftext|>``, padded to the
longest label with an attention mask) all come from the bundle; tinymm/pipelines/contrastive.py
runs them. probabilities = softmax(logit_scale * cosine) over the label set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinymm.pipelines.contrastive import SOFTMAX, ContrastivePipeline

if TYPE_CHECKING:
    from tinymm.bundle import Bundle
    from tinymm.pipelines.load_options import LoadOptions

ARCHITECTURE = "clip"


def from_bundle(bundle: Bundle, options: LoadOptions | None = None) -> ContrastivePipeline:
    """The classify/embed pipeline of a CLIP bundle, its two encoders loaded with ``options``."""
    return ContrastivePipeline.from_bundle(bundle, options, probability=SOFTMAX)
