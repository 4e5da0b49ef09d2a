"""The real whisper-base, from the whisper-weights packages: its int8 bundle transcribes the sample clips.

The bundle (fp32 + int8) is built once by scripts/make_whisper_bundle.py into a cache directory,
``$TINYMM_TEST_CACHE`` or ``~/.cache/tinymm-tests``, keyed by the model.bin's sha256 and a digest
of the exporter's source files (a changed exporter rebuilds it). Building takes a few minutes on
2 CPU cores; later runs reuse it. Skipped, with the reason, where the weight packages are absent.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.requires_torch

GATE_CLIPS = 12  # int8 gate clips (the script default is 24): half the gate's time
CACHE_ENV = "TINYMM_TEST_CACHE"
DEFAULT_CACHE = Path("~/.cache/tinymm-tests")
CACHE_PREFIX = "whisper-base-"  # cache entries: whisper-base-<model.bin sha256>-<exporter digest>[.summary.json]
EXPORTER_FILES = ("export/ctranslate2_whisper.py", "export/whisper_source.py", "export/whisper_onnx.py",
                  "export/whisper_parity.py", "export/whisper_gate.py", "export/whisper_clips.py",
                  "export/whisper_card.py", "export/families/whisper.py", "scripts/make_whisper_bundle.py")
SAMPLES = ROOT / "tinymm" / "assets" / "samples"
# Words each sample clip's transcript must contain (normalized: lowercase, no punctuation).
EXPECTED_WORDS = {
    "command-move.wav": ("go", "ahead", "meters"),
    "command-turn.wav": ("turn", "left"),
    "command-pick.wav": ("lift", "green", "star"),
    "command-stop.wav": ("stop", "moving"),
    "question-color.wav": ("color", "circle"),
    "question-count.wav": ("how", "many", "see"),
    "question-sign.wav": ("read", "sign"),
}


def _script():
    spec = importlib.util.spec_from_file_location("make_whisper_bundle", ROOT / "scripts" / "make_whisper_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    module = _script()
    if not module.weights_available():
        pytest.skip(f"the whisper-weights packages are not installed ({module.PIP_HINT})")
    pytest.importorskip("transformers", reason="the export needs transformers")
    return module


@pytest.fixture(scope="module")
def bundle_dir(script) -> Path:
    code = hashlib.sha256(b"".join((ROOT / name).read_bytes() for name in EXPORTER_FILES)).hexdigest()[:12]
    cache = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()
    out = cache / f"{CACHE_PREFIX}{script.MODEL_BIN_SHA256[:16]}-{code}"
    if not (out / "manifest.json").is_file():
        for stale in cache.glob(f"{CACHE_PREFIX}*"):  # bundles of older exporter code or weights
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        # In a child process: the export peaks at several GB, which the test process would keep.
        done = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "make_whisper_bundle.py"), str(out), "--precision", "fp32,int8",
             "--force", "--json", "--no-progress", "--eval-samples", str(GATE_CLIPS)],
            capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, f"make_whisper_bundle.py failed:\n{done.stderr[-4000:]}"
        (cache / f"{out.name}.summary.json").write_text(done.stdout)
    return out


@pytest.fixture(scope="module")
def transcripts(bundle_dir: Path) -> dict[str, dict[str, str]]:
    """precision -> clip file -> transcript, greedy in onnxruntime with the bundle's own files."""
    from export.parity import load_session
    from export.whisper_clips import whisper_audio_config
    from export.whisper_decode import GreedyOptions, decode_text, load_text_tokenizer, ort_greedy
    from tinymm.bundle import read_bundle
    from tinymm.preprocess.audio import AudioPreprocessor

    bundle = read_bundle(bundle_dir)
    model = bundle.manifest.model
    pre = AudioPreprocessor(whisper_audio_config(model["n_mels"]))
    files = sorted(EXPECTED_WORDS)
    features = np.stack([pre.features(pre.waveform(SAMPLES / "audio" / f)) for f in files])
    options = GreedyOptions(prompt=(model["sot_id"], model["languages"]["en"], model["transcribe_id"],
                                    model["no_timestamps_id"]), eot=model["eot_id"],
                            suppress_tokens=tuple(model["suppress_tokens"]),
                            begin_suppress_tokens=tuple(model["begin_suppress_tokens"]), max_new_tokens=32)
    tokenizer = load_text_tokenizer(bundle_dir / "tokenizer.json")
    out = {}
    for precision in ("fp32", "int8"):
        sessions = {c: load_session(bundle.component_path(c, precision if precision in comp.variants else "fp32"))
                    for c, comp in bundle.manifest.components.items()}
        out[precision] = {f: decode_text(tokenizer, ids) for f, ids in zip(files, ort_greedy(sessions, features, options))}
    return out


def test_bundle_is_whisper_base_with_int8(bundle_dir: Path, script) -> None:
    from tinymm.bundle import read_bundle

    manifest = read_bundle(bundle_dir, verify_checksums=True).manifest
    assert manifest.architecture == "whisper" and manifest.provenance["source"]["sha256"] == script.MODEL_BIN_SHA256
    assert manifest.model["num_layers"] == 6 and manifest.model["d_model"] == 512 and manifest.model["vocab_size"] == 51865
    assert len(manifest.model["languages"]) == 99 and manifest.model["languages"]["en"] == 50259
    assert manifest.preprocess.text.special_tokens["<|nospeech|>"] == manifest.model["no_speech_id"] == 50362
    assert "int8" in manifest.components["decoder_with_past"].variants  # the decoder steps pass the gate
    assert manifest.model["vad"] == "silero-vad"  # noise never reaches the decoder
    assert all(row["passed"] for row in script.verify(bundle_dir))


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_sample_clips_are_transcribed(transcripts: dict[str, dict[str, str]], precision: str) -> None:
    from export.whisper_decode import normalize_words

    for clip, words in EXPECTED_WORDS.items():
        got = normalize_words(transcripts[precision][clip])
        assert all(w in got for w in words), f"{precision} {clip}: {transcripts[precision][clip]!r} lacks {words}"


def test_fp32_matches_ctranslate2(transcripts: dict[str, dict[str, str]], script, tmp_path: Path) -> None:
    """The converted model's fp32 ONNX transcripts equal CTranslate2's own float32 greedy ones."""
    ctranslate2 = pytest.importorskip("ctranslate2", reason="the cross-check needs the ctranslate2 wheel")
    from export.whisper_clips import whisper_audio_config
    from export.whisper_decode import decode_text, load_text_tokenizer
    from tinymm.preprocess.audio import AudioPreprocessor

    source = script.assemble_source(tmp_path / "ct2")
    pre = AudioPreprocessor(whisper_audio_config(80))
    files = sorted(EXPECTED_WORDS)
    features = np.stack([pre.features(pre.waveform(SAMPLES / "audio" / f)) for f in files])
    model = ctranslate2.models.Whisper(str(source), device="cpu", compute_type="float32", intra_threads=2)
    results = model.generate(ctranslate2.StorageView.from_array(features), [[50258, 50259, 50359, 50363]] * len(files),
                             beam_size=1, max_length=64)
    tokenizer = load_text_tokenizer(source / "tokenizer.json")
    assert {f: decode_text(tokenizer, r.sequences_ids[0]) for f, r in zip(files, results)} == transcripts["fp32"]
    assert transcripts["fp32"]["command-move.wav"] == "Go ahead, 3 meters."


def test_runtime_transcribes_the_samples(bundle_dir: Path) -> None:
    """The user's path: tinymm.load (runtime only) and `tinymm transcribe --json`, int8 by default on a CPU."""
    import tinymm
    from export.whisper_decode import normalize_words

    pipeline = tinymm.load(bundle_dir, threads=2)
    files = sorted(EXPECTED_WORDS)
    results = pipeline.transcribe([str(SAMPLES / "audio" / f) for f in files])
    for clip, result in zip(files, results):
        got = normalize_words(result.text)
        assert all(w in got for w in EXPECTED_WORDS[clip]), f"{clip}: {result.text!r}"
        assert result.language == "en" and 0.0 <= result.no_speech_prob < 0.5
    command = pipeline.command(str(SAMPLES / "audio" / "command-turn.wav"))
    assert command.intent is not None and command.intent.action == "turn" and command.intent.direction == "left"
    done = subprocess.run(
        [sys.executable, "-m", "tinymm.cli", "transcribe", str(SAMPLES / "audio" / "command-move.wav"),
         "--bundle", str(bundle_dir), "--json", "--timestamps"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["results"][0]
    assert {"go", "ahead", "meters"} <= set(normalize_words(result["text"]))
    assert result["segments"] and result["segments"][0]["start"] == 0.0


def test_noise_is_rejected_before_decoding(bundle_dir: Path) -> None:
    """2 s of noise: no transcript and no robot action (the bundle's Silero VAD)."""
    import tinymm

    pipeline = tinymm.load(bundle_dir, threads=2)
    noise = np.random.default_rng(1).normal(0.0, 0.03, 32000).astype(np.float32)
    command = pipeline.command(noise, 16000)
    assert command.intent is None and command.rejected and command.reject_reason == "no_speech"
