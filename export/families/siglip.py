"""SigLIP: a Hugging Face SiglipModel directory -> a verified tinymm bundle of architecture "siglip".

As export/families/clip.py, with SigLIP's contracts: a square resize with Pillow's bicubic and
mean = std = 0.5; the text and ``</s>`` padded with the pad token to the fixed context length
(the text tower pools the last position and takes no attention mask); ``model.logit_scale`` and
``model.logit_bias``. The runtime's probabilities are sigmoid(logit_scale * cosine + logit_bias).
"""

from __future__ import annotations

from pathlib import Path

from export.contrastive_source import FamilySpec, read_config
from export.families import ExportResult, HFExportRequest

NAME = "siglip"
DESCRIPTION = "Google SigLIP, a Hugging Face directory (config.json model_type siglip, tokenizer.json, preprocessor_config.json)"
SPEC = FamilySpec(model_type="siglip", architecture="siglip", model_class="SiglipModel",
                  processor_class="SiglipImageProcessorPil", probability="sigmoid", text_padding="max_length",
                  display="SigLIP")


def detect(source: Path) -> bool:
    """Whether ``source`` is a Hugging Face SigLIP directory (config.json's model_type)."""
    config = read_config(Path(source))
    return config is not None and config.get("model_type") == SPEC.model_type


def export(request: HFExportRequest) -> ExportResult:
    """Export the SigLIP checkpoint of ``request`` (see export/contrastive_export.py)."""
    from export.contrastive_export import export_contrastive

    return export_contrastive(request, SPEC)
