"""The CTC speech model: conv subsampling, transformer (optionally conformer-conv) encoder, CTC head.

Data path (``forward_features``)::

    log-mel (B, n_mels, T) at 10 ms per frame, computed by the runtime's numpy code
      -> padded frames zeroed -> subsampling_layers x [Conv1d k=3 stride 2 + GELU] (whisper-style)
         -> (B, T', d_model), T' = ceil(T / 2**subsampling_layers); 2 layers give 40 ms per output
         frame (25 frames/s: 100 frames for a 4 s command), 3 layers give 80 ms
      -> + sin-cos positions -> pre-LN blocks [self-attn, depthwise conv module, GELU MLP]
      -> LayerNorm -> Linear -> log_softmax -> log_probs (B, T', V)

CTC blank: id CTC_BLANK_ID = 0, the sentencepiece pad id, which encoding never emits, so the
output size is the sentencepiece vocabulary size and label ids need no shifting.

Padding: valid lengths travel with the batch. Padded input frames are zeroed, every subsampling
conv output is zeroed past its valid length, attention masks padded keys and the conv module
zeroes padded frames before its depthwise conv, so a clip gives the same valid outputs alone or
batched with longer clips. Outputs at padded frames are meaningless; out_lengths says where they
start.

Conv module: Conformer's pointwise-GLU / depthwise / pointwise block, with LayerNorm instead of
BatchNorm (batch statistics would mix padded frames in and differ between batch sizes). It adds
local context that attention alone learns slowly on little data; conv_kernel=0 gives the plain
transformer DESIGN.md measured (1.2M parameters, WER 6.9%).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from tinymm.errors import InputError
from train.models.layers import (
    is_exporting,
    MLP,
    SelfAttention,
    config_from_dict,
    init_transformer_weights,
    is_int_at_least,
    key_padding_mask,
    sincos_1d,
)

CTC_BLANK_ID = 0  # CTC blank = sentencepiece pad id
FEATURE_HOP_MS = 10  # input frame hop in milliseconds (AudioConfig.hop_length at 16 kHz)
SUBSAMPLING_KERNEL = 3  # frames, kernel of each subsampling conv
SUBSAMPLING_STRIDE = 2  # each subsampling conv halves the frame rate


def subsampled_length(n_frames, subsampling_layers: int):
    """Output frames for n_frames input frames (int or integer tensor): ceil(n / 2) per layer.

    Each layer is a conv with kernel 3, stride 2, padding 1: out = (n + 2 - 3) // 2 + 1.
    """
    for _ in range(subsampling_layers):
        n_frames = (n_frames - 1) // SUBSAMPLING_STRIDE + 1
    return n_frames


@dataclass(frozen=True)
class SpeechConfig:
    """Hyperparameters of SpeechCTCModel; checked once at construction."""

    n_mels: int = 80  # log-mel bands of the input (the bundle's AudioConfig.n_mels)
    subsampling_layers: int = 2  # stride-2 convs: 2 -> 40 ms per output frame, 3 -> 80 ms
    d_model: int = 128  # encoder width
    layers: int = 6  # encoder blocks
    heads: int = 4  # attention heads
    ff_dim: int = 384  # MLP hidden width
    conv_kernel: int = 15  # frames (odd), depthwise conv of the conv module; 0 disables the module
    dropout: float = 0.1  # dropout on positions, attention weights and residual branches
    vocab_size: int = 256  # CTC outputs = sentencepiece vocabulary size; id 0 is the blank
    max_frames: int = 3000  # longest input in feature frames (3000 x 10 ms = 30 s); sizes the position table

    def __post_init__(self) -> None:
        for name in ("n_mels", "subsampling_layers", "d_model", "layers", "heads", "ff_dim", "vocab_size", "max_frames"):
            if not is_int_at_least(getattr(self, name), 1):
                raise ValueError(f"SpeechConfig.{name}={getattr(self, name)!r} must be a positive integer")
        if self.subsampling_layers not in (2, 3):
            raise ValueError(f"SpeechConfig.subsampling_layers={self.subsampling_layers} must be 2 (4x) or 3 (8x)")
        if self.d_model % self.heads or self.d_model % 2:
            raise ValueError(f"SpeechConfig.d_model={self.d_model} must be even and divisible by heads={self.heads}")
        if not is_int_at_least(self.conv_kernel, 0) or (self.conv_kernel and self.conv_kernel % 2 == 0):
            raise ValueError(f"SpeechConfig.conv_kernel={self.conv_kernel!r} must be 0 (off) or an odd number of frames")
        if self.vocab_size < 2:
            raise ValueError(f"SpeechConfig.vocab_size={self.vocab_size} leaves no label next to the CTC blank (id 0)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SpeechConfig.dropout={self.dropout!r} must be in [0, 1)")

    @property
    def frame_ms(self) -> int:
        """Milliseconds per output frame."""
        return FEATURE_HOP_MS * SUBSAMPLING_STRIDE**self.subsampling_layers

    @property
    def max_output_frames(self) -> int:
        return subsampled_length(self.max_frames, self.subsampling_layers)

    @classmethod
    def student(cls, **overrides) -> "SpeechConfig":
        """~1.4M parameters: 6 blocks of width 128 (MLP 384) with a 15-frame (600 ms) conv module.

        Sized so that its fp32 and int8 variants ship with the vision-language student in the
        package's 20 MB budget."""
        return cls(**{**_field_defaults(cls), **overrides})

    @classmethod
    def teacher(cls, **overrides) -> "SpeechConfig":
        """~6.2M parameters (about 4.5x the student): 6 blocks of width 256.

        Wide rather than deep: on a CPU the same parameters in fewer, larger matmuls train faster."""
        preset = dict(d_model=256, layers=6, heads=4, ff_dim=1024, conv_kernel=15)
        return cls(**{**_field_defaults(cls), **preset, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> "SpeechConfig":
        """Tens of thousands of parameters on 16 mels, for tests."""
        preset = dict(n_mels=16, d_model=32, layers=2, heads=2, ff_dim=64, conv_kernel=5, dropout=0.0,
                      vocab_size=12, max_frames=400)
        return cls(**{**_field_defaults(cls), **preset, **overrides})

    @classmethod
    def from_dict(cls, data) -> "SpeechConfig":
        return config_from_dict(cls, data)


def _field_defaults(cls: type) -> dict:
    return {f.name: f.default for f in fields(cls)}


@dataclass(frozen=True)
class SpeechOutput:
    """Everything one forward computes, for the CTC loss and for distillation."""

    log_probs: torch.Tensor  # (B, T', V) log-softmax over the vocabulary, blank = 0
    lengths: torch.Tensor  # (B,) int64 valid output frames
    logits: torch.Tensor  # (B, T', V) before log_softmax (temperature-scaled distillation)
    hidden_states: tuple[torch.Tensor, ...]  # layers x (B, T', d_model), each block's output


class ConvSubsampling(nn.Module):
    """(B, n_mels, T) features and (B,) lengths -> (B, T', d_model) and (B,) lengths."""

    def __init__(self, cfg: SpeechConfig) -> None:
        super().__init__()
        self.n_layers = cfg.subsampling_layers
        channels = [cfg.n_mels] + [cfg.d_model] * cfg.subsampling_layers
        self.convs = nn.ModuleList(
            nn.Conv1d(c_in, c_out, SUBSAMPLING_KERNEL, stride=SUBSAMPLING_STRIDE, padding=SUBSAMPLING_KERNEL // 2)
            for c_in, c_out in zip(channels[:-1], channels[1:])
        )

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = features * key_padding_mask(lengths, features.shape[-1])[:, None, :].to(features.dtype)  # (B, M, T)
        for conv in self.convs:
            x = F.gelu(conv(x))  # (B, C, ceil(T/2))
            lengths = subsampled_length(lengths, 1)
            x = x * key_padding_mask(lengths, x.shape[-1])[:, None, :].to(x.dtype)  # zero past each clip's end
        return x.transpose(1, 2), lengths  # (B, T', C)


class ConvModule(nn.Module):
    """Conformer conv module: Linear -> GLU -> depthwise conv over time -> LayerNorm -> SiLU -> Linear."""

    def __init__(self, dim: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.pw_in = nn.Linear(dim, 2 * dim)
        self.depthwise = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x (B, T, C), valid (B, T, 1) float (1 = real frame) -> (B, T, C)."""
        h = F.glu(self.pw_in(x), dim=-1) * valid  # (B, T, C), padded frames zeroed
        h = self.depthwise(h.transpose(1, 2)).transpose(1, 2)  # (B, T, C)
        return self.dropout(self.out_proj(F.silu(self.norm(h))))


class SpeechBlock(nn.Module):
    """Pre-LN block: x + attn(ln(x)), x + conv(ln(x)) when enabled, x + mlp(ln(x))."""

    def __init__(self, cfg: SpeechConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg.d_model, cfg.heads, cfg.dropout)
        self.ln_conv = nn.LayerNorm(cfg.d_model) if cfg.conv_kernel else None
        self.conv = ConvModule(cfg.d_model, cfg.conv_kernel, cfg.dropout) if cfg.conv_kernel else None
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.ff_dim, cfg.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x (B, T, C), attn_mask (B, 1, 1, T) bool, valid (B, T, 1) float -> (B, T, C)."""
        x = x + self.attn(self.ln1(x), mask=attn_mask)
        if self.conv is not None:
            x = x + self.conv(self.ln_conv(x), valid)
        return x + self.mlp(self.ln2(x))


class SpeechCTCModel(nn.Module):
    """Log-mel features -> per-frame CTC log-probabilities.

    ``forward`` is the export surface (features, lengths -> log_probs, out_lengths);
    ``forward_features`` adds logits and hidden states for distillation.
    """

    def __init__(self, config: SpeechConfig) -> None:
        super().__init__()
        self.config = config
        self.subsample = ConvSubsampling(config)
        # Fixed, rebuilt from the config, so it is not stored in checkpoints.
        self.register_buffer("pos", sincos_1d(config.max_output_frames, config.d_model), persistent=False)  # (T'max, C)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(SpeechBlock(config) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size)
        branches = config.layers * (3 if config.conv_kernel else 2)
        init_transformer_weights(self, n_residual_branches=branches)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """(B,) input frames -> (B,) output frames, ceil(n / 2**subsampling_layers)."""
        return subsampled_length(lengths, self.config.subsampling_layers)

    def _check(self, features: torch.Tensor, lengths: torch.Tensor) -> None:
        if is_exporting():
            return
        cfg = self.config
        if features.ndim != 3 or features.shape[1] != cfg.n_mels:
            raise InputError(
                f"features has shape {tuple(features.shape)}; the model takes (B, {cfg.n_mels}, frames) log-mels. "
                f"Compute them with the bundle's AudioConfig (n_mels={cfg.n_mels})."
            )
        if features.shape[2] > cfg.max_frames:
            raise InputError(
                f"features has {features.shape[2]} frames, more than max_frames={cfg.max_frames} "
                f"({cfg.max_frames * FEATURE_HOP_MS / 1000:.0f} s); split the audio into shorter chunks."
            )
        if lengths.shape != (features.shape[0],) or lengths.dtype.is_floating_point:
            raise InputError(
                f"lengths must be a ({features.shape[0]},) integer tensor of valid frames per clip, "
                f"got {lengths.dtype} {tuple(lengths.shape)}"
            )
        if bool((lengths < 1).any()) or bool((lengths > features.shape[2]).any()):
            raise InputError(f"lengths {lengths.tolist()} must lie in 1..{features.shape[2]} (the padded frame count)")

    def forward_features(self, features: torch.Tensor, lengths: torch.Tensor) -> SpeechOutput:
        """features (B, n_mels, T) float32 log-mels, lengths (B,) int64 valid frames; see SpeechOutput."""
        self._check(features, lengths)
        x, out_lengths = self.subsample(features, lengths)  # (B, T', C), (B,)
        n_out = x.shape[1]
        valid = key_padding_mask(out_lengths, n_out)  # (B, T') bool
        attn_mask = valid[:, None, None, :]  # (B, 1, 1, T'): padded keys are never attended to
        valid_f = valid[..., None].to(x.dtype)  # (B, T', 1)
        x = self.drop(x + self.pos[:n_out])
        hidden = []
        for block in self.blocks:
            x = block(x, attn_mask, valid_f)
            hidden.append(x)
        logits = self.head(self.ln_f(x))  # (B, T', V)
        return SpeechOutput(log_probs=F.log_softmax(logits, dim=-1), lengths=out_lengths, logits=logits,
                            hidden_states=tuple(hidden))

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, n_mels, T) float32, lengths (B,) int64 -> log_probs (B, T', V) float32 and
        out_lengths (B,) int64. For torch's ctc_loss, pass log_probs.transpose(0, 1) (T', B, V)."""
        out = self.forward_features(features, lengths)
        return out.log_probs, out.lengths
