"""Streams: ``watch`` on a video written here, ``listen`` / the energy VAD on synthesized audio."""

from __future__ import annotations

import io
import itertools
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fake_sessions import COMMAND_SENTENCES, ScriptedSpeechEncoder, train_sentencepiece

from tinymm.errors import InputError
from tinymm.pipelines import SpeechPipeline
from tinymm.preprocess.audio import AudioPreprocessor
from tinymm.preprocess.config import AudioConfig, TextConfig
from tinymm.preprocess.text import Tokenizer
from tinymm.robot.intent import Intent
from tinymm.streams import (
    EnergyVAD,
    VADOptions,
    WatchOptions,
    listen,
    pcm_chunks,
    segment,
    watch,
    wav_chunks,
)

FPS = 30.0
FRAMES = 30
LEVEL_STEP = 8  # frame i is filled with gray level i * LEVEL_STEP
RATE = 16000
FRAME_S = VADOptions().frame_ms / 1000  # one VAD frame, the tolerance on boundaries


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """A 1 s MJPG .avi at 30 fps whose frame i is uniformly gray level 8 * i."""
    import cv2

    path = tmp_path_factory.mktemp("video") / "ramp.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (32, 24))
    assert writer.isOpened(), "OpenCV cannot write MJPG .avi files here"
    for i in range(FRAMES):
        writer.write(np.full((24, 32, 3), i * LEVEL_STEP, np.uint8))
    writer.release()
    return path


def _level(frame: np.ndarray) -> dict:
    return {"index": round(float(frame.mean()) / LEVEL_STEP)}


def test_every_n_frames(video):
    events = list(watch(video, _level, WatchOptions(every_n_frames=5, pace="all")))
    assert [e["frame"] for e in events] == [0, 5, 10, 15, 20, 25]
    assert [e["result"]["index"] for e in events] == [0, 5, 10, 15, 20, 25]  # the task saw that frame
    assert all(e["dropped"] == 0 for e in events) and [e["skipped"] for e in events] == [0, 4, 4, 4, 4, 4]


def test_every_t_seconds_of_stream_time(video):
    events = list(watch(str(video), _level, WatchOptions(every_s=0.4, pace="all")))
    assert [e["frame"] for e in events] == [0, 12, 24]
    assert [e["t_s"] for e in events] == [0.0, 0.4, 0.8]


def test_every_frame_until_the_end_of_the_file(video):
    events = list(watch(video, _level, WatchOptions(pace="all")))
    assert [e["frame"] for e in events] == list(range(FRAMES))
    assert set(events[0]) == {"frame", "t_s", "latency_ms", "task_ms", "dropped", "skipped", "result"}


def test_a_slow_task_drops_frames_instead_of_queueing(video):
    task_s = 0.15
    frame_s = 1 / FPS

    def slow(frame: np.ndarray) -> dict:
        time.sleep(task_s)
        return _level(frame)

    events = list(watch(video, slow, WatchOptions(pace="realtime")))
    assert 3 <= len(events) < FRAMES / 2  # ~1 s of video, 0.15 s per run
    assert sum(e["dropped"] for e in events) > FRAMES / 2
    frames = [e["frame"] for e in events]
    assert all(b - a > 1 for a, b in itertools.pairwise(frames))  # it skips ahead to the newest frame
    # Bounded latency: the frame is at most one frame interval old when the task starts (plus
    # scheduling slack on a busy machine), never a queue of frames behind.
    for e in events:
        assert e["latency_ms"] - e["task_ms"] < 1000 * (frame_s + 0.1)


def test_max_results_stops_the_reader(video):
    before = threading.active_count()
    events = list(watch(video, _level, WatchOptions(max_results=2, pace="all")))
    assert len(events) == 2
    deadline = time.monotonic() + 2
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before


def test_closing_the_generator_early_stops_the_reader(video):
    before = threading.active_count()
    stream = watch(video, _level, WatchOptions(pace="all"))
    next(stream)
    stream.close()
    assert threading.active_count() == before


def test_results_with_to_dict_are_converted(video):
    class Result:
        def to_dict(self) -> dict:
            return {"text": "a gray frame"}

    (event,) = watch(video, lambda frame: Result(), WatchOptions(max_results=1, pace="all"))
    assert event["result"] == {"text": "a gray frame"}


def test_bad_sources_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not a file, a camera index"):
        list(watch(tmp_path / "missing.avi", _level))
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(InputError, match="cannot open"):
        list(watch(bad, _level))
    with pytest.raises(ValueError, match="not both"):
        WatchOptions(every_n_frames=2, every_s=1.0)


# ---- audio ------------------------------------------------------------------------------------


def _tone(seconds: float, amplitude: float = 0.3, hz: float = 300.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _scene(parts: list[tuple[str, float]], noise_db: float = -60.0, seed: int = 0) -> np.ndarray:
    """Concatenated ("speech", seconds) / ("silence", seconds) parts over white noise at noise_db dBFS."""
    audio = np.concatenate([_tone(s) if kind == "speech" else np.zeros(int(s * RATE), np.float32) for kind, s in parts])
    noise = np.random.default_rng(seed).standard_normal(audio.shape[0]) * 10 ** (noise_db / 20)
    return (audio + noise).astype(np.float32)


def _spans(audio: np.ndarray, chunk: int = 1600, options: VADOptions | None = None) -> list[tuple[float, float]]:
    chunks = (audio[i : i + chunk] for i in range(0, audio.shape[0], chunk))
    return [(u.start_s, u.end_s) for u in segment(chunks, RATE, options)]


def test_two_utterances_with_their_boundaries():
    audio = _scene([("silence", 0.5), ("speech", 0.8), ("silence", 0.7), ("speech", 0.6), ("silence", 0.6)])
    spans = _spans(audio)
    assert len(spans) == 2
    for (start, end), (want_start, want_end) in zip(spans, [(0.5, 1.3), (2.0, 2.6)]):
        assert abs(start - want_start) <= FRAME_S and abs(end - want_end) <= FRAME_S


def test_chunk_size_does_not_matter():
    audio = _scene([("silence", 0.3), ("speech", 0.5), ("silence", 0.5), ("speech", 0.4), ("silence", 0.5)])
    assert len(_spans(audio)) == 2
    assert _spans(audio, chunk=1) == _spans(audio, chunk=37) == _spans(audio, chunk=16000)


def test_hangover_bridges_short_pauses_and_clicks_are_ignored():
    pause = _scene([("silence", 0.3), ("speech", 0.4), ("silence", 0.15), ("speech", 0.4), ("silence", 0.6)])
    assert len(_spans(pause)) == 1
    click = _scene([("silence", 0.3), ("speech", 0.02), ("silence", 0.6)])
    assert _spans(click) == []


def test_long_speech_is_cut_and_an_open_utterance_is_flushed():
    audio = _scene([("silence", 0.2), ("speech", 2.5)])  # no silence at the end
    spans = _spans(audio, options=VADOptions(max_utterance_s=1.0))
    assert len(spans) == 3 and spans[0][1] - spans[0][0] == pytest.approx(1.0, abs=FRAME_S)
    assert spans[-1][1] == pytest.approx(2.7, abs=FRAME_S)


def test_a_steady_loud_background_is_not_speech():
    noisy = _scene([("silence", 1.0), ("speech", 0.5), ("silence", 1.0)], noise_db=-30.0)
    noisy[int(1.0 * RATE) : int(1.5 * RATE)] *= 2.0  # the voice stands out from the hum
    spans = _spans(noisy)
    assert len(spans) == 1 and abs(spans[0][0] - 1.0) <= 2 * FRAME_S


def test_vad_checks_its_options():
    with pytest.raises(ValueError):
        VADOptions(hangover_ms=0)
    with pytest.raises(InputError):
        EnergyVAD(0)


@pytest.fixture(scope="module")
def speech_tokenizer(tmp_path_factory) -> Tokenizer:
    path = train_sentencepiece(tmp_path_factory.mktemp("speech") / "speech.model", COMMAND_SENTENCES * 4, 40)
    return Tokenizer(path, TextConfig(tokenizer="speech.model", context_length=256, add_bos=False))


class _OnePathPerCall(ScriptedSpeechEncoder):
    """Says the next sentence at each run (listen runs the model once per utterance)."""

    def run(self, feeds, output_names=None):
        out = super().run(feeds, output_names)
        self.paths = self.paths[1:] + self.paths[:1]
        return out


def _pipeline(tokenizer: Tokenizer, *sentences: str) -> SpeechPipeline:
    paths = [[x for t in tokenizer.encode(s) for x in (t, 0)] for s in sentences]
    return SpeechPipeline(encoder=_OnePathPerCall(paths, tokenizer.vocab_size, 16),
                          preprocessor=AudioPreprocessor(AudioConfig(n_mels=16)), tokenizer=tokenizer)


def test_listen_transcribes_each_utterance(speech_tokenizer, tmp_path):
    import wave

    pipeline = _pipeline(speech_tokenizer, "turn left", "stop")
    audio = _scene([("silence", 0.4), ("speech", 0.7), ("silence", 0.6), ("speech", 0.5), ("silence", 0.5)])
    path = tmp_path / "two.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((audio * 32767).astype("<i2").tobytes())
    rate, chunks = wav_chunks(path)
    events = list(listen(pipeline, chunks, rate))
    assert [e["transcript"] for e in events] == ["turn left", "stop"]
    assert events[0]["intent"] == Intent(action="turn", direction="left").to_dict()
    assert abs(events[1]["start_s"] - 1.7) <= FRAME_S and abs(events[1]["end_s"] - 2.2) <= FRAME_S
    text_events = list(listen(pipeline, wav_chunks(path)[1], rate, task="transcribe"))
    assert [e["text"] for e in text_events] == ["turn left", "stop"]


def test_raw_pcm_on_a_pipe_gives_the_same_segments():
    audio = _scene([("silence", 0.3), ("speech", 0.5), ("silence", 0.5)])
    pcm = (audio * 32767).astype("<i2").tobytes()
    from_pcm = [(u.start_s, u.end_s) for u in segment(pcm_chunks(io.BytesIO(pcm + b"\x01"), RATE), RATE)]
    assert from_pcm == _spans(audio)
    floats = audio.astype("<f4").tobytes()
    assert [(u.start_s, u.end_s) for u in segment(pcm_chunks(io.BytesIO(floats), RATE, "f32le"), RATE)] == from_pcm
    with pytest.raises(InputError, match="sample format"):
        list(pcm_chunks(io.BytesIO(pcm), RATE, "u8"))


def test_an_utterance_the_model_cannot_take_is_reported_and_listening_goes_on(speech_tokenizer):
    pipeline = _pipeline(speech_tokenizer, "stop")
    pipeline.settings = type(pipeline.settings)(blank_id=0, max_frames=70)  # 0.7 s at most
    # Utterance audio = 0.15 s pre-roll + speech + 0.3 s hangover: 1.35 s (too long), then 0.61 s.
    audio = _scene([("silence", 0.3), ("speech", 0.9), ("silence", 0.6), ("speech", 0.16), ("silence", 0.5)])
    events = list(listen(pipeline, [audio], RATE))
    assert "at most" in events[0]["error"] and events[1]["transcript"] == "stop"
