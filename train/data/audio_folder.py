"""A user's own recordings with transcripts, read like the synthetic speech dataset.

Two layouts are accepted:

- a folder of audio files (searched recursively, in sorted order), each with a transcript in a
  text file of the same name next to it: ``clips/stop_01.wav`` + ``clips/stop_01.txt``;
- a CSV manifest with a ``path,transcript`` header and one clip per row; relative paths are
  relative to the CSV's folder. Quote transcripts that contain commas (standard CSV).

``AudioFolder(path)[i]`` is ((N,) float32 mono samples at ``sample_rate`` Hz, item) with the item
keys of ``SpeechDataset``: ``path`` (absolute), ``transcript`` (canonical, see
``tinymm.robot.transcripts.normalize_transcript``), ``intent`` (``parse_intent`` of it as a dict, or None
when the sentence is outside the command grammar), ``kind`` (command | question, or None),
``duration`` (seconds), plus ``text``, the transcript as written. Audio is decoded by tinymm's
own reader (WAV in any PCM or float encoding; other formats when ``soundfile`` is installed),
mixed to mono and resampled, so training reads a user's files exactly as the runtime would.

Problems are reported when the folder is opened, not halfway through training: a missing or
empty transcript, a malformed CSV row (named by file and line), a file that does not exist.
Audio that cannot be decoded is reported, with its path, when it is read.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from tinymm.errors import InputError
from tinymm.preprocess.audio_io import load_audio, resample, to_mono
from tinymm.robot.intent import IntentParser
from tinymm.robot.transcripts import normalize_transcript

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")  # files in a folder that are taken as clips
TRANSCRIPT_SUFFIX = ".txt"
CSV_COLUMNS = ("path", "transcript")
SAMPLE_RATE_HZ = 16000
MAX_CLIP_SECONDS = 60.0  # longer files are refused when read (speech commands are short)


class AudioFolder:
    """Clips and transcripts from a folder or a CSV manifest; see the module docstring."""

    def __init__(self, path: str | Path, sample_rate: int = SAMPLE_RATE_HZ) -> None:
        self.source = Path(path)
        self.sample_rate = sample_rate
        if self.source.is_dir():
            pairs = _folder_pairs(self.source)
        elif self.source.is_file() and self.source.suffix.lower() == ".csv":
            pairs = _csv_pairs(self.source)
        elif self.source.exists():
            raise InputError(f"{self.source} is neither a folder nor a .csv manifest; pass one of those")
        else:
            raise InputError(f"{self.source} does not exist; pass a folder of audio + .txt files or a CSV manifest")
        if not pairs:
            raise InputError(
                f"{self.source} holds no clips; add audio files ({', '.join(AUDIO_SUFFIXES)}) with same-named "
                f"{TRANSCRIPT_SUFFIX} transcripts, or CSV rows of {','.join(CSV_COLUMNS)}"
            )
        parser = IntentParser()
        self.items: list[dict[str, Any]] = []
        for audio_path, text in pairs:
            transcript = normalize_transcript(text)
            intent = parser.parse(transcript)
            self.items.append({
                "path": str(audio_path),
                "text": text,
                "transcript": transcript,
                "intent": None if intent is None else intent.to_dict(),
                "kind": None if intent is None else intent.kind,
            })

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[np.ndarray, dict[str, Any]]:
        item = dict(self.items[i])
        samples, rate = load_audio(item["path"], max_seconds=MAX_CLIP_SECONDS)
        waveform = resample(to_mono(samples), rate, self.sample_rate)
        item["duration"] = round(waveform.size / self.sample_rate, 4)
        return waveform, item

    def __iter__(self) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        for i in range(len(self)):
            yield self[i]


def _read_transcript(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text ({e.reason}); save the transcript as UTF-8") from e
    if not normalize_transcript(text):
        raise InputError(f"{path} has an empty transcript; write the spoken words into it")
    return text


def _folder_pairs(folder: Path) -> list[tuple[Path, str]]:
    pairs = []
    for audio in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES):
        transcript = audio.with_suffix(TRANSCRIPT_SUFFIX)
        if not transcript.is_file():
            raise InputError(f"{audio} has no transcript: write its words into {transcript}")
        pairs.append((audio.resolve(), _read_transcript(transcript)))
    return pairs


def _csv_rows(manifest: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every row; the line is where the row starts in the file."""
    rows = []
    try:
        with open(manifest, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            line = 1
            for row in reader:
                rows.append((line, row))
                line = reader.line_num + 1
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{manifest} is not a readable UTF-8 CSV file ({e}); save it as UTF-8 CSV") from e
    return rows


def _csv_pairs(manifest: Path) -> list[tuple[Path, str]]:
    rows = _csv_rows(manifest)
    if not rows or [cell.strip().lower() for cell in rows[0][1]] != list(CSV_COLUMNS):
        header = ",".join(rows[0][1]) if rows else "nothing"
        raise InputError(f"{manifest}:1 must be the header {','.join(CSV_COLUMNS)}, got {header!r}")
    pairs = []
    for line, row in rows[1:]:
        if all(not cell.strip() for cell in row):
            continue  # blank line
        if len(row) != len(CSV_COLUMNS):
            raise InputError(
                f"{manifest}:{line} has {len(row)} fields, expected {len(CSV_COLUMNS)} ({','.join(CSV_COLUMNS)}); "
                "quote a transcript that contains commas"
            )
        name, text = row[0].strip(), row[1].strip()
        audio = Path(name) if Path(name).is_absolute() else manifest.parent / name
        if not audio.is_file():
            raise InputError(f"{manifest}:{line} names {name!r}, but {audio.resolve()} does not exist")
        if not normalize_transcript(text):
            raise InputError(f"{manifest}:{line} has an empty transcript for {name!r}")
        pairs.append((audio.resolve(), text))
    return pairs
