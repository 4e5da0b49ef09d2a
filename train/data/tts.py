"""Offline speech synthesis with espeak-ng, driven through ctypes.

The ``espeakng-loader`` wheel (``pip install espeakng-loader``, part of ``tinymm[train]``)
bundles libespeak-ng and its data: English language voices ("en" for British, en-us, en-gb-scotland, ...)
and ~100 voice variants (m1..m8, f1..f5, klatt..klatt6, whisper, ...), with no root and no apt.
``EspeakEngine`` runs the library in synchronous mode with a callback that collects the int16
samples, at the native rate ``espeak_Initialize`` reports (22050 Hz), and can resample them with
tinymm's own resampler (soxr) to the 16 kHz the speech models use.

Voices are named ``"<language>[+<variant>]"``, e.g. ``"en-us+m3"`` or ``"en-gb-scotland"``:
``english_languages()`` and ``voice_variants()`` list what the installed data holds. espeak-ng
silently ignores an unknown variant, so the engine checks variant names itself.

Reproducibility: libespeak-ng keeps wave-generator state (phase, pitch-flutter position, ...) in
static variables from one utterance to the next, even across espeak_Terminate and
espeak_Initialize, so the same request made twice in one process gives slightly different audio.
With ``fresh_state=True`` (the default) the engine loads the library for each utterance and
unloads it afterwards, and seeds the noise generators of breathy voices (espeak-ng's own and the
C library's ``rand``, which espeak_Initialize seeds from the clock; note that this reseeds the
process's C ``rand``): every utterance starts from the library's initial state and the audio
depends only on the request and its ``seed``. That costs ~5 ms per utterance (measured: ~250x real time instead
of ~650x on one core). It needs the engine to be the only holder of libespeak-ng in the process;
the engine logs a warning if something else keeps the library loaded.

One engine per process: the library is process-global and not re-entrant. Synthesize from one
thread at a time, and use processes for parallel synthesis (``train/data/speech_dataset.py``
runs one engine in each worker process).
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tinymm.errors import BackendError, InputError

logger = logging.getLogger(__name__)

# libespeak-ng API constants (speak_lib.h).
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit()
CHARS_UTF8 = 1
POS_CHARACTER = 1
EE_OK = 0
PARAM_RATE = 1  # espeakRATE: words per minute
PARAM_PITCH = 3  # espeakPITCH: base pitch, 0..100
PARAM_RANGE = 4  # espeakRANGE: pitch range (intonation), 0..100
CALLBACK_CONTINUE = 0
CALLBACK_ABORT = 1
SEED_MASK = 0xFFFFFFFF  # srand takes an unsigned int

MIN_RATE_WPM = 80  # espeak-ng's slowest speaking rate, words per minute
MAX_RATE_WPM = 450  # espeak-ng's fastest speaking rate without sonic speed-up
DEFAULT_RATE_WPM = 175
DEFAULT_PITCH = 50  # 0..100
DEFAULT_PITCH_RANGE = 50  # 0..100
MAX_PARAMETER = 100  # pitch and pitch range are in 0..100
MAX_UTTERANCE_SECONDS = 60.0  # synthesis is aborted past this (runaway input such as "..")
INT16_FULL_SCALE = 32768.0  # int16 sample -> float in [-1, 1)
EXCLUDED_LANGUAGES = ("en-shaw",)  # English written in the Shavian alphabet: not a spoken accent

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class SpeakingStyle:
    """How espeak-ng says a sentence."""

    voice: str = "en-us"  # "<language>[+<variant>]", e.g. "en-gb-x-rp+f2"
    rate_wpm: int = DEFAULT_RATE_WPM  # words per minute, MIN_RATE_WPM..MAX_RATE_WPM
    pitch: int = DEFAULT_PITCH  # base pitch, 0..100
    pitch_range: int = DEFAULT_PITCH_RANGE  # intonation range, 0..100 (0: monotone)

    def __post_init__(self) -> None:
        language, _, variant = self.voice.partition("+")
        if not language or (self.voice.count("+") == 1 and not variant) or self.voice.count("+") > 1:
            raise ValueError(f"voice={self.voice!r} must be '<language>' or '<language>+<variant>', e.g. 'en-us+m3'")
        if type(self.rate_wpm) is not int or not MIN_RATE_WPM <= self.rate_wpm <= MAX_RATE_WPM:
            raise ValueError(f"rate_wpm={self.rate_wpm!r} must be an integer in {MIN_RATE_WPM}..{MAX_RATE_WPM}")
        for name in ("pitch", "pitch_range"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= MAX_PARAMETER:
                raise ValueError(f"{name}={value!r} must be an integer in 0..{MAX_PARAMETER}")

    @property
    def language(self) -> str:
        return self.voice.partition("+")[0]

    @property
    def variant(self) -> str | None:
        return self.voice.partition("+")[2] or None


def _espeakng_paths() -> tuple[str, str]:
    """(library path, data path) of the espeakng-loader wheel."""
    try:
        import espeakng_loader
    except ImportError as e:
        raise BackendError(
            "speech synthesis needs the espeakng-loader wheel (libespeak-ng and its voices): "
            "pip install espeakng-loader, or pip install 'tinymm[train]'"
        ) from e
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


def english_languages(data_path: str | None = None) -> tuple[str, ...]:
    """English language voices in the espeak-ng data, by the name espeak_SetVoiceByName takes:
    ("en", "en-029", "en-gb-scotland", ..., "en-us", "en-us-nyc"); "en" is British English."""
    root = Path(data_path or _espeakng_paths()[1]) / "lang"
    names = {path.name.lower() for path in root.rglob("en*") if path.is_file()}
    return tuple(sorted(names - set(EXCLUDED_LANGUAGES)))


def voice_variants(data_path: str | None = None) -> tuple[str, ...]:
    """Voice variants in the espeak-ng data ("m1", "f3", "klatt4", "whisper", ...)."""
    root = Path(data_path or _espeakng_paths()[1]) / "voices" / "!v"
    return tuple(sorted(p.name for p in root.iterdir() if p.is_file() and " " not in p.name))


def _libc_srand() -> Callable[[int], None] | None:
    """The C library's srand, which libespeak-ng's rand() calls depend on (None if not found)."""
    try:
        srand = ctypes.CDLL(None).srand  # the process's own C library (POSIX)
    except (OSError, AttributeError, TypeError):
        logger.warning("cannot reach the C library's srand: breathy espeak-ng voices will not be reproducible")
        return None
    srand.argtypes = [ctypes.c_uint]
    srand.restype = None
    return srand


def _unload(lib: ctypes.CDLL) -> None:
    import _ctypes  # CPython's ctypes core; dlclose (POSIX) or FreeLibrary (Windows)

    close = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary")
    close(lib._handle)


class EspeakEngine:
    """libespeak-ng through ctypes. Use one per process, from one thread (see the module docstring).

    Args:
        fresh_state: load and unload the library around each utterance so that the audio
            depends only on the request (deterministic); False keeps it loaded (~2.5x faster,
            but each utterance depends a little on the ones before).
        library_path, data_path: another libespeak-ng and its espeak-ng-data directory;
            default: those of the espeakng-loader wheel.
    """

    def __init__(
        self, *, fresh_state: bool = True, library_path: str | None = None, data_path: str | None = None
    ) -> None:
        if library_path is None or data_path is None:
            default_library, default_data = _espeakng_paths()
            library_path, data_path = library_path or default_library, data_path or default_data
        self.fresh_state = fresh_state
        self._library_path = library_path
        self._data_path = data_path
        self._variants = frozenset(voice_variants(data_path))
        self._chunks: list[np.ndarray] = []
        self._samples = 0
        self._max_samples = 0
        self._callback = _SYNTH_CALLBACK(self._on_samples)  # kept alive as long as the engine
        self._warned_resident = False
        self._libc_srand = _libc_srand()
        self._lib: ctypes.CDLL | None = self._open()
        self.sample_rate: int = self._native_rate  # Hz of the samples espeak-ng produces
        if fresh_state:
            self._close(self._lib)
            self._lib = None

    # -- library lifetime ------------------------------------------------------------------------

    def _open(self) -> ctypes.CDLL:
        try:
            lib = ctypes.CDLL(self._library_path, mode=getattr(os, "RTLD_LOCAL", 0))
        except OSError as e:
            raise BackendError(f"cannot load libespeak-ng from {self._library_path}: {e}") from e
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data_path.encode(), INITIALIZE_DONT_EXIT)
        if rate <= 0:
            _unload(lib)
            raise BackendError(f"espeak_Initialize failed (returned {rate}) with data at {self._data_path}")
        lib.espeak_SetSynthCallback(self._callback)
        self._native_rate = rate
        self.version = lib.espeak_Info(None).decode()  # e.g. "1.52.0"
        return lib

    def _close(self, lib: ctypes.CDLL) -> None:
        lib.espeak_Terminate()
        _unload(lib)
        if self._warned_resident or not hasattr(os, "RTLD_NOLOAD"):
            return
        try:  # succeeds only if the library is still loaded, i.e. something else holds it
            still_loaded = ctypes.CDLL(self._library_path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        except OSError:
            return
        _unload(still_loaded)
        self._warned_resident = True
        logger.warning(
            "libespeak-ng stays loaded after the engine unloads it (another module holds %s): "
            "synthesized audio will depend slightly on earlier utterances in this process",
            self._library_path,
        )

    def close(self) -> None:
        """Release the library (a persistent engine's; a fresh-state engine holds none between calls)."""
        if self._lib is not None:
            self._close(self._lib)
            self._lib = None

    def __enter__(self) -> "EspeakEngine":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- synthesis -------------------------------------------------------------------------------

    def _on_samples(self, wav: ctypes._Pointer, count: int, events: int) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
            self._samples += count
        return CALLBACK_ABORT if self._samples > self._max_samples else CALLBACK_CONTINUE

    def synthesize(
        self, text: str, style: SpeakingStyle = SpeakingStyle(), *, sample_rate: int | None = None, seed: int = 0
    ) -> np.ndarray:
        """Speak ``text``; returns float32 samples of shape (N,) in [-1, 1).

        At ``self.sample_rate`` (espeak-ng's native 22050 Hz), or resampled to ``sample_rate`` Hz.
        ``seed`` seeds espeak-ng's noise sources (breath, whisper) for this utterance.
        Raises InputError for empty text or an unknown voice, BackendError if espeak-ng fails.
        """
        if not text.strip():
            raise InputError("nothing to synthesize: the text is empty; pass a sentence")
        variant = style.variant
        if variant is not None and variant not in self._variants:
            raise InputError(
                f"espeak-ng has no voice variant {variant!r} (voice {style.voice!r}); "
                f"variants here: {', '.join(sorted(self._variants))}"
            )
        lib = self._lib if self._lib is not None else self._open()
        try:
            samples = self._speak(lib, text, style, seed)
        finally:
            if self.fresh_state:
                self._close(lib)
        if sample_rate is not None and sample_rate != self.sample_rate:
            from tinymm.preprocess.audio_io import resample

            samples = resample(samples, self.sample_rate, sample_rate)
        return samples

    def _speak(self, lib: ctypes.CDLL, text: str, style: SpeakingStyle, seed: int) -> np.ndarray:
        if lib.espeak_SetVoiceByName(style.voice.encode()) != EE_OK:
            raise InputError(
                f"espeak-ng has no voice {style.voice!r}; English voices here: "
                f"{', '.join(english_languages(self._data_path))} (optionally with +<variant>)"
            )
        lib.espeak_SetParameter(PARAM_RATE, style.rate_wpm, 0)
        lib.espeak_SetParameter(PARAM_PITCH, style.pitch, 0)
        lib.espeak_SetParameter(PARAM_RANGE, style.pitch_range, 0)
        lib.espeak_SetSynthCallback(self._callback)  # another engine in this process may have replaced it
        # Breathy voices draw noise from espeak-ng's generator and from the C library's rand(),
        # which espeak_Initialize seeds from the clock: seed both for reproducible audio.
        lib.espeak_ng_SetRandSeed(seed)
        if self._libc_srand is not None:
            self._libc_srand(seed & SEED_MASK)
        self._chunks, self._samples = [], 0
        self._max_samples = int(MAX_UTTERANCE_SECONDS * self.sample_rate)
        data = text.encode("utf-8") + b"\0"
        status = lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        if status != EE_OK:
            raise BackendError(f"espeak_Synth failed with status {status} for {text!r} in voice {style.voice!r}")
        if self._samples > self._max_samples:
            raise BackendError(
                f"espeak-ng produced more than {MAX_UTTERANCE_SECONDS:g} s of audio for {text!r}; shorten the text"
            )
        if not self._chunks:
            raise BackendError(f"espeak-ng produced no audio for {text!r} in voice {style.voice!r}")
        samples = np.concatenate(self._chunks).astype(np.float32) / INT16_FULL_SCALE
        self._chunks = []
        return samples


@dataclass(frozen=True)
class VoicePool:
    """The speaking styles a data split draws from: languages x variants, rates and pitches."""

    languages: tuple[str, ...]  # espeak-ng language voices, e.g. ("en-us", "en")
    variants: tuple[str, ...]  # voice variants; "" is the language's own default voice
    rates_wpm: tuple[tuple[int, int], ...]  # inclusive intervals of words per minute, drawn uniformly over their union
    pitch: tuple[int, int] = (30, 70)  # inclusive interval of base pitch, 0..100
    pitch_range: tuple[int, int] = (30, 80)  # inclusive interval of intonation range, 0..100

    def __post_init__(self) -> None:
        if not self.languages or not self.variants:
            raise ValueError(f"a voice pool needs languages and variants, got {self.languages} and {self.variants}")
        if not self.rates_wpm:
            raise ValueError("a voice pool needs at least one rate interval in rates_wpm")
        for low, high in self.rates_wpm:
            if not MIN_RATE_WPM <= low <= high <= MAX_RATE_WPM:
                raise ValueError(
                    f"rate interval ({low}, {high}) must lie in {MIN_RATE_WPM}..{MAX_RATE_WPM} wpm with low <= high"
                )
        for name in ("pitch", "pitch_range"):
            low, high = getattr(self, name)
            if not 0 <= low <= high <= MAX_PARAMETER:
                raise ValueError(f"{name} interval ({low}, {high}) must lie in 0..{MAX_PARAMETER} with low <= high")
        for voice in self.voices():
            SpeakingStyle(voice=voice)  # checks the name's form

    def voices(self) -> tuple[str, ...]:
        """Every voice name of the pool, e.g. "en-us", "en-us+m3", ..."""
        return tuple(
            f"{language}+{variant}" if variant else language for language in self.languages for variant in self.variants
        )

    def rates(self) -> frozenset[int]:
        """Every speaking rate the pool can draw, words per minute."""
        return frozenset(rate for low, high in self.rates_wpm for rate in range(low, high + 1))

    def check_available(self, data_path: str | None = None) -> None:
        """Raise ValueError naming any language or variant the installed espeak-ng data lacks."""
        missing_languages = sorted(set(self.languages) - set(english_languages(data_path)))
        missing_variants = sorted(set(self.variants) - set(voice_variants(data_path)) - {""})
        if missing_languages or missing_variants:
            raise ValueError(
                f"espeak-ng data lacks languages {missing_languages} and variants {missing_variants}; "
                "pick names from english_languages() and voice_variants()"
            )

    def sample(self, rng: np.random.Generator) -> SpeakingStyle:
        """Draw a voice, a rate, a pitch and a pitch range uniformly."""
        voices = self.voices()
        widths = np.array([high - low + 1 for low, high in self.rates_wpm], dtype=np.float64)
        low, high = self.rates_wpm[int(rng.choice(len(widths), p=widths / widths.sum()))]
        return SpeakingStyle(
            voice=voices[int(rng.integers(len(voices)))],
            rate_wpm=int(rng.integers(low, high + 1)),
            pitch=int(rng.integers(self.pitch[0], self.pitch[1] + 1)),
            pitch_range=int(rng.integers(self.pitch_range[0], self.pitch_range[1] + 1)),
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "languages": list(self.languages),
            "variants": list(self.variants),
            "rates_wpm": [list(interval) for interval in self.rates_wpm],
            "pitch": list(self.pitch),
            "pitch_range": list(self.pitch_range),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "VoicePool":
        return cls(
            languages=tuple(data["languages"]),  # type: ignore[arg-type]
            variants=tuple(data["variants"]),  # type: ignore[arg-type]
            rates_wpm=tuple(tuple(interval) for interval in data["rates_wpm"]),  # type: ignore[union-attr,misc]
            pitch=tuple(data["pitch"]),  # type: ignore[arg-type]
            pitch_range=tuple(data["pitch_range"]),  # type: ignore[arg-type]
        )
