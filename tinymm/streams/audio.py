"""``listen``: cut an audio stream into utterances with a voice activity detector, transcribe each one.

Audio arrives in chunks (from a WAV file, raw PCM on stdin, or a microphone callback) and goes
through a voice activity detector with hangover: ``SileroSegmenter`` (the default when the speech
pipeline has a VAD: Silero VAD's speech probability per 32 ms window, speech above its threshold
and, inside an utterance, down to its lower threshold; noise, hum and music stay below it), or
``EnergyVAD`` (``detector="energy"``), on frame energy:

- every ``frame_ms`` frame gets its energy in dBFS (a full-scale sine is -3 dBFS);
- a frame is speech when its energy is above ``threshold_db`` and ``noise_margin_db`` above the
  noise floor, which follows quiet frames quickly and louder ones slowly (over ``noise_adapt_s``),
  so a steady fan or motor hum stops counting as speech after a few seconds;
- ``min_speech_ms`` of speech in a row opens an utterance (a click does not); ``hangover_ms`` of
  silence in a row closes it (pauses between words do not); ``max_utterance_s`` cuts a long one;
- an utterance's audio starts ``pre_roll_ms`` before its first speech frame (the onset of the
  first word is quiet) and runs to its closing frame, hangover included.

``listen`` runs the speech pipeline's ``command`` (transcript + intent) or ``transcribe`` on each
utterance and yields one JSON-able dict per utterance with its ``start_s`` / ``end_s`` (first
speech frame's start, last speech frame's end, in seconds from the start of the stream).
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Iterator

import numpy as np

from tinymm.errors import InputError

if TYPE_CHECKING:
    from tinymm.pipelines.speech import SpeechPipeline
    from tinymm.pipelines.vad import SileroVAD

logger = logging.getLogger(__name__)

MS_PER_S = 1000.0
SILENCE_DB = -100.0  # energy of digital silence (the log of 0 is clamped here)
POWER_FLOOR = 10 ** (SILENCE_DB / 10)
SAMPLE_FORMATS = {"s16le": ("<i2", 2**15), "f32le": ("<f4", 1.0)}  # raw PCM: numpy dtype, full scale
# Float PCM beyond this magnitude (x full scale) is not audio: s16le bytes read as f32le, most often.
MAX_FLOAT_PCM_ABS = 8.0
LISTEN_TASKS = ("command", "transcribe")
DETECTORS = ("silero", "energy")  # listen(detector=...): Silero VAD (needs the pipeline's vad), or frame energy
DEFAULT_CHUNK_MS = 100  # audio read per chunk from a file or a pipe


@dataclass(frozen=True)
class VADOptions:
    """The detector's settings; a bad value is a ValueError."""

    frame_ms: float = 20.0  # analysis frame
    threshold_db: float = -45.0  # dBFS a frame must exceed to count as speech
    noise_margin_db: float = 10.0  # ... and by this much the tracked noise floor
    noise_adapt_s: float = 5.0  # time for the noise floor to rise to a louder steady background
    min_speech_ms: float = 60.0  # speech in a row that opens an utterance
    hangover_ms: float = 300.0  # silence in a row that closes it
    pre_roll_ms: float = 150.0  # audio kept before the first speech frame
    min_utterance_ms: float = 150.0  # shorter utterances (first to last speech frame) are dropped
    max_utterance_s: float = 10.0  # longer ones are cut there

    def __post_init__(self) -> None:
        for name in ("frame_ms", "noise_adapt_s", "min_speech_ms", "hangover_ms", "max_utterance_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"VADOptions.{name}={value!r} must be a positive number")
        for name in ("threshold_db", "noise_margin_db", "pre_roll_ms", "min_utterance_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"VADOptions.{name}={value!r} must be a finite number")
        if self.pre_roll_ms < 0 or self.min_utterance_ms < 0:
            raise ValueError("VADOptions.pre_roll_ms and min_utterance_ms must be >= 0")
        if self.max_utterance_s * MS_PER_S < self.min_speech_ms:
            raise ValueError("VADOptions.max_utterance_s must be longer than min_speech_ms")


@dataclass(frozen=True)
class Utterance:
    """One stretch of speech."""

    start_s: float  # start of its first speech frame, from the start of the stream
    end_s: float  # end of its last speech frame
    samples: np.ndarray  # (samples,) float32 mono: pre-roll, the speech, and the closing silence
    sample_rate: int  # Hz of samples


def frame_energy_db(frame: np.ndarray) -> float:
    """Mean power of a float frame in [-1, 1], in dBFS (SILENCE_DB for digital silence)."""
    power = float(np.mean(np.square(frame, dtype=np.float64))) if frame.size else 0.0
    return 10.0 * math.log10(max(power, POWER_FLOOR))


class EnergyVAD:
    """Streaming detector: ``accept(chunk)`` returns the utterances that chunk completed."""

    def __init__(self, sample_rate: int, options: VADOptions | None = None, frame_len: int | None = None) -> None:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
            raise InputError(f"sample_rate={sample_rate!r} must be a positive integer number of Hz")
        self.options = options = options if options is not None else VADOptions()
        self.sample_rate = sample_rate
        # samples per frame: options.frame_ms, unless the detector has its own window
        self.frame_len = frame_len or max(1, round(sample_rate * options.frame_ms / MS_PER_S))
        frame_ms = options.frame_ms if frame_len is None else self.frame_len * MS_PER_S / sample_rate

        def frames(ms: float) -> int:
            return max(1, math.ceil(ms / frame_ms))

        self._onset_frames = frames(options.min_speech_ms)
        self._hangover_frames = frames(options.hangover_ms)
        self._max_frames = frames(options.max_utterance_s * MS_PER_S)
        self._pre_roll_frames = math.ceil(options.pre_roll_ms / frame_ms)
        self._rise = min(1.0, options.frame_ms / (options.noise_adapt_s * MS_PER_S))  # floor step per louder frame
        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet a whole frame
        self._index = 0  # frames seen
        self._floor: float | None = None  # noise floor in dBFS
        self._history: collections.deque[np.ndarray] = collections.deque(maxlen=self._pre_roll_frames + self._onset_frames)
        self._run = 0  # speech frames in a row while idle
        self._open: list[np.ndarray] | None = None  # frames of the open utterance
        self._first = self._last = 0  # first and last speech frame of the open utterance
        self._silence = 0  # silent frames in a row inside it

    def _speech(self, frame: np.ndarray) -> bool:
        """Is this frame speech? (energy above the threshold and the noise floor)"""
        return self._is_speech(frame_energy_db(frame))

    def _is_speech(self, db: float) -> bool:
        floor = self._floor
        speech = db > self.options.threshold_db and (floor is None or db > floor + self.options.noise_margin_db)
        if floor is None or db < floor:
            self._floor = db
        else:
            self._floor = floor + self._rise * (db - floor)
        return speech

    def _close(self) -> list[Utterance]:
        """Close the open utterance after its last frame so far; [] when it is too short."""
        frames, self._open = self._open or [], None
        self._run = 0
        seconds = self.frame_len / self.sample_rate
        start_s, end_s = self._first * seconds, (self._last + 1) * seconds
        if (end_s - start_s) * MS_PER_S < self.options.min_utterance_ms:
            logger.debug("dropped a %.0f ms blip at %.2f s", (end_s - start_s) * MS_PER_S, start_s)
            return []
        return [Utterance(start_s, end_s, np.concatenate(frames).astype(np.float32), self.sample_rate)]

    def _frame(self, frame: np.ndarray) -> list[Utterance]:
        index, self._index = self._index, self._index + 1
        speech = self._speech(frame)
        if self._open is None:
            self._history.append(frame)
            self._run = self._run + 1 if speech else 0
            if self._run < self._onset_frames:
                return []
            self._first = self._last = index - self._run + 1
            self._open = list(self._history)
            self._history.clear()
            self._silence = 0
            if speech:
                self._last = index
            return []
        self._open.append(frame)
        if speech:
            self._last, self._silence = index, 0
        else:
            self._silence += 1
        if self._silence >= self._hangover_frames or index - self._first + 1 >= self._max_frames:
            return self._close()
        return []

    def accept(self, chunk: np.ndarray) -> list[Utterance]:
        """Feed (samples,) float mono audio in [-1, 1]; returns the utterances it completed."""
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        data = np.concatenate([self._pending, chunk]) if self._pending.size else chunk
        whole = data.shape[0] // self.frame_len * self.frame_len
        self._pending = data[whole:].copy()
        out: list[Utterance] = []
        for start in range(0, whole, self.frame_len):
            out += self._frame(data[start : start + self.frame_len])
        return out

    def flush(self) -> list[Utterance]:
        """End of stream: close the open utterance, if any."""
        return [] if self._open is None else self._close()


class SileroSegmenter(EnergyVAD):
    """``EnergyVAD``'s utterance rules over Silero VAD's decisions, one model window per frame.

    A window is speech when its probability is at least the VAD's ``threshold``, or, while an
    utterance is open, at least its ``neg_threshold`` (Silero's hysteresis). ``options.frame_ms``,
    ``threshold_db``, ``noise_margin_db`` and ``noise_adapt_s`` do not apply.
    """

    def __init__(self, sample_rate: int, vad: SileroVAD, options: VADOptions | None = None) -> None:
        settings = vad.settings
        frame_len = max(1, round(settings.chunk_samples * sample_rate / settings.sample_rate))
        super().__init__(sample_rate, options, frame_len=frame_len)
        self.vad, self._stream = vad, vad.stream()

    def _speech(self, frame: np.ndarray) -> bool:
        settings = self.vad.settings
        window = frame
        if self.sample_rate != settings.sample_rate:
            from tinymm.preprocess.audio_io import resample

            resampled = resample(frame, self.sample_rate, settings.sample_rate)[: settings.chunk_samples]
            window = np.zeros(settings.chunk_samples, dtype=np.float32)  # a sample short after rounding: pad
            window[: resampled.shape[0]] = resampled
        p = self._stream.window(window)
        return p >= settings.threshold or (self._open is not None and p >= settings.neg_threshold)


def segment(chunks: Iterable[np.ndarray], sample_rate: int, options: VADOptions | None = None,
            vad: SileroVAD | None = None) -> Iterator[Utterance]:
    """The utterances in a stream of (samples,) float chunks at ``sample_rate``: by Silero VAD when
    ``vad`` is given, else by frame energy."""
    vad = EnergyVAD(sample_rate, options) if vad is None else SileroSegmenter(sample_rate, vad, options)
    for chunk in chunks:
        yield from vad.accept(chunk)
    yield from vad.flush()


def wav_chunks(source: Any, chunk_ms: float = DEFAULT_CHUNK_MS) -> tuple[int, Iterator[np.ndarray]]:
    """(sample rate, chunks) of a WAV file (path or bytes), mixed to mono; InputError if unreadable or empty."""
    from tinymm.preprocess.audio_io import load_audio, to_mono

    samples, rate = load_audio(source)
    mono = to_mono(samples)
    step = max(1, round(rate * chunk_ms / MS_PER_S))
    return rate, (mono[i : i + step] for i in range(0, mono.shape[0], step))


def pcm_chunks(
    stream: BinaryIO, sample_rate: int, sample_format: str = "s16le", chunk_ms: float = DEFAULT_CHUNK_MS
) -> Iterator[np.ndarray]:
    """(samples,) float32 chunks of raw mono PCM read from a binary stream until it ends.

    Float samples that are NaN, infinite or beyond MAX_FLOAT_PCM_ABS raise InputError: the bytes
    are not float PCM (integer PCM read in the wrong sample format).
    """
    if sample_format not in SAMPLE_FORMATS:
        raise InputError(f"sample format {sample_format!r} is not one of {list(SAMPLE_FORMATS)}")
    dtype, full_scale = SAMPLE_FORMATS[sample_format]
    width, is_float = np.dtype(dtype).itemsize, np.dtype(dtype).kind == "f"
    chunk_bytes = max(1, round(sample_rate * chunk_ms / MS_PER_S)) * width
    leftover = b""
    while True:
        data = stream.read(chunk_bytes)
        if not data:
            break
        data = leftover + data
        whole = len(data) // width * width
        leftover = data[whole:]
        if whole:
            raw = np.frombuffer(data[:whole], dtype=dtype)
            with np.errstate(invalid="ignore"):  # a signalling NaN is what this check is for
                plausible = not is_float or bool(np.all(np.abs(raw) <= MAX_FLOAT_PCM_ABS))  # NaN fails it too
            if not plausible:
                raise InputError(
                    f"raw PCM read as {sample_format} holds samples that are not audio (NaN, infinite or beyond "
                    f"+-{MAX_FLOAT_PCM_ABS:g} full scale): the stream is in another sample format; pass the right "
                    f"one (--sample-format {' or '.join(SAMPLE_FORMATS)}; arecord -f S16_LE is s16le)"
                )
            yield raw.astype(np.float32) / np.float32(full_scale)
    if leftover:
        logger.warning("raw PCM ended with %d stray byte(s) (half a sample); ignored", len(leftover))


def listen(
    pipeline: SpeechPipeline,
    chunks: Iterable[np.ndarray],
    sample_rate: int,
    *,
    task: str = "command",
    options: VADOptions | None = None,
    detector: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Transcribe each utterance of an audio stream; yield one JSON-able dict per utterance.

    Args:
        pipeline: a SpeechPipeline.
        chunks: (samples,) float mono chunks in [-1, 1] at ``sample_rate`` (see wav_chunks, pcm_chunks).
        task: "command" (transcript and intent) or "transcribe" (transcript).
        detector: "silero" (the pipeline's ``vad``), "energy", or None: silero when the pipeline
            has a VAD, else energy.

    An utterance the model cannot take (e.g. too short) yields ``{"start_s", "end_s", "error"}``
    and the stream goes on.
    """
    if task not in LISTEN_TASKS:
        raise InputError(f"listen task {task!r} is not one of {list(LISTEN_TASKS)}")
    vad = getattr(pipeline, "vad", None)
    if detector is None:
        detector = "energy" if vad is None else "silero"
    if detector not in DETECTORS:
        raise InputError(f"listen detector {detector!r} is not one of {list(DETECTORS)}")
    if detector == "silero" and vad is None:
        raise InputError(f"the speech pipeline {getattr(pipeline, 'name', '?')!r} has no VAD (the silero-vad bundle "
                         "is not installed: python scripts/make_vad_bundle.py); use detector 'energy'")
    run = pipeline.command if task == "command" else pipeline.transcribe
    for utterance in segment(chunks, sample_rate, options, vad if detector == "silero" else None):
        event: dict[str, Any] = {"start_s": round(utterance.start_s, 3), "end_s": round(utterance.end_s, 3)}
        try:
            event.update(run(utterance.samples, utterance.sample_rate).to_dict())
        except InputError as e:
            event["error"] = str(e)
        yield event
