"""Speech clips for the Whisper export: golden pairs, int8 calibration and the int8 gate.

Where the clips come from (first that applies):

- ``data_dir``: every .wav/.flac/.ogg/.mp3 under it (sorted), read with the runtime's
  ``load_audio``; a ``clips.json`` (benchmarks/whisper_clips.py) or ``samples.json`` next to them
  is not needed: the gate compares int8 with fp32 transcripts, not with references;
- else sentences of the project's command grammar spoken by espeak-ng (train/data/tts.py, needs the
  espeakng-loader wheel) in a few voices and rates, deterministic for a seed;
- else (no espeak-ng) the sample clips shipped in tinymm/assets/samples/audio.

Every clip becomes Whisper's (n_mels, 3000) window with the runtime's own AudioPreprocessor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinymm.errors import InputError
from tinymm.preprocess.audio import AudioPreprocessor
from tinymm.preprocess.config import AudioConfig

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "tinymm" / "assets" / "samples" / "audio"
SAMPLE_RATE_HZ = 16000
WINDOW_SECONDS = 30.0  # Whisper's window: every clip is padded to it
MAX_SECONDS = 7200.0  # the runtime windows long audio; the contract's cap
SYNTH_VOICES = ("en-us", "en-us+m3", "en-us+f2", "en", "en+m5", "en-gb-x-rp+f4")  # espeak-ng voices of the gate clips
SYNTH_RATES_WPM = (130, 190)  # inclusive range of speaking rates
SYNTH_STREAM = 7  # rng stream of the synthesized sentences (distinct from training's)


def whisper_audio_config(n_mels: int) -> AudioConfig:
    """Whisper's front end: 16 kHz, 25 ms Hann STFT every 10 ms, slaney mels, log10, 30 s window."""
    return AudioConfig(sample_rate=SAMPLE_RATE_HZ, n_fft=400, hop_length=160, win_length=400, window="hann",
                       n_mels=n_mels, f_min=0.0, f_max=8000.0, mel_scale="slaney", mel_norm="slaney", center=True,
                       power=2.0, log="log10", log_floor=1e-10, normalization="whisper", max_seconds=MAX_SECONDS,
                       pad_to_seconds=WINDOW_SECONDS, drop_last_frame=True)


@dataclass(frozen=True, eq=False)
class Clips:
    """Log-mel windows of some clips and where they came from."""

    features: np.ndarray  # (N, n_mels, 3000) float32
    names: tuple[str, ...]  # one per clip: a file name or the synthesized sentence
    source: str  # for the provenance

    def __len__(self) -> int:
        return len(self.names)


def _audio_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise InputError(f"--data {directory} is not a directory; give a folder of speech clips (.wav, .flac, ...)")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"--data {directory} holds no audio files ({', '.join(AUDIO_SUFFIXES)}); add some clips")
    return files


def _synthesized(count: int, seed: int) -> tuple[list[np.ndarray], list[str]] | None:
    """``count`` grammar sentences spoken by espeak-ng at 16 kHz, or None without espeak-ng."""
    try:
        from train.data.speech_grammar import GrammarConfig, sample_utterance
        from train.data.tts import EspeakEngine, SpeakingStyle
    except ImportError as e:
        logger.warning("cannot synthesize clips (%s); using the shipped samples", e)
        return None
    rng = np.random.default_rng([seed, SYNTH_STREAM])
    waves, texts = [], []
    try:
        with EspeakEngine() as engine:
            for i in range(count):
                utterance = sample_utterance(rng, GrammarConfig())
                style = SpeakingStyle(voice=SYNTH_VOICES[int(rng.integers(len(SYNTH_VOICES)))],
                                      rate_wpm=int(rng.integers(SYNTH_RATES_WPM[0], SYNTH_RATES_WPM[1] + 1)))
                waves.append(engine.synthesize(utterance.spoken_text, style, sample_rate=SAMPLE_RATE_HZ, seed=i))
                texts.append(utterance.spoken_text)
    except (ImportError, OSError, InputError) as e:  # no espeakng-loader wheel, or its library fails to load
        logger.warning("cannot synthesize clips with espeak-ng (%s); using the shipped samples", e)
        return None
    return waves, texts


def load_clips(count: int, n_mels: int, data_dir: Path | None = None, seed: int = 0) -> Clips:
    """Up to ``count`` clips as Whisper windows (see the module docstring for the sources)."""
    if count < 1:
        raise InputError(f"count={count} clips: give at least 1")
    pre = AudioPreprocessor(whisper_audio_config(n_mels))
    if data_dir is not None:
        files = _audio_files(Path(data_dir))[:count]
        features = np.stack([pre.features(pre.waveform(f)) for f in files])
        return Clips(features, tuple(f.name for f in files), f"audio files under {data_dir}")
    synthesized = _synthesized(count, seed)
    if synthesized is not None:
        waves, texts = synthesized
        features = np.stack([pre.features(w) for w in waves])
        return Clips(features, tuple(texts), f"{count} grammar sentences spoken by espeak-ng (seed {seed})")
    files = _audio_files(SAMPLES_DIR)[:count]
    features = np.stack([pre.features(pre.waveform(f)) for f in files])
    return Clips(features, tuple(f.name for f in files), f"tinymm sample clips {SAMPLES_DIR}")
