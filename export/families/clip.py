"""CLIP: a Hugging Face CLIPModel directory -> a verified tinymm bundle of architecture "clip".

The export (export/contrastive_export.py) writes the image tower (pixel_values -> L2-normalised
image_embedding), the text tower (input_ids + attention_mask -> L2-normalised text_embedding),
``model.logit_scale``, the preprocessing contract of CLIPImageProcessor (shortest edge, Pillow
bicubic, centre crop, CLIP mean/std) and the text contract of its tokenizer.json
(``<|startoftext|> ... <|endoftext|>``, padded to the longest text with the checkpoint's pad token
and an attention mask). The runtime's probabilities are softmax(logit_scale * cosine).
"""

from __future__ import annotations

from pathlib import Path

from export.contrastive_source import FamilySpec, read_config
from export.families import ExportResult, HFExportRequest

NAME = "clip"
DESCRIPTION = "OpenAI CLIP, a Hugging Face directory (config.json model_type clip, tokenizer.json, preprocessor_config.json)"
SPEC = FamilySpec(model_type="clip", architecture="clip", model_class="CLIPModel",
                  processor_class="CLIPImageProcessorPil", probability="softmax", text_padding="longest",
                  display="CLIP")


def detect(source: Path) -> bool:
    """Whether ``source`` is a Hugging Face CLIP directory (config.json's model_type)."""
    config = read_config(Path(source))
    return config is not None and config.get("model_type") == SPEC.model_type


def export(request: HFExportRequest) -> ExportResult:
    """Export the CLIP checkpoint of ``request`` (see export/contrastive_export.py)."""
    from export.contrastive_export import export_contrastive

    return export_contrastive(request, SPEC)
