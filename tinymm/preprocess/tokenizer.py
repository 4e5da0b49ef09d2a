"""The tokenizer seam: what a pipeline needs from a tokenizer, and the Hugging Face tokenizer.json one.

A bundle's ``TextConfig.kind`` says which file format its ``text.tokenizer`` is:

- ``"sentencepiece"``: a sentencepiece ``.model`` (``tinymm.preprocess.text.Tokenizer``, with prompt
  templates and batching; the vision-language and CTC speech bundles);
- ``"hf-tokenizers"``: a Hugging Face ``tokenizer.json`` read by the ``tokenizers`` wheel
  (``HFTokenizer``), such as Whisper's byte-level BPE with its special tokens as added tokens.

``open_tokenizer(path, config)`` picks the class; both satisfy the ``Tokenizer`` protocol, so
decoding pieces (logit filters that look up ids, detokenization) are written once against it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from tinymm.errors import BundleError, InputError, TinymmError
from tinymm.preprocess.config import TextConfig
from tinymm.preprocess.text import Tokenizer as SentencePieceTokenizer, check_token_ids

SENTENCEPIECE, HF_TOKENIZERS = "sentencepiece", "hf-tokenizers"  # the TextConfig.kind values
_CONTROL_IDS = ("bos_id", "eos_id", "pad_id", "unk_id")


@runtime_checkable
class Tokenizer(Protocol):
    """What the pipelines and decoders use of a tokenizer."""

    config: TextConfig  # special ids, context length, the tokenizer file

    @property
    def vocab_size(self) -> int:
        """Number of valid token ids (added and special tokens included)."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, with no special tokens and no truncation."""
        ...

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of token ids (a list or a 1-D integer array), special tokens skipped."""
        ...

    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary entry (piece, byte-level token or special token name) of one id."""
        ...

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry or special token name; None when there is none."""
        ...


def _load_tokenizers_file(path: Path) -> Any:
    try:
        import tokenizers
    except ImportError as e:
        raise TinymmError(f"this bundle's tokenizer.json needs the tokenizers wheel: pip install tokenizers ({e})") from e
    if not path.is_file():
        raise BundleError(f"tokenizer file {path} does not exist; the bundle is incomplete, re-export it")
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises plain Exceptions for malformed JSON or models
        raise BundleError(f"tokenizer file {path} is not a valid Hugging Face tokenizer.json ({e}); re-export the bundle") from e


class HFTokenizer:
    """A Hugging Face tokenizer.json (``tokenizers`` wheel) behind the Tokenizer protocol.

    ``encode`` adds no special tokens (a tokenizer.json's post-processor, such as Whisper's
    ``<|startoftranscript|> ... <|endoftext|>`` template, is not applied: the decoder builds its
    own start sequence from the bundle's ids). ``decode`` drops the tokenizer's special tokens,
    the config's control ids and every ``config.special_tokens`` id unless told to keep them.

    Raises BundleError when the file is missing or malformed, or when the config's ids do not
    match the file (an id past the vocabulary, a special token name with another id).
    """

    def __init__(self, path: Path, config: TextConfig) -> None:
        if config.kind != HF_TOKENIZERS:
            raise BundleError(f"HFTokenizer reads text.kind {HF_TOKENIZERS!r} tokenizers, got {config.kind!r}")
        self.path = Path(path)
        self.config = config
        self._tok = _load_tokenizers_file(self.path)
        self._vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        for name in _CONTROL_IDS:
            token_id = getattr(config, name)
            if token_id >= self._vocab_size:
                raise BundleError(
                    f"text.{name}={token_id} is outside the vocabulary of {self.path} ({self._vocab_size} tokens); "
                    "the bundle's config and tokenizer do not match"
                )
        for name, token_id in config.special_tokens.items():
            found = self._tok.token_to_id(name)
            if token_id >= self._vocab_size or (found is not None and found != token_id):
                raise BundleError(
                    f"text.special_tokens[{name!r}]={token_id} but {self.path} gives {name!r} the id {found} "
                    f"(vocabulary of {self._vocab_size}); the bundle's config and tokenizer do not match, re-export it"
                )
        control = {getattr(config, name) for name in ("bos_id", "eos_id", "pad_id")} - {-1}
        self._skipped_on_decode = frozenset(control | set(config.special_tokens.values()))

    @property
    def vocab_size(self) -> int:
        """Number of valid token ids: the model's vocabulary plus the added tokens."""
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (byte-level BPE for Whisper), with no special tokens."""
        if not isinstance(text, str):
            raise InputError(f"text must be a str, got {type(text).__name__} {text!r:.60}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate: the tokenizers library would raise a TypeError
            raise InputError(f"text {text!r:.60} holds a character that is not valid Unicode ({e.reason} at "
                             f"position {e.start}); decode the input as UTF-8 first") from e
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int] | np.ndarray, *, skip_special_tokens: bool = True) -> str:
        """Text of token ids (a list or a 1-D integer array).

        skip_special_tokens: drop the tokenizer's special tokens, the config's bos/eos/pad and its
        ``special_tokens`` ids (True), or render them as their names (False).
        """
        values = check_token_ids(ids, self._vocab_size, "ids")
        if skip_special_tokens:
            values = [i for i in values if i not in self._skipped_on_decode]
        return self._tok.decode(values, skip_special_tokens=skip_special_tokens)

    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary entry of one id (a byte-level token such as "Ġhello", or "<|en|>")."""
        (value,) = check_token_ids([token_id], self._vocab_size, "token_id")
        piece = self._tok.id_to_token(value)
        if piece is None:  # a gap in a sparse vocabulary
            raise InputError(f"token id {value} has no entry in {self.path}")
        return piece

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry or added token (e.g. "<|endoftext|>"); None when there is none."""
        found = self._tok.token_to_id(token)
        return None if found is None else int(found)


def open_tokenizer(path: Path | str, config: TextConfig) -> Tokenizer:
    """The tokenizer of ``config.kind`` over the file at ``path`` (a bundle's text.tokenizer).

    Raises:
        BundleError: the file is missing or malformed, or does not match the config.
        TinymmError: the kind's package (sentencepiece or tokenizers) is not installed.
    """
    if config.kind == HF_TOKENIZERS:
        return HFTokenizer(Path(path), config)
    return SentencePieceTokenizer(Path(path), config)
