"""Whisper as three ONNX components (the Whisper bundle of export/LAYOUT.md), L layers, nh heads, hs head size::

    encoder            input_features (batch, n_mels, frames) float32, frames even and <= 2 * max_source_positions
                       -> encoder_hidden_states (batch, frames / 2, d_model); the positional table is sliced
                          to the frames given (dynamic audio context)
    decoder_first      input_ids (batch, seq) int64, encoder_hidden_states (batch, enc_frames, d_model)
                       -> logits (batch, seq, V), present.{i}.key|value (batch, nh, seq, hs),
                          cross.{i}.key|value (batch, nh, enc_frames, hs)
    decoder_with_past  input_ids (batch, new) int64, past_key_values.{i}.key|value (batch, nh, past, hs),
                       cross.{i}.key|value -> logits (batch, new, V), present.{i}.key|value (batch, nh, past+new, hs)

The wrappers compute with the weights of transformers' WhisperForConditionalGeneration, written
out so that the graphs are plain ops (no If node, no cache object): positions of
decoder_with_past start at the past length read from the cache's shape, and the causal mask is
a slice of a (max_target_positions, max_target_positions) table.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from export.onnx_common import ComponentGraph, kv_names
from tinymm.bundle import TensorSpec
from tinymm.errors import InputError
from train.models.layers import merge_heads, split_heads

CONV_STRIDE = 2  # conv2 halves the frames: enc_frames = frames / 2
SUPPORTED_ACTIVATION = "gelu"  # exact (erf) GELU, every released Whisper
# Example sizes used for tracing: every dynamic dimension >= 2 so none is frozen to 1.
EXAMPLE_BATCH, EXAMPLE_FRAMES, EXAMPLE_SEQ, EXAMPLE_PAST, EXAMPLE_NEW = 2, 8, 3, 3, 2


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
            masked: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v over (B, nh, T, hs) tensors; ``masked`` (Tq, Tk) bool: True = not attended."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, nh, Tq, Tk)
    if masked is not None:
        scores = scores.masked_fill(masked, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class _Whisper(nn.Module):
    """The pieces of a transformers Whisper model the three graphs share."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        cfg = model.config
        if cfg.activation_function != SUPPORTED_ACTIVATION:
            raise InputError(f"Whisper activation {cfg.activation_function!r} is not supported; the exporter "
                             f"writes {SUPPORTED_ACTIVATION!r} (every released Whisper)")
        self.encoder, self.decoder = model.model.encoder, model.model.decoder
        self.enc_heads, self.dec_heads = cfg.encoder_attention_heads, cfg.decoder_attention_heads
        self.enc_scale = (cfg.d_model // self.enc_heads) ** -0.5
        self.dec_scale = (cfg.d_model // self.dec_heads) ** -0.5
        size = cfg.max_target_positions
        self.register_buffer("causal", torch.ones(size, size, dtype=torch.bool).triu(1), persistent=False)
        # The tied token table, stored once as (C, V): the embedding gathers its columns and the
        # output head multiplies by it. With (V, C) the exporter would fold the head's transpose
        # into a second copy of the largest weight (100 MB in whisper-base).
        # A parameter, not a buffer: the exporter writes a buffer as a Constant node per use.
        self.table = nn.Parameter(self.decoder.embed_tokens.weight.detach().t().contiguous(), requires_grad=False)

    def self_attention(self, attn: nn.Module, x: torch.Tensor, nh: int, scale: float,
                       past: tuple[torch.Tensor, torch.Tensor] | None = None,
                       masked: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(out (B, T, C), key, value (B, nh, past+T, hs)) of self-attention over the cache and ``x``."""
        q, k, v = (split_heads(proj(x), nh) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        return attn.out_proj(merge_heads(_attend(q, k, v, scale, masked))), k, v

    def cross_kv(self, encoder_states: torch.Tensor) -> list[torch.Tensor]:
        """[k0, v0, k1, v1, ...], each (B, nh, enc_frames, hs): every decoder layer's cross-attention keys/values."""
        out = []
        for layer in self.decoder.layers:
            out += [split_heads(layer.encoder_attn.k_proj(encoder_states), self.dec_heads),
                    split_heads(layer.encoder_attn.v_proj(encoder_states), self.dec_heads)]
        return out

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, frames) -> (B, frames / 2, d_model)."""
        enc = self.encoder
        x = F.gelu(enc.conv2(F.gelu(enc.conv1(features)))).transpose(1, 2)  # (B, T, C)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        for layer in enc.layers:
            x = x + self.self_attention(layer.self_attn, layer.self_attn_layer_norm(x), self.enc_heads,
                                        self.enc_scale)[0]
            x = x + layer.fc2(F.gelu(layer.fc1(layer.final_layer_norm(x))))
        return enc.layer_norm(x)

    def decode(self, input_ids: torch.Tensor, past: list[torch.Tensor] | None,
               cross: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits (B, new, V), [k0, v0, ...] (B, nh, past+new, hs)) for ``input_ids`` (B, new) after ``past``."""
        dec = self.decoder
        start = past[0].shape[2] if past is not None else 0
        end = start + input_ids.shape[1]  # positions start..end-1
        b, new = input_ids.shape
        tokens = torch.index_select(self.table, 1, input_ids.reshape(-1)).t().reshape(b, new, -1)  # (B, new, C)
        x = tokens + dec.embed_positions.weight[start:end]
        masked = self.causal[start:end, :end]  # (new, past+new)
        present = []
        for i, layer in enumerate(dec.layers):
            cache = (past[2 * i], past[2 * i + 1]) if past is not None else None
            out, k, v = self.self_attention(layer.self_attn, layer.self_attn_layer_norm(x), self.dec_heads,
                                             self.dec_scale, cache, masked)
            x = x + out
            present += [k, v]
            q = split_heads(layer.encoder_attn.q_proj(layer.encoder_attn_layer_norm(x)), self.dec_heads)
            attended = _attend(q, cross[2 * i], cross[2 * i + 1], self.dec_scale)
            x = x + layer.encoder_attn.out_proj(merge_heads(attended))
            x = x + layer.fc2(F.gelu(layer.fc1(layer.final_layer_norm(x))))
        logits = torch.matmul(dec.layer_norm(x), self.table)  # tied output head, (B, new, V)
        return logits, present


class EncoderGraph(nn.Module):
    """input_features -> (encoder_hidden_states,)."""

    def __init__(self, whisper: _Whisper) -> None:
        super().__init__()
        self.whisper = whisper

    def forward(self, input_features: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.whisper.encode(input_features),)


class DecoderFirstGraph(nn.Module):
    """(input_ids, encoder_hidden_states) -> (logits, present k0, v0, ..., cross k0, v0, ...)."""

    def __init__(self, whisper: _Whisper) -> None:
        super().__init__()
        self.whisper = whisper

    def forward(self, input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cross = self.whisper.cross_kv(encoder_hidden_states)
        logits, present = self.whisper.decode(input_ids, None, cross)
        return (logits, *present, *cross)


class DecoderWithPastGraph(nn.Module):
    """(input_ids, past k0, v0, ..., cross k0, v0, ...) -> (logits, present k0, v0, ...)."""

    def __init__(self, whisper: _Whisper, num_layers: int) -> None:
        super().__init__()
        self.whisper, self.n_kv = whisper, 2 * num_layers

    def forward(self, input_ids: torch.Tensor, *past_and_cross: torch.Tensor) -> tuple[torch.Tensor, ...]:
        past, cross = list(past_and_cross[: self.n_kv]), list(past_and_cross[self.n_kv:])
        logits, present = self.whisper.decode(input_ids, past, cross)
        return (logits, *present)


def whisper_graphs(model: Any) -> dict[str, ComponentGraph]:
    """The three components of a transformers WhisperForConditionalGeneration (put in eval mode here)."""
    model.eval()
    cfg = model.config
    whisper = _Whisper(model).eval()
    L, nh, C, V = cfg.decoder_layers, cfg.decoder_attention_heads, cfg.d_model, cfg.vocab_size
    hs = C // nh
    B, F_, T, P, N = EXAMPLE_BATCH, EXAMPLE_FRAMES, EXAMPLE_SEQ, EXAMPLE_PAST, EXAMPLE_NEW
    E = F_ // CONV_STRIDE
    gen = torch.Generator().manual_seed(0)

    def kv_specs(prefix: str, length: str) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(name, ("batch", nh, length, hs), "float32") for name in kv_names(prefix, L))

    def ids(*shape: int) -> torch.Tensor:
        return torch.randint(0, V, shape, generator=gen)

    def kv(length: int) -> tuple[torch.Tensor, ...]:
        return tuple(torch.randn(B, nh, length, hs, generator=gen) for _ in range(2 * L))

    states = TensorSpec("encoder_hidden_states", ("batch", "enc_frames", C), "float32")
    cross = kv_specs("cross", "enc_frames")
    graphs = [
        ComponentGraph(
            "encoder", EncoderGraph(whisper).eval(),
            inputs=(TensorSpec("input_features", ("batch", cfg.num_mel_bins, "frames"), "float32"),),
            outputs=(states,),
            example=(torch.randn(B, cfg.num_mel_bins, F_, generator=gen),),
        ),
        ComponentGraph(
            "decoder_first", DecoderFirstGraph(whisper).eval(),
            inputs=(TensorSpec("input_ids", ("batch", "seq"), "int64"), states),
            outputs=(TensorSpec("logits", ("batch", "seq", V), "float32"), *kv_specs("present", "seq"), *cross),
            example=(ids(B, T), torch.randn(B, E, C, generator=gen)),
        ),
        ComponentGraph(
            "decoder_with_past", DecoderWithPastGraph(whisper, L).eval(),
            inputs=(TensorSpec("input_ids", ("batch", "new"), "int64"), *kv_specs("past_key_values", "past"), *cross),
            outputs=(TensorSpec("logits", ("batch", "new", V), "float32"), *kv_specs("present", "past+new")),
            example=(ids(B, N), *kv(P), *kv(E)),
        ),
    ]
    return {graph.name: graph for graph in graphs}


ROLES = {
    "encoder": {"features": "input_features", "hidden_states": "encoder_hidden_states"},
    "decoder_first": {"input_ids": "input_ids", "encoder_states": "encoder_hidden_states", "logits": "logits"},
    "decoder_with_past": {"input_ids": "input_ids", "logits": "logits"},
}
