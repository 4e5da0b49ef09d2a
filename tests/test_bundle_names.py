"""Bundle names: the shipped default bundles, then the user's bundle directory (tinymm.bundle.names)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import tinymm.bundle.names as names
from tinymm.bundle.errors import BundleNotFoundError
from tinymm.bundle.names import bundle_names_in, resolve_bundle, user_bundle_dir


def _bundle(directory: Path, name: str) -> Path:
    """A directory standing for a bundle (resolve_bundle only looks for the name)."""
    path = directory / name
    path.mkdir(parents=True)
    (path / "manifest.json").write_text("{}")
    return path


def test_user_bundle_dir_resolution(tmp_path):
    home = Path("~").expanduser()
    assert user_bundle_dir({}) == home / ".local" / "share" / "tinymm" / "bundles"
    assert user_bundle_dir({"XDG_DATA_HOME": str(tmp_path / "data")}) == tmp_path / "data" / "tinymm" / "bundles"
    assert user_bundle_dir({"XDG_DATA_HOME": "relative/data"}) == home / ".local" / "share" / "tinymm" / "bundles"
    both = {"TINYMM_BUNDLE_DIR": str(tmp_path / "mine"), "XDG_DATA_HOME": str(tmp_path / "data")}
    assert user_bundle_dir(both) == tmp_path / "mine"


def test_a_user_bundle_is_found_by_name(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    built = _bundle(mine, "whisper-base")
    (mine / "packed.tar.gz").write_bytes(b"")
    (mine / ".staging-x").mkdir()
    monkeypatch.setenv("TINYMM_BUNDLE_DIR", str(mine))
    assert resolve_bundle("whisper-base") == built
    assert resolve_bundle("packed") == mine / "packed.tar.gz"
    assert bundle_names_in(mine) == ("packed", "whisper-base")


def test_a_shipped_bundle_wins_over_a_user_bundle_of_the_same_name(tmp_path, monkeypatch):
    shipped = _bundle(tmp_path / "shipped", "speech-commands")
    _bundle(tmp_path / "mine", "speech-commands")
    monkeypatch.setattr(names, "DEFAULT_BUNDLES_DIR", tmp_path / "shipped")
    monkeypatch.setenv("TINYMM_BUNDLE_DIR", str(tmp_path / "mine"))
    assert resolve_bundle("speech-commands") == shipped


def test_an_unknown_name_lists_both_places(tmp_path, monkeypatch):
    _bundle(tmp_path / "shipped", "scene-vlm")
    _bundle(tmp_path / "mine", "whisper-base")
    monkeypatch.setattr(names, "DEFAULT_BUNDLES_DIR", tmp_path / "shipped")
    monkeypatch.setenv("TINYMM_BUNDLE_DIR", str(tmp_path / "mine"))
    with pytest.raises(BundleNotFoundError) as raised:
        resolve_bundle("whisper-small")
    message = str(raised.value)
    assert "default bundles: scene-vlm (in " + str(tmp_path / "shipped") in message
    assert "user bundles: whisper-base (in " + str(tmp_path / "mine") in message
    shutil.rmtree(tmp_path / "mine")
    with pytest.raises(BundleNotFoundError, match=r"user bundles: none in .*mine \(\$TINYMM_BUNDLE_DIR"):
        resolve_bundle("whisper-small")


def test_paths_are_not_looked_up_as_names(tmp_path, monkeypatch):
    _bundle(tmp_path / "mine", "b")
    monkeypatch.setenv("TINYMM_BUNDLE_DIR", str(tmp_path / "mine"))
    for path in ("./b", "x/b", Path("b")):
        with pytest.raises(BundleNotFoundError, match="does not exist"):
            resolve_bundle(path)
