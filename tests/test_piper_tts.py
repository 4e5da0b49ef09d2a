"""Piper speech for training: the shipped voice speaks at 16 kHz, with its settings drawn in range."""

from __future__ import annotations

import numpy as np
import pytest

from tinymm.errors import InputError
from train.data.piper_tts import LENGTH_SCALE_RANGE, PiperEngine, PiperSettings

pytest.importorskip("piper", reason="Piper speech needs piper-tts (pip install 'tinymm[train]')")


@pytest.fixture(scope="module")
def engine() -> PiperEngine:
    return PiperEngine()


def test_the_voice_speaks_at_16_khz_and_slower_when_asked(engine: PiperEngine) -> None:
    # Without duration noise (noise_w_scale 0) the lengths are the same on every run; with the
    # default noise, one draw of the phoneme durations can hide the slower rate.
    normal = engine.synthesize("go forward three meters", PiperSettings(noise_w_scale=0.0))
    slow = engine.synthesize("go forward three meters", PiperSettings(length_scale=1.3, noise_w_scale=0.0))
    for audio in (normal, slow):
        assert audio.dtype == np.float32 and audio.ndim == 1 and np.abs(audio).max() <= 1.0
        assert np.sqrt(np.mean(audio ** 2)) > 0.01  # speech, not silence
    assert 0.8 < len(normal) / 16000 < 3.0 and len(slow) > 1.15 * len(normal)
    assert engine.sample_rate == 22050 and engine.name == "en_US-joe-medium"


def test_settings_are_drawn_in_range_and_bad_input_is_refused(engine: PiperEngine, tmp_path) -> None:
    draws = [PiperSettings.draw(np.random.default_rng(i)) for i in range(50)]
    assert all(LENGTH_SCALE_RANGE[0] <= d.length_scale <= LENGTH_SCALE_RANGE[1] for d in draws)
    assert len({d.noise_scale for d in draws}) == 50
    with pytest.raises(InputError, match="empty text"):
        engine.synthesize("  ")
    with pytest.raises(InputError, match="does not exist"):
        PiperEngine(tmp_path / "missing.onnx")
