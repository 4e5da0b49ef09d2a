"""The vision-language model: conv-stem ViT encoder, projector, cross-attention decoder, CLIP head.

Data path (``forward_features`` shows it end to end)::

    pixels (B, 3, H, W) -> conv stem -> (B, G*G, Ce) tokens of 2**len(stem_channels) px each
      -> + 2D sin-cos positions -> bidirectional blocks -> image tokens (B, G*G, Ce)
      -> projector: pixel shuffle s x s, Linear (+ learned memory positions) -> image embeds
         (B, N_img, Cd), N_img = (G/s)^2
      -> per decoder layer, cross-attention K/V computed once from the image embeds
    token ids (B, T) -> embeddings + learned positions -> causal blocks (self-attn, cross-attn to
      the image, GELU MLP) -> logits (B, T, V), tied to the token embedding

Design choices, with the facts from DESIGN.md that drove them:

- A deep conv stem, few tokens. Attention over many tokens is what a CPU cannot afford: 4 ViT
  blocks over 16x16 tokens trained at 11 images/s on one core. The presets' stem has three stages
  to 8x8 tokens of 8 px at 64x64; each stage is a stride-2 then a stride-1 3x3 conv, so every token
  sees 43 px (a 10-px glyph lies whole inside one token's view; a straight 8-px patchify could not
  read it). The convolutions do the local reading and two blocks relate the 64 tokens; the
  projector can still merge s x s tokens into channels (nanoVLM's pixel shuffle, s = 1 in the
  presets).
- Cross-attention, not a prefix. The image K/V of every decoder layer are computed once per
  image (``cross_kv``) and reused for every step, every beam and every question about the same
  image; the self-attention cache holds text only, so positions start at 0 and the two exported
  decoder graphs (``decode_first``, ``decode_with_past``) take the same inputs whatever the image
  size. Every text token queries the image in every layer, which conditions the visual features
  read on the question (the binding remedy that a FiLM layer would otherwise add).
- Auxiliary attribute head (optional, one Linear): per encoder token, logits for attributes of the
  object whose centre lies in that token's cell (e.g. shape, colour, size). The scene generator
  knows every object, so this supervises binding directly at the token level.
- Contrastive text encoder: shares the decoder's token and position embeddings, then
  ``text_enc_layers`` bidirectional blocks and a masked mean pool (0 layers: pooled embeddings).
  The image side max-pools the encoder tokens per channel (``image_pool``): a scene's label names
  one object, and a mean over every cell mostly measures the background.
- Memory positions (``memory_positions``): a learned vector per image embed, added after the
  projector. The encoder's sin-cos positions are still linearly readable at its output, but the
  decoder learned "where is the ..." answers slowly from them (near chance after 2,000 steps, and
  left and right still swapped after 5,000). The training loop gives the table 20x the learning
  rate (``StageOptions.memory_position_lr_scale``): at 1x it stayed near its zero start.

Export pieces take and return flat tuples of tensors ordered (layer0.key, layer0.value,
layer1.key, ...), the order of optimum's ``past_key_values.{i}.key|value`` names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from tinymm.errors import InputError
from train.models.layers import (
    is_exporting,
    MLP,
    CrossAttention,
    EncoderBlock,
    SelfAttention,
    causal_mask,
    config_from_dict,
    init_transformer_weights,
    is_int_at_least,
    sincos_2d,
)

# CLIP: the logit scale starts at 1 / 0.07 and is clamped to at most 100.
CLIP_INIT_TEMPERATURE = 0.07
CLIP_MAX_LOGIT_SCALE = 100.0
IMAGE_CHANNELS = 3  # RGB
STEM_KERNEL = 3  # pixels, kernel of every stem conv
IMAGE_POOLS = ("mean", "max")
# What the presets train with. The field defaults keep older checkpoints (mean pool, no memory
# positions) loading as they were trained.
PRESET_HEADS = dict(image_pool="max", memory_positions=True)


@dataclass(frozen=True)
class VLMConfig:
    """Hyperparameters of VisionLanguageModel; checked once at construction."""

    image_size: int = 64  # square input side in pixels (the bundle's ImageConfig height and width)
    stem_channels: tuple[int, ...] = (32, 64, 128)  # channels per stem stage; each halves the resolution
    enc_dim: int = 128  # image encoder width (divisible by 4 for the 2D sin-cos table)
    enc_layers: int = 2  # image encoder transformer blocks
    enc_heads: int = 4  # image encoder attention heads
    pixel_shuffle: int = 1  # the projector merges s x s neighbouring tokens: N_img = (grid / s)^2
    dec_dim: int = 128  # decoder width, also the text encoder's
    dec_layers: int = 3  # decoder blocks (self-attn + cross-attn + MLP)
    dec_heads: int = 4  # decoder attention heads
    vocab_size: int = 512  # sentencepiece vocabulary size, special ids included
    max_text_len: int = 64  # most tokens in a decoded sequence, prompt included
    text_enc_layers: int = 1  # bidirectional blocks of the contrastive text encoder (0: pooled embeddings)
    embed_dim: int = 128  # contrastive embedding size
    mlp_ratio: int = 4  # MLP hidden width / block width, in every transformer block
    dropout: float = 0.0  # dropout on embeddings, attention weights and residual branches
    aux_attribute_classes: tuple[int, ...] = ()  # classes per auxiliary attribute ("none" included); () disables
    image_pool: str = "mean"  # contrastive image embedding from the tokens' "mean" or per-channel "max"
    memory_positions: bool = False  # add a learned position per image embed to the decoder's memory
    image_pool_hidden: int = 0  # > 0: a per-token Linear + GELU of this width before the pool (0: none)

    def __post_init__(self) -> None:
        ints = ("image_size", "enc_dim", "enc_layers", "enc_heads", "pixel_shuffle", "dec_dim", "dec_layers",
                "dec_heads", "vocab_size", "max_text_len", "embed_dim", "mlp_ratio")
        for name in ints:
            if not is_int_at_least(getattr(self, name), 1):
                raise ValueError(f"VLMConfig.{name}={getattr(self, name)!r} must be a positive integer")
        if not is_int_at_least(self.text_enc_layers, 0):
            raise ValueError(f"VLMConfig.text_enc_layers={self.text_enc_layers!r} must be an integer >= 0")
        for name in ("stem_channels", "aux_attribute_classes"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or not all(is_int_at_least(v, 1) for v in values):
                raise ValueError(f"VLMConfig.{name}={values!r} must be a tuple of positive integers")
        if not self.stem_channels:
            raise ValueError("VLMConfig.stem_channels is empty; give at least one stage, e.g. (32, 64)")
        cell = self.patch_size * self.pixel_shuffle
        if self.image_size % cell:
            raise ValueError(
                f"VLMConfig.image_size={self.image_size} is not a multiple of {cell} (stem stride "
                f"{self.patch_size} x pixel_shuffle {self.pixel_shuffle}); pick a multiple or change the stem"
            )
        for dim, heads in (("enc_dim", "enc_heads"), ("dec_dim", "dec_heads")):
            if getattr(self, dim) % getattr(self, heads):
                raise ValueError(f"VLMConfig.{dim}={getattr(self, dim)} is not divisible by {heads}={getattr(self, heads)}")
        if self.enc_dim % 4:
            raise ValueError(f"VLMConfig.enc_dim={self.enc_dim} must be divisible by 4 for the 2D sin-cos positions")
        if self.image_pool not in IMAGE_POOLS:
            raise ValueError(f"VLMConfig.image_pool={self.image_pool!r} must be one of {IMAGE_POOLS}")
        if not is_int_at_least(self.image_pool_hidden, 0):
            raise ValueError(f"VLMConfig.image_pool_hidden={self.image_pool_hidden!r} must be an integer >= 0")
        if not isinstance(self.memory_positions, bool):
            raise ValueError(f"VLMConfig.memory_positions={self.memory_positions!r} must be true or false")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"VLMConfig.dropout={self.dropout!r} must be in [0, 1)")

    @property
    def patch_size(self) -> int:
        """Pixels per image token side: each stem stage halves the resolution."""
        return 2 ** len(self.stem_channels)

    @property
    def grid_size(self) -> int:
        """Image tokens per side at the encoder output."""
        return self.image_size // self.patch_size

    @property
    def num_image_tokens(self) -> int:
        """Image tokens the decoder cross-attends to, after the projector's pixel shuffle."""
        return (self.grid_size // self.pixel_shuffle) ** 2

    @classmethod
    def student(cls, **overrides) -> "VLMConfig":
        """~1.8M parameters (<= 2.2M: fp32 and int8 bundles together within 20 MB): 8x8 tokens of 8 px
        at 64x64, 2 encoder blocks, 3 decoder blocks of width 128."""
        return cls(**{**_field_defaults(cls), **PRESET_HEADS, **overrides})

    @classmethod
    def teacher(cls, **overrides) -> "VLMConfig":
        """~8.4M parameters (about 4.7x the student): the same 8x8 token grid (the attribute targets
        and the hidden-state matching need one grid), a wider stem, 6 encoder blocks of width 256
        and 4 decoder blocks of width 192. About 4x the student's cost per image, so that it can
        train on a CPU within the recipe's budget and run its forward during distillation."""
        preset = dict(stem_channels=(48, 96, 192), enc_dim=256, enc_layers=6, enc_heads=8, dec_dim=192, dec_layers=4,
                      dec_heads=6)
        return cls(**{**_field_defaults(cls), **PRESET_HEADS, **preset, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> "VLMConfig":
        """A few hundred thousand parameters at 32x32, for tests."""
        preset = dict(image_size=32, stem_channels=(8, 16), pixel_shuffle=2, enc_dim=32, enc_layers=2, enc_heads=2,
                      dec_dim=32, dec_layers=2, dec_heads=2, vocab_size=64, max_text_len=24, text_enc_layers=1,
                      embed_dim=16)
        return cls(**{**_field_defaults(cls), **PRESET_HEADS, **preset, **overrides})

    @classmethod
    def from_dict(cls, data) -> "VLMConfig":
        return config_from_dict(cls, data)


def _field_defaults(cls: type) -> dict:
    return {f.name: f.default for f in fields(cls)}


@dataclass(frozen=True)
class VLMOutput:
    """Everything one training forward computes, for the losses and for distillation."""

    logits: torch.Tensor  # (B, T, V) next-token logits
    image_tokens: torch.Tensor  # (B, G*G, enc_dim) encoder output after its final LayerNorm
    image_embeds: torch.Tensor  # (B, N_img, dec_dim) projector output, the decoder's memory
    image_embedding: torch.Tensor  # (B, embed_dim) L2-normalised contrastive embedding
    encoder_hidden: tuple[torch.Tensor, ...]  # enc_layers x (B, G*G, enc_dim), each block's output
    decoder_hidden: tuple[torch.Tensor, ...]  # dec_layers x (B, T, dec_dim), each block's output
    aux_logits: tuple[torch.Tensor, ...]  # one (B, G, G, classes_i) per auxiliary attribute; () without the head


def _conv_bn_gelu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    conv = nn.Conv2d(c_in, c_out, STEM_KERNEL, stride=stride, padding=STEM_KERNEL // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.GELU())


class ImageEncoder(nn.Module):
    """Conv stem + ViT blocks: (B, 3, H, W) -> tokens (B, G*G, Ce) and each block's output."""

    def __init__(self, cfg: VLMConfig) -> None:
        super().__init__()
        stages, c_in = [], IMAGE_CHANNELS
        for c in cfg.stem_channels:
            stages += [_conv_bn_gelu(c_in, c, stride=2), _conv_bn_gelu(c, c, stride=1)]
            c_in = c
        self.stem = nn.Sequential(*stages)
        self.to_tokens = nn.Conv2d(c_in, cfg.enc_dim, kernel_size=1)
        # Fixed, rebuilt from the config, so it is not stored in checkpoints.
        self.register_buffer("pos", sincos_2d(cfg.grid_size, cfg.enc_dim)[None], persistent=False)  # (1, G*G, Ce)
        self.drop = nn.Dropout(cfg.dropout)
        hidden = cfg.mlp_ratio * cfg.enc_dim
        self.blocks = nn.ModuleList(
            EncoderBlock(cfg.enc_dim, cfg.enc_heads, hidden, cfg.dropout) for _ in range(cfg.enc_layers)
        )
        self.ln_f = nn.LayerNorm(cfg.enc_dim)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        x = self.to_tokens(self.stem(pixel_values))  # (B, Ce, G, G)
        x = self.drop(x.flatten(2).transpose(1, 2) + self.pos)  # (B, G*G, Ce), row-major tokens
        hidden = []
        for block in self.blocks:
            x = block(x)
            hidden.append(x)
        return self.ln_f(x), tuple(hidden)


class Projector(nn.Module):
    """Pixel shuffle then Linear (nanoVLM): (B, G*G, Ce) -> (B, (G/s)^2, Cd)."""

    def __init__(self, cfg: VLMConfig) -> None:
        super().__init__()
        self.grid, self.s, self.enc_dim = cfg.grid_size, cfg.pixel_shuffle, cfg.enc_dim
        self.proj = nn.Linear(cfg.enc_dim * cfg.pixel_shuffle**2, cfg.dec_dim)
        # Learned, zero at start: where each embed lies, in a form the decoder reads directly.
        self.positions = nn.Parameter(torch.zeros(cfg.num_image_tokens, cfg.dec_dim)) if cfg.memory_positions else None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        g, s, c = self.grid // self.s, self.s, self.enc_dim
        x = tokens.reshape(-1, g, s, g, s, c).permute(0, 1, 3, 2, 4, 5)  # (B, g, g, s, s, Ce)
        embeds = self.proj(x.reshape(-1, g * g, s * s * c))  # (B, g*g, Cd)
        return embeds if self.positions is None else embeds + self.positions


class DecoderBlock(nn.Module):
    """Pre-LN causal block: self-attention (with cache), cross-attention to the image, GELU MLP."""

    def __init__(self, dim: int, n_heads: int, mlp_hidden: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.self_attn = SelfAttention(dim, n_heads, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, n_heads, dropout)
        self.ln3 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_hidden, dropout)

    def forward(
        self,
        x: torch.Tensor,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        past_k: torch.Tensor | None = None,
        past_v: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, C); cross_k/v (B, nh, N_img, hs); past_k/v (B, nh, P, hs) or None; mask (T, P+T)
        bool or None for plain causal. Returns x (B, T, C) and present k, v (B, nh, P+T, hs)."""
        q, k, v = self.self_attn.project(self.ln1(x))  # (B, nh, T, hs) each
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)  # (B, nh, P+T, hs)
            v = torch.cat([past_v, v], dim=2)
        x = x + self.self_attn.attend(q, k, v, mask=mask, is_causal=mask is None)
        x = x + self.cross_attn(self.ln2(x), cross_k, cross_v)
        x = x + self.mlp(self.ln3(x))
        return x, k, v


class TextDecoder(nn.Module):
    """Token + learned position embeddings, causal blocks, final LayerNorm, tied output head."""

    def __init__(self, cfg: VLMConfig) -> None:
        super().__init__()
        self.max_text_len = cfg.max_text_len
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dec_dim)
        self.pos_emb = nn.Embedding(cfg.max_text_len, cfg.dec_dim)
        self.drop = nn.Dropout(cfg.dropout)
        hidden = cfg.mlp_ratio * cfg.dec_dim
        self.blocks = nn.ModuleList(
            DecoderBlock(cfg.dec_dim, cfg.dec_heads, hidden, cfg.dropout) for _ in range(cfg.dec_layers)
        )
        self.ln_f = nn.LayerNorm(cfg.dec_dim)

    def embed(self, input_ids: torch.Tensor, past_len: int | torch.Tensor) -> torch.Tensor:
        """(B, T) ids at positions past_len .. past_len+T-1 -> (B, T, Cd)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device) + past_len  # (T,)
        return self.drop(self.tok_emb(input_ids) + self.pos_emb(positions)[None])

    def forward(
        self,
        input_ids: torch.Tensor,
        cross_kv: tuple[torch.Tensor, ...],
        past: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """ids (B, T); cross_kv and past: flat (k, v) per layer. Returns logits (B, T, V), present
        (flat, each (B, nh, P+T, hs)) and each block's output (B, T, Cd)."""
        T = input_ids.shape[1]
        past_len = 0 if past is None else past[0].shape[2]
        if not is_exporting() and (T < 1 or past_len + T > self.max_text_len):
            raise InputError(
                f"decoding {past_len} cached + {T} new tokens; the decoder holds 1 to max_text_len="
                f"{self.max_text_len} tokens. Shorten the prompt or stop generating earlier."
            )
        x = self.embed(input_ids, past_len)  # (B, T, Cd)
        mask = None if past is None else causal_mask(T, past_len + T, input_ids.device)  # (T, P+T)
        present, hidden = [], []
        for i, block in enumerate(self.blocks):
            past_k, past_v = (None, None) if past is None else (past[2 * i], past[2 * i + 1])
            x, k, v = block(x, cross_kv[2 * i], cross_kv[2 * i + 1], past_k, past_v, mask)
            present += [k, v]
            hidden.append(x)
        logits = F.linear(self.ln_f(x), self.tok_emb.weight)  # (B, T, V), tied head
        return logits, tuple(present), tuple(hidden)


class VisionLanguageModel(nn.Module):
    """Captioning / VQA decoder over image tokens, plus a CLIP-style contrastive head.

    pixel_values are (B, 3, image_size, image_size) float32, normalised as the bundle's ImageConfig
    says; input_ids are (B, T) int64 sentencepiece ids.
    """

    def __init__(self, config: VLMConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder(config)
        self.projector = Projector(config)
        self.decoder = TextDecoder(config)
        hidden = config.mlp_ratio * config.dec_dim
        self.text_blocks = nn.ModuleList(
            EncoderBlock(config.dec_dim, config.dec_heads, hidden, config.dropout) for _ in range(config.text_enc_layers)
        )
        self.text_ln = nn.LayerNorm(config.dec_dim)
        self.text_proj = nn.Linear(config.dec_dim, config.embed_dim, bias=False)
        # Per-token features before the pool: a max over cells of colour and shape features separately
        # cannot say which colour went with which shape; a nonlinear feature per cell can.
        pool_width = config.image_pool_hidden or config.enc_dim
        self.image_pool_mlp = (nn.Sequential(nn.Linear(config.enc_dim, pool_width), nn.GELU())
                               if config.image_pool_hidden else None)
        self.image_proj = nn.Linear(pool_width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / CLIP_INIT_TEMPERATURE)))
        n_aux = sum(config.aux_attribute_classes)
        self.aux_head = nn.Linear(config.enc_dim, n_aux) if n_aux else None
        init_transformer_weights(self.image_encoder, n_residual_branches=2 * config.enc_layers)
        init_transformer_weights(self.decoder, n_residual_branches=3 * config.dec_layers)
        init_transformer_weights(self.text_blocks, n_residual_branches=2 * max(config.text_enc_layers, 1))
        for linear in (self.projector.proj, self.text_proj, self.image_proj, self.aux_head):
            if linear is not None:
                init_transformer_weights(linear, n_residual_branches=1)

    # ---- input checks (skipped while tracing for export: shapes are symbolic there) ----
    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        size = self.config.image_size
        if is_exporting():
            return
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (IMAGE_CHANNELS, size, size):
            raise InputError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; this model takes (B, 3, {size}, {size}). "
                f"Resize with the bundle's ImageConfig (height={size}, width={size}) first."
            )

    def _check_ids(self, input_ids: torch.Tensor) -> None:
        if is_exporting():
            return
        if input_ids.ndim != 2 or input_ids.dtype != torch.long:
            raise InputError(f"input_ids must be a (B, T) int64 tensor, got {input_ids.dtype} {tuple(input_ids.shape)}")
        vocab = self.config.vocab_size
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
            raise InputError(
                f"input_ids hold ids {int(input_ids.min())}..{int(input_ids.max())}; this model's vocabulary is "
                f"0..{vocab - 1}. Tokenize with the sentencepiece model it was trained with."
            )

    # ---- training forward ----
    def forward_features(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> VLMOutput:
        """One pass over images (B, 3, H, W) and teacher-forced ids (B, T); see VLMOutput."""
        self._check_pixels(pixel_values)
        self._check_ids(input_ids)
        image_tokens, encoder_hidden = self.image_encoder(pixel_values)  # (B, G*G, Ce)
        image_embeds = self.projector(image_tokens)  # (B, N_img, Cd)
        logits, _, decoder_hidden = self.decoder(input_ids, self.cross_kv(image_embeds))
        return VLMOutput(
            logits=logits,
            image_tokens=image_tokens,
            image_embeds=image_embeds,
            image_embedding=self._pool_image(image_tokens),
            encoder_hidden=encoder_hidden,
            decoder_hidden=decoder_hidden,
            aux_logits=self.attribute_logits(image_tokens),
        )

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) float32 and ids (B, T) int64 -> next-token logits (B, T, V)."""
        return self.forward_features(pixel_values, input_ids).logits

    # ---- export pieces: plain tensors in, tensors out ----
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 -> image embeds (B, N_img, dec_dim), the decoder's memory."""
        self._check_pixels(pixel_values)
        return self.projector(self.image_encoder(pixel_values)[0])

    def cross_kv(self, image_embeds: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, N_img, dec_dim) -> 2 * dec_layers tensors (B, nh, N_img, hs): k0, v0, k1, v1, ..."""
        out = []
        for block in self.decoder.blocks:
            out.extend(block.cross_attn.memory_kv(image_embeds))
        return tuple(out)

    def decode_first(
        self, input_ids: torch.Tensor, cross_kv: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Prompt ids (B, T) int64 and cross_kv -> logits (B, T, V) and the present self-attention
        cache: 2 * dec_layers tensors (B, nh, T, hs), ordered k0, v0, k1, v1, ..."""
        self._check_ids(input_ids)
        logits, present, _ = self.decoder(input_ids, cross_kv)
        return logits, present

    def decode_with_past(
        self, input_ids: torch.Tensor, past: tuple[torch.Tensor, ...], cross_kv: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """New ids (B, T) (usually T = 1) at positions P..P+T-1, the past cache (2 * dec_layers
        tensors (B, nh, P, hs)) and cross_kv -> logits (B, T, V) and present (B, nh, P+T, hs)."""
        self._check_ids(input_ids)
        logits, present, _ = self.decoder(input_ids, cross_kv, past)
        return logits, present

    @torch.no_grad()
    def generate(
        self, pixel_values: torch.Tensor, prompt_ids: torch.Tensor, max_new_tokens: int, eos_id: int = -1
    ) -> torch.Tensor:
        """Greedy decoding with the KV cache, for evaluation during training.

        pixel_values (B, 3, H, W), prompt_ids (B, T0) int64 (equal-length prompts; no padding
        mask) -> generated ids (B, <= max_new_tokens) int64; rows that emitted eos_id continue
        with eos_id until every row has (or max_new_tokens is reached).
        """
        cross = self.cross_kv(self.encode_image(pixel_values))
        logits, past = self.decode_first(prompt_ids, cross)
        done = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
        out = []
        for step in range(max_new_tokens):
            token = logits[:, -1].argmax(-1).masked_fill(done, max(eos_id, 0))  # (B,); done only if eos_id >= 0
            out.append(token)
            done |= token == eos_id
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            logits, past = self.decode_with_past(token[:, None], past, cross)
        return torch.stack(out, dim=1) if out else prompt_ids.new_zeros((prompt_ids.shape[0], 0))

    # ---- contrastive head ----
    def _pool_image(self, image_tokens: torch.Tensor) -> torch.Tensor:
        if self.image_pool_mlp is not None:
            image_tokens = self.image_pool_mlp(image_tokens)  # (B, G*G, image_pool_hidden)
        # Max pooling keeps each object's features whatever the background around it; a mean over
        # 64 cells dilutes a small object (a linear probe on a mean-pool student's frozen tokens
        # found a present label 53% of the time with mean pooling, 76% with max).
        pooled = image_tokens.amax(dim=1) if self.config.image_pool == "max" else image_tokens.mean(dim=1)
        return F.normalize(self.image_proj(pooled), dim=-1)  # (B, E)

    def embed_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 -> (B, embed_dim) L2-normalised: pooled tokens (config.image_pool) + Linear."""
        self._check_pixels(pixel_values)
        return self._pool_image(self.image_encoder(pixel_values)[0])

    def embed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """ids (B, T) int64 and attention_mask (B, T) (1 = token, 0 = padding) -> (B, embed_dim)
        L2-normalised. Bidirectional blocks over the shared embeddings, masked mean pool, Linear."""
        self._check_ids(input_ids)
        valid = attention_mask.bool()  # (B, T)
        if not is_exporting():
            if valid.shape != input_ids.shape or input_ids.shape[1] > self.config.max_text_len:
                raise InputError(
                    f"embed_text got ids {tuple(input_ids.shape)} and mask {tuple(valid.shape)}; both must be "
                    f"(B, T) with T <= {self.config.max_text_len}"
                )
            if not bool(valid.any(dim=1).all()):
                raise InputError("embed_text got a row whose attention_mask is all zeros; every text needs a token")
        x = self.decoder.embed(input_ids, 0)  # (B, T, Cd)
        for block in self.text_blocks:
            x = block(x, mask=valid[:, None, None, :])
        x = self.text_ln(x)
        weights = valid.to(x.dtype)[..., None]  # (B, T, 1)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1)  # (B, Cd)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def logit_scale_value(self) -> torch.Tensor:
        """exp(logit_scale), clamped to CLIP_MAX_LOGIT_SCALE (CLIP); a 0-dim tensor."""
        return self.logit_scale.clamp(max=math.log(CLIP_MAX_LOGIT_SCALE)).exp()

    def contrastive_logits(self, image_embedding: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        """(Bi, E) and (Bt, E) normalised -> (Bi, Bt) scaled cosine similarities (CLIP loss input)."""
        return self.logit_scale_value() * image_embedding @ text_embedding.t()

    # ---- auxiliary attribute head ----
    def attribute_logits(self, image_tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, G*G, Ce) -> one (B, G, G, classes_i) per entry of aux_attribute_classes; () if disabled.

        Cell (r, c) covers pixels [r*p, (r+1)*p) x [c*p, (c+1)*p), p = patch_size; it is trained on
        the attributes of the object whose centre falls in it (a "none" class for empty cells).
        """
        if self.aux_head is None:
            return ()
        g = self.config.grid_size
        logits = self.aux_head(image_tokens).reshape(-1, g, g, sum(self.config.aux_attribute_classes))
        return tuple(logits.split(list(self.config.aux_attribute_classes), dim=-1))
