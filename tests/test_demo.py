"""``tinymm demo``: every task on a samples directory, the checks, the output shapes, the errors.

The CLI tests run real bundles (tiny ONNX graphs, tests/fake_sessions.py) on samples written
here; the checks of ``run_tasks`` run on pipelines with scripted models whose answers are known.
The last test runs the shipped demo when the default bundles and samples are present; no test
depends on the shipped models answering correctly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from fake_sessions import (
    COMMAND_SENTENCES,
    SCENE_SENTENCES,
    VLM_TEMPLATES,
    ScriptedSpeechEncoder,
    TinyVLM,
    train_sentencepiece,
    vlm_sessions,
)

import tinymm.bundle.names
from tinymm.cli import main
from tinymm.commands.demo import SAMPLES_DIR, TASKS, read_samples, run_tasks
from tinymm.errors import EXIT_BAD_INPUT, EXIT_BUNDLE, EXIT_OK, EXIT_USAGE, InputError
from tinymm.robot.demo_checks import caption_claims, caption_holds

RATE = 16000
N_MELS = 16
CONTEXT = 48
LABELS = ["a red circle", "a blue square", "a yellow star"]
CHECK_KEYS = {"input", "prompt", "got", "expected", "correct", "latency_ms", "timings", "result"}
CLIP_SECONDS = {"turn": 0.6, "stop": 0.9, "question": 1.2}  # distinct lengths: the scripted encoder keys on them


def _write_wav(path: Path, seconds: float, seed: int) -> None:
    samples = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def write_samples(root: Path) -> Path:
    """Two images and three clips (two commands, one spoken question about image "b") with a manifest."""
    import cv2

    (root / "images").mkdir(parents=True)
    (root / "audio").mkdir()
    cv2.imwrite(str(root / "images" / "a.png"), np.full((30, 40, 3), (30, 30, 220), np.uint8))
    cv2.imwrite(str(root / "images" / "b.png"), np.full((24, 24, 3), (20, 220, 230), np.uint8))
    for number, (name, seconds) in enumerate(CLIP_SECONDS.items()):
        _write_wav(root / "audio" / f"{name}.wav", seconds, number)
    red = {"kind": "shape", "shape": "circle", "color": "red", "size": "large", "text": None, "position": "left"}
    star = {"kind": "shape", "shape": "star", "color": "yellow", "size": "small", "text": None, "position": None}
    sign = {"kind": "sign", "shape": None, "color": None, "size": None, "text": "GO", "position": "top"}
    manifest = {
        "format": "tinymm-samples", "format_version": 1, "seed": 0, "labels": LABELS,
        "images": [
            {"id": "a", "file": "images/a.png", "objects": [red], "captions": ["a large red circle"],
             "qa": [{"type": "color", "question": "what color is the circle?", "answer": "red"}],
             "labels": ["a red circle"]},
            {"id": "b", "file": "images/b.png", "objects": [star, sign], "captions": ["a sign reading GO and a star"],
             "qa": [{"type": "color", "question": "what color is the star?", "answer": "yellow"},
                    {"type": "count", "question": "how many objects are there?", "answer": "two"}],
             "labels": ["a yellow star"]},
        ],
        "clips": [
            {"id": "turn", "file": "audio/turn.wav", "kind": "command", "transcript": "turn left",
             "intent": {"action": "turn", "direction": "left"}},
            {"id": "stop", "file": "audio/stop.wav", "kind": "command", "transcript": "stop",
             "intent": {"action": "stop"}},
            {"id": "question", "file": "audio/question.wav", "kind": "question",
             "transcript": "what color is the star",
             "intent": {"action": "question", "type": "color", "shape": "star", "question": "what color is the star?"},
             "image": "b", "question": "what color is the star?", "answer": "yellow"},
        ],
    }
    (root / "samples.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("onnx", reason="writing the test bundles needs the onnx package (pip install 'tinymm[dev]')")
    from fake_sessions import write_speech_bundle, write_vlm_bundle

    from tinymm.preprocess.config import TextConfig
    from tinymm.preprocess.text import Tokenizer

    root = tmp_path_factory.mktemp("demo")
    vlm_tok = train_sentencepiece(root / "tok" / "tokenizer.model", SCENE_SENTENCES * 4, 60)
    speech_tok = train_sentencepiece(root / "tok" / "speech.model", COMMAND_SENTENCES * 4, 40)
    vocab = Tokenizer(vlm_tok, TextConfig(tokenizer="tokenizer.model", context_length=CONTEXT)).vocab_size
    speech_vocab = Tokenizer(speech_tok, TextConfig(tokenizer="speech.model", context_length=CONTEXT)).vocab_size
    return {
        "vlm": write_vlm_bundle(root / "vlm", TinyVLM(vocab, max_length=CONTEXT), vlm_tok, labels=LABELS, int8=True),
        "speech": write_speech_bundle(root / "speech", speech_tok, speech_vocab, n_mels=N_MELS),
        "samples": write_samples(root / "samples"),
    }


def _demo(capsys, bundles, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["demo", "--vision-bundle", str(bundles["vlm"]), "--speech-bundle", str(bundles["speech"]),
                 "--samples", str(bundles["samples"]), "--threads", "1", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- the command ---------------------------------------------------------------------------------


def test_demo_prints_every_task_and_a_summary(bundles, capsys):
    code, out, err = _demo(capsys, bundles)
    assert code == EXIT_OK and "Traceback" not in err
    for title in ("caption", "ask", "classify", "transcribe", "command", "spoken question"):
        assert f"\n{title}\n" in out
    assert out.count("expected: ") == 2 + 3 + 2 + 3 + 2 + 1  # one per sample and task
    assert "vision: tiny-vlm (" in out and "speech: tiny-speech (" in out
    summary = out.strip().splitlines()[-2]
    assert summary.startswith("correct: caption ") and "ask " in summary and " of 13 wrong" in summary


def test_demo_json_document(bundles, capsys):
    code, out, _ = _demo(capsys, bundles, "--json")
    assert code == EXIT_OK
    report = json.loads(out)
    assert report["ok"] is True and set(report) == {"ok", "samples", "bundles", "warmup_ms", "summary", "tasks"}
    counts = {"caption": 2, "ask": 3, "classify": 2, "transcribe": 3, "command": 2, "spoken_question": 1}
    assert {task: len(report["tasks"][task]) for task in TASKS} == counts
    for checks in report["tasks"].values():
        for check in checks:
            assert set(check) == CHECK_KEYS and isinstance(check["correct"], bool) and check["latency_ms"] > 0
    summary = report["summary"]
    assert {t: s["total"] for t, s in summary["tasks"].items()} == counts
    assert summary["correct"] + summary["wrong"] == summary["total"] == 13
    assert summary["correct"] == sum(c["correct"] for checks in report["tasks"].values() for c in checks)
    models = report["bundles"]["vision"]["models"]
    assert set(models) == {"image_encoder", "text_encoder", "decoder_first", "decoder_with_past"}
    assert all(how == "int8 on cpu" for how in models.values())  # auto: int8 on the CPU
    assert report["bundles"]["speech"]["models"] == {"speech_encoder": "fp32 on cpu"}  # the only variant
    assert report["tasks"]["ask"][0]["prompt"] == "what color is the circle?"
    assert set(report["tasks"]["spoken_question"][0]["timings"]) == {"speech", "vision"}


def test_demo_honours_precision(bundles, capsys):
    code, out, _ = _demo(capsys, bundles, "--json", "--precision", "fp32")
    assert code == EXIT_OK
    assert set(json.loads(out)["bundles"]["vision"]["models"].values()) == {"fp32 on cpu"}
    code, _, _ = _demo(capsys, bundles, "--precision", "int4")
    assert code == EXIT_USAGE


def test_missing_default_bundle_says_how_to_build_it(bundles, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(tinymm.bundle.names, "DEFAULT_BUNDLES_DIR", tmp_path / "none")
    capsys.readouterr()
    code = main(["demo", "--samples", str(bundles["samples"])])
    err = capsys.readouterr().err
    assert code == EXIT_BUNDLE and err.count("\n") == 1 and "Traceback" not in err
    assert "scene-vlm" in err and "scripts/make_default_bundles.py" in err
    code = main(["demo", "--samples", str(bundles["samples"]), "--vision-bundle", str(bundles["vlm"]), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == EXIT_BUNDLE and payload["error"]["kind"] == "bundle_not_found"
    assert "speech-commands" in payload["error"]["message"]


def test_missing_or_bad_samples_exit_3(bundles, capsys, tmp_path):
    capsys.readouterr()
    assert main(["demo", "--samples", str(tmp_path), "--vision-bundle", str(bundles["vlm"])]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "samples.json" in err and "scripts/make_samples.py" in err
    bad = write_samples(tmp_path / "bad")
    manifest = json.loads((bad / "samples.json").read_text())
    manifest["clips"][2]["image"] = "nowhere"
    (bad / "samples.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="needs an 'answer' and an 'image'"):
        read_samples(bad)
    (bad / "images" / "a.png").unlink()
    with pytest.raises(InputError, match="images/a.png"):
        read_samples(bad)


def test_the_demo_parser_imports_no_heavy_package():
    script = ("import argparse, json, sys\nfrom tinymm.commands import demo\n"
              "demo.add_parser(argparse.ArgumentParser().add_subparsers())\n"
              "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert not set(json.loads(out.stdout.splitlines()[-1])) & {"numpy", "cv2", "onnxruntime", "sentencepiece"}


# ---- the checks, on scripted pipelines ---------------------------------------------------------------


class LengthScriptedEncoder(ScriptedSpeechEncoder):
    """Says ``paths[frames]``: the sentence of each clip, told apart by its number of feature frames."""

    def __init__(self, by_frames: dict[int, list[int]], vocab: int) -> None:
        super().__init__([[]], vocab, N_MELS)
        self.by_frames = by_frames

    def _emit(self, feeds: dict) -> dict:
        self.paths = [self.by_frames[int(feeds["feature_lengths"][0])]]
        return super()._emit(feeds)


def _pipelines(tmp_path: Path, sentences: dict[str, str]):
    """A fake-session vision pipeline and a speech pipeline that says ``sentences[clip]`` for each clip."""
    from tinymm.pipelines import SpeechPipeline, VisionLanguagePipeline
    from tinymm.preprocess.audio import AudioPreprocessor
    from tinymm.preprocess.config import AudioConfig, ImageConfig, TextConfig
    from tinymm.preprocess.image import ImagePreprocessor
    from tinymm.preprocess.text import Tokenizer

    vlm_tok = Tokenizer(train_sentencepiece(tmp_path / "tok.model", SCENE_SENTENCES * 4, 60),
                        TextConfig(tokenizer="tok.model", context_length=CONTEXT, prompt_templates=VLM_TEMPLATES))
    tiny = TinyVLM(vlm_tok.vocab_size, max_length=CONTEXT, seed=1)
    s = vlm_sessions(tiny)
    vision = VisionLanguagePipeline(
        image_encoder=s["image_encoder"], decoder_first=s["decoder_first"], decoder_with_past=s["decoder_with_past"],
        text_encoder=s["text_encoder"], preprocessor=ImagePreprocessor(ImageConfig(tiny.image_size, tiny.image_size)),
        tokenizer=vlm_tok, model_info=tiny.model_info(LABELS))
    speech_tok = Tokenizer(train_sentencepiece(tmp_path / "speech.model", COMMAND_SENTENCES * 4, 40),
                           TextConfig(tokenizer="speech.model", context_length=256, add_bos=False))
    preprocessor = AudioPreprocessor(AudioConfig(n_mels=N_MELS, max_seconds=10.0))
    by_frames = {}
    for clip, sentence in sentences.items():
        frames = preprocessor.features(preprocessor.waveform(str(tmp_path / "samples" / "audio" / f"{clip}.wav"))).shape[-1]
        by_frames[frames] = [x for token in speech_tok.encode(sentence) for x in (token, 0)]
    assert len(by_frames) == len(sentences), "the test clips must differ in length"
    speech = SpeechPipeline(encoder=LengthScriptedEncoder(by_frames, speech_tok.vocab_size), preprocessor=preprocessor,
                            tokenizer=speech_tok, model_info={"blank_id": 0})
    return vision, speech


def test_run_tasks_marks_right_and_wrong_answers(tmp_path):
    samples_dir = write_samples(tmp_path / "samples")
    vision, speech = _pipelines(tmp_path, {"turn": "turn left", "stop": "turn right", "question": "what color is the star"})
    answer = vision.ask(str(samples_dir / "images" / "b.png"), "what color is the star?").answer
    manifest = read_samples(samples_dir)
    manifest["images"][1]["qa"][0]["answer"] = manifest["clips"][2]["answer"] = answer  # what the model says
    checks = run_tasks(vision, speech, manifest, samples_dir)
    assert [c.correct for c in checks["command"]] == [True, False]  # "turn right" is not "stop"
    assert checks["command"][1].got == 'turn right -> {"action": "turn", "direction": "right"}'
    assert [c.correct for c in checks["transcribe"]] == [True, False, True]
    spoken = checks["spoken_question"][0]
    assert spoken.correct and "-> what color is the star? ->" in spoken.got and spoken.input.endswith("images/b.png")
    ask = {c.prompt: c for c in checks["ask"] if c.input == "images/b.png"}
    assert ask["what color is the star?"].correct and ask["what color is the star?"].got == answer
    ranked = vision.classify(str(samples_dir / "images" / "a.png"), LABELS)
    assert checks["classify"][0].correct == (ranked.label == "a red circle")
    for check in (c for task in TASKS for c in checks[task]):
        assert check.latency_ms > 0 and check.timings


# ---- the caption check ---------------------------------------------------------------------------------


OBJECTS = [
    {"kind": "shape", "shape": "circle", "color": "red", "size": "large"},
    {"kind": "shape", "shape": "circle", "color": "blue", "size": "small"},
    {"kind": "sign", "text": "GO"},
]


@pytest.mark.parametrize("caption, holds", [
    ("three objects: two circles and a sign reading GO", True),
    ("a large red circle to the left of a small blue circle", True),
    ("a sign that says GO at the top", True),
    ("there are two objects: a red circle and a sign", False),  # three objects
    ("a small red circle", False),  # the red circle is large
    ("a green circle", False),
    ("three circles", False),
    ("a sign showing STOP", False),
    ("a red square", False),
    ("", False),  # names nothing
    ("a nice picture", False),
])
def test_caption_holds(caption, holds):
    assert caption_holds(caption, OBJECTS) is holds


def test_caption_claims_read_the_generator_wording():
    assert caption_claims("a scene with two objects: two small red circles and a sign reading 7") == [
        ("objects", 2), ("shape", 2, "small", "red", "circle"), ("sign", "7")]


# ---- the shipped demo ------------------------------------------------------------------------------------


def test_the_shipped_demo_runs(capsys):
    shipped = [tinymm.bundle.names.DEFAULT_BUNDLES_DIR / name for name in ("scene-vlm", "speech-commands")]
    missing = [str(p) for p in (*shipped, SAMPLES_DIR / "samples.json") if not p.exists()]
    if missing:
        pytest.skip(f"the default bundles or samples are not built here (missing {missing}); "
                    "build them with scripts/make_default_bundles.py and scripts/make_samples.py")
    capsys.readouterr()
    code = main(["demo", "--json", "--threads", "1"])
    report = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK and report["ok"]
    manifest = read_samples(SAMPLES_DIR)
    assert report["summary"]["tasks"]["caption"]["total"] == len(manifest["images"])
    assert report["summary"]["tasks"]["transcribe"]["total"] == len(manifest["clips"])
    assert report["summary"]["total"] == sum(s["total"] for s in report["summary"]["tasks"].values())
