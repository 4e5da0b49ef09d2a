"""A Hugging Face CLIP or SigLIP directory, read for export: the model, its contracts and its two towers.

The directory holds ``config.json`` (model_type "clip" or "siglip"), ``model.safetensors`` (or
``pytorch_model.bin``), ``tokenizer.json`` and ``preprocessor_config.json``; nothing is
downloaded. ``load_contrastive_source`` reads them into:

- the transformers model in float32, eval mode;
- the image contract (``ImageConfig``), read through transformers' Pillow image processor of the
  family, so legacy files (``"size": 224``) parse as transformers parses them;
- the text contract (``TextConfig``): the special tokens the tokenizer.json adds around a text
  (found by encoding a probe with and without them), the pad token of tokenizer_config.json (else
  tokenizer.json's padding, else eos) and the context length of the text tower;
- the two towers as ``ComponentGraph``: ``image_encoder`` (pixel_values -> L2-normalised
  image_embedding) and ``text_encoder`` (input_ids [+ attention_mask for CLIP] -> L2-normalised
  text_embedding), each the transformers ``get_*_features`` projection, normalised as
  transformers' forward normalises it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from export.onnx_common import ComponentGraph, require
from tinymm.bundle import TensorSpec
from tinymm.hashing import sha256_file
from tinymm.preprocess.config import ImageConfig, TextConfig

CONFIG_FILE, TOKENIZER_FILE, PROCESSOR_FILE = "config.json", "tokenizer.json", "preprocessor_config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
# Pillow filter ids (PIL.Image.Resampling) the runtime reproduces exactly (tinymm/preprocess/pil_resize.py).
PIL_INTERPOLATIONS = {1: "pil_lanczos", 2: "pil_bilinear", 3: "pil_bicubic"}
RESCALE = 1 / 255
PROBE_TEXT = "a photo"  # encoded with and without special tokens to find the ones the tokenizer adds
IMAGE_ENCODER, TEXT_ENCODER = "image_encoder", "text_encoder"
ROLES = {IMAGE_ENCODER: {"pixels": "pixel_values", "embedding": "image_embedding"},
         TEXT_ENCODER: {"input_ids": "input_ids", "attention_mask": "attention_mask", "embedding": "text_embedding"}}


@dataclass(frozen=True)
class FamilySpec:
    """What differs between CLIP and SigLIP on the export side."""

    model_type: str  # config.json's model_type
    architecture: str  # the manifest's architecture (tinymm.families module)
    model_class: str  # transformers class name
    processor_class: str  # transformers' Pillow image processor class name
    probability: str  # softmax | sigmoid: how the runtime turns logits into probabilities
    text_padding: str  # longest (with an attention mask) | max_length (the fixed context, no mask)
    display: str  # the model card's name


def read_config(directory: Path) -> Mapping[str, Any] | None:
    """config.json of ``directory`` as a dict, or None when absent or not JSON."""
    try:
        data = json.loads((Path(directory) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(p=2, dim=-1, keepdim=True)  # as transformers' CLIPModel/SiglipModel forward


def _features(output: Any) -> torch.Tensor:
    """get_*_features returns a tensor, or (transformers 5) an output whose pooler_output is the projection."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ImageTower(nn.Module):
    """pixel_values (B, 3, S, S) float32 -> image_embedding (B, E) float32, L2-normalised."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor]:
        return (_normalize(_features(self.model.get_image_features(pixel_values=pixel_values))),)


class TextTower(nn.Module):
    """input_ids (B, T) int64 [, attention_mask (B, T) int64] -> text_embedding (B, E) float32, L2-normalised."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        features = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return (_normalize(_features(features)),)


@dataclass(frozen=True, eq=False)
class ContrastiveSource:
    """A loaded checkpoint and everything its export needs."""

    directory: Path
    spec: FamilySpec
    model: nn.Module  # float32, eval mode
    processor: Any  # transformers' Pillow image processor (the preprocessing reference)
    tokenizer: Any  # tokenizers.Tokenizer of tokenizer.json
    image: ImageConfig
    text: TextConfig
    weights_path: Path
    weights_sha256: str

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / TOKENIZER_FILE

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    @property
    def logit_bias(self) -> float:
        bias = getattr(self.model, "logit_bias", None)
        return 0.0 if bias is None else float(bias.detach().reshape(-1)[0])

    def token_ids(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The text contract in numpy, as the runtime applies it: (ids (N, T) int64, mask (N, T) int64)."""
        text = self.text
        prefix, suffix = [text.bos_id] * text.add_bos, [text.eos_id] * text.add_eos
        room = text.context_length - len(prefix) - len(suffix)
        rows = [prefix + self.tokenizer.encode(t, add_special_tokens=False).ids[:room] + suffix for t in texts]
        length = text.context_length if self.spec.text_padding == "max_length" else max(map(len, rows))
        ids = np.full((len(rows), length), text.pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, :len(row)], mask[i, :len(row)] = row, 1
        return ids, mask

    def text_feeds(self, texts: list[str]) -> dict[str, np.ndarray]:
        ids, mask = self.token_ids(texts)
        return {"input_ids": ids, "attention_mask": mask} if self.spec.text_padding == "longest" else {"input_ids": ids}

    def graphs(self, pixel_values: np.ndarray, texts: list[str]) -> dict[str, ComponentGraph]:
        """The two towers as ComponentGraphs, traced with ``pixel_values`` (B >= 2) and ``texts`` (>= 2)."""
        size = self.image.height
        tower = ImageTower(self.model).eval()
        with torch.no_grad():
            embed = int(tower(torch.from_numpy(pixel_values[:1]))[0].shape[-1])  # E, from the model itself
        image = ComponentGraph(IMAGE_ENCODER, tower,
                               (TensorSpec("pixel_values", ("batch", 3, size, size), "float32"),),
                               (TensorSpec("image_embedding", ("batch", embed), "float32"),),
                               (torch.from_numpy(pixel_values),))
        feeds = self.text_feeds(texts)
        seq = "seq" if self.spec.text_padding == "longest" else self.text.context_length
        inputs = tuple(TensorSpec(name, ("batch", seq), "int64") for name in feeds)
        text = ComponentGraph(TEXT_ENCODER, TextTower(self.model).eval(), inputs,
                              (TensorSpec("text_embedding", ("batch", embed), "float32"),),
                              tuple(torch.from_numpy(v) for v in feeds.values()))
        return {IMAGE_ENCODER: image, TEXT_ENCODER: text}


def _token_text(value: Any) -> str | None:
    """A tokenizer_config.json token entry ("<pad>" or {"content": "<pad>", ...}) -> its text."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def text_contract(directory: Path, tokenizer: Any, context_length: int) -> TextConfig:
    """The TextConfig of a tokenizer.json (see the module docstring); InputError when it cannot be derived."""
    plain = tokenizer.encode(PROBE_TEXT, add_special_tokens=False).ids
    full = tokenizer.encode(PROBE_TEXT, add_special_tokens=True).ids
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), None)
    require(start is not None and start <= 1 and len(full) - len(plain) - start <= 1,
            f"{directory / TOKENIZER_FILE} wraps a text as {full} around {plain}; tinymm adds at most one token "
            "before and one after (CLIP: <|startoftext|> ... <|endoftext|>; SigLIP: ... </s>)")
    bos = full[0] if start == 1 else -1
    eos = full[-1] if len(full) > start + len(plain) else -1
    try:
        extra = json.loads((directory / TOKENIZER_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        extra = {}
    pad_text = _token_text(extra.get("pad_token")) if isinstance(extra, dict) else None
    pad = tokenizer.token_to_id(pad_text) if pad_text else None
    if pad is None and tokenizer.padding is not None:
        pad = tokenizer.padding.get("pad_id")
    if pad is None:
        pad = eos
    require(pad is not None and pad >= 0, f"{directory} names no pad token and the tokenizer adds no eos; "
            f"add pad_token to {TOKENIZER_CONFIG_FILE}")
    unk_token = getattr(tokenizer.model, "unk_token", None)
    unk = tokenizer.token_to_id(unk_token) if unk_token else None
    return TextConfig(tokenizer=TOKENIZER_FILE, context_length=int(context_length), bos_id=bos, eos_id=eos,
                      pad_id=int(pad), unk_id=-1 if unk is None else int(unk), add_bos=bos >= 0, add_eos=eos >= 0,
                      special_tokens={}, prompt_templates={}, kind="hf-tokenizers")


def image_contract(processor: Any, spec: FamilySpec, directory: Path) -> ImageConfig:
    """The ImageConfig of a transformers Pillow image processor; InputError for what the runtime cannot do."""
    where = directory / PROCESSOR_FILE
    require(int(processor.resample) in PIL_INTERPOLATIONS,
            f"{where} resamples with filter {processor.resample!r}; tinymm reproduces Pillow's "
            f"{sorted(PIL_INTERPOLATIONS.items())} (id, name)")
    interpolation = PIL_INTERPOLATIONS[int(processor.resample)]
    require(bool(processor.do_resize) and bool(processor.do_normalize) and bool(processor.do_rescale)
            and math.isclose(float(processor.rescale_factor), RESCALE),
            f"{where} must resize, rescale by 1/255 and normalize (as CLIP and SigLIP checkpoints do)")
    size, crop = processor.size, getattr(processor, "crop_size", None)
    mean, std = tuple(float(x) for x in processor.image_mean), tuple(float(x) for x in processor.image_std)
    if getattr(processor, "do_center_crop", False):
        require(bool(size.get("shortest_edge")) and crop is not None and crop.get("height") == crop.get("width"),
                f"{where}: a centre crop needs size.shortest_edge and a square crop_size, got {size} and {crop}")
        return ImageConfig(height=int(crop["height"]), width=int(crop["width"]), resize="shortest_edge",
                           shortest_edge=int(size["shortest_edge"]), interpolation=interpolation, mean=mean, std=std)
    require(size.get("height") is not None and size.get("height") == size.get("width"),
            f"{where}: without a crop the size must be a square {{height, width}}, got {size}")
    return ImageConfig(height=int(size["height"]), width=int(size["width"]), resize="stretch",
                       interpolation=interpolation, mean=mean, std=std)


def load_contrastive_source(directory: Path, spec: FamilySpec) -> ContrastiveSource:
    """Read a checkpoint directory of ``spec``'s family; InputError naming the missing or unsupported part."""
    import tokenizers
    import transformers

    directory = Path(directory)
    config = read_config(directory)
    require(config is not None and config.get("model_type") == spec.model_type,
            f"{directory / CONFIG_FILE} is missing or is not a {spec.display} config (model_type {spec.model_type!r})")
    weights = next((directory / name for name in WEIGHTS_FILES if (directory / name).is_file()), None)
    require(weights is not None, f"{directory} holds no weights ({' or '.join(WEIGHTS_FILES)})")
    for name in (TOKENIZER_FILE, PROCESSOR_FILE):
        require((directory / name).is_file(), f"{directory} has no {name}; copy it from the checkpoint's repository")
    model = getattr(transformers, spec.model_class).from_pretrained(str(directory), dtype=torch.float32).eval()
    processor = getattr(transformers, spec.processor_class).from_pretrained(str(directory))
    tokenizer = tokenizers.Tokenizer.from_file(str(directory / TOKENIZER_FILE))
    image = image_contract(processor, spec, directory)
    require(image.height == model.config.vision_config.image_size,
            f"{directory}: the processor makes {image.height}x{image.width} images but the vision tower takes "
            f"{model.config.vision_config.image_size}")
    text = text_contract(directory, tokenizer, model.config.text_config.max_position_embeddings)
    return ContrastiveSource(directory, spec, model, processor, tokenizer, image, text, weights, sha256_file(weights))
