"""The family registry (tinymm.families): a manifest's architecture names the module that runs it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

import tinymm
import tinymm.families as families
from tinymm.bundle.errors import UnknownArchitectureError
from tinymm.bundle.names import DEFAULT_BUNDLES_DIR
from tinymm.cli import main
from tinymm.errors import EXIT_BUNDLE, BundleError
from tinymm.families import family_module, known_architectures, module_name

SPEECH = DEFAULT_BUNDLES_DIR / "speech-commands"  # a format-v1 bundle: no architecture field


def _with_architecture(tmp_path: Path, architecture: str) -> Path:
    """A copy of the shipped speech bundle whose manifest (format v2) declares ``architecture``.

    The manifest is not in its own files list, so editing it keeps every checksum valid.
    """
    if not SPEECH.is_dir():
        pytest.skip(f"the default bundle {SPEECH} is not built (scripts/make_default_bundles.py)")
    bundle = tmp_path / f"speech-{architecture}"
    shutil.copytree(SPEECH, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    manifest.update(format_version=2, architecture=architecture)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return bundle


def test_the_default_architectures_are_known():
    assert {"tinymm-ctc", "tinymm-vlm"} <= set(known_architectures())
    assert module_name("tinymm-vlm") == "tinymm.families.tinymm_vlm"


def test_every_family_module_declares_its_architecture_and_constructor():
    for architecture in known_architectures():
        module = family_module(architecture)
        assert module.ARCHITECTURE == architecture and callable(module.from_bundle), module.__name__


def test_an_unknown_architecture_names_it_the_known_ones_and_the_fix():
    with pytest.raises(UnknownArchitectureError) as raised:
        family_module("siglip-so400m")
    message = str(raised.value)
    assert "'siglip-so400m'" in message and "tinymm-ctc" in message and "tinymm-vlm" in message
    assert "upgrade tinymm" in message
    assert raised.value.kind == "unknown_architecture" and isinstance(raised.value, BundleError)


def test_a_v1_bundle_runs_on_its_family_default():
    speech = tinymm.load("speech-commands", verify_checksums=False)
    assert speech.bundle.manifest.architecture is None
    assert speech.bundle.manifest.architecture_name == "tinymm-ctc"
    assert type(speech).__name__ == "SpeechPipeline"


def test_loading_a_bundle_of_an_unknown_architecture_is_a_bundle_error(tmp_path, capsys):
    bundle = _with_architecture(tmp_path, "whisper-large-v9")
    with pytest.raises(UnknownArchitectureError, match=r"bundle 'speech-commands' \(speech\): .*'whisper-large-v9'"):
        tinymm.load(bundle)
    code = main(["transcribe", str(tmp_path / "clip.wav"), "--bundle", str(bundle), "--json"])
    error = json.loads(capsys.readouterr().out)["error"]
    assert code == EXIT_BUNDLE and error["kind"] == "unknown_architecture"


def test_a_new_family_is_one_module_and_no_other_edit(tmp_path, monkeypatch):
    package = tmp_path / "more_families"
    package.mkdir()
    (package / "toy_arch.py").write_text(
        'ARCHITECTURE = "toy-arch"\n\n\n'
        "def from_bundle(bundle, options):\n"
        '    return ("toy pipeline", bundle.name, options.precision)\n',
        encoding="utf-8",
    )
    monkeypatch.setattr(families, "__path__", [*families.__path__, str(package)])
    monkeypatch.delitem(sys.modules, "tinymm.families.toy_arch", raising=False)
    try:
        assert "toy-arch" in known_architectures()
        loaded = tinymm.load(_with_architecture(tmp_path, "toy-arch"), precision="fp32")
        assert loaded == ("toy pipeline", "speech-commands", "fp32")
    finally:
        sys.modules.pop("tinymm.families.toy_arch", None)


def test_a_broken_family_module_is_an_import_error(tmp_path, monkeypatch):
    (tmp_path / "half_done.py").write_text('ARCHITECTURE = "something-else"\n', encoding="utf-8")
    monkeypatch.setattr(families, "__path__", [*families.__path__, str(tmp_path)])
    try:
        with pytest.raises(ImportError, match="ARCHITECTURE = 'half-done' and a from_bundle"):
            family_module("half-done")
    finally:
        sys.modules.pop("tinymm.families.half_done", None)
