"""Voice activity detection with Silero VAD (MIT), run by onnxruntime and numpy with its recurrent state.

The model reads audio in windows of ``chunk_samples`` (512 at 16 kHz, 32 ms) and returns, per
window, the probability that it holds speech. It is recurrent: each call takes the LSTM state the
previous one returned (``state``, (2, batch, 128) float32) and, since Silero v5, the last
``context_samples`` (64) samples of the previous window prepended to the new one. Silero's own
``OnnxWrapper`` (silero_vad/utils_vad.py) feeds it so, and ``VADStream`` does the same::

    input  = concat(context (1, 64), window (1, 512))   -> (1, 576) float32
    state  = the previous call's stateN (zeros at the start of a stream)
    sr     = sample rate, int64 scalar
    -> output (1, 1): speech probability; stateN (2, 1, 128): the next state
    context = input[:, -64:]

Whole clips (``speech_probs``) pad the last window with zeros, as ``OnnxWrapper.audio_forward`` does.
Every constant comes from the bundle's ``model`` object (export/LAYOUT.md, "VAD bundle"); tensor
names from the component's roles.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from tinymm.errors import BundleError, InputError

if TYPE_CHECKING:
    from tinymm.backends.base import Session
    from tinymm.bundle import Bundle
    from tinymm.pipelines.load_options import LoadOptions

logger = logging.getLogger(__name__)

COMPONENT = "vad"
DEFAULT_VAD_BUNDLE = "silero-vad"  # the VAD bundle shipped in tinymm/assets/bundles; speech pipelines load it
# role -> tensor name when the component declares no roles (Silero's own names)
DEFAULT_ROLES = {"audio": "input", "state": "state", "sample_rate": "sr", "speech_prob": "output", "next_state": "stateN"}
MS_PER_S = 1000.0


@dataclass(frozen=True)
class VADSettings:
    """The model's constants (the manifest's ``model`` object) and the decision rule's defaults."""

    sample_rate: int = 16000  # Hz the model listens at
    chunk_samples: int = 512  # samples per window (32 ms at 16 kHz)
    context_samples: int = 64  # samples of the previous window prepended to each one
    state_shape: tuple[int, ...] = (2, 1, 128)  # recurrent state for a batch of one
    # The decision rule (benchmarks/results/speech_rejection.md): lower than Silero's 0.5 / 0.35 / 250 ms,
    # which missed whispered and one-word commands; no non-speech clip of the calibration set had more
    # than one window (32 ms) above 0.4.
    threshold: float = 0.4  # a window with a higher probability is speech
    neg_threshold: float = 0.25  # inside speech, a window stays speech down to here (threshold - 0.15)
    min_speech_ms: float = 64.0  # a clip holds speech when at least this much of it is speech (2 windows)

    def __post_init__(self) -> None:
        for name in ("sample_rate", "chunk_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BundleError(f"VAD model.{name}={value!r} must be a positive integer")
        if isinstance(self.context_samples, bool) or not isinstance(self.context_samples, int) or not (
                0 <= self.context_samples < self.chunk_samples):
            raise BundleError(f"VAD model.context_samples={self.context_samples!r} must be in [0, chunk_samples)")
        if not 0.0 < self.neg_threshold <= self.threshold < 1.0:
            raise BundleError(f"VAD thresholds {self.neg_threshold!r} <= {self.threshold!r} must lie in (0, 1)")
        if self.min_speech_ms < 0:
            raise BundleError(f"VAD min_speech_ms={self.min_speech_ms!r} must be >= 0")

    @property
    def window_s(self) -> float:
        return self.chunk_samples / self.sample_rate

    @classmethod
    def from_model_info(cls, info: Mapping[str, Any]) -> VADSettings:
        known = {k: info[k] for k in ("sample_rate", "chunk_samples", "context_samples", "threshold",
                                      "neg_threshold", "min_speech_ms") if k in info}
        if "state_shape" in info:
            known["state_shape"] = tuple(info["state_shape"])
        try:
            return cls(**known)
        except TypeError as e:
            raise BundleError(f"VAD bundle model object {dict(info)!r} is malformed: {e}") from e


@dataclass(frozen=True)
class SpeechActivity:
    """What the VAD found in one clip."""

    probs: np.ndarray  # (windows,) float32 speech probability per window
    speech_s: float  # seconds of speech (windows above threshold, with hysteresis)
    duration_s: float  # seconds of audio

    @property
    def speech_ratio(self) -> float:
        """Fraction of the clip that is speech, in [0, 1]."""
        return 0.0 if self.duration_s <= 0 else min(1.0, self.speech_s / self.duration_s)


class VADStream:
    """The recurrent state of one audio stream: ``accept`` (samples,) float32 at the model's rate,
    get the (windows,) speech probabilities of the windows it completed."""

    def __init__(self, vad: SileroVAD) -> None:
        self.vad = vad
        s = vad.settings
        self._state = np.zeros(s.state_shape, dtype=np.float32)
        self._context = np.zeros((1, s.context_samples), dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def window(self, window: np.ndarray) -> float:
        """Speech probability of one (chunk_samples,) window, advancing the state."""
        x = np.concatenate([self._context, window.reshape(1, -1).astype(np.float32, copy=False)], axis=1)
        r = self.vad.roles
        out = self.vad.session.run({r["audio"]: x, r["state"]: self._state, r["sample_rate"]: self.vad.sr_feed})
        self._state = out[r["next_state"]]
        self._context = x[:, x.shape[1] - self._context.shape[1]:]
        return float(out[r["speech_prob"]].reshape(-1)[0])

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """(samples,) float audio in -> (windows,) float32 probabilities of the windows it completed."""
        chunk = self.vad.settings.chunk_samples
        data = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32).reshape(-1)])
        whole = data.shape[0] // chunk * chunk
        self._pending = data[whole:]
        return np.array([self.window(data[i:i + chunk]) for i in range(0, whole, chunk)], dtype=np.float32)

    def flush(self) -> np.ndarray:
        """End of stream: the last partial window, zero-padded (empty when none is pending)."""
        if not self._pending.size:
            return np.zeros(0, dtype=np.float32)
        padded = np.zeros(self.vad.settings.chunk_samples, dtype=np.float32)
        padded[: self._pending.size] = self._pending
        self._pending = np.zeros(0, dtype=np.float32)
        return np.array([self.window(padded)], dtype=np.float32)


class SileroVAD:
    """Silero VAD from a bundle (``from_bundle``, or ``tinymm.load("silero-vad")``)."""

    family = "speech"

    def __init__(self, session: Session, settings: VADSettings | None = None, roles: Mapping[str, str] | None = None,
                 name: str = "silero-vad") -> None:
        self.session, self.name = session, name
        self.settings = settings or VADSettings()
        self.roles = {**DEFAULT_ROLES, **(roles or {})}
        self.sr_feed = np.array(self.settings.sample_rate, dtype=np.int64)
        self.bundle: Bundle | None = None

    @classmethod
    def from_bundle(cls, bundle: Bundle, options: LoadOptions | None = None) -> SileroVAD:
        """Open the ``vad`` component of a VAD bundle; always fp32 (the model is 1 MB, int8 gains nothing)."""
        from tinymm.pipelines.load_options import LoadOptions
        from tinymm.pipelines.sessions import open_sessions

        base = options or LoadOptions()
        # One thread and the CPU: 32 ms windows one at a time are latency-bound, not compute-bound.
        cpu = LoadOptions(backend=base.backend, provider="cpu", precision="fp32", threads=1,
                          verify_checksums=base.verify_checksums)
        session = open_sessions(bundle, (COMPONENT,), (), cpu)[COMPONENT]
        vad = cls(session, VADSettings.from_model_info(bundle.manifest.model),
                  bundle.manifest.components[COMPONENT].roles, bundle.name)
        vad.bundle = bundle
        return vad

    def __repr__(self) -> str:
        return f"SileroVAD({self.name!r})"

    @property
    def sample_rate(self) -> int:
        return self.settings.sample_rate

    def stream(self) -> VADStream:
        """A fresh stream (zero state and context)."""
        return VADStream(self)

    def speech_probs(self, samples: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        """(windows,) float32 speech probabilities of a (samples,) float clip in [-1, 1]; resampled to
        the model's rate when ``sample_rate`` differs; the last window is zero-padded."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if sample_rate is not None and sample_rate != self.sample_rate:
            from tinymm.preprocess.audio_io import resample

            samples = resample(samples, sample_rate, self.sample_rate)
        stream = self.stream()
        return np.concatenate([stream.accept(samples), stream.flush()])

    def activity(self, samples: np.ndarray, sample_rate: int | None = None) -> SpeechActivity:
        """The speech found in one (samples,) float clip in [-1, 1] at ``sample_rate`` (default: the model's)."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise InputError(f"VAD takes (samples,) mono audio, got shape {samples.shape}")
        probs = self.speech_probs(samples, sample_rate)
        rate = sample_rate or self.sample_rate
        return SpeechActivity(probs, float(speech_windows(probs, self.settings).sum()) * self.settings.window_s,
                              samples.shape[0] / rate)

    def has_speech(self, activity: SpeechActivity) -> bool:
        """True when the clip holds at least ``min_speech_ms`` of speech."""
        return activity.speech_s * MS_PER_S >= self.settings.min_speech_ms


def speech_windows(probs: np.ndarray, settings: VADSettings) -> np.ndarray:
    """(windows,) bool: speech with Silero's hysteresis (enter above threshold, leave below neg_threshold)."""
    out = np.zeros(probs.shape[0], dtype=bool)
    inside = False
    for i, p in enumerate(probs):
        inside = p >= settings.threshold or (inside and p >= settings.neg_threshold)
        out[i] = inside
    return out


def load_vad(name: str = DEFAULT_VAD_BUNDLE, options: LoadOptions | None = None) -> SileroVAD:
    """The VAD bundle ``name`` (a path, or a shipped or user bundle name: tinymm.bundle.names), opened
    on the CPU. A speech bundle that names a VAD it cannot find is an error, not a silent downgrade:
    without it, noise would reach the command parser."""
    from tinymm.bundle import read_bundle
    from tinymm.bundle.errors import BundleNotFoundError
    from tinymm.bundle.names import resolve_bundle

    try:
        path = resolve_bundle(name)
    except BundleNotFoundError as e:
        raise BundleNotFoundError(
            f"the speech bundle names the VAD bundle {name!r} (manifest model.vad), which is not installed: {e}. "
            "Rebuild it with python scripts/make_vad_bundle.py, or reinstall tinymm"
        ) from e
    verify = True if options is None else options.verify_checksums
    return SileroVAD.from_bundle(read_bundle(path, verify_checksums=verify), options)
