"""Text preprocessing: sentencepiece tokens, prompt templates, truncation and batching.

`Tokenizer` wraps a bundle's sentencepiece model and its `TextConfig` (special ids, prompt
templates, context length). train/, export/ and the runtime all encode prompts through it, so the
token sequences a model was trained on are the ones it is served.

A prompt template such as "<image> question: {question} answer:" is encoded as one string per
run of text between special tokens, so that the tokens match encoding the filled-in text in one
go; the names of `TextConfig.special_tokens` written in a template become their ids. Text given
in the fields is never scanned for special token names. When a prompt is too long, characters
are cut from the end of the fields (the longest first), never from the template's own text.

Text is normalised by the sentencepiece model itself (NFKC for models trained with the default
rule), so decoding returns the normalised form of the input.
"""

from __future__ import annotations

import re
import string
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tinymm.errors import BundleError, InputError, TinymmError
from tinymm.preprocess.config import TextConfig

# Keyword of `encode_prompt` that a template placeholder may not use.
RESERVED_FIELDS = ("max_new_tokens",)


class TruncationWarning(UserWarning):
    """Text was cut to fit the model's context length."""


@dataclass(frozen=True)
class _Field:
    name: str  # placeholder name, filled from encode_prompt(**fields)


# A template segment: a special token id, or a run of literal text and placeholders.
_Segment = int | tuple[str | _Field, ...]


@dataclass(frozen=True)
class PromptTemplate:
    """A parsed prompt template: segments to encode, and the placeholders it needs."""

    task: str
    segments: tuple[_Segment, ...]
    placeholders: tuple[str, ...]  # in order of first appearance


def parse_template(task: str, template: str, special_tokens: Mapping[str, int]) -> PromptTemplate:
    """Split `template` into text runs and special token ids. ValueError when it is malformed."""
    names = sorted(special_tokens, key=len, reverse=True)  # longest first, so "<im>" loses to "<image>"
    special_re = re.compile("(" + "|".join(re.escape(n) for n in names) + ")") if names else None
    segments: list[_Segment] = []
    run: list[str | _Field] = []
    placeholders: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"prompt template {task!r} = {template!r} is malformed: {e}") from e
    for literal, field_name, format_spec, conversion in parsed:
        pieces = special_re.split(literal) if special_re else [literal]
        for index, piece in enumerate(pieces):
            if index % 2 == 1:  # a special token name captured by the split
                if run:
                    segments.append(tuple(run))
                    run = []
                segments.append(special_tokens[piece])
            elif piece:
                run.append(piece)
        if field_name is None:
            continue
        if not field_name.isidentifier() or format_spec or conversion:
            raise ValueError(
                f"prompt template {task!r} = {template!r}: placeholder {{{field_name}}} must be a plain name "
                f"such as {{question}} (no positions, attributes, indexes, conversions or format specs)"
            )
        if field_name in RESERVED_FIELDS:
            raise ValueError(f"prompt template {task!r}: placeholder name {field_name!r} is reserved")
        run.append(_Field(field_name))
        if field_name not in placeholders:
            placeholders.append(field_name)
    if run:
        segments.append(tuple(run))
    return PromptTemplate(task=task, segments=tuple(segments), placeholders=tuple(placeholders))


def _check_text(value: Any, what: str) -> str:
    """`value` if it is valid Unicode text, else InputError naming `what`."""
    if not isinstance(value, str):
        raise InputError(f"{what} must be a str, got {type(value).__name__} {value!r:.60}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"{what} contains an unpaired surrogate {value[e.start]!r} at index {e.start}, which is not "
            f"valid Unicode; decode the source bytes with errors='replace' first"
        ) from e
    return value


def check_token_ids(ids: Any, vocab_size: int, what: str) -> list[int]:
    """``ids`` (a sequence of ints or a 1-D integer array) as a list of ints in [0, vocab_size),
    else InputError naming ``what``; both tokenizers (this module's and tokenizer.HFTokenizer) check ids with it."""
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise InputError(f"{what} must be a 1-D integer array, got {ids.dtype} with shape {ids.shape}")
        values = ids.tolist()
    elif isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise InputError(f"{what} must be a sequence of token ids, got {type(ids).__name__}")
    else:
        bad = [v for v in ids if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
        if bad:
            raise InputError(f"{what} must hold integer token ids, got {bad[:3]!r}")
        values = [int(v) for v in ids]
    outside = [v for v in values if not 0 <= v < vocab_size]
    if outside:
        raise InputError(f"{what} has token id(s) {outside[:5]} outside the vocabulary [0, {vocab_size})")
    return values


def _prefix(text: str, length: int) -> str:
    """The first `length` characters of text, shortened so as not to split off a combining mark."""
    while 0 < length < len(text) and unicodedata.combining(text[length]):
        length -= 1
    return text[:length]


def _load_sentencepiece(path: Path) -> Any:
    try:
        import sentencepiece
    except ImportError as e:
        raise TinymmError(f"text preprocessing needs sentencepiece: pip install sentencepiece ({e})") from e
    if not path.is_file():
        raise BundleError(f"tokenizer model {path} does not exist; the bundle is incomplete, re-export it")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BundleError(f"cannot read tokenizer model {path}: {e}") from e
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(data)
    except (RuntimeError, ValueError, OSError) as e:
        raise BundleError(
            f"tokenizer model {path} is not a valid sentencepiece model ({e}); re-export the bundle"
        ) from e
    if processor.get_piece_size() <= 0:
        raise BundleError(f"tokenizer model {path} has an empty vocabulary; re-export the bundle")
    try:  # a damaged model can load with pieces that are not UTF-8, and fail later in decode()
        processor.id_to_piece(list(range(processor.get_piece_size())))
    except UnicodeDecodeError as e:
        raise BundleError(f"tokenizer model {path} has pieces that are not UTF-8 ({e}); it is damaged: re-export it") from e
    return processor


class Tokenizer:
    """Token ids for text and prompts, from a sentencepiece model and the bundle's TextConfig.

    Raises BundleError when the model file is missing or corrupt, or when the config does not fit
    the model (ids out of range, malformed templates).
    """

    def __init__(self, model_path: Path, config: TextConfig) -> None:
        self.model_path = Path(model_path)
        self.config = config
        self._sp = _load_sentencepiece(self.model_path)
        self._piece_count = self._sp.get_piece_size()
        for name in ("bos_id", "eos_id", "pad_id", "unk_id"):
            token_id = getattr(config, name)
            if token_id >= self._piece_count:
                raise BundleError(
                    f"text.{name}={token_id} is outside the vocabulary of {self.model_path} "
                    f"({self._piece_count} pieces); the bundle's config and tokenizer do not match"
                )
        self._special_names = {token_id: name for name, token_id in config.special_tokens.items()}
        # Special tokens may extend the vocabulary past the sentencepiece pieces (extra embedding rows).
        self._vocab_size = max([self._piece_count, *(i + 1 for i in self._special_names)])
        control = {config.bos_id, config.eos_id, config.pad_id} - {-1}
        self._skipped_on_decode = frozenset(control | set(self._special_names))
        try:
            self._templates = {
                task: parse_template(task, template, config.special_tokens)
                for task, template in config.prompt_templates.items()
            }
        except ValueError as e:
            raise BundleError(f"text config for tokenizer {self.model_path}: {e}") from e

    @property
    def vocab_size(self) -> int:
        """Number of valid token ids: the sentencepiece pieces plus special tokens past them."""
        return self._vocab_size

    @property
    def tasks(self) -> tuple[str, ...]:
        """Tasks that have a prompt template."""
        return tuple(self._templates)

    def placeholders(self, task: str) -> tuple[str, ...]:
        """The field names `encode_prompt(task, ...)` needs."""
        return self._template(task).placeholders

    def id_to_piece(self, token_id: int) -> str:
        """The piece (or special token name) of one token id."""
        (token_id,) = check_token_ids([token_id], self._vocab_size, "token_id")
        if token_id in self._special_names:
            return self._special_names[token_id]
        return self._sp.id_to_piece(token_id)

    def token_to_id(self, token: str) -> int | None:
        """The id of a special token name or a sentencepiece piece; None when there is none."""
        if token in self.config.special_tokens:
            return self.config.special_tokens[token]
        token_id = self._sp.piece_to_id(token) if isinstance(token, str) else -1
        unknown = token_id == self._sp.unk_id() and token != self._sp.id_to_piece(token_id)
        return None if token_id < 0 or unknown else int(token_id)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with no bos/eos and no truncation."""
        return list(self._sp.encode(_check_text(text, "text")))

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of token ids (a list or a 1-D integer array), skipping bos, eos, pad and special tokens."""
        kept = [i for i in check_token_ids(ids, self._vocab_size, "ids") if i not in self._skipped_on_decode]
        return self._sp.decode(kept)

    def encode_prompt(self, task: str, /, max_new_tokens: int = 0, **fields: str) -> np.ndarray:
        """Token ids (T,) int64 of the `task` template filled with `fields`, with bos/eos per config.

        The prompt is kept within `context_length - max_new_tokens` tokens by cutting the end of
        the fields (longest first); a TruncationWarning says how many tokens were cut. Raises
        InputError for an unknown task, a missing or unexpected field, a field that is not valid
        text, or a budget too small for the template's own tokens.
        """
        template = self._template(task)
        missing = [name for name in template.placeholders if name not in fields]
        if missing:
            raise InputError(
                f"prompt {task!r} needs field(s) {missing}; its placeholders are {list(template.placeholders)}"
            )
        unexpected = [name for name in fields if name not in template.placeholders]
        if unexpected:
            raise InputError(
                f"prompt {task!r} has no placeholder(s) {unexpected}; its placeholders are "
                f"{list(template.placeholders)}"
            )
        for name, value in fields.items():
            _check_text(value, f"prompt field {name!r}")
        context = self.config.context_length
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 0 <= max_new_tokens < context:
            raise InputError(
                f"max_new_tokens={max_new_tokens!r} must be an integer in [0, {context}) "
                f"(the model's context_length is {context})"
            )
        budget = context - max_new_tokens
        ids = self._fill(template, fields)
        if len(ids) > budget:
            shortened, cut_fields = self._truncate(template, fields, budget)
            warnings.warn(
                f"prompt {task!r} is {len(ids)} tokens, over the budget of {budget} (context_length {context} "
                f"minus max_new_tokens {max_new_tokens}); cut {len(ids) - len(shortened)} tokens from the "
                f"end of field(s) {cut_fields}",
                TruncationWarning,
                stacklevel=2,
            )
            ids = shortened
        return np.asarray(ids, dtype=np.int64)

    def encode_batch(self, items: Sequence[str | Sequence[int] | np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Pad a batch of texts and/or token id sequences to one array.

        items: strings (encoded like `encode`, no bos/eos) or token ids (e.g. from
        `encode_prompt`). Rows longer than context_length are cut to it with a TruncationWarning.
        Returns ids (N, T) int64, right-padded with pad_id, and lengths (N,) int64.
        """
        if isinstance(items, np.ndarray) and items.ndim == 2:
            items = list(items)
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
            raise InputError(
                f"encode_batch needs a non-empty list of strings or token id sequences, got {type(items).__name__}"
            )
        rows = [
            self._sp.encode(_check_text(item, f"items[{i}]"))
            if isinstance(item, str)
            else check_token_ids(item, self._vocab_size, f"items[{i}]")
            for i, item in enumerate(items)
        ]
        context = self.config.context_length
        too_long = {i: len(row) for i, row in enumerate(rows) if len(row) > context}
        if too_long:
            warnings.warn(
                f"batch rows {too_long} (index: tokens) exceed context_length {context}; cut "
                f"{sum(too_long.values()) - context * len(too_long)} tokens from their ends",
                TruncationWarning,
                stacklevel=2,
            )
            rows = [row[:context] for row in rows]
        lengths = np.array([len(row) for row in rows], dtype=np.int64)  # (N,)
        width = int(lengths.max())
        pad_id = self.config.pad_id
        if pad_id < 0 and (lengths != width).any():
            raise InputError(
                f"cannot pad rows of lengths {lengths.tolist()}: the tokenizer config has no pad_id; "
                f"encode them one at a time"
            )
        ids = np.full((len(rows), width), max(pad_id, 0), dtype=np.int64)  # (N, T)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        return ids, lengths

    def _template(self, task: str) -> PromptTemplate:
        template = self._templates.get(task) if isinstance(task, str) else None
        if template is None:
            raise InputError(f"unknown task {task!r}; the prompt templates cover {list(self._templates)}")
        return template

    def _fill(self, template: PromptTemplate, fields: Mapping[str, str]) -> list[int]:
        """Token ids of the template filled with fields, with bos/eos per config."""
        ids = [self.config.bos_id] if self.config.add_bos else []
        for segment in template.segments:
            if isinstance(segment, int):
                ids.append(segment)
            else:
                text = "".join(fields[p.name] if isinstance(p, _Field) else p for p in segment)
                ids.extend(self._sp.encode(text))
        if self.config.add_eos:
            ids.append(self.config.eos_id)
        return ids

    def _truncate(
        self, template: PromptTemplate, fields: Mapping[str, str], budget: int
    ) -> tuple[list[int], list[str]]:
        """Cut the ends of fields, longest first, until the prompt fits; (ids, names of cut fields)."""
        values = dict(fields)
        cut: list[str] = []
        for name in sorted(template.placeholders, key=lambda n: len(fields[n]), reverse=True):
            cut.append(name)
            length = self._longest_fitting_prefix(template, values, name, budget)
            if length is None:  # even without this field the prompt is too long
                values[name] = ""
                continue
            values[name] = _prefix(values[name], length)
            return self._fill(template, values), cut
        fixed = len(self._fill(template, values))
        raise InputError(
            f"prompt {template.task!r} needs {fixed} tokens without any field text, over the budget of "
            f"{budget} tokens; lower max_new_tokens"
        )

    def _longest_fitting_prefix(
        self, template: PromptTemplate, values: Mapping[str, str], name: str, budget: int
    ) -> int | None:
        """Most characters of values[name] with which the prompt fits in budget; None if 0 does not fit."""
        text = values[name]

        def fits(length: int) -> bool:
            return len(self._fill(template, {**values, name: _prefix(text, length)})) <= budget

        if not fits(0):
            return None
        low, high = 0, len(text)  # fits(low) holds throughout
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if fits(middle) else (low, middle - 1)
        return low
