"""train/data/tts.py: espeak-ng synthesis through ctypes, voices and voice pools."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinymm.errors import InputError
from train.data.tts import (
    MAX_RATE_WPM,
    EspeakEngine,
    SpeakingStyle,
    VoicePool,
    english_languages,
    voice_variants,
)

pytest.importorskip("espeakng_loader", reason="espeakng-loader is not installed (pip install espeakng-loader)")

SENTENCE = "Go forward three meters."
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def engine() -> EspeakEngine:
    return EspeakEngine()


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_the_wheel_has_english_voices_and_variants():
    languages = english_languages()
    assert {"en", "en-us", "en-gb-scotland", "en-029"} <= set(languages)
    assert "en-shaw" not in languages
    variants = voice_variants()
    assert {"m1", "f3", "klatt4", "whisper"} <= set(variants) and len(variants) > 80


@pytest.mark.parametrize("voice", ["en-us", "en+f3", "en-gb-scotland+klatt4", "en-029+whisper", "en-us-nyc+Andy"])
def test_synthesis_is_speech_like(engine, voice):
    audio = engine.synthesize(SENTENCE, SpeakingStyle(voice=voice), sample_rate=16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    duration = audio.size / 16000
    assert 0.8 < duration < 4.0, duration  # four words at 175 wpm take ~1.5 s
    assert _rms(audio) > 0.01 and np.abs(audio).max() <= 1.0
    # Speech has pauses: the loudest 50 ms frames are far above the quietest ones.
    frames = audio[: audio.size // 800 * 800].reshape(-1, 800)
    energy = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    assert energy.max() > 5 * np.percentile(energy, 10)


def test_native_rate_and_resampling(engine):
    native = engine.synthesize(SENTENCE)
    resampled = engine.synthesize(SENTENCE, sample_rate=16000)
    assert engine.sample_rate == 22050
    assert abs(resampled.size - native.size * 16000 / 22050) <= 2


def test_rate_and_pitch_change_the_audio(engine):
    slow = engine.synthesize(SENTENCE, SpeakingStyle(rate_wpm=120))
    fast = engine.synthesize(SENTENCE, SpeakingStyle(rate_wpm=260))
    assert slow.size > 1.6 * fast.size
    low = engine.synthesize(SENTENCE, SpeakingStyle(pitch=10))
    high = engine.synthesize(SENTENCE, SpeakingStyle(pitch=90))
    assert not np.array_equal(low[: min(low.size, high.size)], high[: min(low.size, high.size)])


def test_fresh_state_makes_synthesis_deterministic(engine):
    style = SpeakingStyle(voice="en-us+m3", rate_wpm=160, pitch=40)
    first = engine.synthesize("Pick up the red circle.", style)
    engine.synthesize("Something else entirely.", SpeakingStyle(voice="en+whisper", rate_wpm=300))
    assert np.array_equal(engine.synthesize("Pick up the red circle.", style), first)


def test_breathy_voices_are_reproducible_across_processes(engine):
    # espeak_Initialize seeds its noise from the clock; the engine reseeds it per utterance.
    code = (
        "import hashlib; from train.data.tts import EspeakEngine, SpeakingStyle; "
        "x = EspeakEngine().synthesize('Read me the sign?', SpeakingStyle('en+whisperf', 120), seed=3); "
        "print(hashlib.sha256(x.tobytes()).hexdigest())"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    here = engine.synthesize("Read me the sign?", SpeakingStyle("en+whisperf", 120), seed=3)
    assert other.stdout.strip() == hashlib.sha256(here.tobytes()).hexdigest()
    reseeded = engine.synthesize("Read me the sign?", SpeakingStyle("en+whisperf", 120), seed=4)
    assert not np.array_equal(reseeded, here)


def test_a_persistent_engine_also_synthesizes():
    with EspeakEngine(fresh_state=False) as persistent:
        audio = persistent.synthesize(SENTENCE, SpeakingStyle(voice="en+m2"))
        assert _rms(audio) > 0.01


def test_unknown_voices_and_empty_text_are_input_errors(engine):
    with pytest.raises(InputError, match="no voice variant 'nonexistent'"):
        engine.synthesize(SENTENCE, SpeakingStyle(voice="en-us+nonexistent"))
    with pytest.raises(InputError, match="no voice 'xx-yy'"):
        engine.synthesize(SENTENCE, SpeakingStyle(voice="xx-yy"))
    with pytest.raises(InputError, match="empty"):
        engine.synthesize("   ")


@pytest.mark.parametrize(
    "kwargs, message",
    [({"voice": "en-us+"}, "voice="), ({"voice": "+m3"}, "voice="), ({"rate_wpm": MAX_RATE_WPM + 1}, "rate_wpm="),
     ({"pitch": 101}, "pitch="), ({"pitch_range": -1}, "pitch_range=")],
)
def test_speaking_style_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpeakingStyle(**kwargs)


def test_voice_pool_samples_inside_its_ranges():
    pool = VoicePool(languages=("en-us", "en"), variants=("", "m3"), rates_wpm=((100, 110), (200, 210)), pitch=(40, 45))
    styles = [pool.sample(np.random.default_rng(i)) for i in range(200)]
    assert {s.voice for s in styles} == {"en-us", "en-us+m3", "en", "en+m3"} == set(pool.voices())
    assert all(s.rate_wpm in pool.rates() for s in styles)
    assert {s.rate_wpm < 150 for s in styles} == {True, False}  # both intervals are drawn
    assert all(40 <= s.pitch <= 45 for s in styles)
    assert VoicePool.from_dict(pool.to_dict()) == pool
    pool.check_available()


def test_voice_pool_validation():
    with pytest.raises(ValueError, match="rate interval"):
        VoicePool(languages=("en",), variants=("",), rates_wpm=((300, 200),))
    with pytest.raises(ValueError, match="languages and variants"):
        VoicePool(languages=(), variants=("",), rates_wpm=((150, 160),))
    with pytest.raises(ValueError, match="lacks languages"):
        VoicePool(languages=("en-xx",), variants=("m3", "nope"), rates_wpm=((150, 160),)).check_available()
