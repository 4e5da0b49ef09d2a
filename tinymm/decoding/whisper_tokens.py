"""Whisper's special token ids, read once from a bundle's ``model`` object and its tokenizer.

Whisper's vocabulary is byte-level BPE text tokens, then (in this order) ``<|endoftext|>``,
``<|startoftranscript|>``, one token per language (multilingual checkpoints), ``<|translate|>``,
``<|transcribe|>``, ``<|startoflm|>``, ``<|startofprev|>``, the no-speech token, ``<|notimestamps|>``
and the timestamps ``<|0.00|>`` .. ``<|30.00|>`` in ``time_precision`` steps. Every id comes from
the bundle (the exporter writes them into ``model``); nothing here hard-codes one.

The start sequence (openai/whisper ``Tokenizer.sot_sequence``)::

    multilingual:  <|startoftranscript|> <|xx|> <|transcribe|>|<|translate|> [<|notimestamps|>]
    English-only:  <|startoftranscript|> [<|notimestamps|>]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from tinymm.errors import BundleError, InputError
from tinymm.preprocess.tokenizer import Tokenizer

TASKS = ("transcribe", "translate")
DEFAULT_TIME_PRECISION_S = 0.02  # seconds per timestamp step: 30 s / 1500 encoder positions
DEFAULT_MAX_INITIAL_TIMESTAMP_S = 1.0  # the first timestamp is at most this (openai/whisper's default)
# model object key -> WhisperTokens field, for the ids every bundle must give.
_REQUIRED_IDS = {
    "sot_id": "sot", "eot_id": "eot", "transcribe_id": "transcribe", "translate_id": "translate",
    "no_timestamps_id": "no_timestamps", "timestamp_begin_id": "timestamp_begin",
}
_OPTIONAL_IDS = {"no_speech_id": "no_speech", "sot_prev_id": "sot_prev"}


def _is_id(value: Any, vocab_size: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab_size


@dataclass(frozen=True)
class WhisperTokens:
    """The special ids of a Whisper vocabulary and the timestamp scale; validated on construction."""

    sot: int  # <|startoftranscript|>
    eot: int  # <|endoftext|>: ends a transcript; every id below it is a text token
    transcribe: int  # <|transcribe|>
    translate: int  # <|translate|> (to English)
    no_timestamps: int  # <|notimestamps|>: the decoder writes text only
    timestamp_begin: int  # <|0.00|>; <|t|> is timestamp_begin + round(t / time_precision)
    vocab_size: int  # the decoder's logits width
    no_speech: int | None = None  # <|nospeech|> (<|nocaptions|> on older checkpoints); None: not reported
    sot_prev: int | None = None  # <|startofprev|>
    sot_lm: int | None = None  # <|startoflm|>
    languages: Mapping[str, int] = field(default_factory=dict)  # code -> <|xx|> id; empty: English-only
    time_precision: float = DEFAULT_TIME_PRECISION_S  # seconds per timestamp step
    max_initial_timestamp: float | None = DEFAULT_MAX_INITIAL_TIMESTAMP_S  # seconds; None: no limit

    def __post_init__(self) -> None:
        ids = {"sot": self.sot, "eot": self.eot, "transcribe": self.transcribe, "translate": self.translate,
               "no_timestamps": self.no_timestamps, "timestamp_begin": self.timestamp_begin,
               **{k: v for k, v in (("no_speech", self.no_speech), ("sot_prev", self.sot_prev),
                                    ("sot_lm", self.sot_lm)) if v is not None},
               **{f"languages[{code!r}]": v for code, v in self.languages.items()}}
        bad = {name: value for name, value in ids.items() if not _is_id(value, self.vocab_size)}
        if bad:
            raise ValueError(f"Whisper token ids {bad} are not ids of the {self.vocab_size}-token vocabulary")
        below_eot = {name: value for name, value in ids.items() if value < self.eot}
        if below_eot:
            raise ValueError(f"Whisper special ids {below_eot} are below <|endoftext|>={self.eot}, among the text tokens")
        if self.timestamp_begin <= max(v for k, v in ids.items() if k != "timestamp_begin"):
            raise ValueError(f"timestamp_begin={self.timestamp_begin} must come after every other special token")
        if not (isinstance(self.time_precision, (int, float)) and self.time_precision > 0):
            raise ValueError(f"time_precision={self.time_precision!r} must be a positive number of seconds")
        if self.max_initial_timestamp is not None and not self.max_initial_timestamp >= 0:
            raise ValueError(f"max_initial_timestamp={self.max_initial_timestamp!r} must be >= 0 seconds, or None")

    @classmethod
    def from_model_info(cls, info: Mapping[str, Any], tokenizer: Tokenizer, vocab_size: int) -> WhisperTokens:
        """Read the ids from the manifest's ``model`` object; BundleError naming the bad key.

        vocab_size: the decoder's logits width (model.vocab_size, checked against the tokenizer).
        """
        missing = [key for key in _REQUIRED_IDS if key not in info]
        if missing:
            raise BundleError(
                f"manifest model object lacks Whisper token id(s) {missing}; re-export the bundle with the "
                "Whisper exporter (scripts/make_whisper_bundle.py)"
            )
        languages = info.get("languages") or {}
        if not isinstance(languages, Mapping):
            raise BundleError(f"manifest model.languages must map language codes to ids, got {languages!r:.80}")
        stamp_s = info.get("time_precision", DEFAULT_TIME_PRECISION_S)
        initial_s = info.get("max_initial_timestamp", DEFAULT_MAX_INITIAL_TIMESTAMP_S)
        fields = {name: info[key] for key, name in _REQUIRED_IDS.items()}
        fields.update({name: info.get(key) for key, name in _OPTIONAL_IDS.items()})
        try:
            tokens = cls(**fields, vocab_size=vocab_size, sot_lm=tokenizer.token_to_id("<|startoflm|>"),
                         languages=dict(languages), time_precision=stamp_s, max_initial_timestamp=initial_s)
        except (TypeError, ValueError) as e:
            raise BundleError(f"manifest model object: {e}; re-export the bundle") from e
        found = tokenizer.token_to_id("<|endoftext|>")
        if found is not None and found != tokens.eot:
            raise BundleError(
                f"manifest model.eot_id={tokens.eot} but the tokenizer gives <|endoftext|> the id {found}; "
                "the bundle's model object and tokenizer do not match, re-export it"
            )
        return tokens

    @property
    def multilingual(self) -> bool:
        """Whether the checkpoint has language tokens (and so language and task tokens in its start sequence)."""
        return bool(self.languages)

    @property
    def control_tokens(self) -> tuple[int, ...]:
        """Ids never sampled as text: the task, start and no-speech tokens (openai/whisper suppresses them)."""
        ids = (self.transcribe, self.translate, self.sot, self.sot_prev, self.sot_lm, self.no_speech)
        return tuple(sorted({i for i in ids if i is not None}))

    @property
    def max_initial_timestamp_index(self) -> int | None:
        """Timestamp steps the first timestamp may reach; None: no limit."""
        if self.max_initial_timestamp is None:
            return None
        return round(self.max_initial_timestamp / self.time_precision)

    def language_token(self, language: str) -> int:
        """The id of ``<|language|>``; InputError naming the checkpoint's languages otherwise."""
        if language not in self.languages:
            known = ", ".join(sorted(self.languages)[:20]) + (" ..." if len(self.languages) > 20 else "")
            raise InputError(f"language={language!r} is not one of this checkpoint's languages ({known})")
        return self.languages[language]

    def sot_sequence(self, language: str | None, task: str, timestamps: bool) -> tuple[int, ...]:
        """The forced start of every transcript (see the module docstring).

        language: a code of ``languages``; it must be given for a multilingual checkpoint (detect
        it first) and be None or "en" for an English-only one.
        """
        if task not in TASKS:
            raise InputError(f"task={task!r} is not one of {list(TASKS)}")
        if self.multilingual:
            if language is None:
                raise InputError("a multilingual checkpoint needs a language token; give language= or detect it")
            sequence = [self.sot, self.language_token(language), self.transcribe if task == "transcribe" else self.translate]
        else:
            if language not in (None, "en") or task != "transcribe":
                raise InputError(
                    f"this checkpoint is English-only: it transcribes English (got language={language!r}, "
                    f"task={task!r}); use a multilingual bundle for other languages or translation"
                )
            sequence = [self.sot]
        if not timestamps:
            sequence.append(self.no_timestamps)
        return tuple(sequence)

    def is_timestamp(self, token: int) -> bool:
        return token >= self.timestamp_begin

    def seconds(self, token: int) -> float:
        """The time a timestamp token stands for, in seconds from the window's start."""
        return (token - self.timestamp_begin) * self.time_precision
