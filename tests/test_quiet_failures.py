"""Failure paths that used to be quiet or misleading (issue 18, section 4), through the CLI and the API.

Each test fails on the code before its fix: a bad argument that raised TypeError, a closed pipe
that exited 1, raw PCM in the wrong sample format that exited 0, WAV headers whose message hid the
problem, a question cut silently, a missing question reported as bad input, a confidence only in JSON.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from fake_sessions import COMMAND_SENTENCES, SCENE_SENTENCES, TinyVLM, train_sentencepiece

from tinymm.cli import main
from tinymm.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_USAGE, InputError, TinymmError

pytest.importorskip("onnx", reason="writing the test bundles needs the onnx package (pip install 'tinymm[dev]')")

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
CONTEXT = 48  # tokens of the tiny VLM's context


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    import cv2
    from fake_sessions import write_speech_bundle, write_vlm_bundle

    from tinymm.preprocess.config import TextConfig
    from tinymm.preprocess.text import Tokenizer

    root = tmp_path_factory.mktemp("quiet")
    vlm_tok = train_sentencepiece(root / "tok" / "tokenizer.model", SCENE_SENTENCES * 4, 60)
    speech_tok = train_sentencepiece(root / "tok" / "speech.model", COMMAND_SENTENCES * 4, 40)
    vocab = Tokenizer(vlm_tok, TextConfig(tokenizer="tokenizer.model", context_length=CONTEXT)).vocab_size
    speech_vocab = Tokenizer(speech_tok, TextConfig(tokenizer="speech.model", context_length=CONTEXT)).vocab_size
    out = {
        "vlm": write_vlm_bundle(root / "vlm", TinyVLM(vocab, max_length=CONTEXT), vlm_tok),
        "speech": write_speech_bundle(root / "speech", speech_tok, speech_vocab),
        "image": root / "scene.png",
        "speech_wav": root / "two.wav",
        "bad_video": root / "bad.mp4",
    }
    cv2.imwrite(str(out["image"]), np.full((30, 40, 3), (40, 90, 200), np.uint8))
    t = np.arange(int(0.6 * RATE)) / RATE
    tone, gap = 0.3 * np.sin(2 * np.pi * 300 * t), np.zeros(int(0.6 * RATE))
    _write_wav(out["speech_wav"], _pcm16(np.concatenate([gap[:4800], tone, gap, tone, gap])))
    out["bad_video"].write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)  # no moov atom
    return out


def _pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def _write_wav(path: Path, pcm: bytes, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _cli(*argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinymm", *argv], input=stdin, capture_output=True, cwd=ROOT,
                          timeout=120)


def test_every_bad_question_is_a_tinymm_error(files):
    import tinymm

    vlm = tinymm.load(files["vlm"])
    for question in (None, 3, b"what", ["what", None], ("a", "b", "c"), [None]):
        with pytest.raises(InputError, match="question"):
            vlm.ask(str(files["image"]), question)
    with pytest.raises(TinymmError, match="decoding"):
        vlm.caption(str(files["image"]), decoding={"beam_size": 2})


def test_a_closed_pipe_ends_the_command_quietly_with_0(files):
    # `tinymm listen x.wav | head -1`: every command's output goes through the same main(), tested
    # with caption, whose output does not depend on what the voice activity detector hears.
    process = subprocess.Popen(
        [sys.executable, "-m", "tinymm", "caption", str(files["image"]), "--bundle", str(files["vlm"]), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )
    process.stdout.close()  # as `| head -1` does once it has its line (here: before the first)
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == EXIT_OK, err
    assert "unexpected" not in err and "BrokenPipe" not in err and "Exception ignored" not in err


def test_raw_pcm_in_the_wrong_sample_format_exits_3(files):
    with wave.open(str(files["speech_wav"])) as w:
        pcm = w.readframes(w.getnframes())
    result = _cli("listen", "-", "--sample-format", "f32le", "--bundle", str(files["speech"]), "--json", stdin=pcm)
    err = result.stderr.decode()
    assert result.returncode == EXIT_BAD_INPUT, err
    assert "--sample-format" in err and "RuntimeWarning" not in err
    assert json.loads(result.stdout)["error"]["kind"] == "bad_input"


def test_wav_headers_that_do_not_fit_the_data_say_what_is_wrong(files, tmp_path):
    from tinymm.preprocess.audio_io import load_audio

    mono = _pcm16(np.zeros(16001))
    _write_wav(tmp_path / "seven.wav", mono, channels=7)  # 32002 bytes: not whole frames of 7 channels
    with pytest.raises(InputError, match=r"7 channels.*not a whole number of frames"):
        load_audio(tmp_path / "seven.wav")
    data = bytearray((files["speech_wav"]).read_bytes())
    struct.pack_into("<I", data, 24, 4_000_000_000)  # the fmt chunk's sample rate
    with pytest.raises(InputError, match="sample rate of 4000000000 Hz"):
        load_audio(bytes(data))
    data = bytearray((files["speech_wav"]).read_bytes())
    struct.pack_into("<I", data, 28, 12345)  # byte_rate: should be rate * block_align
    with pytest.raises(InputError, match="byte_rate=12345"):
        load_audio(bytes(data))


def test_a_question_over_the_prompt_budget_is_marked_truncated(files, capsys):
    long_question = "is there a " + "very " * 60 + "red circle"
    code, out, err = _run(capsys, "ask", str(files["image"]), long_question, "--bundle", str(files["vlm"]), "--json")
    assert code == EXIT_OK and json.loads(out)["truncated"] is True
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tinymm: WARNING: ") and "cut" in lines[0], err
    code, out, err = _run(capsys, "ask", str(files["image"]), "is there a red circle", "--bundle", str(files["vlm"]),
                          "--json")
    assert code == EXIT_OK and json.loads(out)["truncated"] is False and err == ""


def test_opencv_and_ffmpeg_messages_do_not_leak_onto_stderr(files):
    result = _cli("watch", str(files["bad_video"]), "--task", "caption", "--bundle", str(files["vlm"]))
    lines = result.stderr.decode().splitlines()
    assert result.returncode == EXIT_BAD_INPUT and len(lines) == 1 and lines[0].startswith("tinymm: error:"), lines


def test_ask_without_a_question_is_a_usage_error(files, capsys):
    code, _, err = _run(capsys, "ask", str(files["image"]), "--bundle", str(files["vlm"]))
    assert code == EXIT_USAGE and "--audio" in err


def test_caption_confidence_is_in_the_api_as_in_the_json(files):
    import tinymm

    result = tinymm.load(files["vlm"]).caption(str(files["image"]))
    assert math.isclose(result.confidence, math.exp(result.mean_logprob))
    assert result.to_dict()["confidence"] == round(result.confidence, 4) or \
        math.isclose(result.to_dict()["confidence"], result.confidence, abs_tol=1e-4)
