"""Log-mel features in numpy by an AudioConfig, and the AudioPreprocessor that batches them.

The transform follows torch.stft / torchaudio / librosa conventions, so that a model trained on
features from this module (train/ calls ``AudioPreprocessor.features``) sees the same numbers
at serving time:

1. center: reflect-pad ``n_fft // 2`` samples on both sides (as ``torch.stft(center=True,
   pad_mode="reflect")``);
2. frames of ``n_fft`` samples every ``hop_length`` samples, times a periodic window of
   ``win_length`` samples zero-padded, centred, to ``n_fft`` (as torch.stft pads its window);
3. one real DFT over the frame matrix (OpenCV's, row-wise), ``|X| ** power``;
4. a triangular mel filterbank (slaney or htk scale; slaney area normalization or unit peak),
   as ``librosa.filters.mel`` and ``torchaudio.functional.melscale_fbanks`` build it, applied
   over each filter's nonzero bins only (no BLAS call, so no thread contention);
5. clamp to ``log_floor``, then log10 or ln;
6. normalization: ``whisper`` clamps to ``max - 8`` then maps x to ``(x + 4) / 4`` (the 8 and 4 are
   in the units of the chosen log); ``utterance`` subtracts each band's mean over time and divides
   by its standard deviation plus ``UTTERANCE_EPS``; ``none`` leaves the log energies.

Whisper's front end (``pad_to_seconds=30``, ``drop_last_frame=True``) first pads the clip with zeros
or trims it to exactly 30 s, and drops the STFT's last frame, so every window gives (n_mels, 3000)
features, the ``max - 8`` clamp taken over those 3000 frames (as openai/whisper's
``log_mel_spectrogram(pad_or_trim(audio))`` and transformers' WhisperFeatureExtractor). Other
configs keep the clip's own length and every frame.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tinymm.errors import InputError
from tinymm.preprocess.audio_io import AudioSource, load_audio, resample, to_mono
from tinymm.preprocess.config import AudioConfig

logger = logging.getLogger(__name__)

FEATURE_PAD_VALUE = 0.0  # fills the frames after a shorter clip's end in a batch
UTTERANCE_EPS = 1e-5  # added to each band's standard deviation in utterance normalization
WHISPER_DYNAMIC_RANGE = 8.0  # log units kept below the loudest value
WHISPER_OFFSET = 4.0  # whisper maps x to (x + WHISPER_OFFSET) / WHISPER_SCALE
WHISPER_SCALE = 4.0

# Mel scales. HTK: mel = 2595 * log10(1 + hz / 700). Slaney (librosa default, Auditory Toolbox):
# linear below 1 kHz at 200/3 Hz per mel, logarithmic above with 27 mels per factor of 6.4.
HTK_MEL_FACTOR = 2595.0
HTK_CORNER_HZ = 700.0
SLANEY_HZ_PER_MEL = 200.0 / 3.0
SLANEY_LOG_START_HZ = 1000.0
SLANEY_LOG_START_MEL = SLANEY_LOG_START_HZ / SLANEY_HZ_PER_MEL  # 15 mels
SLANEY_LOG_STEP = math.log(6.4) / 27.0  # ln(hz) per mel above 1 kHz


def hz_to_mel(hz: np.ndarray | float, scale: str) -> np.ndarray:
    """Frequencies in Hz (any shape) -> mels (float64, same shape) on the ``slaney`` or ``htk`` scale."""
    hz = np.asarray(hz, dtype=np.float64)
    if scale == "htk":
        return HTK_MEL_FACTOR * np.log10(1.0 + hz / HTK_CORNER_HZ)
    linear = hz / SLANEY_HZ_PER_MEL
    above = np.maximum(hz, SLANEY_LOG_START_HZ) / SLANEY_LOG_START_HZ
    log_part = SLANEY_LOG_START_MEL + np.log(above) / SLANEY_LOG_STEP
    return np.where(hz >= SLANEY_LOG_START_HZ, log_part, linear)


def mel_to_hz(mels: np.ndarray | float, scale: str) -> np.ndarray:
    """Mels (any shape) -> Hz (float64, same shape); the inverse of ``hz_to_mel``."""
    mels = np.asarray(mels, dtype=np.float64)
    if scale == "htk":
        return HTK_CORNER_HZ * (10.0 ** (mels / HTK_MEL_FACTOR) - 1.0)
    linear = mels * SLANEY_HZ_PER_MEL
    log_part = SLANEY_LOG_START_HZ * np.exp(SLANEY_LOG_STEP * (mels - SLANEY_LOG_START_MEL))
    return np.where(mels >= SLANEY_LOG_START_MEL, log_part, linear)


def mel_filterbank(config: AudioConfig) -> np.ndarray:
    """Triangular mel filters for ``config``: (n_mels, n_fft // 2 + 1) float32.

    Filter edges are ``n_mels + 2`` points evenly spaced in mels between f_min and f_max; FFT bin
    k sits at ``k * sample_rate / n_fft`` Hz. With ``mel_norm="slaney"`` each filter is scaled by
    ``2 / (upper edge - lower edge in Hz)`` (unit area); with ``"none"`` each peaks at 1.
    """
    n_freqs = config.n_fft // 2 + 1
    fft_hz = np.linspace(0.0, config.sample_rate / 2, n_freqs)  # (n_freqs,)
    mel_min, mel_max = hz_to_mel(config.f_min, config.mel_scale), hz_to_mel(config.f_max, config.mel_scale)
    edges_mel = np.linspace(mel_min, mel_max, config.n_mels + 2)
    edges_hz = mel_to_hz(edges_mel, config.mel_scale)  # (n_mels + 2,)
    widths = np.diff(edges_hz)  # (n_mels + 1,)
    ramps = edges_hz[:, None] - fft_hz[None, :]  # (n_mels + 2, n_freqs)
    rising = -ramps[:-2] / widths[:-1, None]  # (n_mels, n_freqs)
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    if config.mel_norm == "slaney":
        weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    empty = np.flatnonzero(weights.max(axis=1) == 0)
    if empty.size:
        logger.warning(
            "mel filters %s have no FFT bin (n_mels=%d is too many for n_fft=%d); those bands stay at log_floor",
            empty.tolist(), config.n_mels, config.n_fft,
        )
    return weights.astype(np.float32)


def _banded(filterbank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each filter's contiguous run of FFT bins, padded to the widest run.

    Returns (n_mels, width) int64 bin indices and (n_mels, width) float32 weights (0 in the
    padding), so that ``mel[m] = sum_w weights[m, w] * power[bins[m, w]]``.
    """
    runs = []
    for row in filterbank:
        nonzero = np.flatnonzero(row)
        runs.append((int(nonzero[0]), int(nonzero[-1]) + 1) if nonzero.size else (0, 0))
    width = max(1, max(hi - lo for lo, hi in runs))
    bins = np.zeros((len(runs), width), dtype=np.int64)
    weights = np.zeros((len(runs), width), dtype=np.float32)
    for m, (lo, hi) in enumerate(runs):
        bins[m, : hi - lo] = np.arange(lo, hi)
        weights[m, : hi - lo] = filterbank[m, lo:hi]
    return bins, weights


def analysis_window(config: AudioConfig) -> np.ndarray:
    """The periodic window of win_length samples zero-padded, centred, to (n_fft,) float32."""
    n = config.win_length
    phase = 2.0 * np.pi * np.arange(n) / n  # periodic: the window's period is n, not n - 1
    if config.window == "hann":
        window = 0.5 - 0.5 * np.cos(phase)
    else:  # hamming, with torch.hamming_window's default coefficients
        window = 0.54 - 0.46 * np.cos(phase)
    padded = np.zeros(config.n_fft, dtype=np.float64)
    left = (config.n_fft - n) // 2
    padded[left : left + n] = window
    return padded.astype(np.float32)


def min_samples(config: AudioConfig) -> int:
    """Fewest samples that give one frame (reflect padding needs more samples than it pads).

    With ``pad_to_seconds`` any clip is padded to that length first, so the fewest is 1;
    ``drop_last_frame`` needs one frame more.
    """
    if config.pad_to_seconds is not None:
        return 1
    one_frame = config.n_fft // 2 + 1 if config.center else config.n_fft
    if not config.drop_last_frame:
        return one_frame
    two_frames = config.hop_length if config.center else config.n_fft + config.hop_length
    return max(one_frame, two_frames)  # one frame is left after the drop


def window_samples(config: AudioConfig) -> int | None:
    """Samples every clip is padded or trimmed to (``pad_to_seconds`` at sample_rate); None: its own length."""
    if config.pad_to_seconds is None:
        return None
    return int(round(config.pad_to_seconds * config.sample_rate))


def frame_count(num_samples: int, config: AudioConfig) -> int:
    """Number of feature frames for a clip of num_samples at config.sample_rate."""
    fixed = window_samples(config)
    num_samples = num_samples if fixed is None else fixed
    padded = num_samples + 2 * (config.n_fft // 2) if config.center else num_samples
    return 1 + (padded - config.n_fft) // config.hop_length - int(config.drop_last_frame)


def batch_features(features: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-clip features into one batch, padding shorter clips with FEATURE_PAD_VALUE.

    Args:
        features: N arrays of shape (n_mels, frames_i), same n_mels and dtype.

    Returns:
        (N, n_mels, max frames_i) array of the inputs' dtype, and the frame counts (N,) int64.
    """
    if not features:
        raise InputError("got an empty batch of audio features; pass at least one clip")
    lengths = np.array([f.shape[1] for f in features], dtype=np.int64)
    out = np.full((len(features), features[0].shape[0], int(lengths.max())), FEATURE_PAD_VALUE, dtype=features[0].dtype)
    for i, f in enumerate(features):
        out[i, :, : f.shape[1]] = f
    return out, lengths


def audio_batch(audio: AudioSource | Sequence[AudioSource]) -> tuple[list[AudioSource], bool]:
    """(clips, whether one clip was given) of one ``load_audio`` source or a list/tuple of them.

    Raises:
        InputError: an empty list.
    """
    if isinstance(audio, (list, tuple)):
        if not audio:
            raise InputError("got an empty list of audio clips; pass at least one")
        return list(audio), False
    return [audio], True


class AudioPreprocessor:
    """Turns audio into the (N, n_mels, frames) log-mel batch an AudioConfig describes.

    The window and the mel filterbank are computed once here. ``__call__`` decodes, mixes to
    mono and resamples to config.sample_rate; ``features`` is the transform alone, for one
    decoded mono waveform (train/ calls it, so training and serving share the code).
    """

    def __init__(self, config: AudioConfig) -> None:
        if not isinstance(config, AudioConfig):
            raise TypeError(f"config must be an AudioConfig, got {type(config).__name__}")
        self.config = config
        self.window = analysis_window(config)  # (n_fft,) float32
        self.filterbank = mel_filterbank(config)  # (n_mels, n_fft // 2 + 1) float32
        # The filters are narrow bands: apply them as a gather and a short weighted sum rather than
        # a dense matmul, whose BLAS threads slow it down tenfold when other work loads the CPU.
        self._band_bins, self._band_weights = _banded(self.filterbank)  # (n_mels, width) each
        for table in (self.window, self.filterbank):
            table.flags.writeable = False  # computed once from the config; read-only so they cannot drift
        self._dtype = np.dtype(config.dtype)
        self._log = np.log10 if config.log == "log10" else np.log
        self._min_samples = min_samples(config)
        self._window_samples = window_samples(config)  # None: every clip keeps its own length

    def waveform(self, source: AudioSource, sample_rate: int | None = None) -> np.ndarray:
        """Any ``load_audio`` source -> (samples,) float32 mono at config.sample_rate.

        ``sample_rate`` is the rate of an array source (required for arrays, unused for files).
        """
        is_array = isinstance(source, np.ndarray)
        samples, rate = load_audio(
            source, sample_rate=sample_rate if is_array else None, max_seconds=self.config.max_seconds
        )
        return resample(to_mono(samples), rate, self.config.sample_rate)

    def waveforms(self, clips: Sequence[AudioSource], sample_rate: int | None = None) -> list[np.ndarray]:
        """``waveform`` of each clip: a list of (samples,) float32 mono arrays at config.sample_rate.

        Raises:
            InputError: as ``waveform``, naming the clip's position when there are several.
        """
        waves = []
        for i, clip in enumerate(clips):
            try:
                waves.append(self.waveform(clip, sample_rate))
            except InputError as e:
                if len(clips) == 1:
                    raise
                raise InputError(f"clip {i} of the batch of {len(clips)}: {e}") from e
        return waves

    def _check(self, waveform: np.ndarray) -> np.ndarray:
        if not isinstance(waveform, np.ndarray) or waveform.ndim != 1:
            shape = getattr(waveform, "shape", type(waveform).__name__)
            raise InputError(f"features() needs a (samples,) mono waveform, got {shape}; use to_mono() first")
        if waveform.dtype.kind != "f":
            raise InputError(
                f"features() needs float samples in [-1, 1], got dtype {waveform.dtype}; "
                "decode integer PCM with load_audio() first"
            )
        n, rate = waveform.shape[0], self.config.sample_rate
        if n < self._min_samples:
            raise InputError(
                f"audio has {n} samples ({n / rate * 1000:.1f} ms at {rate} Hz) but one frame needs at least "
                f"{self._min_samples} (n_fft={self.config.n_fft}, center={self.config.center}); pass a longer clip"
            )
        if n > self.config.max_samples:
            raise InputError(
                f"audio is {n / rate:.2f} s long ({n} samples at {rate} Hz), above the cap of "
                f"{self.config.max_seconds} s; split it into chunks, or raise max_seconds"
            )
        waveform = np.ascontiguousarray(waveform, dtype=np.float32)
        if not np.isfinite(waveform).all():
            raise InputError("audio contains NaN or infinite samples; pass finite values in [-1, 1]")
        return waveform

    def _pad_or_trim(self, waveform: np.ndarray) -> np.ndarray:
        """(samples,) -> (window_samples,): zeros appended, or the end cut (whisper's pad_or_trim)."""
        size = self._window_samples
        if size is None or waveform.shape[0] == size:
            return waveform
        out = np.zeros(size, dtype=np.float32)
        kept = min(size, waveform.shape[0])
        out[:kept] = waveform[:kept]
        return out

    def features(self, waveform: np.ndarray) -> np.ndarray:
        """One decoded mono waveform at config.sample_rate -> log-mel features.

        Args:
            waveform: (samples,) float, normally in [-1, 1].

        Returns:
            (n_mels, frame_count(samples)) array of config.dtype: (n_mels, pad_to_seconds *
            sample_rate / hop_length) with Whisper's settings, whatever the clip's length.

        Raises:
            InputError: not 1-D float, too short for one frame, empty, longer than max_seconds, NaN/inf.
        """
        cfg = self.config
        x = self._pad_or_trim(self._check(waveform))
        if cfg.center:
            x = np.pad(x, cfg.n_fft // 2, mode="reflect")
        frames = sliding_window_view(x, cfg.n_fft)[:: cfg.hop_length]  # (T, n_fft), a view
        if cfg.drop_last_frame:
            frames = frames[:-1]  # before the max - 8 clamp, which whisper takes over the kept frames
        # OpenCV's DFT over the rows: 3-5x faster than np.fft.rfft here on float32 frames, same values
        # to float32 rounding. Complex output is (T, n_fft, 2); the first n_fft // 2 + 1 bins are the
        # one-sided spectrum that rfft returns.
        spectrum = cv2.dft(frames * self.window, flags=cv2.DFT_ROWS | cv2.DFT_COMPLEX_OUTPUT)
        one_sided = spectrum[:, : cfg.n_fft // 2 + 1]  # (T, n_fft // 2 + 1, 2) float32
        power = np.square(one_sided[..., 0])
        power += np.square(one_sided[..., 1])  # |X| ** 2, float32
        if cfg.power != 2.0:
            power **= cfg.power / 2.0
        power_t = np.ascontiguousarray(power.T)  # (n_fft // 2 + 1, T)
        # mel = filterbank @ power_t, over each filter's nonzero bins only.
        mel = np.einsum("mwt,mw->mt", power_t[self._band_bins], self._band_weights)  # (n_mels, T) float32
        np.maximum(mel, cfg.log_floor, out=mel)
        self._log(mel, out=mel)
        if cfg.normalization == "whisper":
            np.maximum(mel, mel.max() - WHISPER_DYNAMIC_RANGE, out=mel)
            mel += WHISPER_OFFSET
            mel *= 1.0 / WHISPER_SCALE
        elif cfg.normalization == "utterance":
            mean = mel.mean(axis=1, keepdims=True)
            std = mel.std(axis=1, keepdims=True)
            mel -= mean
            mel /= std + UTTERANCE_EPS
        return mel if self._dtype == np.float32 else mel.astype(self._dtype)

    def __call__(
        self, audio: AudioSource | Sequence[AudioSource], sample_rate: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One clip or a batch -> padded log-mel features and frame counts.

        Args:
            audio: one ``load_audio`` source (path, WAV bytes, (samples,) or (samples, channels)
                array) or a list/tuple of them. Multi-channel audio is mixed to mono and every
                clip is resampled to config.sample_rate.
            sample_rate: Hz of the array sources (required when any source is an array).

        Returns:
            (N, n_mels, max frames) of config.dtype, frames after a shorter clip's end filled with
            FEATURE_PAD_VALUE; and the frame counts (N,) int64.

        Raises:
            InputError: as ``load_audio`` and ``features``, naming the clip's position in a batch.
        """
        clips = list(audio) if isinstance(audio, (list, tuple)) else [audio]
        if not clips:
            raise InputError("got an empty batch of audio; pass at least one clip")
        features = []
        for i, clip in enumerate(clips):
            try:
                features.append(self.features(self.waveform(clip, sample_rate)))
            except InputError as e:
                if len(clips) == 1:
                    raise
                raise InputError(f"clip {i} of the batch of {len(clips)}: {e}") from e
        return batch_features(features)
