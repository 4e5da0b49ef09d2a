"""Whisper's front end: tinymm's numpy log-mel with pad_to_seconds=30 and drop_last_frame against
transformers' WhisperFeatureExtractor (the reference Whisper checkpoints are served with), over
clips from 0.3 s to 35 s: speech-like noise, quiet, loud (clipped), tones, silence and a chirp.
"""

from __future__ import annotations

import numpy as np
import pytest

from tinymm.errors import InputError
from tinymm.preprocess.audio import AudioPreprocessor, frame_count, min_samples, window_samples
from tinymm.preprocess.config import AudioConfig

TOLERANCE = 1e-4  # absolute, on the normalised features (about 1/4 of a log10 unit each)
RATE = 16000
WINDOW_S = 30.0
WINDOW_FRAMES = 3000  # 30 s / 10 ms, the STFT's last frame dropped
WHISPER_AUDIO = AudioConfig(max_seconds=7200.0, pad_to_seconds=WINDOW_S, drop_last_frame=True)


def _clip(kind: str, seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * RATE))
    t = np.arange(n) / RATE
    if kind == "noise":
        x = 0.1 * rng.standard_normal(n)
    elif kind == "quiet":
        x = 1e-4 * rng.standard_normal(n)
    elif kind == "loud":
        x = np.clip(3.0 * rng.standard_normal(n), -1.0, 1.0)
    elif kind == "tone":
        x = 0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.2 * np.sin(2 * np.pi * 3100.0 * t)
    elif kind == "chirp":
        x = 0.4 * np.sin(2 * np.pi * (100.0 * t + 200.0 * t**2))
    elif kind == "bursts":  # syllable-like: noise gated at 4 Hz
        x = 0.3 * rng.standard_normal(n) * (np.sin(2 * np.pi * 4.0 * t) > 0)
    elif kind == "silence":
        x = np.zeros(n)
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


CLIPS = [
    ("noise", 0.3), ("quiet", 1.0), ("loud", 2.5), ("tone", 5.0), ("chirp", 12.0), ("bursts", 29.99),
    ("noise", 30.0), ("tone", 31.0), ("bursts", 35.0), ("silence", 4.0), ("loud", 0.3),
]


@pytest.fixture(scope="module")
def extractor():
    transformers = pytest.importorskip("transformers", reason="the reference is transformers' WhisperFeatureExtractor")
    return transformers.WhisperFeatureExtractor(feature_size=80, sampling_rate=RATE, hop_length=160, chunk_length=30)


@pytest.mark.parametrize(("kind", "seconds"), CLIPS)
def test_features_match_whisper_feature_extractor(extractor, kind: str, seconds: float) -> None:
    audio = _clip(kind, seconds, seed=int(seconds * 100))
    reference = extractor(audio, sampling_rate=RATE, return_tensors="np")["input_features"][0]  # (80, 3000)
    ours = AudioPreprocessor(WHISPER_AUDIO).features(audio)
    assert ours.shape == reference.shape == (80, WINDOW_FRAMES)
    assert ours.dtype == np.float32
    assert np.abs(ours - reference).max() <= TOLERANCE


def test_128_mel_bands_match_large_v3(extractor) -> None:
    import transformers

    reference_extractor = transformers.WhisperFeatureExtractor(feature_size=128)
    audio = _clip("bursts", 7.0, seed=7)
    reference = reference_extractor(audio, sampling_rate=RATE, return_tensors="np")["input_features"][0]
    ours = AudioPreprocessor(AudioConfig(n_mels=128, max_seconds=7200.0, pad_to_seconds=WINDOW_S,
                                         drop_last_frame=True)).features(audio)
    assert ours.shape == reference.shape == (128, WINDOW_FRAMES)
    assert np.abs(ours - reference).max() <= TOLERANCE


def test_every_length_gives_one_window_of_frames() -> None:
    pre = AudioPreprocessor(WHISPER_AUDIO)
    for samples in (1, 199, 4800, 480_000, 560_000):
        assert pre.features(np.full(samples, 0.01, dtype=np.float32)).shape == (80, WINDOW_FRAMES)
    assert frame_count(1, WHISPER_AUDIO) == frame_count(10**7, WHISPER_AUDIO) == WINDOW_FRAMES
    assert window_samples(WHISPER_AUDIO) == 480_000 and min_samples(WHISPER_AUDIO) == 1


def test_trimming_keeps_the_first_window() -> None:
    pre = AudioPreprocessor(WHISPER_AUDIO)
    first = _clip("bursts", WINDOW_S, seed=1)
    longer = np.concatenate([first, _clip("loud", 5.0, seed=2)])
    np.testing.assert_array_equal(pre.features(longer), pre.features(first))


def test_the_clamp_is_taken_after_the_last_frame_is_dropped() -> None:
    """A click that peaks in the dropped frame must not set the max - 8 floor of the kept frames."""
    audio = np.zeros(480_000, dtype=np.float32)
    audio[:16000] = 1e-3 * np.random.default_rng(0).standard_normal(16000)
    audio[-20:] = 1.0  # the last frame (reflect-padded around the end) sees it at its window's centre
    raw_config = dict(max_seconds=7200.0, pad_to_seconds=WINDOW_S, normalization="none")
    raw = AudioPreprocessor(AudioConfig(**raw_config, drop_last_frame=True)).features(audio)  # log10 mel
    every_frame = AudioPreprocessor(AudioConfig(**raw_config)).features(audio)
    assert every_frame.shape == (80, WINDOW_FRAMES + 1) and every_frame.max() > raw.max() + 1.0  # the case matters
    expected = (np.maximum(raw, raw.max() - 8.0) + 4.0) / 4.0
    np.testing.assert_allclose(AudioPreprocessor(WHISPER_AUDIO).features(audio), expected, atol=1e-6)


def test_drop_last_frame_without_padding_needs_two_frames() -> None:
    config = AudioConfig(drop_last_frame=True)
    pre = AudioPreprocessor(config)
    shortest = min_samples(config)
    assert pre.features(np.zeros(shortest, dtype=np.float32)).shape == (80, frame_count(shortest, config))
    assert frame_count(shortest, config) >= 1
    assert frame_count(400, AudioConfig(center=False, drop_last_frame=True)) == 0
    assert min_samples(AudioConfig(center=False, drop_last_frame=True)) == 560
    assert frame_count(16000, config) == 100
    with pytest.raises(InputError, match="pass a longer clip"):
        pre.features(np.zeros(min_samples(config) - 1, dtype=np.float32))


def test_the_clip_length_cap_still_applies_before_trimming() -> None:
    pre = AudioPreprocessor(AudioConfig(max_seconds=40.0, pad_to_seconds=WINDOW_S, drop_last_frame=True))
    with pytest.raises(InputError, match="above the cap of 40.0 s"):
        pre.features(np.zeros(41 * RATE, dtype=np.float32))
