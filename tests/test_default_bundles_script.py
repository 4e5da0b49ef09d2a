"""scripts/make_default_bundles.py: size budget, verification, and replacing the installed bundles.

The helpers run on small directories made here; the end-to-end test exports tiny torch
checkpoints (``requires_torch``); the failure paths (over the budget, a bundle that fails
``tinymm verify``) replace the export with one that writes a fake bundle, and check that the
installed bundles are left as they were.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tinymm.errors import EXIT_BUNDLE, EXIT_OK, EXIT_TOLERANCE, EXIT_USAGE

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "make_default_bundles.py"


@pytest.fixture
def script(monkeypatch):
    spec = importlib.util.spec_from_file_location("make_default_bundles", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _fake_bundle(root: Path, marker: str, model_bytes: int = 1000) -> Path:
    (root / "golden").mkdir(parents=True)
    (root / "model.onnx").write_bytes(b"m" * model_bytes)
    (root / "decoder.int8.weights").write_bytes(b"w" * 10)
    (root / "golden" / "a.inputs.npz").write_bytes(b"g" * 100)
    (root / "tokenizer.model").write_bytes(b"t" * 7)
    (root / "manifest.json").write_text(marker)
    return root


def test_bundle_sizes_by_kind(script, tmp_path):
    sizes = script.bundle_sizes(_fake_bundle(tmp_path / "b", "x"))
    assert sizes == {"models": 1010, "golden": 100, "tokenizer": 7, "other": 1, "total": 1118}


def test_the_budget_is_a_real_check(script):
    sizes = {"scene-vlm": {"total": 15_000_000, "models": 13_000_000, "golden": 2_000_000},
             "speech-commands": {"total": 6_000_000, "models": 5_900_000, "golden": 100_000}}
    with pytest.raises(script.BuildError, match="21.00 MB together, over the 20 MB budget") as info:
        script.check_budget(sizes, 20.0)
    assert info.value.exit_code == EXIT_BUNDLE
    assert "scene-vlm 15.00 MB (models 13.00 MB, golden 2.00 MB)" in str(info.value)
    assert "--max-total-mb" in str(info.value)
    script.check_budget(sizes, 21.0)  # exactly at the budget is fine


def test_install_replaces_the_old_bundles_and_leaves_nothing_behind(script, tmp_path):
    out = tmp_path / "bundles"
    _fake_bundle(out / "scene-vlm", "old vlm")
    staging = tmp_path / "stage"
    staged = {"scene-vlm": _fake_bundle(staging / "scene-vlm", "new vlm"),
              "speech-commands": _fake_bundle(staging / "speech-commands", "new speech")}
    script.install(staged, out)
    assert (out / "scene-vlm" / "manifest.json").read_text() == "new vlm"
    assert (out / "speech-commands" / "manifest.json").read_text() == "new speech"
    assert sorted(p.name for p in out.iterdir()) == ["scene-vlm", "speech-commands"]


def test_a_failed_install_puts_the_old_bundles_back(script, tmp_path, monkeypatch):
    out = tmp_path / "bundles"
    _fake_bundle(out / "scene-vlm", "old vlm")
    _fake_bundle(out / "speech-commands", "old speech")
    staged = {"scene-vlm": _fake_bundle(tmp_path / "stage" / "scene-vlm", "new vlm"),
              "speech-commands": tmp_path / "stage" / "missing"}  # renaming it fails
    with pytest.raises(OSError):
        script.install(staged, out)
    assert (out / "scene-vlm" / "manifest.json").read_text() == "old vlm"
    assert (out / "speech-commands" / "manifest.json").read_text() == "old speech"
    assert sorted(p.name for p in out.iterdir()) == ["scene-vlm", "speech-commands"]


def test_leftovers_of_an_interrupted_run_are_removed(script, tmp_path):
    out = tmp_path / "bundles"
    for name in (".staging-abc", ".old-scene-vlm-12", "scene-vlm"):
        (out / name).mkdir(parents=True)
    script.remove_leftovers(out)
    assert [p.name for p in out.iterdir()] == ["scene-vlm"]


def test_bad_arguments_exit_2(script, tmp_path, capsys):
    assert script.main([str(tmp_path / "no"), str(tmp_path), "--out-dir", str(tmp_path / "out")]) == EXIT_USAGE
    assert "VLM_CHECKPOINT" in capsys.readouterr().err
    assert script.main([str(tmp_path), str(tmp_path), "--max-total-mb", "0"]) == EXIT_USAGE


def _stub_export(script, monkeypatch, model_bytes: int) -> None:
    """``export`` writes a fake bundle of ``model_bytes`` model bytes instead of running python -m export."""
    monkeypatch.setattr(script, "export", lambda target, out, precisions, threads: _fake_bundle(out, "new", model_bytes))


@pytest.mark.parametrize("model_bytes, budget_mb, code, message", [
    (600_000, "1", EXIT_BUNDLE, "over the 1 MB budget"),  # two bundles of 0.6 MB
    (1000, "20", EXIT_TOLERANCE, "tinymm verify scene-vlm failed"),  # a fake bundle fails verification
])
def test_a_failed_build_leaves_the_installed_bundles_alone(script, tmp_path, monkeypatch, capsys,
                                                           model_bytes, budget_mb, code, message):
    out = tmp_path / "bundles"
    _fake_bundle(out / "scene-vlm", "old vlm")
    _fake_bundle(out / "speech-commands", "old speech")
    (out / ".staging-left-by-a-crash").mkdir()
    _stub_export(script, monkeypatch, model_bytes)
    assert script.main([str(tmp_path), str(tmp_path), "--out-dir", str(out), "--max-total-mb", budget_mb]) == code
    assert message in capsys.readouterr().err
    assert (out / "scene-vlm" / "manifest.json").read_text() == "old vlm"
    assert (out / "speech-commands" / "manifest.json").read_text() == "old speech"
    assert sorted(p.name for p in out.iterdir()) == ["scene-vlm", "speech-commands"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    torch = pytest.importorskip("torch", reason="exporting needs torch (pip install 'tinymm[train]')")
    from fake_sessions import COMMAND_SENTENCES

    from train.checkpoint import save_checkpoint
    from train.data.scene_dataset import generate_example
    from train.data.scene_language import all_labels
    from train.data.scene_render import RenderConfig
    from train.data.scene_world import WorldConfig
    from train.models import (
        SpeechConfig,
        SpeechCTCModel,
        VisionLanguageModel,
        VLMConfig,
    )
    from train.speech_tokenizer import SpeechTokenizerConfig, train_speech_tokenizer
    from train.vlm_tokenizer import scene_corpus, train_tokenizer

    root = tmp_path_factory.mktemp("checkpoints")
    annotations = [generate_example(WorldConfig(), RenderConfig(), 0, 0, i)[1] for i in range(8)]
    train_tokenizer(scene_corpus(annotations, all_labels()), root / "vlm", vocab_size=64, context_length=24)
    torch.manual_seed(0)
    vlm = VisionLanguageModel(VLMConfig.tiny())
    save_checkpoint(root / "vlm" / "final", vlm, vlm.config, step=1)
    train_speech_tokenizer(list(COMMAND_SENTENCES), root / "speech" / "tokenizer" / "speech.model",
                           SpeechTokenizerConfig(vocab_size=12, model_type="char"))
    speech = SpeechCTCModel(SpeechConfig.tiny())
    save_checkpoint(root / "speech" / "final", speech, speech.config, step=1)
    return {"vlm": root / "vlm" / "final", "speech": root / "speech" / "final"}


@pytest.mark.requires_torch
@pytest.mark.slow
def test_build_exports_verifies_and_installs_both_bundles(script, checkpoints, tmp_path, capsys):
    import tinymm

    out = tmp_path / "bundles"
    argv = [str(checkpoints["vlm"]), str(checkpoints["speech"]), "--out-dir", str(out), "--threads", "1"]
    assert script.main(argv) == EXIT_OK
    printed = capsys.readouterr().out
    assert "scene-vlm" in printed and "speech-commands" in printed and "of the 20 MB budget, verified" in printed
    assert sorted(p.name for p in out.iterdir()) == ["scene-vlm", "speech-commands"]
    vlm = tinymm.load(out / "scene-vlm", threads=1)
    assert vlm.name == "scene-vlm" and set(vlm.bundle.manifest.components["image_encoder"].precisions) == {"fp32", "int8"}
    assert tinymm.load(out / "speech-commands", threads=1).family == "speech"


def test_paths_inside_the_repository_are_recorded_relative_to_it(script, tmp_path):
    assert script.from_root(script.ROOT / "train" / "students" / "vlm") == "train/students/vlm"
    assert script.from_root(tmp_path / "ckpt") == str((tmp_path / "ckpt").resolve())
