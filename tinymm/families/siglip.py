"""SigLIP: a dual encoder trained with a sigmoid loss, so each label's probability stands alone (the
bundle written by export/families/siglip.py; its layout: tinymm/pipelines/contrastive.py).

The towers, the preprocessing (a square resize with Pillow's bicubic, mean = std = 0.5) and the
text contract (the text and ``</s>``, padded with the pad token to the fixed context, no attention
mask) come from the bundle; tinymm/pipelines/contrastive.py runs them.
probabilities = sigmoid(logit_scale * cosine + logit_bias), per label (they need not sum to 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinymm.pipelines.contrastive import SIGMOID, ContrastivePipeline

if TYPE_CHECKING:
    from tinymm.bundle import Bundle
    from tinymm.pipelines.load_options import LoadOptions

ARCHITECTURE = "siglip"


def from_bundle(bundle: Bundle, options: LoadOptions | None = None) -> ContrastivePipeline:
    """The classify/embed pipeline of a SigLIP bundle, its two encoders loaded with ``options``."""
    return ContrastivePipeline.from_bundle(bundle, options, probability=SIGMOID)
