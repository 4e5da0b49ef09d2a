"""train/data/speech_dataset.py: layout, determinism, held-out voices, the reader and the CLI."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

from tinymm.errors import InputError
from tinymm.robot.intent import Intent, parse_intent
from train.data.speech_dataset import (
    DEFAULT_CONFIG,
    SPLITS,
    TEST_POOL,
    TRAIN_POOL,
    SpeechDataConfig,
    SpeechDataset,
    main,
    write_speech_dataset,
)

pytest.importorskip("espeakng_loader", reason="espeakng-loader is not installed (pip install espeakng-loader)")

COUNTS = {"train": 6, "val": 2, "test": 3}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """A tiny dataset written in this process (workers=1)."""
    out = tmp_path_factory.mktemp("speech_a")
    write_speech_dataset(out, COUNTS, seed=5, workers=1, progress=False)
    return out


def _files(root: Path) -> dict[str, bytes]:
    paths = [p for p in sorted(root.rglob("*")) if p.is_file() and p.name != "meta.json"]
    return {str(p.relative_to(root)): p.read_bytes() for p in paths}


def test_layout_and_wav_format(written):
    root = written / "speech"
    meta = json.loads((root / "meta.json").read_text())
    assert meta["counts"] == COUNTS and meta["seed"] == 5 and meta["sample_rate"] == 16000
    assert SpeechDataConfig.from_dict(meta["config"]) == DEFAULT_CONFIG
    assert meta["espeak_ng"]["version"]
    for split in SPLITS:
        lines = (root / split / "manifest.jsonl").read_text().splitlines()
        assert len(lines) == COUNTS[split]
        for index, line in enumerate(lines):
            row = json.loads(line)
            assert row["index"] == index and row["path"] == f"audio/{index:06d}.wav"
            assert set(row) >= {"transcript", "intent", "kind", "voice", "rate", "pitch", "augmentations", "duration"}
            with wave.open(str(root / split / row["path"])) as w:
                assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
                assert abs(w.getnframes() / 16000 - row["duration"]) < 1e-3
            assert 0.5 < row["duration"] < 8.0


def test_same_seed_same_bytes_with_any_number_of_workers(written, tmp_path):
    # The CLI with 2 worker processes and the default chunking must write the same files.
    assert main(["--out", str(tmp_path), "--train", "6", "--val", "2", "--test", "3", "--seed", "5", "--quiet"]) == 0
    first, second = _files(written / "speech"), _files(tmp_path / "speech")
    assert first.keys() == second.keys() and len(first) == 3 + sum(COUNTS.values())
    assert [name for name in first if first[name] != second[name]] == []
    meta = json.loads((tmp_path / "speech" / "meta.json").read_text())
    assert meta["command"].startswith("python -m train.data.speech_dataset --out")


def test_another_seed_gives_other_clips(written, tmp_path):
    write_speech_dataset(tmp_path, {"train": 2}, seed=6, workers=1, progress=False)
    first = (written / "speech/train/audio/000000.wav").read_bytes()
    assert (tmp_path / "speech/train/audio/000000.wav").read_bytes() != first


def test_reader_yields_waveforms_and_items(written):
    dataset = SpeechDataset(written, "train")
    assert len(dataset) == COUNTS["train"]
    for waveform, item in dataset:
        assert waveform.dtype == np.float32 and waveform.ndim == 1
        assert abs(waveform.size / 16000 - item["duration"]) < 1e-3
        assert np.abs(waveform).max() <= 1.0 and np.sqrt(np.mean(waveform**2)) > 1e-3
        assert Path(item["path"]).is_absolute() and Path(item["path"]).is_file()
        assert item["kind"] in ("command", "question")
        assert parse_intent(item["transcript"]) == Intent.from_dict(item["intent"])


def test_test_split_voices_and_rates_are_held_out(written):
    assert not set(TEST_POOL.voices()) & set(TRAIN_POOL.voices())
    assert not {v.partition("+")[2] for v in TEST_POOL.voices()} & {v.partition("+")[2] for v in TRAIN_POOL.voices()}
    assert not TEST_POOL.rates() & TRAIN_POOL.rates()
    assert DEFAULT_CONFIG.val_voices == TRAIN_POOL and DEFAULT_CONFIG.test_voices == TEST_POOL
    train = [item for _, item in SpeechDataset(written, "train")]
    test = [item for _, item in SpeechDataset(written, "test")]
    assert all(item["voice"] in TRAIN_POOL.voices() and item["rate"] in TRAIN_POOL.rates() for item in train)
    assert all(item["voice"] in TEST_POOL.voices() and item["rate"] in TEST_POOL.rates() for item in test)


def test_existing_output_is_not_overwritten_silently(written):
    with pytest.raises(InputError, match="already exists"):
        write_speech_dataset(written, {"train": 1}, workers=1, progress=False)


def test_clean_splits_are_not_augmented(tmp_path):
    import dataclasses

    config = dataclasses.replace(DEFAULT_CONFIG, augment_splits=("train",))
    write_speech_dataset(tmp_path, {"val": 2}, config=config, workers=1, progress=False)
    assert all(item["augmentations"] == [] for _, item in SpeechDataset(tmp_path, "val"))


def test_reader_errors_name_the_problem(tmp_path, written):
    with pytest.raises(InputError, match="write the dataset first"):
        SpeechDataset(tmp_path, "train")
    with pytest.raises(InputError, match="split='dev'"):
        SpeechDataset(written, "dev")
    broken = tmp_path / "speech" / "val"
    broken.mkdir(parents=True)
    (broken / "manifest.jsonl").write_text('{"path": "audio/000000.wav", "transcript": "stop"}\n{not json\n')
    with pytest.raises(InputError, match=r"manifest.jsonl:2"):
        SpeechDataset(tmp_path, "val")


def test_bad_counts_are_refused(tmp_path):
    with pytest.raises(InputError, match="unknown split"):
        write_speech_dataset(tmp_path, {"dev": 3}, workers=1, progress=False)
    with pytest.raises(InputError, match="non-negative"):
        write_speech_dataset(tmp_path, {"train": -1}, workers=1, progress=False)
