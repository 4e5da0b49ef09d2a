"""Tiny random Whisper checkpoints for the export tests, built here: nothing is downloaded.

The tokenizer is tiny_whisper.build_whisper_tokenizer's (byte-level BPE, Whisper's special
tokens and timestamps).

- ``tiny_model(vocab)``: transformers' WhisperForConditionalGeneration with tiny sizes;
- ``save_hf_dir(dir)``: a Hugging Face checkpoint directory (config.json, model.safetensors,
  generation_config.json, tokenizer.json);
- ``write_ct2_dir(dir)``: a CTranslate2 directory (model.bin written by ``write_model_bin``,
  which mirrors ctranslate2.specs.model_spec._serialize, config.json, tokenizer.json,
  vocabulary.json).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tiny_whisper import WhisperVocab, build_whisper_tokenizer

MEL_BANDS = 80  # the real clips' features feed the tiny models too
DTYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}  # CTranslate2's DataType order


def tiny_model(vocab: WhisperVocab, seed: int = 0, **overrides: Any) -> Any:
    """A random WhisperForConditionalGeneration with tiny sizes, float32, eval mode."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    eot, sot = vocab.eot, vocab.sot
    settings = dict(vocab_size=vocab.vocab_size, num_mel_bins=MEL_BANDS, d_model=32, encoder_layers=2, decoder_layers=2,
                    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                    max_source_positions=40, max_target_positions=24, pad_token_id=eot, bos_token_id=eot,
                    eos_token_id=eot, decoder_start_token_id=sot, begin_suppress_tokens=[eot], suppress_tokens=[])
    settings.update(overrides)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(WhisperConfig(**settings)).eval()
    with torch.no_grad():  # non-trivial norms and biases, so that a mix-up of them shows
        for name, param in model.named_parameters():
            if "layer_norm" in name or name.endswith(".bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model


def checkpoint_settings(vocab: WhisperVocab) -> dict[str, Any]:
    """The decoding lists of the tiny checkpoints, under CTranslate2's config.json names."""
    return {"lang_ids": sorted(vocab.languages.values()), "suppress_ids": [vocab.sot_lm, vocab.sot_prev],
            "suppress_ids_begin": [220 % vocab.vocab_size, vocab.eot], "alignment_heads": [[1, 0], [1, 2]]}


def save_hf_dir(directory: Path, seed: int = 0) -> Any:
    """A Hugging Face Whisper directory with a tiny random model; returns the model."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = build_whisper_tokenizer(directory / "tokenizer.json")
    model = tiny_model(vocab, seed)
    model.save_pretrained(str(directory))
    settings = checkpoint_settings(vocab)
    generation = json.loads((directory / "generation_config.json").read_text())
    generation.update(suppress_tokens=settings["suppress_ids"], begin_suppress_tokens=settings["suppress_ids_begin"],
                      alignment_heads=settings["alignment_heads"],
                      lang_to_id={f"<|{code}|>": token for code, token in vocab.languages.items()})
    (directory / "generation_config.json").write_text(json.dumps(generation))
    return model


def ct2_variables(model: Any) -> dict[str, np.ndarray]:
    """The CTranslate2 WhisperSpec variables of a transformers Whisper (the converter's fusions)."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    cfg = model.config
    # The scalars CTranslate2 4.8's converter writes for whisper-base (a missing flag takes the
    # spec's default, e.g. scale_embeddings=True, which Whisper does not do).
    out: dict[str, np.ndarray] = {"encoder/num_heads": np.array(cfg.encoder_attention_heads, np.int16),
                                  "decoder/num_heads": np.array(cfg.decoder_attention_heads, np.int16),
                                  "decoder/pre_norm": np.array(1, np.int8), "decoder/activation": np.array(3, np.int8),
                                  "decoder/alibi": np.array(0, np.int8),
                                  "decoder/alibi_use_positive_positions": np.array(0, np.int8),
                                  "decoder/scale_alibi": np.array(0, np.int8),
                                  "decoder/scale_embeddings": np.array(0, np.int8),
                                  "decoder/start_from_zero_embedding": np.array(0, np.int8),
                                  "decoder/alignment_heads": np.array(1, np.int16),
                                  "decoder/alignment_layer": np.array(-1, np.int16)}

    def linear(ct2: str, hf_parts: list[str]) -> None:
        out[f"{ct2}/weight"] = np.concatenate([sd[f"{p}.weight"] for p in hf_parts])
        out[f"{ct2}/bias"] = np.concatenate([sd.get(f"{p}.bias", np.zeros(sd[f"{p}.weight"].shape[0], np.float32))
                                             for p in hf_parts])

    def norm(ct2: str, hf: str) -> None:
        out[f"{ct2}/gamma"], out[f"{ct2}/beta"] = sd[f"{hf}.weight"], sd[f"{hf}.bias"]

    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", [f"model.encoder.{conv}"])
    for stack, count in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        out[f"{stack}/position_encodings/encodings"] = sd[f"model.{stack}.embed_positions.weight"]
        norm(f"{stack}/layer_norm", f"model.{stack}.layer_norm")
        for i in range(count):
            ct2, hf = f"{stack}/layer_{i}", f"model.{stack}.layers.{i}"
            linear(f"{ct2}/self_attention/linear_0", [f"{hf}.self_attn.{p}_proj" for p in "qkv"])
            linear(f"{ct2}/self_attention/linear_1", [f"{hf}.self_attn.out_proj"])
            norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
            if stack == "decoder":
                linear(f"{ct2}/attention/linear_0", [f"{hf}.encoder_attn.q_proj"])
                linear(f"{ct2}/attention/linear_1", [f"{hf}.encoder_attn.k_proj", f"{hf}.encoder_attn.v_proj"])
                linear(f"{ct2}/attention/linear_2", [f"{hf}.encoder_attn.out_proj"])
                norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
            linear(f"{ct2}/ffn/linear_0", [f"{hf}.fc1"])
            linear(f"{ct2}/ffn/linear_1", [f"{hf}.fc2"])
            norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")
    out["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    return out


def write_model_bin(path: Path, variables: Mapping[str, np.ndarray], aliases: Mapping[str, str],
                    dtype: str = "float16", spec: str = "WhisperSpec", revision: int = 3) -> None:
    """A model.bin as CTranslate2 4.x writes it (binary version 6), float weights stored as ``dtype``."""
    def string(text: str) -> bytes:
        raw = text.encode("utf-8") + b"\0"
        return struct.pack("<H", len(raw)) + raw

    chunks = [struct.pack("<I", 6), string(spec), struct.pack("<I", revision), struct.pack("<I", len(variables))]
    for name, value in sorted(variables.items()):
        if value.dtype.kind == "f":
            value = value.astype(dtype)
        chunks += [string(name), struct.pack("<B", value.ndim), *(struct.pack("<I", d) for d in value.shape),
                   struct.pack("<B", DTYPE_IDS[value.dtype.name]), struct.pack("<I", value.nbytes), value.tobytes()]
    chunks.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        chunks += [string(alias), string(target)]
    path.write_bytes(b"".join(chunks))


def write_ct2_dir(directory: Path, seed: int = 0, dtype: str = "float16") -> Any:
    """A CTranslate2 Whisper directory of a tiny random model; returns the transformers model it came from
    (with its weights rounded to ``dtype``, as the directory stores them)."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    vocab = build_whisper_tokenizer(directory / "tokenizer.json")
    model = tiny_model(vocab, seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.to(getattr(torch, dtype)).float())
    write_model_bin(directory / "model.bin", ct2_variables(model),
                    {"decoder/projection/weight": "decoder/embeddings/weight"}, dtype)
    (directory / "config.json").write_text(json.dumps(checkpoint_settings(vocab)))
    from tokenizers import Tokenizer

    tokens = sorted(Tokenizer.from_file(str(directory / "tokenizer.json")).get_vocab().items(), key=lambda t: t[1])
    (directory / "vocabulary.json").write_text(json.dumps([token for token, _ in tokens]))
    return model
