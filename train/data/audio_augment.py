"""Waveform augmentation for speech training data: speed, reverberation, silence, noise, gain.

``augment(wave, rng, config, babble=...)`` applies each augmentation with its probability from
``AugmentConfig``, in the order a microphone would see them: speed perturbation (the talker),
reverberation (the room), leading and trailing silence (the recording window), additive noise
(the environment, over the silence too), gain (the microphone level); then, if the peak
exceeds 1, a limiter scales the clip down to peak 1 (recorded as "limit") rather than letting
it clip. It returns the float32 waveform in [-1, 1] and a record of what was applied, with the
drawn parameters, for the dataset manifest. Everything is drawn from the ``rng`` passed in, so
a clip's augmentation is reproducible from its seed.

Definitions:

- SNR (dB) = 10 log10(P_speech / P_noise), powers being mean squares; P_speech is measured on
  the clip before silence is added, so padding does not change what the SNR means.
- Noise colors: white (flat spectrum), pink (power ~ 1/f), brown (power ~ 1/f^2), and babble: a
  mix of several other utterances (``babble`` callback; synthesized speech in the dataset).
- Reverberation: a synthetic room impulse response, a direct path followed by exponentially
  decaying Gaussian noise that falls 60 dB in RT60 seconds, its energy set by a drawn
  direct-to-reverberant ratio; convolved by FFT; the output is rescaled to the input's RMS and
  keeps the input's length.
- Speed perturbation by resampling (tempo and pitch change together, as in Kaldi's 0.9/1.0/1.1):
  a factor s > 1 makes the clip s times shorter.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from tinymm.preprocess.audio_io import resample

NOISE_KINDS = ("white", "pink", "brown", "babble")
RT60_DECAY_DB = 60.0  # RT60: the time for the reverberant energy to fall this many dB
DIRECT_PATH_GAIN = 1.0  # amplitude of the impulse response's first tap
EPS_POWER = 1e-12  # mean square below which a signal counts as silent
FULL_SCALE = 1.0  # largest sample magnitude of the output

BabbleSource = Callable[[np.random.Generator, int], np.ndarray]  # (rng, n_samples) -> (n_samples,) float32


def _check_interval(name: str, interval: tuple[float, float], low: float, high: float) -> None:
    if len(interval) != 2 or not low <= interval[0] <= interval[1] <= high:
        raise ValueError(f"augment.{name}={interval!r} must be (min, max) with {low} <= min <= max <= {high}")


@dataclass(frozen=True)
class AugmentConfig:
    """Probability and parameter range of each augmentation (ranges are drawn uniformly)."""

    sample_rate: int = 16000  # Hz of the waveforms given to augment()
    speed_prob: float = 0.3  # chance of speed perturbation
    speed: tuple[float, float] = (0.9, 1.1)  # speed factor; > 1 is faster and shorter
    reverb_prob: float = 0.2  # chance of reverberation
    rt60_s: tuple[float, float] = (0.1, 0.6)  # reverberation time, seconds
    drr_db: tuple[float, float] = (-3.0, 12.0)  # direct-to-reverberant energy ratio, dB (lower: farther, wetter)
    shift_prob: float = 0.7  # chance of adding leading and trailing silence
    lead_s: tuple[float, float] = (0.0, 0.4)  # leading silence, seconds
    trail_s: tuple[float, float] = (0.0, 0.4)  # trailing silence, seconds
    noise_prob: float = 0.6  # chance of additive noise
    # Speech-to-noise ratio, dB. Below 10 dB (and with babble) a 1-2M-parameter CTC model learned
    # several times slower on this data and never caught up in a CPU budget (train/RESULTS.md).
    snr_db: tuple[float, float] = (10.0, 40.0)
    noise_kinds: tuple[str, ...] = NOISE_KINDS  # drawn uniformly (babble only when a source is given)
    gain_prob: float = 0.5  # chance of a level change
    gain_db: tuple[float, float] = (-12.0, 6.0)  # level change, dB (a limiter keeps the peak <= 1)

    def __post_init__(self) -> None:
        if type(self.sample_rate) is not int or self.sample_rate <= 0:
            raise ValueError(f"augment.sample_rate={self.sample_rate!r} must be a positive integer (Hz)")
        for name in ("speed_prob", "reverb_prob", "shift_prob", "noise_prob", "gain_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.{name}={value!r} must be a probability in [0, 1]")
        _check_interval("speed", self.speed, 0.5, 2.0)
        _check_interval("rt60_s", self.rt60_s, 0.01, 5.0)
        _check_interval("drr_db", self.drr_db, -30.0, 40.0)
        _check_interval("lead_s", self.lead_s, 0.0, 10.0)
        _check_interval("trail_s", self.trail_s, 0.0, 10.0)
        _check_interval("snr_db", self.snr_db, -20.0, 100.0)
        _check_interval("gain_db", self.gain_db, -60.0, 30.0)
        unknown = sorted(set(self.noise_kinds) - set(NOISE_KINDS))
        if not self.noise_kinds or unknown:
            raise ValueError(
                f"augment.noise_kinds={self.noise_kinds!r} must be a non-empty subset of {list(NOISE_KINDS)}"
            )

    def to_dict(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in fields.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AugmentConfig":
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})


def _power(wave: np.ndarray) -> float:
    return float(np.mean(np.square(wave, dtype=np.float64))) if wave.size else 0.0


def colored_noise(kind: str, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise of shape (n_samples,) float32: "white", "pink" (1/f) or "brown" (1/f^2)."""
    white = rng.standard_normal(n_samples)
    if kind == "white":
        noise = white
    elif kind in ("pink", "brown"):
        spectrum = np.fft.rfft(white)
        freqs = np.arange(spectrum.size, dtype=np.float64)
        freqs[0] = 1.0  # keep the DC bin finite (its weight is then that of the first bin)
        exponent = 0.5 if kind == "pink" else 1.0  # amplitude ~ f^-exponent, power ~ f^-(2 exponent)
        noise = np.fft.irfft(spectrum / freqs**exponent, n=n_samples)
    else:
        raise ValueError(f"noise kind {kind!r} is not one of white, pink, brown (babble comes from a source)")
    noise = noise - noise.mean()
    return (noise / np.sqrt(max(_power(noise), EPS_POWER))).astype(np.float32)


def add_noise(wave: np.ndarray, noise: np.ndarray, snr_db: float, speech_power: float | None = None) -> np.ndarray:
    """``wave + k * noise`` with k chosen so that P_speech / P(k * noise) is ``snr_db``.

    wave, noise: (N,) float32 of equal length. ``speech_power`` defaults to the mean square of
    ``wave``. Returns (N,) float32, not clipped.
    """
    if wave.shape != noise.shape:
        raise ValueError(f"wave {wave.shape} and noise {noise.shape} must have the same shape")
    speech = _power(wave) if speech_power is None else speech_power
    noise_power = _power(noise)
    if speech < EPS_POWER or noise_power < EPS_POWER:
        return wave.astype(np.float32, copy=True)
    scale = np.sqrt(speech / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (wave + scale * noise).astype(np.float32)


def room_impulse_response(rt60_s: float, drr_db: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A synthetic impulse response of shape (round(rt60_s * sample_rate),) float32, unit energy.

    A direct-path tap, then Gaussian noise whose amplitude decays by RT60_DECAY_DB over rt60_s,
    scaled so that the direct-path energy is ``drr_db`` above the energy of the tail.
    """
    n_taps = max(2, int(round(rt60_s * sample_rate)))
    t = np.arange(1, n_taps) / sample_rate
    tail = rng.standard_normal(n_taps - 1) * 10.0 ** (-RT60_DECAY_DB / 20.0 * t / rt60_s)  # amplitude envelope
    tail *= np.sqrt(DIRECT_PATH_GAIN**2 / (np.sum(tail**2) * 10.0 ** (drr_db / 10.0)))
    rir = np.concatenate([[DIRECT_PATH_GAIN], tail])
    return (rir / np.sqrt(np.sum(rir**2))).astype(np.float32)


def reverberate(wave: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """(N,) convolved with the impulse response by FFT, cut to N samples, at the input's RMS."""
    n = wave.size + rir.size - 1
    n_fft = 1 << (n - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(wave, n_fft) * np.fft.rfft(rir, n_fft), n_fft)[: wave.size]
    wet_power = _power(wet)
    if wet_power < EPS_POWER:
        return wave.astype(np.float32, copy=True)
    return (wet * np.sqrt(_power(wave) / wet_power)).astype(np.float32)


def change_speed(wave: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """(N,) -> about (N / factor,) samples: played at ``sample_rate``, ``factor`` times faster."""
    # Read the clip as if recorded at sample_rate * factor (rounded to whole Hz) and resample it.
    return resample(wave, int(round(sample_rate * factor)), sample_rate)


def pad_silence(wave: np.ndarray, lead: int, trail: int) -> np.ndarray:
    """(N,) -> (lead + N + trail,) with zeros before and after."""
    return np.concatenate([np.zeros(lead, np.float32), wave.astype(np.float32), np.zeros(trail, np.float32)])


def augment(
    wave: np.ndarray, rng: np.random.Generator, config: AugmentConfig, babble: BabbleSource | None = None
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Augment one clip. wave: (N,) float at ``config.sample_rate``.

    Returns the augmented (M,) float32 clip in [-1, 1], never clipped (M differs from N with speed
    or silence)
    and the list of applied augmentations, e.g. ``[{"name": "noise", "kind": "pink", "snr_db":
    12.5}, ...]``. ``babble(rng, n)`` supplies n samples of background talk; without it, the
    "babble" noise kind is not drawn.
    """
    rate = config.sample_rate
    out = np.asarray(wave, dtype=np.float32)
    applied: list[dict[str, Any]] = []
    if rng.random() < config.speed_prob:
        factor = float(rng.uniform(*config.speed))
        out = change_speed(out, factor, rate)
        applied.append({"name": "speed", "factor": round(factor, 4)})
    if rng.random() < config.reverb_prob:
        rt60, drr = float(rng.uniform(*config.rt60_s)), float(rng.uniform(*config.drr_db))
        out = reverberate(out, room_impulse_response(rt60, drr, rate, rng))
        applied.append({"name": "reverb", "rt60_s": round(rt60, 4), "drr_db": round(drr, 3)})
    speech_power = _power(out)
    if rng.random() < config.shift_prob:
        lead = int(rng.uniform(*config.lead_s) * rate)
        trail = int(rng.uniform(*config.trail_s) * rate)
        out = pad_silence(out, lead, trail)
        applied.append({"name": "shift", "lead_samples": lead, "trail_samples": trail})
    kinds = [kind for kind in config.noise_kinds if kind != "babble" or babble is not None]
    if kinds and rng.random() < config.noise_prob:
        kind = kinds[int(rng.integers(len(kinds)))]
        snr = float(rng.uniform(*config.snr_db))
        noise = babble(rng, out.size) if kind == "babble" else colored_noise(kind, out.size, rng)
        out = add_noise(out, np.asarray(noise, dtype=np.float32), snr, speech_power=speech_power)
        applied.append({"name": "noise", "kind": kind, "snr_db": round(snr, 3)})
    if rng.random() < config.gain_prob:
        gain = float(rng.uniform(*config.gain_db))
        out = out * np.float32(10.0 ** (gain / 20.0))
        applied.append({"name": "gain", "gain_db": round(gain, 3)})
    peak = float(np.abs(out).max()) if out.size else 0.0
    if peak > FULL_SCALE:  # scale down rather than clip, as a recorder's limiter would
        out = out * np.float32(FULL_SCALE / peak)
        applied.append({"name": "limit", "gain_db": round(20.0 * np.log10(FULL_SCALE / peak), 3)})
    return np.clip(out, -FULL_SCALE, FULL_SCALE).astype(np.float32), applied
