"""Log-mel parity: tinymm's numpy front end against an independent torch reference.

The reference uses torch.stft (centre reflect padding, a periodic torch window) and a mel
filterbank written here from the slaney / htk formulas (as librosa.filters.mel defines them),
computed in float64. tinymm computes in float32; the required agreement is 1e-4 absolute.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tinymm.preprocess.audio import AudioPreprocessor
from tinymm.preprocess.config import AudioConfig

pytestmark = pytest.mark.requires_torch

TOLERANCE = 1e-4


def _hz_to_mel(hz: float, htk: bool) -> float:
    if htk:
        return 2595.0 * math.log10(1.0 + hz / 700.0)
    if hz < 1000.0:
        return 3.0 * hz / 200.0
    return 15.0 + math.log(hz / 1000.0) * 27.0 / math.log(6.4)


def _mel_to_hz(mel: float, htk: bool) -> float:
    if htk:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    if mel < 15.0:
        return 200.0 * mel / 3.0
    return 1000.0 * math.exp((mel - 15.0) * math.log(6.4) / 27.0)


def _reference_filterbank(cfg: AudioConfig):
    """(n_mels, n_fft // 2 + 1) float64 torch tensor, one triangle at a time."""
    import torch

    htk = cfg.mel_scale == "htk"
    n_freqs = cfg.n_fft // 2 + 1
    bin_hz = [k * cfg.sample_rate / cfg.n_fft for k in range(n_freqs)]
    lo, hi = _hz_to_mel(cfg.f_min, htk), _hz_to_mel(cfg.f_max, htk)
    edges = [_mel_to_hz(lo + (hi - lo) * i / (cfg.n_mels + 1), htk) for i in range(cfg.n_mels + 2)]
    fb = torch.zeros(cfg.n_mels, n_freqs, dtype=torch.float64)
    for m in range(cfg.n_mels):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        for k, f in enumerate(bin_hz):
            if left < f < right:
                w = (f - left) / (centre - left) if f <= centre else (right - f) / (right - centre)
                fb[m, k] = w * (2.0 / (right - left) if cfg.mel_norm == "slaney" else 1.0)
    return fb


def _reference_logmel(wave: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    import torch

    x = torch.from_numpy(wave.astype(np.float64))
    make_window = torch.hann_window if cfg.window == "hann" else torch.hamming_window
    window = make_window(cfg.win_length, periodic=True, dtype=torch.float64)
    spec = torch.stft(
        x, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length, window=window,
        center=cfg.center, pad_mode="reflect", return_complex=True,
    )  # (n_freqs, frames)
    power = spec.abs() ** cfg.power
    mel = _reference_filterbank(cfg) @ power
    mel = torch.clamp(mel, min=cfg.log_floor)
    mel = torch.log10(mel) if cfg.log == "log10" else torch.log(mel)
    if cfg.normalization == "whisper":
        mel = torch.maximum(mel, mel.max() - 8.0)
        mel = (mel + 4.0) / 4.0
    elif cfg.normalization == "utterance":
        mean = mel.mean(dim=1, keepdim=True)
        std = mel.std(dim=1, keepdim=True, unbiased=False)
        mel = (mel - mean) / (std + 1e-5)
    return mel.numpy()


def _test_signal(n: int, rate: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    t = np.arange(n) / rate
    tones = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3100 * t)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t)  # loudness varies so utterance std is not tiny
    return ((tones + 0.05 * rng.standard_normal(n)) * envelope).astype(np.float32)


CONFIGS = {
    "default-whisper": AudioConfig(),
    "512-128-htk-none-ln": AudioConfig(
        n_fft=512, hop_length=128, win_length=512, n_mels=40, mel_scale="htk", mel_norm="none",
        log="ln", normalization="none",
    ),
    "512-160-win400-slaney-utterance": AudioConfig(
        n_fft=512, hop_length=160, win_length=400, n_mels=80, normalization="utterance",
    ),
    "400-128-htk-slaneynorm-power1-band": AudioConfig(
        n_fft=400, hop_length=128, n_mels=40, mel_scale="htk", f_min=20.0, f_max=7600.0, power=1.0,
    ),
    "400-160-hamming-nocenter-none": AudioConfig(
        window="hamming", center=False, n_mels=40, normalization="none",
    ),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logmel_matches_torch_reference(name: str) -> None:
    cfg = CONFIGS[name]
    wave = _test_signal(int(1.5 * cfg.sample_rate) + 37, cfg.sample_rate)
    ours = AudioPreprocessor(cfg).features(wave)
    ref = _reference_logmel(wave, cfg)
    assert ours.shape == ref.shape
    assert ours.dtype == np.float32
    err = float(np.max(np.abs(ours.astype(np.float64) - ref)))
    assert err <= TOLERANCE, f"{name}: max abs error {err:.3g} > {TOLERANCE}"


@pytest.mark.parametrize("name", ["default-whisper", "512-128-htk-none-ln"])
def test_filterbank_matches_reference(name: str) -> None:
    from tinymm.preprocess.audio import mel_filterbank

    cfg = CONFIGS[name]
    ref = _reference_filterbank(cfg).numpy()
    ours = mel_filterbank(cfg)
    assert ours.shape == ref.shape == (cfg.n_mels, cfg.n_fft // 2 + 1)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)
