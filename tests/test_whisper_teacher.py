"""The Whisper teacher of the speech students: normalised transcripts, clip-length encoder states,
greedy tokens equal to the uncached reference decoder, and rank-sharded pseudo-labels."""

from __future__ import annotations

import numpy as np
import pytest

from train.whisper_teacher import normalize_transcript, number_words, shard_indices

torch = pytest.importorskip("torch", reason="the training tier needs torch (pip install 'tinymm[train]')")
pytest.importorskip("transformers", reason="the Whisper teacher needs transformers (pip install 'tinymm[hf]')")


@pytest.mark.parametrize("text, words", [
    ("Go ahead, 3 meters.", "go ahead three meters"),
    ("Turn left 90 degrees!", "turn left ninety degrees"),
    ("Move 1.5 m", "move one point five m"),
    ("What's the sign?", "whats the sign"),
    ("It costs 1200 dollars", "it costs one thousand two hundred dollars"),
    ("  ", ""),
])
def test_transcripts_are_normalised_to_the_dataset_style(text: str, words: str) -> None:
    assert normalize_transcript(text) == words


def test_number_words_and_shards() -> None:
    assert [number_words(n) for n in (0, 13, 40, 45, 100, 999)] == \
        ["zero", "thirteen", "forty", "forty five", "one hundred", "nine hundred ninety nine"]
    shards = [shard_indices(10, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10)) and shards[1] == [1, 4, 7]
    with pytest.raises(Exception, match="rank"):
        shard_indices(10, 3, 3)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from tiny_whisper_models import save_hf_dir
    from train.whisper_teacher import WhisperTeacher

    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("whisper")
    save_hf_dir(directory)
    return WhisperTeacher.from_directory(directory, max_new_tokens=6)


def _clips(seconds: list[float]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in seconds]


def test_labels_hold_the_cached_greedy_tokens_and_the_clip_frames(teacher) -> None:
    from export.whisper_decode import decode_text, torch_greedy

    clips = _clips([0.3, 0.79, 0.05])
    labels = teacher.label(clips)
    features = np.stack([teacher.features.features(c) for c in clips])
    reference = torch_greedy(teacher.model, features, teacher.options)  # no cache: the whole sequence each step
    for label, clip, ids in zip(labels, clips, reference):
        assert label.text == decode_text(teacher.tokenizer, ids).strip()
        assert label.words == normalize_transcript(label.text)
        assert label.states.dtype == np.float16 and label.states.shape == (int(np.ceil(len(clip) / 320)), teacher.d_model)
    with pytest.raises(Exception, match="teacher labels mono clips"):
        teacher.label([np.zeros(16000 * 2, np.float32)])  # longer than the tiny model's 0.8 s window


def test_pseudo_labels_are_sharded_by_rank_and_read_back(teacher, tmp_path) -> None:
    from train.whisper_teacher import pseudo_label, read_labels

    clips = _clips([0.2, 0.4, 0.6, 0.3, 0.5])
    for rank in range(2):
        pseudo_label(teacher, clips, tmp_path, rank=rank, world_size=2, batch_size=2)
    labels = read_labels(tmp_path, 2)
    assert sorted(labels) == list(range(5))
    alone = teacher.label(clips)
    for i, (words, states) in labels.items():
        assert words == alone[i].words
        np.testing.assert_array_equal(states, alone[i].states)
    stamp = (tmp_path / "labels.0-of-2.jsonl").stat().st_mtime_ns
    pseudo_label(teacher, clips, tmp_path, rank=0, world_size=2)  # a rerun skips a finished shard
    assert (tmp_path / "labels.0-of-2.jsonl").stat().st_mtime_ns == stamp


def test_the_cli_labels_a_speech_dataset_split(teacher, tmp_path, capsys) -> None:
    import json

    from train.data.speech_dataset import write_wav
    from train.whisper_teacher import main

    clips = tmp_path / "data" / "speech" / "train"
    (clips / "audio").mkdir(parents=True)
    with open(clips / "manifest.jsonl", "w", encoding="utf-8") as f:
        for i, clip in enumerate(_clips([0.2, 0.5, 0.3])):
            write_wav(clips / "audio" / f"{i}.wav", clip, 16000)
            f.write(json.dumps({"path": f"audio/{i}.wav", "transcript": "turn left"}) + "\n")
    out = tmp_path / "labels"
    assert main(["--data", str(tmp_path / "data"), "--split", "train", "--out", str(out),
                 "--teacher", str(teacher.source.directory), "--limit", "2"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["clips"] == 2 and report["world_size"] == 1 and 0 <= report["teacher_wer"]
    assert (out / "labels.0-of-1.jsonl").is_file() and (out / "labels.0-of-1.npz").is_file()
