"""The task subcommands through ``tinymm.cli.main``: outputs, ``--json`` shapes, exit codes.

The bundles are real (tiny ONNX graphs written with onnx.helper, see tests/fake_sessions.py), so
every command runs the whole path: bundle reading, onnxruntime sessions, pipelines.
"""

from __future__ import annotations

import io
import json
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from fake_sessions import (
    COMMAND_SENTENCES,
    SCENE_SENTENCES,
    TinyVLM,
    train_sentencepiece,
)

from tinymm.cli import main
from tinymm.errors import EXIT_BAD_INPUT, EXIT_BUNDLE, EXIT_OK, EXIT_USAGE

pytest.importorskip("onnx", reason="writing the test bundles needs the onnx package (pip install 'tinymm[dev]')")

RATE = 16000
LABELS = ("a red circle", "a blue square", "a yellow star")
TIMING_KEYS = {"preprocess_ms", "encode_ms", "prefill_ms", "decode_ms", "decode_steps", "decode_ms_per_token",
               "postprocess_ms", "total_ms", "batch_size"}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Both bundles, an image, a corrupt image, speech WAVs, an empty WAV and a short video."""
    import cv2
    from fake_sessions import write_speech_bundle, write_vlm_bundle

    from tinymm.preprocess.text import Tokenizer

    root = tmp_path_factory.mktemp("cli")
    vlm_tok = train_sentencepiece(root / "tok" / "tokenizer.model", SCENE_SENTENCES * 4, 60)
    speech_tok = train_sentencepiece(root / "tok" / "speech.model", COMMAND_SENTENCES * 4, 40)
    vocab = Tokenizer(vlm_tok, _text_config("tokenizer.model")).vocab_size
    speech_vocab = Tokenizer(speech_tok, _text_config("speech.model")).vocab_size
    out = {
        "vlm": write_vlm_bundle(root / "vlm", TinyVLM(vocab, max_length=48), vlm_tok, labels=LABELS),
        "speech": write_speech_bundle(root / "speech", speech_tok, speech_vocab),
        "image": root / "scene.png",
        "corrupt": root / "corrupt.png",
        "speech_wav": root / "two.wav",
        "empty_wav": root / "empty.wav",
        "video": root / "clip.avi",
    }
    cv2.imwrite(str(out["image"]), np.full((30, 40, 3), (40, 90, 200), np.uint8))
    out["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    t = np.arange(int(0.6 * RATE)) / RATE
    tone = 0.3 * np.sin(2 * np.pi * 300 * t)
    gap = np.zeros(int(0.6 * RATE))
    _write_wav(out["speech_wav"], np.concatenate([gap[:4800], tone, gap, tone, gap]))
    _write_wav(out["empty_wav"], np.zeros(0))
    writer = cv2.VideoWriter(str(out["video"]), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (32, 24))
    for i in range(30):
        writer.write(np.full((24, 32, 3), i * 8, np.uint8))
    writer.release()
    return out


def _text_config(name: str):
    from tinymm.preprocess.config import TextConfig

    return TextConfig(tokenizer=name, context_length=48)


def _write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def _run(capsys, *argv: str, stdin: bytes | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _json(capsys, *argv: str, **kwargs) -> tuple[int, dict]:
    code, out, _ = _run(capsys, *argv, "--json", **kwargs)
    return code, json.loads(out)


def _lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


TASK_COMMANDS = ("caption", "ask", "classify", "transcribe", "command", "watch", "listen")


def test_building_the_task_parsers_imports_no_heavy_package():
    import subprocess

    script = ("import argparse, importlib, json, sys\nsub = argparse.ArgumentParser().add_subparsers()\n"
              f"for name in {TASK_COMMANDS!r}:\n    importlib.import_module('tinymm.commands.' + name).add_parser(sub)\n"
              "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert not set(json.loads(out.stdout.splitlines()[-1])) & {"numpy", "cv2", "onnxruntime", "sentencepiece"}


# ---- caption, ask, classify ---------------------------------------------------------------------


def test_caption_json_and_text(files, capsys):
    code, payload = _json(capsys, "caption", str(files["image"]), str(files["image"]), "--bundle", str(files["vlm"]))
    assert code == EXIT_OK and payload["ok"] and payload["bundle"] == "tiny-vlm"
    first = payload["results"][0]
    assert set(first) == {"input", "text", "token_ids", "confidence", "finished", "rejected", "reject_reason", "timings"}
    assert set(first["timings"]) == TIMING_KEYS and first["timings"]["batch_size"] == 2
    code, out, _ = _run(capsys, "caption", str(files["image"]), "--bundle", str(files["vlm"]), "--beam-size", "2")
    assert code == EXIT_OK and len(out.splitlines()) == 1


def test_caption_reads_image_bytes_from_stdin(files, capsys, monkeypatch):
    code, payload = _json(capsys, "caption", "-", "--bundle", str(files["vlm"]), stdin=files["image"].read_bytes(),
                          monkeypatch=monkeypatch)
    assert code == EXIT_OK and payload["results"][0]["input"] == "-"
    code, _, err = _run(capsys, "caption", "-", "--bundle", str(files["vlm"]), stdin=b"", monkeypatch=monkeypatch)
    assert code == EXIT_BAD_INPUT and "empty" in err


def test_bad_images_exit_3_with_one_line(files, capsys):
    code, out, err = _run(capsys, "caption", str(files["corrupt"]), "--bundle", str(files["vlm"]))
    assert code == EXIT_BAD_INPUT and out == "" and err.count("\n") == 1 and err.startswith("tinymm: error:")
    code, payload = _json(capsys, "caption", str(files["image"]) + ".missing", "--bundle", str(files["vlm"]))
    assert code == EXIT_BAD_INPUT and payload == {"ok": False, "error": {"kind": "bad_input", "message": payload["error"]["message"]}}


def test_missing_or_wrong_bundles_exit_4(files, capsys, tmp_path, monkeypatch):
    code, payload = _json(capsys, "caption", str(files["image"]), "--bundle", "/no/such/bundle")
    assert code == EXIT_BUNDLE and not payload["ok"]
    monkeypatch.setattr("tinymm.bundle.names.DEFAULT_BUNDLES_DIR", tmp_path / "no-defaults")
    code, _, err = _run(capsys, "caption", str(files["image"]))  # an install without the default bundles
    assert code == EXIT_BUNDLE and "scene-vlm" in err and "make_default_bundles.py" in err
    code, _, err = _run(capsys, "caption", str(files["image"]), "--bundle", str(files["speech"]))
    assert code == EXIT_BUNDLE and "speech bundle" in err


def test_bad_flags_exit_2(files, capsys):
    for argv in (["--threads", "-1"], ["--provider", "tpu"], ["--beam-size", "0"], ["--precision", "int4"]):
        code, _, _ = _run(capsys, "caption", str(files["image"]), "--bundle", str(files["vlm"]), *argv)
        assert code == EXIT_USAGE, argv


def test_ask(files, capsys):
    code, payload = _json(capsys, "ask", str(files["image"]), "what color is the star", "--bundle", str(files["vlm"]))
    assert code == EXIT_OK and payload["question"] == "what color is the star"
    assert {"answer", "confidence", "timings", "token_ids"} <= set(payload)
    code, payload = _json(capsys, "ask", str(files["image"]), "--question", "is there a square", "--bundle", str(files["vlm"]))
    assert code == EXIT_OK and payload["question"] == "is there a square"
    code, _, err = _run(capsys, "ask", str(files["image"]), "--bundle", str(files["vlm"]))
    assert code == EXIT_USAGE and "--audio" in err


def test_ask_with_a_spoken_question(files, capsys):
    code, payload = _json(capsys, "ask", str(files["image"]), "--audio", str(files["speech_wav"]),
                          "--bundle", str(files["vlm"]), "--speech-bundle", str(files["speech"]))
    assert code == EXIT_OK
    assert {"transcript", "intent", "question", "answer", "timings"} <= set(payload)
    assert set(payload["timings"]) == {"speech", "vision"}
    code, _, err = _run(capsys, "ask", str(files["image"]), "--audio", str(files["empty_wav"]),
                        "--bundle", str(files["vlm"]), "--speech-bundle", str(files["speech"]))
    assert code == EXIT_BAD_INPUT and "empty" in err


def test_classify(files, capsys, tmp_path):
    code, payload = _json(capsys, "classify", str(files["image"]), "--bundle", str(files["vlm"]), "--top-k", "2")
    assert code == EXIT_OK
    result = payload["results"][0]
    assert len(result["labels"]) == 2 and {x["label"] for x in result["labels"]} <= set(LABELS)
    assert set(result["labels"][0]) == {"label", "score", "probability"} and result["label"] == result["labels"][0]["label"]
    code, payload = _json(capsys, "classify", str(files["image"]), "--bundle", str(files["vlm"]), "--labels", "a cat, a dog")
    assert code == EXIT_OK and {x["label"] for x in payload["results"][0]["labels"]} == {"a cat", "a dog"}
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("# animals\na cat\n\na dog\n")
    code, out, _ = _run(capsys, "classify", str(files["image"]), "--bundle", str(files["vlm"]), "--labels-file", str(labels_file))
    assert code == EXIT_OK and len(out.splitlines()) == 2


def test_classify_label_errors(files, capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    bad_input = [["--labels", " , ,"], ["--labels-file", str(empty)], ["--labels-file", str(tmp_path / "none.txt")]]
    for argv in bad_input:
        code, _, err = _run(capsys, "classify", str(files["image"]), "--bundle", str(files["vlm"]), *argv)
        assert code == EXIT_BAD_INPUT and "label" in err, argv
    for argv in (["--labels", "a", "--labels-file", str(empty)], ["--top-k", "0"]):
        code, _, _ = _run(capsys, "classify", str(files["image"]), "--bundle", str(files["vlm"]), *argv)
        assert code == EXIT_USAGE, argv


# ---- transcribe, command -----------------------------------------------------------------------


def test_transcribe(files, capsys, monkeypatch):
    code, payload = _json(capsys, "transcribe", str(files["speech_wav"]), "--bundle", str(files["speech"]))
    assert code == EXIT_OK
    assert set(payload["results"][0]) == {"input", "text", "raw_text", "in_grammar", "token_ids", "confidence", "duration_s",
                                          "rejected", "reject_reason", "timings"}
    assert payload["results"][0]["duration_s"] == pytest.approx(2.7, abs=0.01)
    code, payload = _json(capsys, "transcribe", "-", "--bundle", str(files["speech"]),
                          stdin=files["speech_wav"].read_bytes(), monkeypatch=monkeypatch)
    assert code == EXIT_OK and payload["results"][0]["input"] == "-"


def test_empty_audio_exits_3(files, capsys, monkeypatch):
    code, _, err = _run(capsys, "transcribe", str(files["empty_wav"]), "--bundle", str(files["speech"]))
    assert code == EXIT_BAD_INPUT and err.startswith("tinymm: error:")
    code, _, err = _run(capsys, "command", "-", "--bundle", str(files["speech"]), stdin=b"", monkeypatch=monkeypatch)
    assert code == EXIT_BAD_INPUT and "empty" in err


def test_command(files, capsys):
    code, payload = _json(capsys, "command", str(files["speech_wav"]), "--bundle", str(files["speech"]))
    assert code == EXIT_OK and {"transcript", "intent", "confidence", "duration_s", "timings"} <= set(payload)
    code, out, _ = _run(capsys, "command", str(files["speech_wav"]), "--bundle", str(files["speech"]))
    assert code == EXIT_OK and out.startswith("transcript:") and "\nintent: " in out


# ---- watch, listen -----------------------------------------------------------------------------


def test_watch(files, capsys):
    code, out, _ = _run(capsys, "watch", str(files["video"]), "--bundle", str(files["vlm"]), "--every-n-frames", "10",
                        "--pace", "all", "--json")
    events = _lines(out)
    assert code == EXIT_OK and [e["frame"] for e in events] == [0, 10, 20]
    assert set(events[0]["result"]) == {"text", "token_ids", "confidence", "finished", "rejected", "reject_reason", "timings"}
    code, out, _ = _run(capsys, "watch", str(files["video"]), "--bundle", str(files["vlm"]), "--task", "classify",
                        "--labels", "dark,bright", "--max-results", "2", "--pace", "all")
    assert code == EXIT_OK and len(out.splitlines()) == 2 and out.startswith("frame 0 @ 0.00 s")


def test_watch_errors(files, capsys):
    code, _, _ = _run(capsys, "watch", str(files["video"]) + ".missing", "--bundle", str(files["vlm"]))
    assert code == EXIT_BAD_INPUT
    code, _, _ = _run(capsys, "watch", str(files["video"]), "--every-n-frames", "2", "--every-s", "1")
    assert code == EXIT_USAGE
    code, _, err = _run(capsys, "watch", str(files["video"]), "--bundle", str(files["vlm"]), "--task", "ask")
    assert code == EXIT_USAGE and "--question" in err


def test_listen(files, capsys, monkeypatch):
    code, out, _ = _run(capsys, "listen", str(files["speech_wav"]), "--bundle", str(files["speech"]), "--json")
    events = _lines(out)
    assert code == EXIT_OK and len(events) == 2
    assert abs(events[0]["start_s"] - 0.3) <= 0.02 and abs(events[1]["start_s"] - 1.5) <= 0.02
    assert {"transcript", "intent"} <= set(events[0])
    with wave.open(str(files["speech_wav"])) as w:
        pcm = w.readframes(w.getnframes())
    code, out, _ = _run(capsys, "listen", "-", "--rate", str(RATE), "--task", "transcribe", "--bundle",
                        str(files["speech"]), "--json", stdin=pcm, monkeypatch=monkeypatch)
    assert code == EXIT_OK and [(e["start_s"], e["end_s"]) for e in _lines(out)] == [(e["start_s"], e["end_s"]) for e in events]
    code, _, err = _run(capsys, "listen", str(files["speech_wav"]), "--rate", "8000", "--bundle", str(files["speech"]))
    assert code == EXIT_BAD_INPUT and "--rate" in err
