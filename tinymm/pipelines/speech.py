"""The speech pipeline: transcribe audio, and parse spoken robot commands into intents.

Data path (``_transcribe`` holds it end to end)::

    audio (path, WAV bytes or (samples,) array) -> mono at the model's rate -> log-mel
          (N, n_mels, frames) float32 + frame counts (N,) int64        [AudioPreprocessor]
    -> speech_encoder -> log_probs (N, out_frames, V), output_lengths (N,)
    -> CTC best path (repeats merged, blanks dropped) -> Tokenizer.decode -> lexicon correction
       = the free transcript
    -> grammar decoding (bundles with ``model.grammar``): the best sentence of the grammar,
       unless it fits the audio much worse than the free transcript (speech outside the grammar)
    -> (command) IntentParser -> Intent or None, kept only when the evidence holds (``_gate``)

Before the encoder, the voice activity detector the bundle names (``model.vad``: Silero VAD, the
shipped ``silero-vad`` bundle, ``tinymm.pipelines.vad``) checks each clip for speech: a clip with less than the VAD's
``min_speech_ms`` of speech is not encoded; its result has an empty transcript, ``rejected=True``
and ``reject_reason="no_speech"``. ``command`` also rejects a parsed intent whose evidence score
(``command_score``: the grammar path's per-frame probability, discounted by what the grammar cost
against the free path) is below ``reject_threshold`` (``reject_reason="low_confidence"``); the
default threshold was picked from the curve in benchmarks/results/speech_rejection.md.

The component follows export/LAYOUT.md; the CTC blank id, the longest input the encoder takes
(``max_frames``), the lexicon and the grammar come from the manifest's ``model`` object. The
robot domain (``tinymm.robot``: the grammar a bundle names, the intent parser of ``command``) is
imported only when a bundle names its grammar or ``command`` is called.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple

import numpy as np

from tinymm.backends.base import Session
from tinymm.decoding import ctc_greedy_decode
from tinymm.decoding.grammar import GrammarDecoder
from tinymm.decoding.lexicon import Lexicon
from tinymm.errors import BundleError, InputError
from tinymm.pipelines.load_options import LoadOptions
from tinymm.pipelines.results import CommandResult, StageTimer, TranscriptResult
from tinymm.pipelines.sessions import bundle_tokenizer, open_sessions
from tinymm.pipelines.speech_surface import SpeechSurface
from tinymm.preprocess.audio import AudioPreprocessor, audio_batch, batch_features
from tinymm.preprocess.text import Tokenizer

if TYPE_CHECKING:
    from tinymm.bundle import Bundle
    from tinymm.pipelines.vad import SileroVAD
    from tinymm.robot.intent import IntentParser

COMPONENT = "speech_encoder"
# command_score below this rejects a command (benchmarks/results/speech_rejection.md: the curve it came from)
DEFAULT_REJECT_THRESHOLD = 0.2
NO_SPEECH = "no_speech"  # reject_reason: the VAD found (almost) no speech in the clip
LOW_CONFIDENCE = "low_confidence"  # reject_reason: command_score < reject_threshold


def check_reject_threshold(value: object) -> float:
    """``reject_threshold`` as a float in [0, 1]; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"reject_threshold={value!r} must be a number in [0, 1] (0 accepts every parsed command)")
    return float(value)


class Decoded(NamedTuple):
    """One clip's decoding."""

    text: str
    tokens: tuple[int, ...]
    confidence: float  # geometric mean over frames of the path's label probability
    in_grammar: bool | None
    raw_text: str
    grammar_gap: float | None  # nats per token the grammar path costs against the free path; None: no grammar


def command_score(confidence: float, grammar_gap: float | None) -> float:
    """The evidence of a command in [0, 1]: the path's per-frame probability times exp(-grammar gap per
    token) (a sentence the grammar had to bend the audio into scores lower)."""
    return float(confidence) * math.exp(-max(0.0, grammar_gap or 0.0))


@dataclass(frozen=True)
class SpeechSettings:
    """What the runtime needs beyond the graph, from the manifest's ``model`` object."""

    blank_id: int  # the CTC blank label
    max_frames: int | None  # most feature frames the encoder takes; None: no limit
    lexicon: Lexicon | None = None  # the words the model was trained on (model.lexicon); None: no correction
    grammar: str | None = None  # the built-in grammar the model was trained on (model.grammar); None: free decoding
    vad: str | None = None  # the VAD bundle that checks clips for speech (model.vad); None: no check

    @staticmethod
    def _grammar_name(value: object) -> str | None:
        """model.grammar: None, or a grammar name the robot domain knows (BundleError if not)."""
        if value is None:
            return None
        from tinymm.robot.grammar import check_grammar_name  # the domain, for a bundle that names its grammar

        return check_grammar_name(value)

    @classmethod
    def from_model_info(cls, info: Mapping[str, Any], tokenizer: Tokenizer) -> SpeechSettings:
        blank = info.get("blank_id", tokenizer.config.pad_id)
        if isinstance(blank, bool) or not isinstance(blank, int) or not 0 <= blank < tokenizer.vocab_size:
            raise BundleError(
                f"manifest model.blank_id={blank!r} is not a label of the {tokenizer.vocab_size}-label vocabulary; "
                "re-export the bundle"
            )
        max_frames = info.get("max_frames")
        if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1):
            raise BundleError(f"manifest model.max_frames={max_frames!r} must be a positive integer")
        vad = info.get("vad")
        if vad is not None and (not isinstance(vad, str) or not vad):
            raise BundleError(f"manifest model.vad={vad!r} must be the name of a VAD bundle, such as 'silero-vad'")
        return cls(blank_id=blank, max_frames=max_frames, lexicon=Lexicon.from_model_info(info.get("lexicon")),
                   grammar=cls._grammar_name(info.get("grammar")), vad=vad)


class SpeechPipeline(SpeechSurface):
    """Transcripts and spoken commands from one speech bundle.

    Build it with ``from_bundle`` (or ``tinymm.load``); the constructor takes the session, the
    preprocessors and the manifest's model object, so tests and other backends can pass their own.
    """

    family = "speech"

    def __init__(
        self,
        *,
        encoder: Session,
        preprocessor: AudioPreprocessor,
        tokenizer: Tokenizer,
        model_info: Mapping[str, Any] | None = None,
        intent_parser: IntentParser | None = None,
        name: str = "speech",
        use_lexicon: bool = True,
        use_grammar: bool = True,
        vad: SileroVAD | None = None,
        reject_threshold: float = DEFAULT_REJECT_THRESHOLD,
    ) -> None:
        self.encoder, self.preprocessor, self.tokenizer, self.name = encoder, preprocessor, tokenizer, name
        self.settings = SpeechSettings.from_model_info(model_info or {}, tokenizer)
        # Snap misspelt words to the bundle's lexicon (when it has one); False keeps the raw spelling.
        self.use_lexicon = use_lexicon
        # Decode with the bundle's grammar (when it has one); False keeps the free transcript.
        self.use_grammar = use_grammar
        self.grammar_decoder = None
        if self.settings.grammar is not None:
            from tinymm.robot.grammar import builtin_grammar

            self.grammar_decoder = GrammarDecoder.from_tokenizer(  # built once: 30-80 ms
                builtin_grammar(self.settings.grammar), tokenizer, self.settings.blank_id)
        self._intent_parser = intent_parser  # None: the robot domain's, built on the first command()
        self.vad = vad  # None: every clip counts as speech
        self.reject_threshold = check_reject_threshold(reject_threshold)  # command_score below it: rejected
        self.bundle: Bundle | None = None  # set by from_bundle; keeps an extracted archive alive

    @classmethod
    def from_bundle(cls, bundle: Bundle, options: LoadOptions | None = None) -> SpeechPipeline:
        """Load the speech encoder of a speech bundle with ``options`` (default: LoadOptions()), and
        the VAD bundle its manifest names (``model.vad``, ``tinymm.pipelines.vad.load_vad``)."""
        from tinymm.pipelines.vad import load_vad

        if bundle.manifest.family != cls.family:
            raise BundleError(f"bundle {bundle.name!r} is a {bundle.manifest.family} bundle, not a {cls.family} one")
        audio = bundle.manifest.preprocess.audio
        if audio is None:
            raise BundleError(f"bundle {bundle.name!r} has no preprocess.audio section; re-export it")
        sessions = open_sessions(bundle, (COMPONENT,), (), options or LoadOptions())
        info, tokenizer = bundle.manifest.model, bundle_tokenizer(bundle)
        vad_name = SpeechSettings.from_model_info(info, tokenizer).vad  # checked before it is looked up
        vad = load_vad(vad_name, options) if vad_name is not None else None
        pipeline = cls(encoder=sessions[COMPONENT], preprocessor=AudioPreprocessor(audio),
                       tokenizer=tokenizer, model_info=info, name=bundle.name, vad=vad)
        pipeline.bundle = bundle
        return pipeline

    def __repr__(self) -> str:
        return f"SpeechPipeline({self.name!r}, provider={self.encoder.provider})"

    def transcribe(self, audio: Any, sample_rate: int | None = None) -> TranscriptResult | list[TranscriptResult]:
        """Transcribe one clip or a list of clips (one batch).

        Args:
            audio: a path, the bytes of a WAV file, or a (samples,) / (samples, channels) float
                array in [-1, 1] (or int16 PCM); or a list of them.
            sample_rate: Hz of array inputs (required for arrays; files carry their own).

        Returns:
            A TranscriptResult, or a list of them for a list of clips.

        Raises:
            InputError: unreadable, empty, too short or too long audio.
        """
        clips, single = audio_batch(audio)
        results = self._transcribe(clips, sample_rate)
        return results[0] if single else results

    def command(self, audio: Any, sample_rate: int | None = None, *,
                reject_threshold: float | None = None) -> CommandResult | list[CommandResult]:
        """Transcribe and parse spoken commands.

        ``intent`` is None when the words are outside the grammar, and when the command is
        rejected (``rejected`` True): no speech in the clip (``reject_reason`` "no_speech"), or a
        ``score`` (``command_score``) below ``reject_threshold`` ("low_confidence"; default: the
        pipeline's ``reject_threshold``; 0 keeps every parsed intent).
        """
        threshold = self.reject_threshold if reject_threshold is None else check_reject_threshold(reject_threshold)
        clips, single = audio_batch(audio)
        results = [self._gate(t, threshold) for t in self._transcribe(clips, sample_rate)]
        return results[0] if single else results

    def _gate(self, transcript: TranscriptResult, threshold: float) -> CommandResult:
        """The command of one transcript, kept only when the evidence holds."""
        if transcript.rejected:
            return CommandResult.unheard(transcript)
        intent = self.intent_parser.parse(transcript.text)
        score = command_score(transcript.confidence, transcript.grammar_gap)
        if intent is not None and score < threshold:
            return CommandResult(transcript, None, rejected=True, reject_reason=LOW_CONFIDENCE, score=score)
        return CommandResult(transcript, intent, score=score)

    def _transcribe(self, clips: list[Any], sample_rate: int | None) -> list[TranscriptResult]:
        """The data path: load, VAD, log-mel, encode, CTC best path, detokenize, lexicon, grammar."""
        timer = StageTimer()
        waves = self.preprocessor.waveforms(clips, sample_rate)  # (samples,) float32 mono each
        ratios: list[float | None] = [None] * len(waves)
        speech = list(range(len(waves)))  # the clips the encoder hears
        if self.vad is not None:
            activity = [self.vad.activity(w, self.sample_rate) for w in waves]
            ratios = [a.speech_ratio for a in activity]
            speech = [i for i, a in enumerate(activity) if self.vad.has_speech(a)]
        timer.lap("preprocess")
        decoded: dict[int, Decoded] = {}
        if speech:
            features, lengths = batch_features([self.preprocessor.features(waves[i]) for i in speech])  # (N, n_mels, F), (N,)
            self._check_length(int(lengths.max()))
            timer.lap("preprocess")
            out = self.encoder.run({"features": features.astype(np.float32, copy=False), "feature_lengths": lengths})
            timer.lap("encode")
            decoded = dict(zip(speech, self.decode_clips(out["log_probs"], out["output_lengths"])))
        timer.lap("postprocess")
        timings = timer.timings(len(clips))
        results = []
        for i, w in enumerate(waves):
            duration = len(w) / self.sample_rate
            if i not in decoded:
                results.append(TranscriptResult("", (), 0.0, duration, timings, rejected=True, reject_reason=NO_SPEECH,
                                                speech_ratio=ratios[i]))
                continue
            d = decoded[i]
            results.append(TranscriptResult(d.text, d.tokens, d.confidence, duration, timings, raw_text=d.raw_text,
                                            in_grammar=d.in_grammar, speech_ratio=ratios[i], grammar_gap=d.grammar_gap))
        return results

    def decode(self, log_probs: np.ndarray,
               out_lengths: np.ndarray) -> list[tuple[str, tuple[int, ...], float, bool | None, str]]:
        """``decode_clips`` as (text, token ids, confidence, in_grammar, raw text) per clip."""
        return [tuple(d[:5]) for d in self.decode_clips(log_probs, out_lengths)]

    def decode_clips(self, log_probs: np.ndarray, out_lengths: np.ndarray) -> list[Decoded]:
        """The postprocessing of encoder outputs log_probs (N, out_frames, V) float32 and out_lengths (N,)
        int64: CTC best path, detokenize, lexicon, then the grammar. One Decoded per clip."""
        hyps = ctc_greedy_decode(log_probs, out_lengths, self.settings.blank_id)
        raw = [self.tokenizer.decode(list(h.tokens)) for h in hyps]
        lexicon = self.settings.lexicon if self.use_lexicon else None
        free = [lexicon.correct(text) for text in raw] if lexicon is not None else raw
        decoded = [Decoded(text, h.tokens, h.confidence, None, r, None) for text, h, r in zip(free, hyps, raw)]
        grammar = self.grammar_decoder if self.use_grammar else None
        if grammar is not None:
            decoded = [self._in_grammar(grammar, log_probs[i, : hyps[i].num_frames], decoded[i])
                       for i in range(len(hyps))]
        return decoded

    def _in_grammar(self, grammar: GrammarDecoder, log_probs: np.ndarray, free: Decoded) -> Decoded:
        """One clip's (frames, V) log-probs: the grammar's best sentence, or the free transcript when the
        speech is outside the grammar."""
        best = grammar.decode(log_probs)
        gap = best.gap_per_token if math.isfinite(best.gap_per_token) else None
        if not best.in_grammar:
            return free._replace(in_grammar=False, grammar_gap=gap)
        return Decoded(self.tokenizer.decode(list(best.tokens)), best.tokens, best.confidence, True, free.raw_text, gap)

    def _check_length(self, frames: int) -> None:
        limit = self.settings.max_frames
        if limit is not None and frames > limit:
            hop_s = self.preprocessor.config.hop_length / self.sample_rate
            raise InputError(
                f"the audio is {frames * hop_s:.1f} s long ({frames} feature frames) but this model takes at most "
                f"{limit * hop_s:.1f} s ({limit} frames); split it into shorter clips (tinymm listen does this)"
            )
