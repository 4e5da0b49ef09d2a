"""Speech data beyond espeak-ng's command clips: free sentences, Piper clips in the dataset layout,
and the held-out set of voices and conditions that training never has."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinymm.robot.transcripts import normalize_transcript
from train.data.free_sentences import sample_free_sentence

SAMPLE_RATE_HZ = 16000


def test_free_sentences_are_canonical_varied_and_seeded() -> None:
    rng = np.random.default_rng(0)
    pairs = [sample_free_sentence(rng) for _ in range(300)]
    assert pairs == [sample_free_sentence(r) for r in [np.random.default_rng(0)] for _ in range(300)]
    for transcript, spoken in pairs:
        assert transcript == normalize_transcript(transcript) == normalize_transcript(spoken)
        assert spoken[0].isupper() and spoken[-1] in ".?"
    words = {w for transcript, _ in pairs for w in transcript.split()}
    assert len({t for t, _ in pairs}) > 290 and len(words) > 250  # sentences, not a phrase list


def _band_energy(wave: np.ndarray, low_hz: float, high_hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(wave.size, 1.0 / SAMPLE_RATE_HZ)
    return float(spectrum[(freqs >= low_hz) & (freqs < high_hz)].sum() / spectrum.sum())


def test_heldout_conditions_leave_the_training_ranges() -> None:
    from train.data.speech_heldout import CONDITIONS

    rng = np.random.default_rng(0)
    t = np.arange(SAMPLE_RATE_HZ) / SAMPLE_RATE_HZ
    wave = (0.3 * np.sin(2 * np.pi * 1000 * t) + 0.1 * rng.standard_normal(t.size)).astype(np.float32)
    phone, _ = CONDITIONS["telephone"](wave, rng)
    assert _band_energy(wave, 4000, 8000) > 0.05 and _band_energy(phone, 4000, 8000) < 1e-3  # an 8 kHz line
    clipped, params = CONDITIONS["clipped"](wave, rng)
    assert 12 <= params["gain_db"] <= 20 and np.mean(np.abs(clipped) >= 1.0) > 0.1  # hard-clipped, not limited
    noisy, params = CONDITIONS["low_snr"](np.sin(2 * np.pi * 300 * t).astype(np.float32), rng)
    assert 3 <= params["snr_db"] <= 8 and noisy.shape == t.shape
    far, params = CONDITIONS["far_room"](wave, rng)
    assert params["rt60_s"] >= 0.8 and far.shape == wave.shape


def test_piper_clips_and_the_heldout_set_write_the_dataset_layout(tmp_path) -> None:
    pytest.importorskip("piper", reason="Piper speech needs piper-tts (pip install 'tinymm[train]')")
    pytest.importorskip("espeakng_loader", reason="the held-out set's espeak-ng voices need espeakng-loader")
    from tinymm.errors import InputError
    from train.data.piper_dataset import write_piper_dataset
    from train.data.speech_dataset import SpeechDataset
    from train.data.speech_heldout import CONDITIONS, write_heldout

    write_piper_dataset(tmp_path / "piper", {"train": 6}, seed=0, free_fraction=0.5, workers=1, progress=False)
    clips = list(SpeechDataset(tmp_path / "piper", "train"))
    assert len(clips) == 6 and {item["kind"] for _, item in clips} <= {"command", "question", "free"}
    for wave, item in clips:
        assert item["voice"] == "piper:en_US-joe-medium" and abs(wave.size - item["duration"] * SAMPLE_RATE_HZ) <= 1
        assert (item["intent"] is None) == (item["kind"] == "free")
    with pytest.raises(InputError, match="already exists"):
        write_piper_dataset(tmp_path / "piper", {"train": 1}, workers=1, progress=False)

    write_heldout(tmp_path / "heldout", clips=8, seed=0, progress=False)
    held = SpeechDataset(tmp_path / "heldout", "test")
    items = held.items
    assert [item["condition"] for item in items] == [c for c in CONDITIONS for _ in range(2)]
    assert [item["voice"] == "piper-shifted" for item in items] == [False, True] * 4
    assert all(item["intent"] is not None for item in items)
    for item in items:
        if item["voice"] == "piper-shifted":
            assert 0.78 <= item["speed_factor"] <= 0.84 or 1.18 <= item["speed_factor"] <= 1.25
    assert json.loads((tmp_path / "heldout" / "speech" / "meta.json").read_text())["counts"]["test"] == 8
