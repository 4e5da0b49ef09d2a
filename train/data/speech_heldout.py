"""A held-out speech set: voices and recording conditions that no training clip has.

    python -m train.data.speech_heldout --out DIR --clips 400 --seed 0

Written as the ``test`` split of the ``speech_dataset`` layout (``SpeechDataset(DIR, "test")``
reads it). Every clip is a sentence of the command grammar (so intents are scored), spoken by
one of two held-out voices and put through one held-out condition:

Voices (``voice`` in the manifest):
- espeak-ng's held-out pool (``speech_dataset.TEST_POOL``: languages, variants and rates that
  the training pool lacks);
- the Piper voice played 0.78-0.84x or 1.18-1.25x as fast by resampling (``piper-shifted``):
  pitch and formants move with the speed, so it sounds like another, deeper or higher, talker.
  Training perturbs speed by 0.9-1.1x only.

Conditions (``condition``; training's augmentation never reaches any of them, see
``audio_augment.AugmentConfig``):
- ``telephone``: band-pass 300-3400 Hz, 8 kHz, G.711 mu-law (8 bits), back to 16 kHz;
- ``far_room``: reverberation with RT60 0.8-1.4 s at -6..0 dB direct-to-reverberant ratio
  (training: 0.1-0.6 s, -3..12 dB);
- ``low_snr``: white, pink or brown noise at 3-8 dB SNR (training: 10-40 dB);
- ``clipped``: 12-20 dB of gain, then hard clipping at full scale (training scales loud clips down).

No clip here comes from the text-to-speech engines the project reserves for evaluation
(benchmarks/speech_real_voices.py names them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tinymm.errors import InputError
from tinymm.preprocess.audio_io import resample
from train.data.audio_augment import add_noise, change_speed, colored_noise, reverberate, room_impulse_response
from train.data.piper_tts import PiperEngine, PiperSettings
from train.data.speech_dataset import FORMAT_VERSION, SAMPLE_RATE_HZ, TEST_POOL, write_wav
from train.data.speech_grammar import GrammarConfig, sample_utterance
from train.data.tts import EspeakEngine

HELDOUT_SEED_OFFSET = 2000  # keeps these streams apart from the training sets' for the same --seed
TELEPHONE_RATE_HZ = 8000
TELEPHONE_BAND_HZ = (300.0, 3400.0)
MU = 255.0  # G.711 mu-law
SLOW_SHIFT, FAST_SHIFT = (0.78, 0.84), (1.18, 1.25)


def telephone(wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    narrow = resample(wave, SAMPLE_RATE_HZ, TELEPHONE_RATE_HZ).astype(np.float64)
    spectrum = np.fft.rfft(narrow)
    freqs = np.fft.rfftfreq(narrow.size, 1.0 / TELEPHONE_RATE_HZ)
    spectrum[(freqs < TELEPHONE_BAND_HZ[0]) | (freqs > TELEPHONE_BAND_HZ[1])] = 0.0
    band = np.fft.irfft(spectrum, n=narrow.size)
    band = band / max(float(np.abs(band).max()), 1e-9) * 0.9  # a line level below full scale
    code = np.round(np.sign(band) * np.log1p(MU * np.abs(band)) / np.log1p(MU) * 127.0) / 127.0  # 8 bits
    decoded = np.sign(code) * np.expm1(np.abs(code) * np.log1p(MU)) / MU
    return resample(decoded.astype(np.float32), TELEPHONE_RATE_HZ, SAMPLE_RATE_HZ), {}


def far_room(wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    rt60, drr = float(rng.uniform(0.8, 1.4)), float(rng.uniform(-6.0, 0.0))
    return reverberate(wave, room_impulse_response(rt60, drr, SAMPLE_RATE_HZ, rng)), {"rt60_s": round(rt60, 3),
                                                                                      "drr_db": round(drr, 2)}


def low_snr(wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    kind, snr = ("white", "pink", "brown")[int(rng.integers(3))], float(rng.uniform(3.0, 8.0))
    return add_noise(wave, colored_noise(kind, wave.size, rng), snr), {"kind": kind, "snr_db": round(snr, 2)}


def clipped(wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    gain = float(rng.uniform(12.0, 20.0))
    peak = max(float(np.abs(wave).max()), 1e-9)
    return np.clip(wave / peak * 10.0 ** (gain / 20.0), -1.0, 1.0), {"gain_db": round(gain, 2)}


CONDITIONS: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, dict[str, Any]]]] = {
    "telephone": telephone, "far_room": far_room, "low_snr": low_snr, "clipped": clipped,
}


def _speak(index: int, seed: int, espeak: EspeakEngine, piper: PiperEngine) -> tuple[np.ndarray, Any, dict[str, Any]]:
    text_rng, voice_rng, condition_rng = (np.random.default_rng(s) for s in
                                          np.random.SeedSequence([seed + HELDOUT_SEED_OFFSET, index]).spawn(3))
    utterance = sample_utterance(text_rng, GrammarConfig())
    if index % 2 == 0:
        style = TEST_POOL.sample(voice_rng)
        wave = espeak.synthesize(utterance.spoken_text, style, sample_rate=SAMPLE_RATE_HZ,
                                 seed=int(voice_rng.integers(2**31)))
        voice = {"voice": style.voice, "rate": style.rate_wpm}
    else:
        band = SLOW_SHIFT if voice_rng.random() < 0.5 else FAST_SHIFT
        factor = float(voice_rng.uniform(*band))
        wave = change_speed(piper.synthesize(utterance.spoken_text, PiperSettings.draw(voice_rng)), factor,
                            SAMPLE_RATE_HZ)
        voice = {"voice": "piper-shifted", "speed_factor": round(factor, 3)}
    name = tuple(CONDITIONS)[(index // 2) % len(CONDITIONS)]  # every voice meets every condition evenly
    wave, params = CONDITIONS[name](np.asarray(wave, np.float32), condition_rng)
    lead = np.zeros(int(condition_rng.uniform(0.05, 0.3) * SAMPLE_RATE_HZ), np.float32)
    wave = np.concatenate([lead, wave.astype(np.float32), lead])
    return wave, utterance, {**voice, "condition": name, "condition_params": params}


def write_heldout(out_dir: str | Path, clips: int, seed: int = 0, overwrite: bool = False,
                  progress: bool = True) -> Path:
    """Write ``clips`` held-out clips to OUT/speech/test; returns OUT/speech."""
    from tqdm import tqdm

    if clips < 1:
        raise InputError(f"clips={clips} must be at least 1")
    root = Path(out_dir) / "speech"
    if root.exists():
        if not overwrite:
            raise InputError(f"{root} already exists; pass --force to replace it, or another --out")
        shutil.rmtree(root)
    (root / "test" / "audio").mkdir(parents=True)
    rows = []
    with EspeakEngine(fresh_state=True) as espeak:
        piper = PiperEngine(threads=1)
        for index in tqdm(range(clips), disable=not progress, unit="clip", desc="held-out"):
            wave, utterance, info = _speak(index, seed, espeak, piper)
            relative = f"audio/{index:06d}.wav"
            write_wav(root / "test" / relative, wave, SAMPLE_RATE_HZ)
            rows.append({"index": index, "path": relative, "transcript": utterance.transcript,
                         "intent": utterance.intent.to_dict(), "kind": utterance.kind, **info,
                         "duration": round(wave.size / SAMPLE_RATE_HZ, 4)})
    (root / "test" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    meta = {"format_version": FORMAT_VERSION, "sample_rate": SAMPLE_RATE_HZ, "seed": seed,
            "counts": {"train": 0, "val": 0, "test": clips}, "kind": "held-out voices and conditions",
            "conditions": list(CONDITIONS)}
    (root / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.data.speech_heldout", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory; clips go to OUT/speech/test")
    parser.add_argument("--clips", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace an existing OUT/speech")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    root = write_heldout(args.out, args.clips, args.seed, args.force, not args.quiet)
    print(json.dumps({"out": str(root), "clips": args.clips}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
