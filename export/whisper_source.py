"""A Whisper checkpoint on disk -> a float32 torch model and the facts its bundle needs.

Two kinds of source directory are recognized (nothing is ever downloaded):

- CTranslate2 (faster-whisper): ``model.bin`` + ``config.json`` (suppress_ids,
  suppress_ids_begin, lang_ids, alignment_heads) + ``tokenizer.json``; the weights are read by
  export/ctranslate2_whisper.py and loaded into transformers' WhisperForConditionalGeneration;
- Hugging Face: ``config.json`` with ``model_type: whisper`` + ``model.safetensors`` or
  ``pytorch_model.bin`` + ``tokenizer.json`` (+ ``generation_config.json``), loaded with
  ``from_pretrained(..., local_files_only=True)``.

    source = load_whisper_source(Path("whisper-base-ct2"))
    source.model          # WhisperForConditionalGeneration, float32, eval mode
    source.tokens.sot     # 50258
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tinymm.errors import InputError
from tinymm.hashing import sha256_file

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
CT2_WEIGHTS = "model.bin"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
KIND_CT2, KIND_HF = "ctranslate2", "huggingface"
NO_SPEECH_TOKENS = ("<|nospeech|>", "<|nocaptions|>")  # newer tokenizers, then older checkpoints (whisper-base)
FIRST_TIMESTAMP = "<|0.00|>"
LANGUAGE_TOKEN = re.compile(r"^<\|([a-z]{2,3}|haw|yue)\|>$")
# openai/whisper tokenizer.non_speech_tokens: what a -1 in suppress_tokens stands for.
NON_SPEECH_SYMBOLS = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』') + \
    "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
MUSIC_SYMBOLS = "♩♪♫♬♭♮♯"


class WhisperSourceError(InputError):
    """A directory that is not a Whisper checkpoint this exporter can read."""

    kind = "whisper_source_error"


@dataclass(frozen=True)
class WhisperTokens:
    """The special token ids of a Whisper tokenizer, and the decoding lists of its checkpoint."""

    sot: int  # <|startoftranscript|>
    eot: int  # <|endoftext|>
    transcribe: int
    translate: int
    no_timestamps: int
    no_speech: int
    no_speech_text: str  # "<|nospeech|>" or "<|nocaptions|>"
    sot_prev: int
    sot_lm: int
    timestamp_begin: int  # <|0.00|>
    languages: Mapping[str, int]  # "en" -> 50259; empty for English-only checkpoints
    suppress_tokens: tuple[int, ...]  # suppressed at every step (-1 already expanded)
    begin_suppress_tokens: tuple[int, ...]  # suppressed at the first generated token
    alignment_heads: tuple[tuple[int, int], ...] = ()

    @property
    def multilingual(self) -> bool:
        return bool(self.languages)

    def special_tokens(self) -> dict[str, int]:
        """Text -> id of the special tokens the runtime's TextConfig lists."""
        return {"<|startoftranscript|>": self.sot, "<|endoftext|>": self.eot, "<|transcribe|>": self.transcribe,
                "<|translate|>": self.translate, "<|notimestamps|>": self.no_timestamps,
                self.no_speech_text: self.no_speech, "<|startofprev|>": self.sot_prev, "<|startoflm|>": self.sot_lm}

    def prompt(self, language: str | None = "en", task: str = "transcribe") -> tuple[int, ...]:
        """The sot sequence: sot, language (multilingual only), task, no-timestamps."""
        ids = [self.sot]
        if self.multilingual and language is not None:
            if language not in self.languages:
                raise InputError(f"language {language!r} is not one of this checkpoint's {sorted(self.languages)}")
            ids.append(self.languages[language])
        ids += [self.translate if task == "translate" else self.transcribe, self.no_timestamps]
        return tuple(ids)


@dataclass(frozen=True, eq=False)
class WhisperSource:
    """A loaded Whisper checkpoint."""

    directory: Path
    kind: str  # KIND_CT2 | KIND_HF
    model: Any = field(repr=False)  # transformers WhisperForConditionalGeneration, float32, eval mode
    tokenizer_path: Path  # the checkpoint's tokenizer.json
    tokens: WhisperTokens
    weights_path: Path  # model.bin or model.safetensors: the file whose sha256 is recorded
    weights_sha256: str
    source_dtype: str  # dtype of the stored weights (CTranslate2's whisper-base: float16)


def source_kind(directory: Path) -> str | None:
    """KIND_CT2 or KIND_HF when ``directory`` looks like that kind of Whisper checkpoint, else None."""
    directory = Path(directory)
    if (directory / CT2_WEIGHTS).is_file() and (directory / CONFIG_FILE).is_file():
        return KIND_CT2
    config = directory / CONFIG_FILE
    if config.is_file() and any((directory / w).is_file() for w in HF_WEIGHTS):
        try:
            if json.loads(config.read_text(encoding="utf-8")).get("model_type") == "whisper":
                return KIND_HF
        except (OSError, json.JSONDecodeError, AttributeError):
            return None
    return None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise WhisperSourceError(f"{path} is not readable JSON ({e}); restore it from the checkpoint") from e
    if not isinstance(data, dict):
        raise WhisperSourceError(f"{path} must hold a JSON object")
    return data


def non_speech_tokens(tokenizer: Any) -> list[int]:
    """openai/whisper's non-speech symbols as ids of ``tokenizer`` (a tokenizers.Tokenizer)."""
    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    result = {ids[0] for ids in (encode(" -"), encode(" '")) if ids}
    for symbol in NON_SPEECH_SYMBOLS + list(MUSIC_SYMBOLS):
        for ids in (encode(symbol), encode(" " + symbol)):
            if ids and (len(ids) == 1 or symbol in MUSIC_SYMBOLS):
                result.add(ids[0])
    return sorted(result)


def _token(tokenizer: Any, text: str, path: Path) -> int:
    token_id = tokenizer.token_to_id(text)
    if token_id is None:
        raise WhisperSourceError(f"tokenizer {path} has no {text} token; give the checkpoint's own Whisper tokenizer.json")
    return int(token_id)


def read_tokens(tokenizer_path: Path, settings: Mapping[str, Any]) -> WhisperTokens:
    """The special ids from ``tokenizer_path`` and the decoding lists from ``settings``.

    ``settings`` keys (CTranslate2 config.json names, or generation_config.json's): suppress_ids |
    suppress_tokens, suppress_ids_begin | begin_suppress_tokens, lang_ids | lang_to_id,
    alignment_heads.
    """
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    except Exception as e:  # tokenizers raises its own Exception type for bad files
        raise WhisperSourceError(f"cannot read tokenizer {tokenizer_path}: {e}") from e
    no_speech_text = next((t for t in NO_SPEECH_TOKENS if tokenizer.token_to_id(t) is not None), None)
    if no_speech_text is None:
        raise WhisperSourceError(f"tokenizer {tokenizer_path} has neither of {NO_SPEECH_TOKENS}: not a Whisper tokenizer")
    ids = {name: _token(tokenizer, text, tokenizer_path) for name, text in (
        ("sot", "<|startoftranscript|>"), ("eot", "<|endoftext|>"), ("transcribe", "<|transcribe|>"),
        ("translate", "<|translate|>"), ("no_timestamps", "<|notimestamps|>"), ("sot_prev", "<|startofprev|>"),
        ("sot_lm", "<|startoflm|>"))}
    timestamp = tokenizer.token_to_id(FIRST_TIMESTAMP)
    if isinstance(settings.get("lang_to_id"), Mapping):
        lang_ids = [int(v) for v in settings["lang_to_id"].values()]
    else:
        lang_ids = [int(v) for v in settings.get("lang_ids") or []]
    languages = {}
    for token_id in sorted(lang_ids):
        match = LANGUAGE_TOKEN.match(tokenizer.id_to_token(token_id) or "")
        if match:
            languages[match.group(1)] = token_id
    suppress = [int(t) for t in settings.get("suppress_ids", settings.get("suppress_tokens")) or []]
    if -1 in suppress:
        suppress = sorted({t for t in suppress if t >= 0} | set(non_speech_tokens(tokenizer)))
    begin = settings.get("suppress_ids_begin", settings.get("begin_suppress_tokens"))
    heads = settings.get("alignment_heads") or []
    return WhisperTokens(
        **ids, no_speech=_token(tokenizer, no_speech_text, tokenizer_path), no_speech_text=no_speech_text,
        timestamp_begin=int(timestamp) if timestamp is not None else ids["no_timestamps"] + 1,
        languages=languages, suppress_tokens=tuple(suppress),
        begin_suppress_tokens=tuple(int(t) for t in (begin if begin is not None else [220, ids["eot"]])),
        alignment_heads=tuple((int(layer), int(head)) for layer, head in heads),
    )


def _hf_model_from_ct2(directory: Path, tokens: WhisperTokens) -> tuple[Any, str]:
    """(WhisperForConditionalGeneration float32, stored dtype) from a CTranslate2 model.bin."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from export.ctranslate2_whisper import hf_state_dict, read_model_bin, whisper_dims

    ct2 = read_model_bin(directory / CT2_WEIGHTS)
    dims = whisper_dims(ct2)
    stored = ct2.get("decoder/embeddings/weight").dtype.name
    config = WhisperConfig(
        vocab_size=dims.vocab_size, num_mel_bins=dims.n_mels, d_model=dims.d_model,
        encoder_layers=dims.encoder_layers, decoder_layers=dims.decoder_layers,
        encoder_attention_heads=dims.encoder_heads, decoder_attention_heads=dims.decoder_heads,
        encoder_ffn_dim=dims.encoder_ffn, decoder_ffn_dim=dims.decoder_ffn,
        max_source_positions=dims.max_source_positions, max_target_positions=dims.max_target_positions,
        decoder_start_token_id=tokens.sot, eos_token_id=tokens.eot, pad_token_id=tokens.eot,
        bos_token_id=tokens.eot, activation_function="gelu", tie_word_embeddings=True,
        begin_suppress_tokens=list(tokens.begin_suppress_tokens), suppress_tokens=list(tokens.suppress_tokens),
    )
    model = WhisperForConditionalGeneration(config)
    state = {name: torch.from_numpy(value) for name, value in hf_state_dict(ct2, dims).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WhisperSourceError(f"{directory / CT2_WEIGHTS}: the mapped weights do not fit transformers' Whisper "
                                 f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.float().eval(), stored


def _hf_model(directory: Path) -> tuple[Any, str]:
    from transformers import WhisperForConditionalGeneration

    try:
        model = WhisperForConditionalGeneration.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as e:
        raise WhisperSourceError(f"transformers cannot load the Whisper checkpoint in {directory}: {e}") from e
    stored = str(next(model.parameters()).dtype).replace("torch.", "")
    return model.float().eval(), stored


def load_whisper_source(directory: Path) -> WhisperSource:
    """Load the Whisper checkpoint in ``directory`` (CTranslate2 or Hugging Face, see the module docstring)."""
    directory = Path(directory)
    kind = source_kind(directory)
    if kind is None:
        raise WhisperSourceError(
            f"{directory} is not a Whisper checkpoint: expected {CT2_WEIGHTS} + {CONFIG_FILE} (CTranslate2) or "
            f"{CONFIG_FILE} with model_type 'whisper' + one of {HF_WEIGHTS} (Hugging Face)")
    tokenizer_path = directory / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise WhisperSourceError(f"{directory} has no {TOKENIZER_FILE}; copy the checkpoint's Whisper tokenizer.json next "
                                 "to its weights (transformers' WhisperTokenizerFast.save_pretrained writes one)")
    if kind == KIND_CT2:
        tokens = read_tokens(tokenizer_path, _read_json(directory / CONFIG_FILE))
        model, stored = _hf_model_from_ct2(directory, tokens)
        weights = directory / CT2_WEIGHTS
    else:
        settings = {**_read_json(directory / CONFIG_FILE), **_read_json(directory / GENERATION_CONFIG_FILE)}
        tokens = read_tokens(tokenizer_path, settings)
        model, stored = _hf_model(directory)
        weights = next(directory / w for w in HF_WEIGHTS if (directory / w).is_file())
    if model.config.vocab_size <= tokens.timestamp_begin - 1:
        raise WhisperSourceError(f"the model's vocabulary ({model.config.vocab_size}) does not hold the tokenizer's "
                                 f"special tokens (up to {tokens.timestamp_begin}); the tokenizer is not this model's")
    logger.info("loaded %s Whisper from %s (%s weights)", kind, directory, stored)
    return WhisperSource(directory, kind, model, tokenizer_path, tokens, weights, sha256_file(weights), stored)
