"""Tiny untrained VLM and speech checkpoints laid out as the recipes write them (needs torch).

``root/vlm/tokenizer.model`` next to ``root/vlm/final``; ``root/speech/tokenizer/speech.model``
next to ``root/speech/final``, as ``python -m train vlm|speech`` leave them for ``python -m export``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from train.checkpoint import save_checkpoint
from train.data.scene_dataset import generate_example
from train.data.scene_language import all_labels
from train.data.scene_render import RenderConfig
from train.data.scene_world import WorldConfig
from train.models import SpeechConfig, SpeechCTCModel, VisionLanguageModel, VLMConfig
from train.speech_tokenizer import SpeechTokenizerConfig, train_speech_tokenizer
from train.vlm_tokenizer import scene_corpus, train_tokenizer

TINY_CONTEXT = 40  # an ask prompt (18 tokens of template with this 64-piece vocabulary) plus an answer


def write_tiny_checkpoints(root: Path, transcripts: Sequence[str], *, vlm_step: int = 1, speech_step: int = 1,
                           vlm_extra: Mapping[str, Any] | None = None) -> Path:
    """VLMConfig.tiny() and SpeechConfig.tiny() checkpoints (seed 0) with their tokenizers under root."""
    annotations = [generate_example(WorldConfig(), RenderConfig(), 0, 0, i)[1] for i in range(12)]
    train_tokenizer(scene_corpus(annotations, all_labels()), root / "vlm", vocab_size=64, context_length=TINY_CONTEXT)
    torch.manual_seed(0)
    vlm = VisionLanguageModel(VLMConfig.tiny(max_text_len=TINY_CONTEXT))
    save_checkpoint(root / "vlm" / "final", vlm, vlm.config, step=vlm_step, extra=vlm_extra)
    train_speech_tokenizer(list(transcripts), root / "speech" / "tokenizer" / "speech.model",
                           SpeechTokenizerConfig(vocab_size=12, model_type="char"))
    speech = SpeechCTCModel(SpeechConfig.tiny())
    save_checkpoint(root / "speech" / "final", speech, speech.config, step=speech_step)
    return root
