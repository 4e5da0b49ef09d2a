"""train/data/audio_folder.py: a user's folder or CSV of recordings, and its error messages."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from tinymm.errors import InputError
from train.data.audio_folder import AudioFolder

RATE = 16000


def _write_wav(path: Path, seconds: float = 0.5, rate: int = RATE, channels: int = 1) -> np.ndarray:
    """Write a 16-bit sine; returns the (N,) float mono signal it encodes."""
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.25 * np.sin(2 * np.pi * 440.0 * t)
    pcm = np.round(np.repeat(mono[:, None], channels, axis=1) * 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return mono


def test_folder_of_wavs_with_transcripts(tmp_path):
    _write_wav(tmp_path / "a_stop.wav")
    (tmp_path / "a_stop.txt").write_text("Stop!\n")
    _write_wav(tmp_path / "sub" / "b.wav", seconds=1.0, rate=44100, channels=2)
    (tmp_path / "sub" / "b.txt").write_text("What colour is the star?")
    _write_wav(tmp_path / "c.wav")
    (tmp_path / "c.txt").write_text("play some music")
    (tmp_path / "notes.md").write_text("not audio")
    folder = AudioFolder(tmp_path)
    assert len(folder) == 3
    items = [item for _, item in folder]
    assert [Path(i["path"]).name for i in items] == ["a_stop.wav", "c.wav", "b.wav"]  # sorted paths
    assert items[0]["transcript"] == "stop" and items[0]["intent"] == {"action": "stop"}
    assert items[0]["kind"] == "command"
    assert items[2]["transcript"] == "what color is the star" and items[2]["kind"] == "question"
    assert items[2]["intent"]["question"] == "what color is the star?"
    assert items[1]["intent"] is None and items[1]["kind"] is None and items[1]["text"] == "play some music"
    waveform, item = folder[2]  # 44.1 kHz stereo, read as 16 kHz mono
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert abs(waveform.size - RATE) <= 2 and item["duration"] == pytest.approx(1.0, abs=1e-3)
    assert np.sqrt(np.mean(waveform[1000:-1000] ** 2)) == pytest.approx(0.25 / np.sqrt(2), rel=0.02)


def test_csv_manifest(tmp_path):
    expected = _write_wav(tmp_path / "clips" / "one.wav")
    _write_wav(tmp_path / "clips" / "two.wav")
    (tmp_path / "list.csv").write_text(
        'path,transcript\nclips/one.wav,"go forward, 3 meters"\n\n' + f"{tmp_path / 'clips' / 'two.wav'},turn left\n"
    )
    folder = AudioFolder(tmp_path / "list.csv")
    assert len(folder) == 2
    waveform, item = folder[0]
    np.testing.assert_allclose(waveform, expected, atol=1e-4)
    assert item["transcript"] == "go forward three meters"
    assert item["intent"] == {"action": "move", "direction": "forward", "distance_m": 3}
    assert folder[1][1]["intent"] == {"action": "turn", "direction": "left"}


def test_a_wav_without_transcript_is_named(tmp_path):
    _write_wav(tmp_path / "lonely.wav")
    with pytest.raises(InputError, match=r"lonely.wav has no transcript: write its words into .*lonely.txt"):
        AudioFolder(tmp_path)


def test_an_empty_transcript_is_named(tmp_path):
    _write_wav(tmp_path / "a.wav")
    (tmp_path / "a.txt").write_text("  ?! \n")
    with pytest.raises(InputError, match=r"a.txt has an empty transcript"):
        AudioFolder(tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [
        ("file,text\na.wav,stop\n", r"list.csv:1 must be the header path,transcript"),
        ("", r"list.csv:1 must be the header"),
        ("path,transcript\na.wav,stop\na.wav,stop,now\n", r"list.csv:3 has 3 fields, expected 2"),
        ("path,transcript\na.wav,stop\n\nmissing.wav,stop\n", r"list.csv:4 names 'missing.wav', but .*missing.wav does not"),
        ('path,transcript\n"a.wav",stop\n"a.wav","multi\nline"\nb.wav,x\n', r"list.csv:5 names 'b.wav'"),
        ("path,transcript\na.wav,\n", r"list.csv:2 has an empty transcript"),
    ],
)
def test_malformed_csv_is_reported_with_file_and_line(tmp_path, content, message):
    _write_wav(tmp_path / "a.wav")
    (tmp_path / "list.csv").write_text(content)
    with pytest.raises(InputError, match=message):
        AudioFolder(tmp_path / "list.csv")


def test_bad_sources(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        AudioFolder(tmp_path / "nowhere")
    with pytest.raises(InputError, match="holds no clips"):
        AudioFolder(tmp_path)
    (tmp_path / "list.txt").write_text("path,transcript\n")
    with pytest.raises(InputError, match="neither a folder nor a .csv"):
        AudioFolder(tmp_path / "list.txt")


def test_undecodable_audio_is_reported_when_read(tmp_path):
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00")
    (tmp_path / "broken.txt").write_text("stop")
    folder = AudioFolder(tmp_path)
    with pytest.raises(InputError, match="broken.wav"):
        folder[0]
