"""What the pipelines return: small frozen results with the text, labels or scores and timings.

Every result has ``to_dict()``, a JSON-ready dict (the CLI's ``--json`` output and the stream
events are made of these). Timings are per stage, in milliseconds, measured with
``time.perf_counter``; a batched call shares one Timings among its results (``batch_size`` says
how many inputs shared it).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tinymm.robot.intent import Intent

MS_PER_S = 1000.0
MS_DECIMALS = 3  # timings are rounded to microseconds in to_dict()
SCORE_DECIMALS = 6


def _ms(value: float) -> float:
    return round(float(value), MS_DECIMALS)


def _score(value: float) -> float:
    return round(float(value), SCORE_DECIMALS)


@dataclass(frozen=True)
class Timings:
    """Wall time of each stage of one pipeline call, in milliseconds."""

    preprocess_ms: float = 0.0  # decode, resize and normalize images; load, resample and log-mel audio
    encode_ms: float = 0.0  # the image or speech encoder
    prefill_ms: float = 0.0  # the decoder over the prompt, up to the first generated token
    decode_ms: tuple[float, ...] = ()  # each later decoder step (one token per row), in order
    postprocess_ms: float = 0.0  # detokenize, CTC collapse, intent parsing, label ranking
    batch_size: int = 1  # inputs that shared these stages

    @property
    def decode_total_ms(self) -> float:
        return float(sum(self.decode_ms))

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.encode_ms + self.prefill_ms + self.decode_total_ms + self.postprocess_ms

    def to_dict(self) -> dict[str, Any]:
        steps = len(self.decode_ms)
        return {
            "preprocess_ms": _ms(self.preprocess_ms),
            "encode_ms": _ms(self.encode_ms),
            "prefill_ms": _ms(self.prefill_ms),
            "decode_ms": _ms(self.decode_total_ms),
            "decode_steps": steps,
            "decode_ms_per_token": _ms(self.decode_total_ms / steps) if steps else 0.0,
            "postprocess_ms": _ms(self.postprocess_ms),
            "total_ms": _ms(self.total_ms),
            "batch_size": self.batch_size,
        }


class StageTimer:
    """Collects stage times for one call: ``lap("encode")`` closes the stage that just ran."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self._ms: dict[str, float] = {}
        self.decode_ms: list[float] = []

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self._ms[stage] = self._ms.get(stage, 0.0) + (now - self._last) * MS_PER_S
        self._last = now

    def restart(self) -> None:
        """Start the next stage now, leaving the time since the last lap unaccounted (measured elsewhere)."""
        self._last = time.perf_counter()

    def add(self, stage: str, ms: float) -> None:
        """Account ``ms`` measured elsewhere (e.g. by the decoder) to ``stage``."""
        self._ms[stage] = self._ms.get(stage, 0.0) + ms

    def timings(self, batch_size: int) -> Timings:
        return Timings(
            preprocess_ms=self._ms.get("preprocess", 0.0),
            encode_ms=self._ms.get("encode", 0.0),
            prefill_ms=self._ms.get("prefill", 0.0),
            decode_ms=tuple(self.decode_ms),
            postprocess_ms=self._ms.get("postprocess", 0.0),
            batch_size=batch_size,
        )


def _rejection(result: Any) -> dict[str, Any]:
    """The domain check's part of a vision result's JSON: rejected, reject_reason, domain_score (when scored)."""
    out: dict[str, Any] = {"rejected": result.rejected, "reject_reason": result.reject_reason}
    if result.domain_score is not None:
        out["domain_score"] = _score(result.domain_score)
    return out


@dataclass(frozen=True)
class CaptionResult:
    """A caption of one image."""

    text: str
    token_ids: tuple[int, ...]  # generated ids, EOS excluded
    mean_logprob: float  # per generated token, EOS included; exp() of it is a confidence in (0, 1]
    finished: bool  # False when max_new_tokens cut the caption
    timings: Timings = field(default_factory=Timings)
    rejected: bool = False  # True: the frame is outside the model's domain (the text is only the model's guess)
    reject_reason: str | None = None  # "out_of_domain" (pipelines/domain_check.py); None when not rejected
    domain_score: float | None = None  # the domain check's distance; None when the bundle has no check

    @property
    def confidence(self) -> float:
        """exp(mean_logprob): the geometric mean of the generated tokens' probabilities, in (0, 1]."""
        return math.exp(self.mean_logprob)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "token_ids": list(self.token_ids),
            "confidence": _score(self.confidence),
            "finished": self.finished,
            **_rejection(self),
            "timings": self.timings.to_dict(),
        }


@dataclass(frozen=True)
class AnswerResult:
    """The answer to one question about one image."""

    question: str
    answer: str
    token_ids: tuple[int, ...]
    mean_logprob: float
    finished: bool
    timings: Timings = field(default_factory=Timings)
    truncated: bool = False  # True when the question was cut to fit the prompt budget (also logged)
    rejected: bool = False  # True: the frame is outside the model's domain (the text is only the model's guess)
    reject_reason: str | None = None  # "out_of_domain" (pipelines/domain_check.py); None when not rejected
    domain_score: float | None = None  # the domain check's distance; None when the bundle has no check

    @property
    def confidence(self) -> float:
        """exp(mean_logprob): the geometric mean of the generated tokens' probabilities, in (0, 1]."""
        return math.exp(self.mean_logprob)

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.answer,
            "token_ids": list(self.token_ids),
            "confidence": _score(self.confidence),
            "truncated": self.truncated,
            "finished": self.finished,
            **_rejection(self),
            "timings": self.timings.to_dict(),
        }


@dataclass(frozen=True)
class ClassifyResult:
    """The best labels of one image, best first."""

    labels: tuple[str, ...]  # the top_k labels
    scores: tuple[float, ...]  # cosine similarity of the image and label embeddings, in [-1, 1]
    # softmax of logit_scale * cosine over the whole label set; SigLIP bundles: sigmoid(logit_scale * cosine + bias)
    probabilities: tuple[float, ...]
    timings: Timings = field(default_factory=Timings)
    rejected: bool = False  # True: the frame is outside the model's domain (the text is only the model's guess)
    reject_reason: str | None = None  # "out_of_domain" (pipelines/domain_check.py); None when not rejected
    domain_score: float | None = None  # the domain check's distance; None when the bundle has no check

    @property
    def label(self) -> str:
        """The best label."""
        return self.labels[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "labels": [
                {"label": label, "score": _score(score), "probability": _score(probability)}
                for label, score, probability in zip(self.labels, self.scores, self.probabilities)
            ],
            **_rejection(self),
            "timings": self.timings.to_dict(),
        }


@dataclass(frozen=True)
class Segment:
    """A timed piece of a transcript (Whisper with timestamps)."""

    start: float  # seconds from the clip's start
    end: float  # seconds from the clip's start, >= start
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"start": round(self.start, MS_DECIMALS), "end": round(self.end, MS_DECIMALS), "text": self.text}


@dataclass(frozen=True)
class TranscriptResult:
    """The transcript of one audio clip.

    The optional fields are filled by the pipelines that know them (Whisper) and left out of
    ``to_dict`` when None, so the CTC pipeline's results read as before.
    """

    text: str
    token_ids: tuple[int, ...]  # labels of the text: the best path's (repeats merged, no blanks) or the grammar's
    confidence: float  # geometric mean over frames of the decoded path's label probability, in (0, 1]
    duration_s: float  # clip length at the model's sample rate
    timings: Timings = field(default_factory=Timings)
    raw_text: str | None = None  # the best path's spelling, before lexicon and grammar (None: same as text)
    in_grammar: bool | None = None  # True: the grammar's sentence; False: speech outside it, the free
    # transcript; None: no grammar decoding (the bundle has none, or use_grammar is off)
    language: str | None = None  # the language code decoded with (given or detected)
    no_speech_prob: float | None = None  # probability of no speech in the first 30 s window
    segments: tuple[Segment, ...] | None = None  # timed pieces, when timestamps were asked for
    windows: int | None = None  # 30 s windows decoded (more than 1 for long audio)
    rejected: bool = False  # True: no transcript was made, see reject_reason
    reject_reason: str | None = None  # "no_speech": the voice activity detector heard (almost) no speech
    speech_ratio: float | None = None  # fraction of the clip the VAD calls speech; None: no VAD ran
    grammar_gap: float | None = None  # nats per token the grammar path cost against the free path; None: no grammar

    def to_dict(self) -> dict[str, Any]:
        out = {
            "text": self.text,
            "raw_text": self.text if self.raw_text is None else self.raw_text,
            "in_grammar": self.in_grammar,
            "token_ids": list(self.token_ids),
            "confidence": _score(self.confidence),
            "duration_s": round(self.duration_s, MS_DECIMALS),
            "rejected": self.rejected,
            "reject_reason": self.reject_reason,
            "timings": self.timings.to_dict(),
        }
        if self.speech_ratio is not None:
            out["speech_ratio"] = _score(self.speech_ratio)
        if self.language is not None:
            out["language"] = self.language
        if self.no_speech_prob is not None:
            out["no_speech_prob"] = _score(self.no_speech_prob)
        if self.segments is not None:
            out["segments"] = [segment.to_dict() for segment in self.segments]
        if self.windows is not None:
            out["windows"] = self.windows
        return out


@dataclass(frozen=True)
class CommandResult:
    """A spoken command: its transcript and the intent parsed from it.

    ``intent`` is None when the words are outside the grammar, and when the command was rejected
    (``rejected`` True, ``reject_reason`` "no_speech" or "low_confidence").
    """

    transcript: TranscriptResult
    intent: Intent | None
    rejected: bool = False  # True: the evidence did not hold, intent is None
    reject_reason: str | None = None  # "no_speech" | "low_confidence"; None when not rejected
    score: float | None = None  # the evidence compared with reject_threshold, in [0, 1]; None: not scored

    @classmethod
    def unheard(cls, transcript: TranscriptResult) -> CommandResult:
        """The command of a rejected transcript (no speech): no intent, its reason, score 0."""
        return cls(transcript, None, rejected=True, reject_reason=transcript.reject_reason, score=0.0)

    @property
    def text(self) -> str:
        return self.transcript.text

    def to_dict(self) -> dict[str, Any]:
        out = {
            "transcript": self.transcript.text,
            "in_grammar": self.transcript.in_grammar,
            "intent": None if self.intent is None else self.intent.to_dict(),
            "confidence": _score(self.transcript.confidence),
            "duration_s": round(self.transcript.duration_s, MS_DECIMALS),
            "rejected": self.rejected,
            "reject_reason": self.reject_reason,
            "timings": self.transcript.timings.to_dict(),
        }
        if self.score is not None:
            out["score"] = _score(self.score)
        if self.transcript.speech_ratio is not None:
            out["speech_ratio"] = _score(self.transcript.speech_ratio)
        return out


@dataclass(frozen=True)
class SpokenAnswerResult:
    """A spoken question about an image: what was heard, the question understood, the answer.

    ``answer`` is None when the speech was not a question of the grammar (``intent`` is then
    None or a command).
    """

    command: CommandResult
    answer: AnswerResult | None

    @property
    def question(self) -> str | None:
        return None if self.answer is None else self.answer.question

    def to_dict(self) -> dict[str, Any]:
        heard = self.command.to_dict()
        return {
            "transcript": heard["transcript"],
            "intent": heard["intent"],
            "rejected": heard["rejected"],  # the speech was not trusted (no speech, low score): no question
            "reject_reason": heard["reject_reason"],
            "question": self.question,
            "answer": None if self.answer is None else self.answer.answer,
            "confidence": None if self.answer is None else _score(math.exp(self.answer.mean_logprob)),
            # The image outside the vision model's domain: the answer is only its guess.
            "answer_rejected": None if self.answer is None else self.answer.rejected,
            "answer_reject_reason": None if self.answer is None else self.answer.reject_reason,
            "timings": {
                "speech": heard["timings"],
                "vision": None if self.answer is None else self.answer.timings.to_dict(),
            },
        }
