"""The speech recipe's parts (tokenizer, decoding, masking, layer pairing) and the whole recipe end
to end with the tiny preset on a couple dozen synthesized clips."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the speech recipe needs torch (pip install 'tinymm[train]')")

from train.__main__ import main  # noqa: E402
from train.loop import read_metrics  # noqa: E402
from train.models.layers import param_count  # noqa: E402
from train.models.speech import CTC_BLANK_ID, SpeechCTCModel  # noqa: E402
from train.recipes.speech import model_configs  # noqa: E402
from train.speech_train import DistillConfig, SpecAugmentConfig, clip_generator, greedy_decode, spec_augment  # noqa: E402
from train.speech_tokenizer import SpeechTokenizerConfig, load_speech_tokenizer, train_speech_tokenizer  # noqa: E402

pytestmark = pytest.mark.requires_torch

TRANSCRIPTS = [
    "pick up the red star", "go forward three meters", "what color is the square", "turn left please",
    "how many circles are there", "stop", "look at the blue diamond", "is there a green cross",
]


def test_tokenizer_pad_is_zero_and_is_the_ctc_blank(tmp_path) -> None:
    config = train_speech_tokenizer(TRANSCRIPTS, tmp_path / "speech.model", SpeechTokenizerConfig(vocab_size=40))
    assert (config.pad_id, config.bos_id, config.eos_id, config.unk_id) == (CTC_BLANK_ID, 1, 2, 3)
    assert not config.add_bos and not config.add_eos  # CTC labels carry no bos/eos
    tokenizer = load_speech_tokenizer(tmp_path / "speech.model")
    assert tokenizer.id_to_piece(0) == "<pad>"
    assert tokenizer.vocab_size <= 40
    for text in TRANSCRIPTS:
        ids = tokenizer.encode(text)
        assert CTC_BLANK_ID not in ids and 3 not in ids  # never the blank, never unknown
        assert tokenizer.decode(ids) == text


def test_greedy_decode_collapses_repeats_and_drops_blanks() -> None:
    frames = [[0, 5, 5, 0, 5, 7, 7, 0], [3, 3, 0, 0, 4, 9, 9, 9]]
    log_probs = torch.nn.functional.one_hot(torch.tensor(frames), 10).float().log()
    assert greedy_decode(log_probs, torch.tensor([8, 5])) == [[5, 5, 7], [3, 4]]  # clip 2 stops at 5 frames


def test_spec_augment_masks_within_each_clip() -> None:
    x = torch.ones(2, 16, 50)
    cfg = SpecAugmentConfig(freq_masks=2, freq_width=4, time_masks=2, time_width=10, time_fraction=0.5)
    masked = spec_augment(x, torch.tensor([50, 20]), cfg, [clip_generator(0, 0, clip) for clip in (0, 1)])
    assert masked.shape == x.shape and torch.equal(x, torch.ones(2, 16, 50))  # input untouched
    assert 0 < int((masked == 0).sum()) < x.numel() // 2
    # Time masks of clip 2 stay inside its 20 valid frames: a frame past it is zero only where a band is.
    band_masked = (masked[1] == 0).all(dim=1)  # (16,) bands zeroed across all frames
    assert torch.equal((masked[1, :, 20:] == 0).any(dim=1), band_masked)


def test_layer_pairs_end_at_the_last_blocks() -> None:
    assert DistillConfig(hidden_layers=3).layer_pairs(6, 10) == [(1, 2), (3, 6), (5, 9)]
    assert DistillConfig(hidden_layers=1).layer_pairs(2, 3) == [(1, 2)]
    assert DistillConfig(hidden_layers=5).layer_pairs(2, 3) == [(0, 1), (1, 2)]


def test_annealed_distillation_ends_on_the_ground_truth() -> None:
    from train.speech_train import Distiller

    teacher_cfg, student_cfg = model_configs("tiny", vocab_size=20)
    teacher = SpeechCTCModel(teacher_cfg)
    losses = {"ctc": torch.tensor(2.0), "kd": torch.tensor(3.0), "hidden": torch.tensor(4.0)}
    constant = Distiller(teacher, student_cfg, DistillConfig(anneal=False))
    assert float(constant.total(losses, 0.9)) == pytest.approx(2.0 + 3.0 + 0.5 * 4.0)
    annealed = Distiller(teacher, student_cfg, DistillConfig())  # the default
    assert float(annealed.total(losses, 0.0)) == pytest.approx(2.0 + 3.0 + 0.5 * 4.0)
    assert float(annealed.total(losses, 0.75)) == pytest.approx(2.0 + 0.25 * (3.0 + 0.5 * 4.0))
    assert float(annealed.total(losses, 1.0)) == pytest.approx(2.0)


def test_model_configs_teacher_overrides() -> None:
    teacher, student = model_configs("tiny", 20, teacher_width=64, teacher_layers=4)
    assert (teacher.d_model, teacher.ff_dim, teacher.layers, teacher.vocab_size) == (64, 256, 4, 20)
    assert student == model_configs("tiny", 20)[1] and student.vocab_size == 20
    default_teacher, default_student = model_configs("default", 32)
    teacher_params = param_count(SpeechCTCModel(default_teacher))
    student_params = param_count(SpeechCTCModel(default_student))
    assert teacher_params >= 4 * student_params  # the issue: teachers at least 4x the students
    assert student_params <= 1_500_000  # fits the package's 20 MB budget with the VLM student


@pytest.mark.skipif(importlib.util.find_spec("espeakng_loader") is None,
                    reason="synthesizing the clips needs espeakng-loader (pip install 'tinymm[train]')")
def test_tiny_recipe_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["speech", "--out", str(out), "--preset", "tiny", "--clips", "12", "--eval-clips", "4",
            "--max-steps", "12", "--log-every", "3", "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "1",
            "--vocab-size", "48", "--threads", "1", "--workers", "1", "--quiet"]
    assert main(argv) == 0
    assert "| student_kd |" in capsys.readouterr().out

    for name in ("teacher", "student_kd", "student_scratch"):
        final = out / name / "final"
        assert (final / "model.safetensors").is_file() and (final / "config.json").is_file()
        losses = [row["loss"] for row in read_metrics(out / name / "metrics.jsonl") if "loss" in row]
        assert len(losses) == 4 and losses[-1] < losses[0], (name, losses)
    kd_rows = list(read_metrics(out / "student_kd" / "metrics.jsonl"))
    assert {"ctc", "kd", "hidden"} <= set(kd_rows[0])
    assert (out / "tokenizer" / "speech.model").is_file()
    assert {p.name for p in (out / "features").iterdir()} == {"train_16mel.npz", "val_16mel.npz", "test_16mel.npz"}

    results = json.loads((out / "results.json").read_text())
    assert results["data"] == {"train": 12, "val": 4, "test": 4}
    models = results["models"]
    assert set(models) == {"teacher", "student_kd", "student_scratch"}
    assert models["student_kd"]["steps"] == models["student_scratch"]["steps"] == 12
    assert models["teacher"]["parameters"] > models["student_kd"]["parameters"]
    for entry in models.values():
        for key in ("wer", "cer", "command_intent_accuracy", "question_intent_accuracy", "sentence_accuracy"):
            assert key in entry["test"]
        assert np.isfinite(entry["test"]["wer"]) and 0.0 <= entry["test"]["cer"]

    # Run again: every stage finds its output and is skipped; results are rewritten the same.
    mtime = (out / "teacher" / "final" / "model.safetensors").stat().st_mtime_ns
    assert main(argv) == 0
    assert (out / "teacher" / "final" / "model.safetensors").stat().st_mtime_ns == mtime
    assert json.loads((out / "results.json").read_text())["models"]["teacher"]["test"] == models["teacher"]["test"]

    # Distil again from that teacher given as a finished checkpoint with its tokenizer (as the
    # committed train/teachers/speech is): no teacher stage, the same tokenizer, a new student.
    committed = tmp_path / "committed"
    shutil.copytree(out / "teacher" / "final", committed)
    shutil.copytree(out / "tokenizer", committed / "tokenizer")
    again = tmp_path / "again"
    shutil.copytree(out / "data", again / "data")  # the same seed and counts would write the same clips
    assert main(argv[:2] + [str(again), "--teacher", str(committed)] + argv[3:]) == 0
    assert not (again / "teacher").exists()
    assert (again / "tokenizer" / "speech.model").read_bytes() == (out / "tokenizer" / "speech.model").read_bytes()
    redone = json.loads((again / "results.json").read_text())["models"]
    assert redone["teacher"]["test"] == models["teacher"]["test"]
    assert redone["student_kd"]["steps"] == redone["student_scratch"]["steps"] == 12


def test_a_teacher_needs_its_own_tokenizer(tmp_path) -> None:
    from tinymm.errors import InputError
    from train.recipes.speech import adopt_teacher_tokenizer

    with pytest.raises(InputError, match="no tokenizer/speech.model"):
        adopt_teacher_tokenizer(tmp_path / "teacher", tmp_path / "out" / "tokenizer")
    (tmp_path / "teacher" / "tokenizer").mkdir(parents=True)
    (tmp_path / "teacher" / "tokenizer" / "speech.model").write_bytes(b"teacher's")
    (tmp_path / "out" / "tokenizer").mkdir(parents=True)
    (tmp_path / "out" / "tokenizer" / "speech.model").write_bytes(b"another")
    with pytest.raises(InputError, match="differs from .*another --out"):
        adopt_teacher_tokenizer(tmp_path / "teacher", tmp_path / "out" / "tokenizer")


def test_lexicon_file_round_trips_the_training_words(tmp_path) -> None:
    from train.speech_tokenizer import read_lexicon, write_lexicon

    words = write_lexicon(["Go forward THREE meters.", "turn left", "turn  right"], tmp_path / "tok" / "lexicon.txt")
    assert words == ("turn", "forward", "go", "left", "meters", "right", "three")  # most frequent first
    assert read_lexicon(tmp_path / "tok" / "lexicon.txt") == words
    with pytest.raises(ValueError, match="no words"):
        write_lexicon(["", "  "], tmp_path / "empty.txt")


def test_grammar_marker_next_to_the_tokenizer_reaches_the_manifest(tmp_path) -> None:
    from pathlib import Path

    from export.onnx_speech import speech_model_info
    from tinymm.robot.grammar import ROBOT_COMMANDS
    from tinymm.errors import InputError
    from train.models.speech import SpeechConfig
    from train.recipes.speech import grammar_decoder
    from train.speech_tokenizer import GRAMMAR_FILE, read_grammar, write_grammar

    with pytest.raises(ValueError, match="robot-commands"):
        write_grammar("no-such-grammar", tmp_path / GRAMMAR_FILE)
    # A vocabulary without every letter of the grammar: no grammar decoding, no marker.
    small = tmp_path / "small" / "speech.model"
    train_speech_tokenizer(TRANSCRIPTS, small, SpeechTokenizerConfig(model_type="char"))
    assert grammar_decoder(small, load_speech_tokenizer(small)) is None
    assert not small.with_name(GRAMMAR_FILE).exists()
    # The committed student's characters spell it: the recipe records the grammar for the export.
    full = tmp_path / "full" / "speech.model"
    full.parent.mkdir()
    full.write_bytes((Path(__file__).resolve().parents[1] / "train" / "students" / "speech" / "speech.model").read_bytes())
    decoder = grammar_decoder(full, load_speech_tokenizer(full))
    assert decoder is not None and read_grammar(full.with_name(GRAMMAR_FILE)) == ROBOT_COMMANDS

    model = SpeechCTCModel(SpeechConfig.tiny())
    assert speech_model_info(model, ("stop",), ROBOT_COMMANDS)["grammar"] == ROBOT_COMMANDS
    assert "grammar" not in speech_model_info(model, ("stop",))
    with pytest.raises(InputError, match="robot-commands"):
        speech_model_info(model, (), "robot_commands")


class _StubWhisper:
    """Stands in for train.whisper_teacher.WhisperTeacher: fixed words, random 50 Hz states."""

    def label(self, clips):
        from train.whisper_teacher import TeacherLabel

        rng = np.random.default_rng(len(clips))
        return [TeacherLabel("Stop.", "stop", rng.standard_normal((int(len(c) / 16000 * 50) + 1, 6)).astype(np.float16))
                for c in clips]


@pytest.mark.skipif(importlib.util.find_spec("espeakng_loader") is None,
                    reason="synthesizing the clips needs espeakng-loader (pip install 'tinymm[train]')")
def test_whisper_student_with_extra_data_and_a_starting_checkpoint(tmp_path, caplog) -> None:
    from train.data.speech_dataset import SpeechDataset, write_speech_dataset
    from train.whisper_teacher import pseudo_label

    extra = tmp_path / "extra"
    write_speech_dataset(extra, {"train": 6, "val": 2}, seed=1, workers=1, progress=False)
    clips = [wave for wave, _ in SpeechDataset(extra, "train")]
    pseudo_label(_StubWhisper(), clips, extra / "whisper-labels" / "train", batch_size=4)
    heldout = tmp_path / "heldout"  # a test split whose clips name a condition, as speech_heldout writes
    write_speech_dataset(heldout, {"test": 4}, seed=2, workers=1, progress=False)
    manifest = heldout / "speech" / "test" / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    manifest.write_text("".join(json.dumps({**row, "condition": ("telephone", "clipped")[i % 2]}) + "\n"
                                for i, row in enumerate(rows)))
    out = tmp_path / "run"
    argv = ["speech", "--out", str(out), "--preset", "tiny", "--clips", "12", "--eval-clips", "4",
            "--max-steps", "6", "--log-every", "3", "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "1",
            "--vocab-size", "48", "--threads", "1", "--workers", "1", "--quiet", "--heldout", str(heldout),
            "--students", "whisper,scratch", "--extra-data", str(extra)]
    assert main(argv) == 0
    rows = list(read_metrics(out / "student_whisper" / "metrics.jsonl"))
    assert {"ctc", "whisper", "teacher_scale"} <= set(rows[0]) and rows[0]["whisper"] > 0
    assert not (out / "teacher").exists() and not (out / "student_kd").exists()  # no own teacher was asked for
    results = json.loads((out / "results.json").read_text())
    assert results["data"] == {"train": 18, "test": 4, "val": 4, "extra-val": 2, "heldout": 4}
    models = results["models"]
    assert set(models) == {"student_whisper", "student_scratch"}
    assert models["student_whisper"]["steps"] == models["student_scratch"]["steps"] == 6
    assert "extra-val" in models["student_whisper"]
    by_condition = models["student_whisper"]["heldout"]["by_condition"]
    assert set(by_condition) == {"telephone", "clipped"} and by_condition["clipped"]["clips"] == 2
    assert "| model | clipped | telephone |" in (out / "results.md").read_text()

    # Students that start from a checkpoint; the whisper stage without labels is refused clearly.
    again = tmp_path / "again"
    shutil.copytree(out / "data", again / "data")
    start = out / "student_scratch" / "final"
    argv_again = argv[:2] + [str(again)] + argv[3:-4] + ["--students", "scratch", "--init-student", str(start),
                                                           "--max-steps", "2"]
    assert main(argv_again) == 0
    models = json.loads((again / "results.json").read_text())["models"]
    assert set(models) == {"initial", "student_scratch"} and models["initial"]["test"] == \
        json.loads((out / "results.json").read_text())["models"]["student_scratch"]["test"]
    assert main(argv[:2] + [str(again)] + argv[3:-4] + ["--students", "whisper"]) != 0
    assert "python -m train.whisper_teacher --data DATASET" in caplog.text
