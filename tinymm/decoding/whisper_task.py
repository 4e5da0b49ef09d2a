"""Whisper decoding assembled from tinymm.decoding's pieces (openai/whisper's DecodingTask).

One batch of 30 s windows (``WhisperDecoder.decode``)::

    encoder_hidden_states (N, enc_frames, d_model) float32
    -> decoder_first([[<|startoftranscript|>]] * N): the logits at the start token (N, V)
         -> no_speech_prob = softmax(logits)[<|nospeech|>]   (whisper's probs_at_sot)
         -> language = the likeliest language token          (rows whose language is not given)
    -> the rest of the start sequence, forced one token per decoder_with_past step
       (<|xx|> <|transcribe|>|<|translate|> [<|notimestamps|>]) over the cross K/V decoder_first returned
    -> greedy or beam search from the last forced position, with SuppressBlank, SuppressTokens and
       (timestamps) ApplyTimestampRules, max_target_positions (448) tokens in all
    -> WindowResult: generated ids (timestamps included, <|endoftext|> excluded), avg_logprob

``split_window`` turns a window's tokens into timed segments and says how far to move the seek,
as whisper's transcribe loop does. Logits at the start token do not depend on the tokens after it
(causal attention), so reading the no-speech and language probabilities there and forcing the
rest gives the tokens of running the whole start sequence at once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from tinymm.backends.base import Session
from tinymm.decoding.inference import ENCODER_STATES, ENCODER_STATES_LAYOUT, make_inference
from tinymm.decoding.options import MAX_BEAM_SIZE
from tinymm.decoding.search import beam_search, greedy_search
from tinymm.decoding.whisper_filters import whisper_filters
from tinymm.decoding.whisper_tokens import TASKS, WhisperTokens
from tinymm.errors import BundleError
from tinymm.preprocess.tokenizer import Tokenizer

# Encoder input: every window's 3000 frames ("full"), or the audio's own, rounded up ("clip"); "clip:S"
# is the audio's own but at least S seconds (Whisper was trained on 30 s windows and hallucinates on
# very short contexts; the floor keeps enough of the padding it expects).
AUDIO_CONTEXTS = ("full", "clip")
# The default, from benchmarks/results/whisper_audio_context.md (whisper-base, 67 clips of 1-5 s,
# language detected): WER 30.4% full, 28.2% "clip:10" at about half the latency, 949% "clip:5"
# (it repeats itself to the end of the context). But every shortened context misread two of the
# seven demo commands ("Go and pre meters.") and detected Thai for "Read the sign.", which the
# full window gets right: a robot must not trade that for speed by default. "clip:10" is the
# opt-in fast path, best with the language given.
DEFAULT_AUDIO_CONTEXT = "full"
AUDIO_CONTEXT_STEP_FRAMES = 128  # "clip" rounds the frames up to a multiple of this (1.28 s, 64 encoder positions)
WINDOW_SECONDS = 30.0  # a Whisper window: window_frames feature frames
NO_SPEECH_THRESHOLD = 0.6  # whisper: a window is silent when no_speech_prob is above this ...
LOGPROB_THRESHOLD = -1.0  # ... and its average token log-probability is below this
DEFAULT_FRAMES_PER_TOKEN = 2  # feature frames per encoder position (the encoder's stride-2 conv)
MS_PER_S = 1000.0


def _positive_int(info: Mapping[str, Any], key: str, default: Any = None) -> int:
    value = info.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BundleError(f"manifest model.{key}={value!r} must be a positive integer; re-export the Whisper bundle")
    return value


@dataclass(frozen=True)
class WhisperSettings:
    """What decoding needs beyond the graphs, from the manifest's ``model`` object."""

    tokens: WhisperTokens  # special ids, start sequence, timestamp scale
    num_layers: int  # decoder layers
    n_mels: int  # mel bands of the features
    max_source_positions: int  # encoder positions of a 30 s window (1500)
    max_target_positions: int  # decoder context in tokens, start sequence included (448)
    suppress_tokens: tuple[int, ...]  # the checkpoint's non-speech symbols, banned at every step
    frames_per_token: int = DEFAULT_FRAMES_PER_TOKEN  # feature frames per encoder position

    @property
    def window_frames(self) -> int:
        """Feature frames of one 30 s window (3000)."""
        return self.max_source_positions * self.frames_per_token

    @property
    def frame_s(self) -> float:
        """Seconds per feature frame (0.01): a timestamp step spans frames_per_token frames."""
        return self.tokens.time_precision / self.frames_per_token

    @classmethod
    def from_model_info(cls, info: Mapping[str, Any], tokenizer: Tokenizer, num_layers: int) -> WhisperSettings:
        declared = info.get("num_layers", num_layers)
        if declared != num_layers:
            raise BundleError(
                f"manifest model.num_layers={declared!r} but the decoder graphs have {num_layers} layer(s); "
                "re-export the bundle"
            )
        vocab_size = _positive_int(info, "vocab_size", tokenizer.vocab_size)
        if vocab_size < tokenizer.vocab_size:
            raise BundleError(
                f"manifest model.vocab_size={vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size} "
                "tokens; the bundle's model and tokenizer do not match"
            )
        suppress = info.get("suppress_tokens", [])
        if not isinstance(suppress, (list, tuple)) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size for i in suppress
        ):
            raise BundleError(f"manifest model.suppress_tokens must be token ids below {vocab_size}, got {suppress!r:.80}")
        return cls(
            tokens=WhisperTokens.from_model_info(info, tokenizer, vocab_size),
            num_layers=num_layers,
            n_mels=_positive_int(info, "n_mels", 80),
            max_source_positions=_positive_int(info, "max_source_positions", 1500),
            max_target_positions=_positive_int(info, "max_target_positions", 448),
            suppress_tokens=tuple(suppress),
            frames_per_token=_positive_int(info, "audio_frames_per_token", DEFAULT_FRAMES_PER_TOKEN),
        )


@dataclass(frozen=True)
class TranscribeOptions:
    """How one ``transcribe`` call decodes; a bad value or combination is a ValueError."""

    language: str | None = None  # a language code of the checkpoint; None: detected from the first window
    task: str = "transcribe"  # transcribe, or translate (to English)
    timestamps: bool = False  # decode timestamp tokens and return segments
    beam_size: int = 1  # 1: greedy search; more: beam search over that many hypotheses
    no_speech_threshold: float | None = NO_SPEECH_THRESHOLD  # None: never reject a window as silent
    logprob_threshold: float | None = LOGPROB_THRESHOLD  # rejection needs avg_logprob below this; None: any
    audio_context: str = DEFAULT_AUDIO_CONTEXT  # "full", "clip" or "clip:S" (check_audio_context)

    def __post_init__(self) -> None:
        if self.language is not None and (not isinstance(self.language, str) or not self.language):
            raise ValueError(f"language={self.language!r} must be a language code such as 'en', or None to detect it")
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is not one of {list(TASKS)}")
        if not isinstance(self.timestamps, bool):
            raise ValueError(f"timestamps={self.timestamps!r} must be True or False")
        if isinstance(self.beam_size, bool) or not isinstance(self.beam_size, int) or not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            raise ValueError(f"beam_size={self.beam_size!r} must be an integer in 1..{MAX_BEAM_SIZE} (1 = greedy)")
        if self.no_speech_threshold is not None and not 0.0 <= self.no_speech_threshold <= 1.0:
            raise ValueError(f"no_speech_threshold={self.no_speech_threshold!r} must be a probability in [0, 1], or None")
        if self.logprob_threshold is not None and not math.isfinite(self.logprob_threshold):
            raise ValueError(f"logprob_threshold={self.logprob_threshold!r} must be a finite number, or None")
        check_audio_context(self.audio_context)


def check_audio_context(value: Any) -> float | None:
    """The floor in seconds of an audio context ("full": None, "clip": 0, "clip:S": S); ValueError otherwise."""
    if value == "full":
        return None
    if isinstance(value, str) and value.partition(":")[0] == "clip":
        floor = value.partition(":")[2]
        try:
            seconds = float(floor) if floor else 0.0
        except ValueError:
            seconds = -1.0
        if 0.0 <= seconds <= WINDOW_SECONDS:
            return seconds
    raise ValueError(
        f"audio_context={value!r} is not 'full', 'clip' or 'clip:S' with S seconds in 0..{WINDOW_SECONDS:g} "
        "(e.g. 'clip:10': the clip's own length, at least 10 s)"
    )


@dataclass(frozen=True)
class WindowResult:
    """The decoding of one 30 s window."""

    tokens: tuple[int, ...]  # generated ids, timestamps included, <|endoftext|> excluded
    sum_logprob: float  # natural-log probability of the generated tokens, <|endoftext|> included when finished
    no_speech_prob: float | None  # probability of <|nospeech|> at the start token; None: the vocabulary has none
    language: str | None  # the language token used (given or detected); None: English-only checkpoint
    finished: bool  # False when the context ran out before <|endoftext|>

    @property
    def avg_logprob(self) -> float:
        """sum_logprob / (tokens + 1): whisper's avg_logprob (the +1 is <|endoftext|>)."""
        return self.sum_logprob / (len(self.tokens) + 1)

    def is_silent(self, options: TranscribeOptions) -> bool:
        """Whisper's rule: no_speech_prob above the threshold and the text not confident enough."""
        if options.no_speech_threshold is None or self.no_speech_prob is None:
            return False
        if self.no_speech_prob <= options.no_speech_threshold:
            return False
        return options.logprob_threshold is None or self.avg_logprob < options.logprob_threshold


@dataclass(frozen=True)
class DecodeTimes:
    prefill_ms: float  # decoder_first and the forced start tokens
    step_ms: tuple[float, ...]  # each search step


def context_frames(content_frames: int, audio_context: str, window_frames: int) -> int:
    """Feature frames the encoder runs on: the whole window ("full"), or the audio's frames (at least
    the floor of "clip:S") rounded up to AUDIO_CONTEXT_STEP_FRAMES ("clip", whisper.cpp's audio_ctx),
    at most the window."""
    floor_s = check_audio_context(audio_context)
    if floor_s is None:
        return window_frames
    floor_frames = math.ceil(floor_s * window_frames / WINDOW_SECONDS)
    steps = max(1, math.ceil(max(content_frames, floor_frames) / AUDIO_CONTEXT_STEP_FRAMES))
    return min(window_frames, steps * AUDIO_CONTEXT_STEP_FRAMES)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


class WhisperDecoder:
    """The encoder and the two decoder graphs of a Whisper bundle, run over batches of windows."""

    def __init__(
        self,
        *,
        encoder: Session,
        decoder_first: Session,
        decoder_with_past: Session | None,
        settings: WhisperSettings,
        tokenizer: Tokenizer,
        features_name: str = "input_features",
        states_name: str = "encoder_hidden_states",
        device_cache: bool = False,
    ) -> None:
        """decoder_with_past None decodes without a KV cache (decoder_first over the whole text each step).

        features_name, states_name: the encoder's input and output (its manifest roles "features"
        and "hidden_states"); decoder_first takes the states as ``encoder_hidden_states``.
        device_cache: keep the KV cache on the decoder's device between steps (GPU providers).
        """
        self.encoder, self.decoder_first, self.decoder_with_past = encoder, decoder_first, decoder_with_past
        self.settings, self.tokenizer = settings, tokenizer
        self.features_name, self.states_name, self.device_cache = features_name, states_name, device_cache
        tokens = settings.tokens
        self._language_codes = tuple(tokens.languages)
        self._language_ids = np.asarray([tokens.languages[c] for c in self._language_codes], dtype=np.int64)

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Features (N, n_mels, frames) float32, frames even and <= window_frames -> (N, frames / 2, d_model)."""
        out = self.encoder.run({self.features_name: np.ascontiguousarray(features, dtype=np.float32)},
                               [self.states_name])
        return out[self.states_name]

    def detect_language(self, logits: np.ndarray) -> str:
        """The likeliest language token of one row of logits at the start token (V,)."""
        return self._language_codes[int(np.argmax(logits[self._language_ids]))]

    def decode(
        self, states: np.ndarray, languages: Sequence[str | None], options: TranscribeOptions
    ) -> tuple[list[WindowResult], DecodeTimes]:
        """Decode a batch of windows.

        Args:
            states: (N, enc_frames, d_model) float32 encoder hidden states.
            languages: per window, its language code, or None to detect it (multilingual checkpoints).
            options: task, timestamps and beam size.

        Returns:
            One WindowResult per window, and the decoder's timings.
        """
        tokens, n = self.settings.tokens, states.shape[0]
        inference = make_inference(self.decoder_first, self.decoder_with_past, {ENCODER_STATES: states},
                                   self.settings.num_layers, device_cache=self.device_cache, layout=ENCODER_STATES_LAYOUT)
        start = time.perf_counter()
        logits = inference.prefill(np.full((n, 1), tokens.sot, dtype=np.int64))  # (N, V) at the start token
        no_speech = None if tokens.no_speech is None else _softmax(logits.astype(np.float64))[:, tokens.no_speech]
        chosen = [lang if lang is not None or not tokens.multilingual else self.detect_language(logits[i])
                  for i, lang in enumerate(languages)]
        sequences = np.array([tokens.sot_sequence(lang, options.task, options.timestamps) for lang in chosen],
                             dtype=np.int64)  # (N, S)
        for k in range(1, sequences.shape[1]):  # force the rest of the start sequence
            logits = inference.step(sequences[:, k])
        prefill_ms = (time.perf_counter() - start) * MS_PER_S
        filters = whisper_filters(tokens, self.tokenizer, self.settings.suppress_tokens, timestamps=options.timestamps)
        room = self.settings.max_target_positions - sequences.shape[1]
        common = dict(eos_id=tokens.eot, max_new_tokens=room, filters=filters, prefilled=logits)
        if options.beam_size == 1:
            generation = greedy_search(inference, sequences, **common)
        else:
            generation = beam_search(inference, sequences, beam_size=options.beam_size, **common)
        results = [
            WindowResult(tokens=best.tokens, sum_logprob=best.sum_logprob,
                         no_speech_prob=None if no_speech is None else float(no_speech[i]),
                         language=chosen[i], finished=best.finished)
            for i, best in enumerate(generation.best)
        ]
        return results, DecodeTimes(prefill_ms + generation.prefill_ms, generation.step_ms)


@dataclass(frozen=True)
class WindowSegments:
    """The timed segments of one window and how far the seek moves after it."""

    segments: tuple[tuple[float, float, tuple[int, ...]], ...]  # (start s, end s from the window's start, tokens)
    advance_frames: int  # feature frames to move the seek by


def split_window(tokens: Sequence[int], whisper: WhisperTokens, segment_frames: int, frames_per_token: int) -> WindowSegments:
    """Segments of a window's generated tokens, as whisper's transcribe loop cuts them.

    Two timestamps in a row close a segment and open the next. If the tokens end on a lone
    timestamp (no speech after it) or hold no pair, the whole window is consumed; otherwise the
    last segment is unfinished: it is dropped and the seek moves to the last closing timestamp.

    segment_frames: the window's audio in feature frames (3000, or fewer for the clip's tail).
    """
    tokens = list(tokens)
    is_stamp = [whisper.is_timestamp(t) for t in tokens]
    single_ending = is_stamp[-2:] == [False, True]
    pairs = [i + 1 for i in range(len(tokens) - 1) if is_stamp[i] and is_stamp[i + 1]]
    segments: list[tuple[float, float, tuple[int, ...]]] = []
    if pairs:
        slices = pairs + ([len(tokens)] if single_ending else [])
        last = 0
        for current in slices:
            piece = tokens[last:current]
            segments.append((whisper.seconds(piece[0]), whisper.seconds(piece[-1]), tuple(piece)))
            last = current
        if single_ending:
            advance = segment_frames
        else:  # the unfinished segment is decoded again from the next window
            advance = (tokens[last - 1] - whisper.timestamp_begin) * frames_per_token
    else:
        duration = segment_frames * whisper.time_precision / frames_per_token
        stamps = [t for t in tokens if whisper.is_timestamp(t)]
        if stamps and stamps[-1] != whisper.timestamp_begin:  # no pair, but a timestamp: the text ends there
            duration = whisper.seconds(stamps[-1])
        segments.append((0.0, duration, tuple(tokens)))
        advance = segment_frames
    return WindowSegments(tuple(segments), advance)
