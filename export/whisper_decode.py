"""Greedy Whisper decoding for the export's checks: onnxruntime with the KV cache, torch without.

Both loops apply the same logit filters as openai/whisper and CTranslate2 do without timestamps:
the checkpoint's ``suppress_tokens`` at every step and ``begin_suppress_tokens`` at the first
generated token; a row stops at ``eot``. The export uses them for the KV-cache-vs-no-cache
parity check and the int8 accuracy gate (int8 vs fp32 transcripts, word error rate).

    options = GreedyOptions.from_tokens(source.tokens)
    ids = ort_greedy(sessions, features, options)          # [[token, ...], ...] per clip, eot excluded
    text = decode_text(tokenizer, ids[0])
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from export.onnx_common import kv_names
from tinymm.errors import InputError

DEFAULT_MAX_NEW_TOKENS = 96  # enough for a 30 s window of speech, far below the 448-token cache
_WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class GreedyOptions:
    """What a greedy decode starts from and which tokens it may not produce."""

    prompt: tuple[int, ...]  # the sot sequence, e.g. (sot, <|en|>, <|transcribe|>, <|notimestamps|>)
    eot: int
    suppress_tokens: tuple[int, ...] = ()  # never generated
    begin_suppress_tokens: tuple[int, ...] = ()  # not generated as the first token
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS

    def __post_init__(self) -> None:
        if not self.prompt:
            raise ValueError("GreedyOptions.prompt is empty; give the sot sequence")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"GreedyOptions.max_new_tokens={self.max_new_tokens!r} must be a positive integer")

    @classmethod
    def from_tokens(cls, tokens: Any, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                    language: str | None = "en") -> "GreedyOptions":
        """From a whisper_source.WhisperTokens: English transcription without timestamps."""
        return cls(tuple(tokens.prompt(language)), tokens.eot, tuple(tokens.suppress_tokens),
                   tuple(tokens.begin_suppress_tokens), max_new_tokens)


def suppressed(logits: np.ndarray, step: int, options: GreedyOptions) -> np.ndarray:
    """(B, V) logits of one step with the suppressed tokens at -inf."""
    logits = np.array(logits, dtype=np.float32, copy=True)
    vocab = logits.shape[-1]
    for ids in (options.suppress_tokens, options.begin_suppress_tokens if step == 0 else ()):
        kept = [i for i in ids if 0 <= i < vocab]
        logits[:, kept] = -np.inf
    return logits


def _finish(tokens: np.ndarray, eot: int) -> list[list[int]]:
    """(B, steps) -> per row the tokens before the first eot."""
    out = []
    for row in tokens.tolist():
        out.append(row[: row.index(eot)] if eot in row else row)
    return out


def ort_greedy(sessions: Mapping[str, Any], features: np.ndarray, options: GreedyOptions) -> list[list[int]]:
    """Greedy decoding in the exported graphs, with the KV cache.

    sessions: "encoder", "decoder_first", "decoder_with_past" -> objects with ``run(feeds) -> dict``
        (tinymm backend sessions, see export.parity.load_session).
    features: (B, n_mels, frames) float32 log-mels.
    Returns the generated ids per clip (prompt and eot excluded).
    """
    first = sessions["decoder_first"]
    num_layers = sum(spec.name.startswith("present.") for spec in first.outputs) // 2
    states = sessions["encoder"].run({"input_features": np.ascontiguousarray(features, dtype=np.float32)})
    batch = features.shape[0]
    prompt = np.tile(np.asarray(options.prompt, dtype=np.int64), (batch, 1))
    out = first.run({"input_ids": prompt, "encoder_hidden_states": states["encoder_hidden_states"]})
    cross = {name: out[name] for name in kv_names("cross", num_layers)}
    tokens, done = [], np.zeros(batch, dtype=bool)
    for step in range(options.max_new_tokens):
        token = suppressed(out["logits"][:, -1], step, options).argmax(-1).astype(np.int64)  # (B,)
        token[done] = options.eot
        tokens.append(token)
        done |= token == options.eot
        if done.all() or step == options.max_new_tokens - 1:
            break
        past = {p: out[q] for p, q in zip(kv_names("past_key_values", num_layers), kv_names("present", num_layers))}
        out = sessions["decoder_with_past"].run({"input_ids": token[:, None], **past, **cross})
    return _finish(np.stack(tokens, axis=1), options.eot)


def torch_greedy(model: Any, features: np.ndarray, options: GreedyOptions) -> list[list[int]]:
    """Greedy decoding with transformers' WhisperForConditionalGeneration and no cache: the whole
    sequence goes through the decoder at every step. Same arguments and result as ``ort_greedy``."""
    import torch

    with torch.no_grad():
        states = model.model.encoder(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)))[0]
        batch = features.shape[0]
        ids = torch.tensor([list(options.prompt)] * batch, dtype=torch.int64)
        tokens, done = [], np.zeros(batch, dtype=bool)
        for step in range(options.max_new_tokens):
            hidden = model.model.decoder(input_ids=ids, encoder_hidden_states=states, use_cache=False)[0]
            logits = model.proj_out(hidden[:, -1]).numpy()
            token = suppressed(logits, step, options).argmax(-1).astype(np.int64)
            token[done] = options.eot
            tokens.append(token)
            done |= token == options.eot
            if done.all():
                break
            ids = torch.cat([ids, torch.from_numpy(token)[:, None]], dim=1)
    return _finish(np.stack(tokens, axis=1), options.eot)


def load_text_tokenizer(path: Path) -> Any:
    """A tokenizers.Tokenizer from a tokenizer.json."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def decode_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """Generated ids -> text, special tokens dropped, outer whitespace stripped."""
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def normalize_words(text: str) -> list[str]:
    """Lowercase words without punctuation, for a word error rate that ignores casing and commas."""
    return _WORD.findall(text.lower())


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Word error rate in points (100 x edits / reference words) over normalized words."""
    from train.metrics_speech import edit_distance

    if len(references) != len(hypotheses):
        raise InputError(f"{len(references)} references but {len(hypotheses)} hypotheses; give one per clip")
    edits = words = 0
    for reference, hypothesis in zip(references, hypotheses):
        ref = normalize_words(reference)
        edits += edit_distance(ref, normalize_words(hypothesis))
        words += len(ref)
    return 100.0 * edits / max(words, 1)
