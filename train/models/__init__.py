"""Torch model definitions trained by train/ and exported by export/ (never imported by tinymm/).

- vlm: VisionLanguageModel (image encoder, projector, cross-attention decoder with a KV cache,
  CLIP-style contrastive head, optional per-token attribute head) and VLMConfig.
- speech: SpeechCTCModel (conv subsampling, transformer/conformer-conv encoder, CTC head) and
  SpeechConfig.
- layers: the attention and MLP blocks both use.
"""

from train.models.layers import param_count
from train.models.speech import CTC_BLANK_ID, SpeechConfig, SpeechCTCModel, SpeechOutput, subsampled_length
from train.models.vlm import VisionLanguageModel, VLMConfig, VLMOutput

__all__ = [
    "CTC_BLANK_ID",
    "SpeechCTCModel",
    "SpeechConfig",
    "SpeechOutput",
    "VLMConfig",
    "VLMOutput",
    "VisionLanguageModel",
    "param_count",
    "subsampled_length",
]
