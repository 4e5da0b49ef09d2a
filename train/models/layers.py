"""Transformer building blocks shared by the vision-language and the speech models.

Pre-LayerNorm blocks in the nanoGPT style: multi-head self-attention (optionally with a key
padding mask, a causal mask or a key/value cache), cross-attention whose keys and values are
computed once from a memory, a GELU MLP, fixed sine-cosine position tables, weight init, a
parameter counter, and the two helpers the model configs use to validate and reload themselves.
Every forward is plain tensor-in/tensor-out so that torch.onnx.export can trace it without
value-dependent control flow.

Shape letters: B batch, T query length, S key length, C width, nh heads, hs head size (C // nh).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

# Standard deviation of the normal init of Linear and Embedding weights (GPT-2, nanoGPT).
INIT_STD = 0.02
# Base of the wavelengths of the sine-cosine position tables ("Attention is all you need").
SINCOS_BASE = 10000.0

_Config = TypeVar("_Config")


def config_from_dict(cls: type[_Config], data: Mapping[str, Any]) -> _Config:
    """Rebuild a frozen config dataclass from its JSON form (``dataclasses.asdict``).

    JSON lists become tuples again; unknown keys (likely typos or a newer format) raise ValueError.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__} expects a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known fields are {sorted(names)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kwargs)


def is_int_at_least(value: Any, minimum: int) -> bool:
    """True for an int (not a bool) >= minimum: the check every config field of a size uses."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, C) -> (B, nh, T, hs)."""
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, nh, T, hs) -> (B, T, C)."""
    B, nh, T, hs = x.shape
    return x.transpose(1, 2).reshape(B, T, nh * hs)


def key_padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Valid-position mask from lengths.

    lengths: (B,) integer valid lengths. Returns (B, max_len) bool, True where position < length.
    """
    positions = torch.arange(max_len, device=lengths.device)
    return positions[None, :] < lengths[:, None]  # (B, S)


def causal_mask(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """Bottom-right aligned causal mask for queries that are the last q_len of k_len positions.

    Query i (absolute position k_len - q_len + i) may attend to keys 0..k_len - q_len + i.
    Returns (q_len, k_len) bool, True where attention is allowed. With q_len == k_len it is the
    usual lower-triangular mask; with a key/value cache (k_len > q_len) it lets the new tokens see
    the whole past.
    """
    offset = k_len - q_len
    q_pos = torch.arange(q_len, device=device)[:, None] + offset  # (T, 1)
    k_pos = torch.arange(k_len, device=device)[None, :]  # (1, S)
    return k_pos <= q_pos


def sincos_1d(n_positions: int, dim: int) -> torch.Tensor:
    """Fixed sine-cosine position table, (n_positions, dim) float32; dim must be even."""
    if dim % 2:
        raise ValueError(f"a sine-cosine table needs an even width, got {dim}")
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]  # (P, 1)
    inv_freq = torch.exp(-math.log(SINCOS_BASE) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (dim/2,)
    angles = pos * inv_freq[None, :]  # (P, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # (P, dim)


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """2D sine-cosine table for a grid x grid token map in row-major order (MAE, ViT-S/16 "sincos2d").

    Half of the channels encode the row, half the column. Returns (grid * grid, dim) float32;
    dim must be divisible by 4.
    """
    if dim % 4:
        raise ValueError(f"a 2D sine-cosine table needs a width divisible by 4, got {dim}")
    table = sincos_1d(grid, dim // 2)  # (G, dim/2)
    rows = table[:, None, :].expand(grid, grid, dim // 2)  # (G, G, dim/2): varies along the row index
    cols = table[None, :, :].expand(grid, grid, dim // 2)  # (G, G, dim/2): varies along the column index
    return torch.cat([rows, cols], dim=-1).reshape(grid * grid, dim)


class MLP(nn.Module):
    """Position-wise feed-forward: Linear -> GELU -> Linear -> Dropout. (B, T, C) -> (B, T, C)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.out_proj = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.out_proj(F.gelu(self.fc1(x))))


class SelfAttention(nn.Module):
    """Multi-head self-attention split into projection and attention, so a decoder can insert its cache."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"attention width {dim} is not divisible by {n_heads} heads")
        self.n_heads = n_heads
        self.dropout_p = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.resid_dropout = nn.Dropout(dropout)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, C) -> q, k, v, each (B, nh, T, hs)."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (B, T, C)
        return split_heads(q, self.n_heads), split_heads(k, self.n_heads), split_heads(v, self.n_heads)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """q (B, nh, T, hs), k and v (B, nh, S, hs), mask broadcastable to (B, nh, T, S) bool -> (B, T, C)."""
        dropout_p = self.dropout_p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
        return self.resid_dropout(self.out_proj(merge_heads(y)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """(B, T, C) -> (B, T, C), with an optional bool mask broadcastable to (B, nh, T, T)."""
        q, k, v = self.project(x)
        return self.attend(q, k, v, mask=mask, is_causal=is_causal)


class CrossAttention(nn.Module):
    """Multi-head attention from queries to a fixed memory whose keys and values are computed once."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"attention width {dim} is not divisible by {n_heads} heads")
        self.n_heads = n_heads
        self.dropout_p = dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.resid_dropout = nn.Dropout(dropout)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory (B, S, C) -> k, v, each (B, nh, S, hs)."""
        k, v = self.kv(memory).chunk(2, dim=-1)  # 2 x (B, S, C)
        return split_heads(k, self.n_heads), split_heads(v, self.n_heads)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x (B, T, C), k and v (B, nh, S, hs) from memory_kv -> (B, T, C)."""
        q = split_heads(self.q(x), self.n_heads)  # (B, nh, T, hs)
        dropout_p = self.dropout_p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)  # (B, nh, T, hs)
        return self.resid_dropout(self.out_proj(merge_heads(y)))


class EncoderBlock(nn.Module):
    """Bidirectional pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, n_heads: int, mlp_hidden: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_hidden, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C), mask None or (B, 1, 1, T) bool (True = valid key) -> (B, T, C)."""
        x = x + self.attn(self.ln1(x), mask=mask)
        return x + self.mlp(self.ln2(x))


def init_transformer_weights(model: nn.Module, n_residual_branches: int) -> None:
    """GPT-2 init: Linear/Embedding weights ~ N(0, 0.02), zero biases, and the projections that
    write into the residual stream (``out_proj``) scaled by 1 / sqrt(n_residual_branches), the
    number of residual additions in the stack (2 per encoder block, 3 per decoder block)."""
    residual_std = INIT_STD / math.sqrt(max(n_residual_branches, 1))
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            std = residual_std if name.endswith("out_proj") else INIT_STD
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)


def param_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters; tied (shared) tensors are counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def is_exporting() -> bool:
    """True while torch.onnx traces the model (TorchScript tracing or the dynamo exporter's
    torch.export): input checks that read tensor values must skip themselves then."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()
