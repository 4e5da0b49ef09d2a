"""SmolVLM / Idefics3 as three ONNX components (the SmolVLM bundle of export/LAYOUT.md), the layout
onnx-community and onnxruntime-genai use for LLaVA-style models. L text layers, nkv key/value
heads, hs head size, C text width, S tile side, N image tokens per tile::

    vision_encoder  pixel_values (tiles, 3, S, S) float32
                    -> image_features (tiles, N, C): SigLIP encoder, pixel shuffle, projection
    embed_tokens    input_ids (batch, seq) int64 -> inputs_embeds (batch, seq, C)
    decoder_first   inputs_embeds (batch, seq, C) -> logits (batch, seq, V), present.{i}.key|value (batch, nkv, seq, hs)
    decoder_with_past  inputs_embeds (batch, new, C), past_key_values.{i}.key|value (batch, nkv, past, hs)
                    -> logits (batch, new, V), present.{i}.key|value (batch, nkv, past+new, hs)

The runtime replaces the embedding rows of the image token with the image features (tile by
tile, row-major, the global image last) before decoder_first runs the prompt. The two decoders
hold the same weights (stored once, export/share_weights.py): a merged decoder fed an empty past
would need zero-length inputs, which the runtime's backends refuse and TensorRT cannot profile.
Positions start at the past length (batch rows share it: no padding mask), and the causal mask
is built in the graph from the two lengths.

The wrappers compute with the weights of transformers' model, written out as plain ops (no
cache object, no If node): the vision layers and the text model's norms, MLPs and projections
are transformers' own modules; attention and rotary embeddings are spelled out here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from export.onnx_common import ComponentGraph, kv_names
from tinymm.bundle import TensorSpec
from tinymm.errors import InputError

SUPPORTED_ROPE = ("default", "linear")  # rope types whose cos/sin depend only on the position
# Example sizes used for tracing: every dynamic dimension >= 2 so none is frozen to 1.
EXAMPLE_TILES, EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_PAST = 2, 2, 3, 4
COMPONENTS = ("vision_encoder", "embed_tokens", "decoder_first", "decoder_with_past")
DECODERS = ("decoder_first", "decoder_with_past")
ROLES = {
    "vision_encoder": {"pixels": "pixel_values", "image_features": "image_features"},
    "embed_tokens": {"input_ids": "input_ids", "inputs_embeds": "inputs_embeds"},
    "decoder_first": {"inputs_embeds": "inputs_embeds", "logits": "logits"},
    "decoder_with_past": {"inputs_embeds": "inputs_embeds", "logits": "logits"},
}


class VisionGraph(nn.Module):
    """pixel_values (tiles, 3, S, S) -> (image_features (tiles, N, C),): every tile is a full S x S image,
    so the patch mask is all ones and the position ids are 0..patches-1 (what transformers computes
    for an unpadded tile)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        inner = model.model
        self.embeddings = inner.vision_model.embeddings
        self.layers = inner.vision_model.encoder.layers
        self.post_layernorm = inner.vision_model.post_layernorm
        self.connector = inner.connector

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor]:
        x = self.embeddings.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # (tiles, patches, Cv)
        x = x + self.embeddings.position_embedding.weight
        for layer in self.layers:
            x = layer(x, attention_mask=None)
        return (self.connector(self.post_layernorm(x)),)


class EmbedGraph(nn.Module):
    """input_ids (batch, seq) -> (inputs_embeds (batch, seq, C),)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.table = model.model.text_model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.table(input_ids),)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class DecoderGraph(nn.Module):
    """(inputs_embeds[, past k0, v0, ...]) -> (logits, present k0, v0, ...): the Llama text model and its head;
    with_past False is decoder_first (positions from 0, no past inputs)."""

    def __init__(self, model: Any, with_past: bool) -> None:
        super().__init__()
        text = model.model.text_model
        cfg = text.config
        rope = getattr(text.rotary_emb, "rope_type", "default")
        if rope not in SUPPORTED_ROPE:
            raise InputError(f"the text model's rope type {rope!r} is not supported (the exporter writes "
                             f"{list(SUPPORTED_ROPE)}: cos/sin from the position alone)")
        self.with_past = with_past
        self.layers, self.norm, self.lm_head = text.layers, text.norm, model.lm_head
        self.nh, self.nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.hs = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.nh
        self.scale = self.hs ** -0.5
        self.register_buffer("inv_freq", text.rotary_emb.inv_freq.detach().clone().float(), persistent=False)
        self.rope_scaling = float(text.rotary_emb.attention_scaling)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.hs).transpose(1, 2)  # (B, n, T, hs)

    def forward(self, inputs_embeds: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = inputs_embeds
        b, new, _ = x.shape
        start = past[0].shape[2] if self.with_past else 0
        positions = torch.arange(new, device=x.device) + start  # (new,)
        freqs = positions[:, None].float() * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)  # (new, hs)
        cos, sin = emb.cos() * self.rope_scaling, emb.sin() * self.rope_scaling
        keys = torch.arange(new + start, device=x.device)  # (past+new,)
        masked = keys[None, :] > positions[:, None]  # (new, past+new): True = not attended
        groups = self.nh // self.nkv
        present = []
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = self._heads(attn.q_proj(h), self.nh)
            k = self._heads(attn.k_proj(h), self.nkv)
            v = self._heads(attn.v_proj(h), self.nkv)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            if self.with_past:
                k = torch.cat([past[2 * i], k], dim=2)
                v = torch.cat([past[2 * i + 1], v], dim=2)
            present += [k, v]
            if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
                k = k.repeat_interleave(groups, dim=1)
                v = v.repeat_interleave(groups, dim=1)
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # (B, nh, new, past+new)
            scores = scores.masked_fill(masked, float("-inf"))
            out = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, new, self.nh * self.hs)
            x = x + attn.o_proj(out)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return (self.lm_head(self.norm(x)), *present)


def smolvlm_graphs(model: Any) -> dict[str, ComponentGraph]:
    """The three components of a transformers SmolVLM / Idefics3 ForConditionalGeneration (eval mode)."""
    model.eval()
    cfg = model.config
    text, vision = cfg.text_config, cfg.vision_config
    decoder = DecoderGraph(model, with_past=True).eval()
    L, nkv, hs, C, V = len(decoder.layers), decoder.nkv, decoder.hs, text.hidden_size, text.vocab_size
    S = vision.image_size
    tokens = (S // vision.patch_size) ** 2 // cfg.scale_factor ** 2
    gen = torch.Generator().manual_seed(0)

    def kv_specs(prefix: str, length: str) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(name, ("batch", nkv, length, hs), "float32") for name in kv_names(prefix, L))

    embeds = TensorSpec("inputs_embeds", ("batch", "seq", C), "float32")
    graphs = [
        ComponentGraph(
            "vision_encoder", VisionGraph(model).eval(),
            inputs=(TensorSpec("pixel_values", ("tiles", 3, S, S), "float32"),),
            outputs=(TensorSpec("image_features", ("tiles", tokens, C), "float32"),),
            example=(torch.randn(EXAMPLE_TILES, 3, S, S, generator=gen),),
        ),
        ComponentGraph(
            "embed_tokens", EmbedGraph(model).eval(),
            inputs=(TensorSpec("input_ids", ("batch", "seq"), "int64"),),
            outputs=(embeds,),
            example=(torch.randint(0, V, (EXAMPLE_BATCH, EXAMPLE_SEQ), generator=gen),),
        ),
        ComponentGraph(
            "decoder_first", DecoderGraph(model, with_past=False).eval(),
            inputs=(embeds,),
            outputs=(TensorSpec("logits", ("batch", "seq", V), "float32"), *kv_specs("present", "seq")),
            example=(torch.randn(EXAMPLE_BATCH, EXAMPLE_SEQ, C, generator=gen),),
        ),
        ComponentGraph(
            "decoder_with_past", decoder,
            inputs=(TensorSpec("inputs_embeds", ("batch", "new", C), "float32"), *kv_specs("past_key_values", "past")),
            outputs=(TensorSpec("logits", ("batch", "new", V), "float32"), *kv_specs("present", "past+new")),
            example=(torch.randn(EXAMPLE_BATCH, EXAMPLE_SEQ, C, generator=gen),
                     *(torch.randn(EXAMPLE_BATCH, nkv, EXAMPLE_PAST, hs, generator=gen) for _ in range(2 * L))),
        ),
    ]
    return {graph.name: graph for graph in graphs}


def image_tokens_per_tile(config: Any) -> int:
    """N: image tokens one tile gives after the pixel shuffle."""
    vision = config.vision_config
    return (vision.image_size // vision.patch_size) ** 2 // config.scale_factor ** 2
