"""train/data/audio_augment.py: each augmentation measured against its definition."""

from __future__ import annotations

import numpy as np
import pytest

from train.data.audio_augment import (
    AugmentConfig,
    add_noise,
    augment,
    change_speed,
    colored_noise,
    reverberate,
    room_impulse_response,
)

RATE = 16000
NONE = dict(speed_prob=0.0, reverb_prob=0.0, shift_prob=0.0, noise_prob=0.0, gain_prob=0.0)


def _speech_like(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """(N,) float32: a 150 Hz harmonic tone with a syllable-rate envelope, peak ~0.5."""
    t = np.arange(int(seconds * RATE)) / RATE
    tone = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    x = tone * envelope + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def _snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    return 10 * np.log10(_power(clean) / _power(noisy - clean))


@pytest.mark.parametrize("kind", ["white", "pink", "brown"])
@pytest.mark.parametrize("snr", [0.0, 12.5, 30.0])
def test_add_noise_hits_the_target_snr(kind, snr):
    clean = _speech_like()
    noisy = add_noise(clean, colored_noise(kind, clean.size, np.random.default_rng(1)), snr)
    assert abs(_snr_db(clean, noisy) - snr) < 1.0
    assert noisy.dtype == np.float32


@pytest.mark.parametrize("kind", ["white", "pink", "brown", "babble"])
def test_augment_noise_snr_is_within_1_db_of_what_it_records(kind):
    clean = _speech_like()
    config = AugmentConfig(**{**NONE, "noise_prob": 1.0}, noise_kinds=(kind,), snr_db=(5.0, 25.0))
    babble = lambda rng, n: sum(np.roll(_speech_like(seed=s), int(rng.integers(n)))[:n] for s in range(3))  # noqa: E731
    for seed in range(5):
        noisy, applied = augment(clean, np.random.default_rng(seed), config, babble=babble)
        (record,) = applied
        assert record["name"] == "noise" and record["kind"] == kind
        assert abs(_snr_db(clean, noisy) - record["snr_db"]) < 1.0


def test_noise_colors_have_their_spectral_slopes():
    n = 1 << 16
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    low, high = (freqs > 100) & (freqs < 200), (freqs > 3200) & (freqs < 6400)
    slopes = {}
    for kind in ("white", "pink", "brown"):
        spectrum = np.abs(np.fft.rfft(colored_noise(kind, n, np.random.default_rng(0)))) ** 2
        ratio = spectrum[low].mean() / spectrum[high].mean()
        slopes[kind] = 10 * np.log10(ratio) / np.log2(np.median(freqs[high]) / np.median(freqs[low]))  # dB per octave
    assert abs(slopes["white"]) < 1.0
    assert abs(slopes["pink"] - 3.0) < 1.0
    assert abs(slopes["brown"] - 6.0) < 1.0


def test_shift_adds_the_recorded_silence():
    clean = _speech_like()
    config = AugmentConfig(**{**NONE, "shift_prob": 1.0}, lead_s=(0.1, 0.3), trail_s=(0.2, 0.4))
    shifted, [record] = augment(clean, np.random.default_rng(4), config)
    lead, trail = record["lead_samples"], record["trail_samples"]
    assert 0.1 * RATE <= lead <= 0.3 * RATE and 0.2 * RATE <= trail <= 0.4 * RATE
    assert shifted.size == clean.size + lead + trail
    assert not shifted[:lead].any() and not shifted[shifted.size - trail:].any()
    np.testing.assert_array_equal(shifted[lead: lead + clean.size], clean)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_changes_duration(factor):
    clean = _speech_like()
    faster = change_speed(clean, factor, RATE)
    assert abs(faster.size - clean.size / factor) <= 2
    config = AugmentConfig(**{**NONE, "speed_prob": 1.0}, speed=(factor, factor))
    out, [record] = augment(clean, np.random.default_rng(0), config)
    assert record == {"name": "speed", "factor": factor} and out.size == faster.size


@pytest.mark.parametrize("drr_db", [-3.0, 10.0])
def test_reverb_keeps_length_and_level_and_decays(drr_db):
    clean = _speech_like()
    rir = room_impulse_response(0.5, drr_db, RATE, np.random.default_rng(0))
    assert rir.size == RATE // 2 and rir[0] == np.abs(rir).max()
    assert abs(10 * np.log10(rir[0] ** 2 / np.sum(rir[1:].astype(np.float64) ** 2)) - drr_db) < 0.01
    tenth = rir.size // 10
    decay_db = 10 * np.log10(_power(rir[1:tenth]) / _power(rir[-tenth:]))
    assert 40 < decay_db < 65  # 60 dB over the response; first vs last tenth ~ 48 dB
    wet = reverberate(clean, rir)
    assert wet.shape == clean.shape
    assert abs(_power(wet) / _power(clean) - 1) < 1e-3
    assert np.corrcoef(wet, clean)[0, 1] < 0.995  # it did smear the signal


def test_gain_and_limiting():
    clean = _speech_like()
    config = AugmentConfig(**{**NONE, "gain_prob": 1.0}, gain_db=(-6.0, -6.0))
    quieter, [record] = augment(clean, np.random.default_rng(0), config)
    assert record["gain_db"] == -6.0
    assert abs(10 * np.log10(_power(quieter) / _power(clean)) + 6.0) < 0.01
    too_loud = AugmentConfig(**{**NONE, "gain_prob": 1.0}, gain_db=(30.0, 30.0))
    louder, applied = augment(clean, np.random.default_rng(0), too_loud)
    # +30 dB would clip: the limiter scales the clip back to full scale instead (no distortion).
    assert louder.dtype == np.float32 and np.abs(louder).max() == pytest.approx(1.0, abs=1e-6)
    assert applied[-1]["name"] == "limit"
    assert applied[-1]["gain_db"] == pytest.approx(20 * np.log10(1 / 0.5) - 30, abs=0.01)  # peak 0.5, +30 dB
    np.testing.assert_allclose(louder, clean / np.abs(clean).max(), atol=1e-6)


def test_augment_is_deterministic_and_records_everything():
    clean = _speech_like()
    config = AugmentConfig(speed_prob=1.0, reverb_prob=1.0, shift_prob=1.0, noise_prob=1.0, gain_prob=1.0)
    first, applied = augment(clean, np.random.default_rng(11), config)
    second, again = augment(clean, np.random.default_rng(11), config)
    np.testing.assert_array_equal(first, second)
    assert applied == again
    assert [a["name"] for a in applied][:5] == ["speed", "reverb", "shift", "noise", "gain"]
    assert applied[3]["kind"] != "babble"  # no babble source was given
    assert np.abs(first).max() <= 1.0 and first.dtype == np.float32


def test_config_round_trip_and_validation():
    config = AugmentConfig(snr_db=(3.0, 9.0), noise_kinds=("pink",))
    assert AugmentConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="noise_prob"):
        AugmentConfig(noise_prob=2.0)
    with pytest.raises(ValueError, match="snr_db"):
        AugmentConfig(snr_db=(20.0, 10.0))
    with pytest.raises(ValueError, match="noise_kinds"):
        AugmentConfig(noise_kinds=("rain",))
