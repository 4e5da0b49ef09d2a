"""The sample inputs that ship with tinymm (tinymm/assets/samples) and scripts/make_samples.py.

The manifest must be consistent: every file it names exists and has the promised format, every
spoken question points at an image and asks one of that image's questions, and every clip's
transcript says its intent in the runtime's own grammar. The script must be deterministic.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import wave
from pathlib import Path

import pytest

from tinymm.commands.demo import SAMPLES_DIR, read_samples
from tinymm.robot.intent import Intent, IntentParser
from tinymm.robot.transcripts import normalize_transcript

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "make_samples.py"
RATE = 16000
IMAGE_SIDE_PX = 64
MAX_TOTAL_BYTES = 1_000_000  # the samples ship in the package: a few hundred KB


def check_samples(directory: Path) -> dict:
    """Assert that the samples in ``directory`` are consistent; return the manifest."""
    import cv2

    manifest = read_samples(directory)  # files exist, required fields, questions point at images
    images = {image["id"]: image for image in manifest["images"]}
    assert len(images) == len(manifest["images"]), "image ids must be unique"
    labels = set(manifest["labels"])
    for image in images.values():
        pixels = cv2.imread(str(directory / image["file"]), cv2.IMREAD_COLOR)
        assert pixels is not None and pixels.shape == (image["height"], image["width"], 3)
        assert image["captions"] and image["qa"] and set(image["labels"]) <= labels
    parser = IntentParser()
    for clip in manifest["clips"]:
        with wave.open(str(directory / clip["file"])) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
            assert w.getnframes() / RATE == pytest.approx(clip["duration_s"], abs=1e-3)
        assert normalize_transcript(clip["transcript"]) == clip["transcript"]
        intent = parser.parse(clip["transcript"])
        assert intent == Intent.from_dict(clip["intent"]) and intent.kind == clip["kind"]
        if clip["kind"] == "question":
            assert clip["question"] == intent.question
            assert clip["answer"] == true_answer(intent, images[clip["image"]]["objects"]), clip["id"]
    return manifest


def true_answer(intent: Intent, objects: list[dict]) -> str:
    """The answer to a spoken question about a scene, from its objects (the types the samples ask)."""
    shapes = [o for o in objects if o["kind"] == "shape"]
    numbers = ("zero", "one", "two", "three", "four")
    if intent.question_type == "color":
        (found,) = [o for o in shapes if o["shape"] == intent.shape]  # the question is asked of a unique shape
        return found["color"]
    if intent.question_type == "shape":
        (found,) = [o for o in shapes if o["color"] == intent.color]
        return found["shape"]
    if intent.question_type == "count":
        return numbers[len(objects)]
    if intent.question_type == "count_shape":
        return numbers[sum(o["shape"] == intent.shape for o in shapes)]
    if intent.question_type == "exist":
        return "yes" if any((o["color"], o["shape"]) == (intent.color, intent.shape) for o in shapes) else "no"
    if intent.question_type == "sign":
        (sign,) = [o for o in objects if o["kind"] == "sign"]
        return sign["text"].lower()
    raise AssertionError(f"the samples test cannot check a {intent.question_type} question; add it here")


def test_the_shipped_samples_are_consistent():
    if not (SAMPLES_DIR / "samples.json").exists():
        pytest.skip(f"no samples at {SAMPLES_DIR}; write them with python scripts/make_samples.py")
    manifest = check_samples(SAMPLES_DIR)
    kinds = [clip["kind"] for clip in manifest["clips"]]
    assert kinds.count("command") >= 1 and kinds.count("question") >= 1
    assert any(o["kind"] == "sign" for image in manifest["images"] for o in image["objects"])
    assert all((image["width"], image["height"]) == (IMAGE_SIDE_PX, IMAGE_SIDE_PX) for image in manifest["images"])
    size = sum(p.stat().st_size for p in SAMPLES_DIR.rglob("*") if p.is_file())
    assert size <= MAX_TOTAL_BYTES, f"the samples take {size} bytes; keep them under {MAX_TOTAL_BYTES}"


def test_a_spoken_question_pointing_nowhere_is_refused(tmp_path):
    from tinymm.errors import InputError

    (tmp_path / "a.png").write_bytes(b"png")
    (tmp_path / "q.wav").write_bytes(b"wav")
    manifest = {"format": "tinymm-samples", "format_version": 1, "labels": ["a red circle"],
                "images": [{"id": "a", "file": "a.png", "objects": [], "captions": ["x"], "qa": [], "labels": []}],
                "clips": [{"id": "q", "file": "q.wav", "kind": "question", "transcript": "read the sign",
                           "intent": {"action": "question", "type": "sign"}, "image": "b", "answer": "go"}]}
    (tmp_path / "samples.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="spoken question 'q' needs an 'answer' and an 'image'"):
        read_samples(tmp_path)
    manifest["format_version"] = 99
    (tmp_path / "samples.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="format_version 99"):
        read_samples(tmp_path)
    manifest["format_version"], manifest["clips"][0]["file"] = 1, "../q.wav"
    (tmp_path / "samples.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="not a file inside the samples directory"):
        read_samples(tmp_path)


def _script(monkeypatch):
    spec = importlib.util.spec_from_file_location("make_samples", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_make_samples_is_deterministic_and_consistent(tmp_path, monkeypatch):
    pytest.importorskip("espeakng_loader", reason="synthesizing speech needs espeakng-loader (pip install 'tinymm[train]')")
    pytest.importorskip("tqdm", reason="the scene generator needs tqdm (pip install 'tinymm[train]')")
    script = _script(monkeypatch)
    first = script.write_samples(tmp_path / "one", seed=3, command="test")
    second = script.write_samples(tmp_path / "two", seed=3, command="test")
    assert first == second
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    for relative in files:
        assert (tmp_path / "one" / relative).read_bytes() == (tmp_path / "two" / relative).read_bytes(), relative
    check_samples(tmp_path / "one")
    script.write_samples(tmp_path / "one", seed=4, command="test")  # rewriting replaces the old samples
    assert json.loads((tmp_path / "one" / "samples.json").read_text())["seed"] == 4
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind
