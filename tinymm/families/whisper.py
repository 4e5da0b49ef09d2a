"""Whisper: encoder-decoder speech recognition over 30 s windows (the Whisper bundle of export/LAYOUT.md).

Data path (``WhisperPipeline._transcribe`` holds it end to end)::

    audio (path, WAV bytes or (samples,) array) -> mono at 16 kHz             [AudioPreprocessor.waveform]
    -> 30 s windows from the seek: samples [seek * hop, (seek + 3000) * hop), padded with zeros
       -> log-mel (n_mels, 3000) per window (the max - 8 clamp per window)    [AudioPreprocessor.features]
    -> encoder over the window's frames: all 3000 (audio_context "full", the default), at least 10 s
       of them ("clip:10", the fast path: benchmarks/results/whisper_audio_context.md), or the audio's own
       rounded up to 128 frames ("clip", whisper.cpp's audio_ctx) -> (N, frames / 2, d_model)
    -> decoder: the no-speech probability and (when not given) the language at the start token,
       the start sequence forced, then greedy or beam search with Whisper's logit filters
       [tinymm.decoding.whisper_task.WhisperDecoder]
    -> a window whose no_speech_prob > 0.6 and average log-probability < -1 is silent: no text
    -> text; with timestamps, segments (start, end, text), and the seek moves to the last complete
       segment's end (whisper's transcribe loop); without, to the next window
    -> (command) IntentParser over the transcript -> Intent or None

The clips of a list are decoded one after another (``_transcribe_each``), so that a clip's
transcript never depends on its batch; ``_transcribe`` itself decodes a batch in rounds, each
round batching the next window of every clip with audio left. A result's ``confidence`` is exp of the mean token log-probability over its
decoded windows (``<|endoftext|>`` included), and its ``no_speech_prob`` is the first window's. The language of a clip is detected once, from its first window, as
openai/whisper's ``transcribe`` does. Not done here: conditioning a window on the previous
window's text (``<|startofprev|>``) and the temperature fallback.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from tinymm.backends.base import GPU_PROVIDERS, Session
from tinymm.decoding.inference import ENCODER_STATES_LAYOUT, check_decoder_layout, count_layers
from tinymm.decoding.whisper_task import (
    DEFAULT_AUDIO_CONTEXT,
    check_audio_context,
    TranscribeOptions,
    WhisperDecoder,
    WhisperSettings,
    WindowResult,
    context_frames,
    split_window,
)
from tinymm.errors import BundleError, InputError
from tinymm.pipelines.results import CommandResult, Segment, StageTimer, TranscriptResult
from tinymm.pipelines.sessions import bundle_tokenizer, open_sessions
from tinymm.pipelines.speech_surface import SpeechSurface
from tinymm.preprocess.audio import AudioPreprocessor, audio_batch, frame_count
from tinymm.preprocess.tokenizer import Tokenizer

if TYPE_CHECKING:
    from tinymm.bundle import Bundle
    from tinymm.pipelines.vad import SileroVAD
    from tinymm.pipelines.load_options import LoadOptions
    from tinymm.robot.intent import IntentParser

logger = logging.getLogger(__name__)

ARCHITECTURE = "whisper"
NO_SPEECH = "no_speech"  # reject_reason of a clip whose every window whisper's silence rule emptied
ENCODER, DECODER_FIRST, DECODER_WITH_PAST = "encoder", "decoder_first", "decoder_with_past"
# The decoder tensors the runtime feeds by name (the contract fixes them; a bundle's roles must agree).
DECODER_ROLES = {DECODER_FIRST: {"input_ids": "input_ids", "encoder_states": "encoder_hidden_states", "logits": "logits"},
                 DECODER_WITH_PAST: {"input_ids": "input_ids", "logits": "logits"}}


@dataclass
class _Clip:
    """One clip's progress through its windows."""

    wave: np.ndarray  # (samples,) float32 at the model's rate
    content_frames: int  # feature frames of the audio (samples // hop, at least 1)
    language: str | None  # given, or detected from the first window
    seek: int = 0  # feature frames already transcribed
    windows: int = 0
    tokens: list[int] = field(default_factory=list)  # text tokens of the transcript
    segments: list[Segment] = field(default_factory=list)
    sum_logprob: float = 0.0  # over every decoded window, for the confidence
    scored_tokens: int = 0
    no_speech_prob: float | None = None  # the first window's
    silent_windows: int = 0  # windows whisper's silence rule emptied


def _check_decoder_roles(bundle: Bundle) -> None:
    """BundleError when a decoder's manifest roles name other tensors than the ones the runtime feeds."""
    for component, roles in DECODER_ROLES.items():
        if component not in bundle.manifest.components:
            continue
        for role, tensor in roles.items():
            declared = bundle.manifest.component(component).tensor(role, tensor)
            if declared != tensor:
                raise BundleError(
                    f"bundle {bundle.name!r}: {component} role {role!r} is {declared!r}, but this tinymm feeds "
                    f"{tensor!r} (the Whisper bundle of export/LAYOUT.md); re-export the bundle"
                )


class WhisperPipeline(SpeechSurface):
    """Transcripts (with language, no-speech probability and optional timed segments) and spoken
    commands from a Whisper bundle; the public surface of SpeechPipeline.

    Build it with ``from_bundle`` (or ``tinymm.load``); the constructor takes the sessions, the
    preprocessors and the manifest's model object, so tests and other backends can pass their own.
    """

    family = "speech"
    transcribe_options = ("language", "task", "timestamps", "beam_size", "audio_context")  # beyond SpeechPipeline's

    def __init__(
        self,
        *,
        encoder: Session,
        decoder_first: Session,
        preprocessor: AudioPreprocessor,
        tokenizer: Tokenizer,
        model_info: Mapping[str, Any],
        decoder_with_past: Session | None = None,
        intent_parser: IntentParser | None = None,
        name: str = "whisper",
        audio_context: str = DEFAULT_AUDIO_CONTEXT,
        features_name: str = "input_features",
        states_name: str = "encoder_hidden_states",
        device_cache: bool = False,
        vad: SileroVAD | None = None,
    ) -> None:
        """decoder_with_past None decodes without a KV cache. audio_context: "full", "clip" or "clip:S", the
        default of every transcribe call. features_name, states_name: the encoder's input and output.
        vad: checks every clip for speech before anything is decoded (None: no check)."""
        num_layers = count_layers(decoder_first)
        check_decoder_layout(decoder_first, decoder_with_past, num_layers, ENCODER_STATES_LAYOUT)
        self.settings = WhisperSettings.from_model_info(model_info, tokenizer, num_layers)
        self._check_audio(preprocessor)
        check_audio_context(audio_context)
        self.preprocessor, self.tokenizer, self.name, self.audio_context = preprocessor, tokenizer, name, audio_context
        self.decoder = WhisperDecoder(
            encoder=encoder, decoder_first=decoder_first, decoder_with_past=decoder_with_past, settings=self.settings,
            tokenizer=tokenizer, features_name=features_name, states_name=states_name, device_cache=device_cache,
        )
        self._intent_parser = intent_parser  # None: the robot domain's, built on the first command()
        self.vad = vad  # None: every clip reaches the decoder
        self.bundle: Bundle | None = None  # set by from_bundle; keeps an extracted archive alive

    def _check_audio(self, preprocessor: AudioPreprocessor) -> None:
        config, settings = preprocessor.config, self.settings
        window = frame_count(0, config) if config.pad_to_seconds is not None else None
        if window != settings.window_frames or config.n_mels != settings.n_mels:
            raise BundleError(
                f"the bundle's preprocess.audio gives {window} frames of {config.n_mels} mels per window, but the "
                f"model takes {settings.window_frames} frames of {settings.n_mels} (pad_to_seconds 30 and "
                "drop_last_frame true for Whisper); re-export the bundle"
            )

    @classmethod
    def from_bundle(cls, bundle: Bundle, options: LoadOptions | None = None) -> WhisperPipeline:
        """Load the encoder and decoders of a Whisper bundle with ``options`` (default: LoadOptions())."""
        from tinymm.pipelines.load_options import LoadOptions
        from tinymm.pipelines.vad import load_vad

        manifest = bundle.manifest
        if manifest.family != cls.family:
            raise BundleError(f"bundle {bundle.name!r} is a {manifest.family} bundle, not a {cls.family} one")
        audio = manifest.preprocess.audio
        if audio is None:
            raise BundleError(f"bundle {bundle.name!r} has no preprocess.audio section; re-export it")
        _check_decoder_roles(bundle)
        vad_name = manifest.model.get("vad")
        if vad_name is not None and (not isinstance(vad_name, str) or not vad_name):
            raise BundleError(f"manifest model.vad={vad_name!r} must be the name of a VAD bundle, such as 'silero-vad'")
        vad = load_vad(vad_name, options) if vad_name is not None else None  # before the big sessions: fail fast
        sessions = open_sessions(bundle, (ENCODER, DECODER_FIRST), (DECODER_WITH_PAST,), options or LoadOptions())
        encoder, with_past = manifest.component(ENCODER), sessions.get(DECODER_WITH_PAST)
        pipeline = cls(
            encoder=sessions[ENCODER], decoder_first=sessions[DECODER_FIRST], decoder_with_past=with_past,
            preprocessor=AudioPreprocessor(audio), tokenizer=bundle_tokenizer(bundle), model_info=manifest.model,
            name=bundle.name, features_name=encoder.tensor("features", "input_features"),
            states_name=encoder.tensor("hidden_states", "encoder_hidden_states"),
            device_cache=with_past is not None and with_past.provider in GPU_PROVIDERS, vad=vad,
        )
        pipeline.bundle = bundle
        return pipeline

    def __repr__(self) -> str:
        return f"WhisperPipeline({self.name!r}, provider={self.decoder.encoder.provider})"

    def transcribe(
        self, audio: Any, sample_rate: int | None = None, *, language: str | None = None, task: str = "transcribe",
        timestamps: bool = False, beam_size: int = 1, audio_context: str | None = None,
    ) -> TranscriptResult | list[TranscriptResult]:
        """Transcribe (or translate to English) one clip or a list of clips (each decoded on its own).

        Args:
            audio: a path, the bytes of a WAV file, or a (samples,) / (samples, channels) float
                array in [-1, 1] (or int16 PCM); or a list of them. Audio past 30 s is decoded in
                consecutive windows.
            sample_rate: Hz of array inputs (required for arrays; files carry their own).
            language: a language code of the checkpoint ("en", "de", ...); None detects it.
            task: "transcribe", or "translate" (to English; multilingual checkpoints).
            timestamps: decode timestamps and return ``segments``.
            beam_size: 1 for greedy search, more for beam search.
            audio_context: "full", "clip" or "clip:S" (at least S seconds; see the module docstring); None: the pipeline's.

        Returns:
            A TranscriptResult (with language, no_speech_prob, windows and, with timestamps,
            segments), or a list of them for a list of clips.

        Raises:
            InputError: unreadable, empty or too long audio; an unknown language or task; a bad beam size.
        """
        options = self._options(language, task, timestamps, beam_size, audio_context)
        clips, single = audio_batch(audio)
        results = self._transcribe_each(clips, sample_rate, options)
        return results[0] if single else results

    def command(
        self, audio: Any, sample_rate: int | None = None, *, language: str | None = None, beam_size: int = 1,
    ) -> CommandResult | list[CommandResult]:
        """Transcribe and parse spoken commands; ``intent`` is None when the words are outside the grammar.

        The intent is parsed from the free transcript (Whisper decodes no command grammar). A clip
        whose every window is silent by whisper's rule is rejected (``reject_reason="no_speech"``),
        with no intent.
        """
        options = self._options(language, "transcribe", False, beam_size, None)
        clips, single = audio_batch(audio)
        results = [CommandResult.unheard(t) if t.rejected else CommandResult(t, self.intent_parser.parse(t.text))
                   for t in self._transcribe_each(clips, sample_rate, options)]
        return results[0] if single else results

    def _transcribe_each(self, clips: list[Any], sample_rate: int | None,
                         options: TranscribeOptions) -> list[TranscriptResult]:
        """One clip at a time: a clip's transcript must not depend on the other clips of the list, and
        with an int8 decoder it would (dynamic quantization scales each step's activations over the
        whole batch: a batch of 2 turned "Go ahead, 3 meters." into "Go and free meters.")."""
        results = []
        for clip in clips:
            if self.vad is None:
                results.append(self._transcribe([clip], sample_rate, options)[0])
                continue
            timer = StageTimer()
            wave = self.preprocessor.waveform(clip, sample_rate)  # (samples,) float32 at the model's rate
            activity = self.vad.activity(wave, self.sample_rate)
            if self.vad.has_speech(activity):  # decode the samples already loaded
                heard = self._transcribe([wave], self.sample_rate, options)[0]
                results.append(dataclasses.replace(heard, speech_ratio=activity.speech_ratio))
                continue
            timer.lap("preprocess")
            results.append(TranscriptResult("", (), 0.0, len(wave) / self.sample_rate, timer.timings(1),
                                            rejected=True, reject_reason=NO_SPEECH, speech_ratio=activity.speech_ratio))
        return results

    def _options(self, language: str | None, task: str, timestamps: bool, beam_size: int,
                 audio_context: str | None) -> TranscribeOptions:
        try:
            options = TranscribeOptions(language=language, task=task, timestamps=timestamps, beam_size=beam_size,
                                        audio_context=self.audio_context if audio_context is None else audio_context)
        except ValueError as e:
            raise InputError(str(e)) from e
        tokens = self.settings.tokens
        if language is not None or not tokens.multilingual:  # an unknown language or task fails before any work
            tokens.sot_sequence(language, task, timestamps)
        return options

    def _transcribe(self, clips: list[Any], sample_rate: int | None, options: TranscribeOptions) -> list[TranscriptResult]:
        """The data path: load, then rounds of (window features, encode, decode, segments) until every clip is done."""
        timer = StageTimer()
        hop, window = self.preprocessor.config.hop_length, self.settings.window_frames
        waves = self.preprocessor.waveforms(clips, sample_rate)  # (samples,) float32 mono each
        states = [_Clip(w, max(1, len(w) // hop), options.language) for w in waves]
        while True:
            pending = [s for s in states if s.seek < s.content_frames]
            if not pending:
                break
            sizes = [min(window, s.content_frames - s.seek) for s in pending]  # frames of audio in each window
            features = np.stack([self.preprocessor.features(s.wave[s.seek * hop : (s.seek + n) * hop])
                                 for s, n in zip(pending, sizes)])  # (n, n_mels, 3000)
            frames = max(context_frames(n, options.audio_context, window) for n in sizes)
            timer.lap("preprocess")
            hidden = self.decoder.encode(features[:, :, :frames])  # (n, frames / 2, d_model)
            timer.lap("encode")
            decoded, times = self.decoder.decode(hidden, [s.language for s in pending], options)
            timer.add("prefill", times.prefill_ms)
            timer.decode_ms.extend(times.step_ms)
            timer.restart()
            for clip, result, size in zip(pending, decoded, sizes):
                self._accept(clip, result, size, options)
            timer.lap("postprocess")
        timings = timer.timings(len(clips))
        for i, clip in enumerate(states):
            if clip.windows > 1:
                logger.info("clip %d: %.1f s decoded in %d windows of 30 s", i, len(clip.wave) / self.sample_rate,
                            clip.windows)
        return [self._result(clip, options, timings) for clip in states]

    def _accept(self, clip: _Clip, result: WindowResult, size: int, options: TranscribeOptions) -> None:
        """Fold one decoded window into its clip and move the clip's seek."""
        tokens = self.settings.tokens
        clip.windows += 1
        clip.language = result.language
        clip.sum_logprob += result.sum_logprob
        clip.scored_tokens += len(result.tokens) + 1
        if clip.no_speech_prob is None:
            clip.no_speech_prob = result.no_speech_prob
        if result.is_silent(options):  # whisper skips the whole window
            clip.silent_windows += 1
            clip.seek += size
            return
        if not options.timestamps:
            clip.tokens.extend(t for t in result.tokens if t < tokens.eot)
            clip.seek += size
            return
        split = split_window(result.tokens, tokens, size, self.settings.frames_per_token)
        offset_s = clip.seek * self.settings.frame_s
        for start, end, piece in split.segments:
            text_tokens = [t for t in piece if t < tokens.eot]
            text = self.tokenizer.decode(text_tokens).strip()
            if start != end and text:  # whisper clears instantaneous and empty segments
                clip.tokens.extend(text_tokens)
                clip.segments.append(Segment(offset_s + start, offset_s + end, text))
        clip.seek += max(1, split.advance_frames)

    def _result(self, clip: _Clip, options: TranscribeOptions, timings: Any) -> TranscriptResult:
        # Every window silent by whisper's rule: no speech, as the speech pipeline's VAD reports it.
        silent = clip.windows > 0 and clip.silent_windows == clip.windows
        return TranscriptResult(
            text=self.tokenizer.decode(clip.tokens).strip(),
            token_ids=tuple(clip.tokens),
            confidence=math.exp(clip.sum_logprob / max(clip.scored_tokens, 1)),
            duration_s=len(clip.wave) / self.sample_rate,
            timings=timings,
            language=clip.language,
            no_speech_prob=clip.no_speech_prob,
            segments=tuple(clip.segments) if options.timestamps else None,
            windows=clip.windows,
            rejected=silent,
            reject_reason=NO_SPEECH if silent else None,
        )


def from_bundle(bundle: Bundle, options: LoadOptions | None = None) -> WhisperPipeline:
    """The transcribe / command pipeline of a Whisper bundle, its models loaded with ``options``."""
    return WhisperPipeline.from_bundle(bundle, options)
