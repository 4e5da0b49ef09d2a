"""``python -m export`` end to end on tiny checkpoints: bundles that ``tinymm info`` and ``tinymm verify`` accept."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.requires_torch

torch = pytest.importorskip("torch", reason="the export tier needs torch (pip install 'tinymm[train]')")
pytest.importorskip("onnx", reason="the export tier needs onnx (pip install 'tinymm[train]')")

import export.bundle_build as bundle_build  # noqa: E402
from export.__main__ import main as export_main  # noqa: E402
from tinymm.bundle import read_bundle  # noqa: E402
from tinymm.cli import main as tinymm_main  # noqa: E402
from tinymm.errors import EXIT_BAD_INPUT, EXIT_BUNDLE, EXIT_TOLERANCE  # noqa: E402
from train.data.scene_language import all_labels  # noqa: E402
from train.checkpoint import save_checkpoint  # noqa: E402
from train.models import VLMConfig  # noqa: E402
from tiny_runs import write_tiny_checkpoints  # noqa: E402

# One torch thread: on a busy 2-core machine, two spin-waiting threads make tiny forwards 10x slower.
THREADS = ["--threads", "1", "--no-progress"]
TRANSCRIPTS = ["turn left", "go forward two meters", "stop", "what do you see", "turn right please"]


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    """--threads 1 sets torch's thread count for the process; put it back after this module."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VLM run (tokenizer next to the checkpoint's parent) and a speech run (OUT/tokenizer/, as the recipe)."""
    return write_tiny_checkpoints(tmp_path_factory.mktemp("runs"), TRANSCRIPTS, vlm_step=7, speech_step=3,
                                  vlm_extra={"val_loss": 1.5})


@pytest.fixture(scope="module")
def vlm_bundle(runs: Path) -> Path:
    out = runs / "bundles" / "scene-vlm"
    code = export_main([str(runs / "vlm" / "final"), "--out", str(out), "--precision", "fp32,fp16,int8",
                        "--calibration", "4", *THREADS])
    assert code == 0
    return out


def _verify_json(bundle: Path, capsys: pytest.CaptureFixture, *extra: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = tinymm_main(["verify", str(bundle), "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_vlm_bundle_is_complete_and_accepted_by_info_and_verify(vlm_bundle: Path, runs: Path, capsys) -> None:
    assert tinymm_main(["info", str(vlm_bundle)]) == 0
    assert "checksums: 25 files OK" in capsys.readouterr().out  # incl. one shared decoder weights file per precision
    code, report = _verify_json(vlm_bundle, capsys)
    assert code == 0 and report["ok"] and report["failed"] == 0 and report["passed"] == 12
    with read_bundle(vlm_bundle) as bundle:
        manifest = bundle.manifest
        assert manifest.family == "vision-language" and manifest.tasks == ("caption", "ask", "classify")
        assert list(manifest.components) == ["image_encoder", "text_encoder", "decoder_first", "decoder_with_past"]
        assert all(c.precisions == ("fp32", "fp16", "int8") for c in manifest.components.values())
        assert manifest.model["num_layers"] == 2 and manifest.model["head_dim"] == 16
        assert manifest.model["labels"] == tuple(all_labels())
        assert manifest.model["max_new_tokens"] == 20  # half the 40-token context
        assert manifest.preprocess.image.height == 32 and manifest.preprocess.text.tokenizer == "tokenizer.model"
        assert bundle.tokenizer_path.read_bytes() == (runs / "vlm" / "tokenizer.model").read_bytes()
        weights = (runs / "vlm" / "final" / "model.safetensors").read_bytes()
        provenance = manifest.provenance
        assert provenance["checkpoint"]["sha256"] == hashlib.sha256(weights).hexdigest()
        assert provenance["checkpoint"]["step"] == 7 and provenance["training"]["val_loss"] == 1.5
        assert provenance["export"]["command"].startswith("python -m export ")
        assert provenance["export"]["parity"]["greedy"]["tokens_match"] is True
        assert provenance["export"]["parity"]["components"]["decoder_with_past"]["max_abs"] <= 1e-4
        assert set(provenance["export"]["parity"]["int8_gate"]) == set(manifest.components)
        assert {pair.component for pair in manifest.golden} == set(manifest.components)
        card = bundle.model_card_path.read_text()
        size = manifest.files["image_encoder.int8.onnx"].size
        assert f"| image_encoder | int8 | image_encoder.int8.onnx | {size} |" in card
        assert size < manifest.files["image_encoder.onnx"].size


def test_verify_reports_a_tampered_golden_output(vlm_bundle: Path, tmp_path: Path, capsys) -> None:
    bundle = tmp_path / "tampered"
    shutil.copytree(vlm_bundle, bundle)
    golden = bundle / "golden" / "decoder_first.outputs.npz"
    with np.load(golden) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["logits"] = arrays["logits"] + 0.01
    with open(golden, "wb") as f:
        np.savez(f, **arrays)
    assert tinymm_main(["verify", str(bundle)]) == EXIT_BUNDLE  # the checksum catches it first
    manifest = json.loads((bundle / "manifest.json").read_text())
    blob = golden.read_bytes()
    manifest["files"]["golden/decoder_first.outputs.npz"] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    code, report = _verify_json(bundle, capsys, "--precision", "fp32")
    assert code == EXIT_TOLERANCE and not report["ok"] and report["failed"] == 1 and report["passed"] == 3
    failed = [r for r in report["results"] if not r["passed"]]
    assert failed[0]["component"] == "decoder_first" and failed[0]["failures"][0].startswith("logits: max_abs 0.01")


def test_speech_export_with_int8(runs: Path, capsys) -> None:
    pytest.importorskip("espeakng_loader", reason="generated speech inputs need espeak-ng (pip install espeakng-loader)")
    out = runs / "bundles" / "speech"
    assert export_main([str(runs / "speech" / "final"), "--out", str(out), "--precision", "int8",
                        "--calibration", "3", *THREADS]) == 0
    code, report = _verify_json(out, capsys)
    assert code == 0 and [(r["component"], r["precision"]) for r in report["results"]] == [
        ("speech_encoder", "fp32"), ("speech_encoder", "int8")]
    with read_bundle(out) as bundle:
        manifest = bundle.manifest
        assert manifest.family == "speech" and manifest.model["blank_id"] == 0 and manifest.model["frame_ms"] == 40
        assert manifest.preprocess.audio.n_mels == 16 and manifest.preprocess.text.tokenizer == "speech.model"
        # 400 frames of 10 ms is what the model's position table holds: the contract is capped to it.
        assert manifest.preprocess.audio.max_seconds == pytest.approx(3.99)
        inputs = bundle.golden_arrays(manifest.golden[0])[0]
        assert inputs["features"].shape[:2] == (2, 16) and inputs["feature_lengths"].dtype == np.int64


def test_bad_inputs_fail_with_their_exit_codes(runs: Path, tmp_path: Path, capsys) -> None:
    missing = export_main([str(tmp_path / "nope"), "--out", str(tmp_path / "b")])
    assert missing == EXIT_BAD_INPUT and "does not exist" in capsys.readouterr().err
    other = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path / "linear", other, VLMConfig.tiny(), step=0)
    assert export_main([str(tmp_path / "linear"), "--out", str(tmp_path / "b")]) == EXIT_BAD_INPUT
    assert "torch.nn.modules.linear.Linear" in capsys.readouterr().err
    lonely = tmp_path / "lonely" / "a" / "b"
    shutil.copytree(runs / "vlm" / "final", lonely)
    assert export_main([str(lonely), "--out", str(tmp_path / "b")]) == EXIT_BAD_INPUT
    assert "--tokenizer" in capsys.readouterr().err
    speech_tokenizer = str(runs / "speech" / "tokenizer" / "speech.model")
    assert export_main([str(lonely), "--out", str(tmp_path / "b"), "--tokenizer", speech_tokenizer]) == EXIT_BAD_INPUT
    assert "has 12 ids but the model's vocabulary is 64" in capsys.readouterr().err
    (lonely / "preprocess.json").write_text(json.dumps({"image": {"height": 48, "width": 48}}))
    code = export_main([str(lonely), "--out", str(tmp_path / "b"), "--tokenizer", str(runs / "vlm" / "tokenizer.model")])
    assert code == EXIT_BAD_INPUT and "48x48 but the model takes 32x32" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("not a bundle")
    code = export_main([str(runs / "vlm" / "final"), "--out", str(tmp_path / "full"), *THREADS])
    assert code == EXIT_BUNDLE and (tmp_path / "full" / "notes.txt").is_file()
    assert not (tmp_path / "b").exists()


def test_contract_file_and_force_replace_an_existing_bundle(runs: Path, tmp_path: Path) -> None:
    pytest.importorskip("espeakng_loader", reason="generated speech inputs need espeak-ng (pip install espeakng-loader)")
    out = tmp_path / "speech-bundle"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # looks like a bundle: --force may replace it
    contract = tmp_path / "contract.json"
    contract.write_text(json.dumps({"audio": {"n_mels": 16, "f_max": 7600.0, "max_seconds": 2.5}}))
    args = [str(runs / "speech" / "final"), "--out", str(out), "--preprocess", str(contract), *THREADS,
            "--name", "custom-name", "--golden-batch", "3"]
    assert export_main(args) == EXIT_BUNDLE
    assert export_main([*args, "--force"]) == 0
    with read_bundle(out) as bundle:
        manifest = bundle.manifest
        assert bundle.name == "custom-name" and manifest.preprocess.audio.f_max == 7600.0
        assert manifest.preprocess.audio.max_seconds == 2.5
        assert manifest.provenance["export"]["sources"]["preprocess.audio"] == str(contract)
        assert manifest.provenance["export"]["sources"]["preprocess.text"] == "recipe default"
        assert bundle.golden_arrays(manifest.golden[0])[0]["features"].shape[0] == 3


def test_a_parity_failure_writes_nothing(runs: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    real = bundle_build.component_parity

    def broken(*args, **kwargs):
        report = real(*args, **kwargs)
        return {**report, "max_abs": 0.5}

    monkeypatch.setattr(bundle_build, "component_parity", broken)
    out = tmp_path / "b"
    assert export_main([str(runs / "speech" / "final"), "--out", str(out), *THREADS]) == EXIT_TOLERANCE
    assert "speech_encoder: max abs error 0.5 > 0.0001" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []
