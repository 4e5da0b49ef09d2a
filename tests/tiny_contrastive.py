"""Tiny randomly initialised CLIP and SigLIP checkpoints, written as Hugging Face directories.

Each directory holds what a downloaded checkpoint holds (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json, preprocessor_config.json), built locally: the model with
transformers from a small config of the real architecture, the tokenizer with the ``tokenizers``
library (a word-level vocabulary with the checkpoint's special tokens and post-processor), the
preprocessor config by transformers' own image processor. Nothing is downloaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

WORDS = ("a photo of the an on with background two three red green blue yellow white black circle square "
         "triangle star cat dog car tree big small").split()
IMAGE_SIZE = 32
PATCH = 8
HIDDEN = 32
CLIP_CONTEXT = 16
SIGLIP_CONTEXT = 12


def _word_level(specials: list[str], unk: str) -> "object":
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = {token: i for i, token in enumerate([*WORDS, "."])}
    for token in specials:  # the special tokens last, as in CLIP's vocabulary
        vocab.setdefault(token, len(vocab))
    tokenizer = Tokenizer(WordLevel(vocab, unk_token=unk))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    return tokenizer


def make_clip(directory: Path, seed: int = 0) -> Path:
    """A tiny CLIP directory (legacy eos_token_id 2 in the config, as openai/clip-vit-base-patch32)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _word_level(["<|endoftext|>", "<|startoftext|>"], "<|endoftext|>")
    bos, eos = tokenizer.token_to_id("<|startoftext|>"), tokenizer.token_to_id("<|endoftext|>")
    # eos above bos: the argmax pooling of legacy configs finds <|endoftext|>, the largest id
    tokenizer.post_processor = TemplateProcessing(single="<|startoftext|> $A <|endoftext|>",
                                                  special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)])
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<|endoftext|>"}), encoding="utf-8")
    vocab = tokenizer.get_vocab_size()
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=CLIP_CONTEXT, bos_token_id=0,
                         eos_token_id=2, pad_token_id=1),
        vision_config=dict(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE_SIZE, patch_size=PATCH),
        projection_dim=24)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(20.0))
    model.save_pretrained(str(directory))
    CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
                          ).save_pretrained(str(directory))
    return directory


def make_siglip(directory: Path, seed: int = 0) -> Path:
    """A tiny SigLIP directory (</s> appended, padded with </s> to the fixed context)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _word_level(["<pad>", "</s>", "<unk>"], "<unk>")
    eos = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"pad_token": "</s>"}), encoding="utf-8")
    config = SiglipConfig(
        text_config=dict(vocab_size=tokenizer.get_vocab_size(), hidden_size=HIDDEN, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=SIGLIP_CONTEXT,
                         pad_token_id=eos, eos_token_id=eos),
        vision_config=dict(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE_SIZE, patch_size=PATCH))
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-2.0)
    model.save_pretrained(str(directory))
    SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(str(directory))
    return directory
