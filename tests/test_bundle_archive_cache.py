"""Bundle archives: extraction capped by the manifest's sizes, done once into a cache keyed by the
archive's content, atomic (a killed extraction never leaves a directory that is later used)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from test_bundle_fixtures import tiny_bundle  # noqa: F401  (a fixture)

import tinymm.bundle.extract_cache as extract_cache
from tinymm.bundle import pack_bundle, read_bundle
from tinymm.bundle.errors import ChecksumMismatchError, UnlistedFileError
from tinymm.bundle.extract_cache import PARTIAL_PREFIX, extract_cache_dir, extract_cached


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINYMM_CACHE_DIR", str(tmp_path / "cache"))


def _cache_entries() -> list[str]:
    cache = extract_cache_dir()
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def _repacked(tiny_bundle: Path, out: Path, extra: dict[str, bytes]) -> Path:
    """The tiny bundle as a .tar with ``extra`` members added (name -> bytes) or replaced."""
    with tarfile.open(out, "w") as tar:
        for path in sorted(tiny_bundle.rglob("*")):
            rel = path.relative_to(tiny_bundle).as_posix()
            if path.is_file() and rel not in extra:
                tar.add(path, arcname=f"tiny/{rel}")
        for name, data in extra.items():
            info = tarfile.TarInfo(f"tiny/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def test_an_archive_is_extracted_once_into_a_cache_keyed_by_its_content(tiny_bundle: Path, tmp_path: Path) -> None:
    archive = pack_bundle(tiny_bundle, tmp_path / "tiny.tar.gz")
    with read_bundle(archive) as first:
        root = first.root
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert root == extract_cache_dir() / digest / "tiny" and root.is_dir()  # kept for the next start
    copy = tmp_path / "elsewhere" / "same.tar.gz"
    copy.parent.mkdir()
    copy.write_bytes(archive.read_bytes())
    mtime = (root / "manifest.json").stat().st_mtime_ns
    assert read_bundle(copy).root == root and read_bundle(archive).root == root  # reused, not re-extracted
    assert (root / "manifest.json").stat().st_mtime_ns == mtime
    assert _cache_entries() == [digest]


def test_members_the_manifest_does_not_declare_are_refused_before_writing(tiny_bundle: Path, tmp_path: Path) -> None:
    big = _repacked(tiny_bundle, tmp_path / "big.tar", {"padding.bin": b"\0" * (1 << 20)})
    with pytest.raises(UnlistedFileError, match="'tiny/padding.bin' is not a file its manifest lists"):
        read_bundle(big)
    card = (tiny_bundle / "README.md").read_bytes()
    resized = _repacked(tiny_bundle, tmp_path / "resized.tar", {"README.md": card + b"\0" * 4096})
    message = f"holds {len(card) + 4096} bytes but the manifest lists {len(card)}"
    with pytest.raises(ChecksumMismatchError, match=message):
        read_bundle(resized)
    out = tmp_path / "out"
    with pytest.raises(UnlistedFileError):
        read_bundle(big, extract_to=out)
    assert not out.exists() or not any(out.iterdir())
    assert _cache_entries() == []  # no partial directory left behind either


def test_an_interrupted_extraction_leaves_nothing_that_is_used(tiny_bundle: Path, tmp_path: Path, monkeypatch) -> None:
    archive = pack_bundle(tiny_bundle, tmp_path / "tiny.tgz")
    real = extract_cache.extract_archive

    def killed(source: Path, dest: Path) -> Path:
        real(source, dest)
        raise KeyboardInterrupt  # as SIGINT after the files were written, before the rename

    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(extract_cache, "extract_archive", killed)
        read_bundle(archive)
    assert _cache_entries() == []
    # A process killed with SIGKILL leaves its partial directory: the next extraction removes it.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    cache = extract_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    stale = cache / f"{PARTIAL_PREFIX}{int(dead.stdout)}-abc"
    (stale / "tiny").mkdir(parents=True)
    (stale / "tiny" / "manifest.json").write_text(json.dumps({"half": "written"}))
    alive = cache / f"{PARTIAL_PREFIX}{extract_cache.os.getpid()}-xyz"  # an extraction in progress
    alive.mkdir()
    root = extract_cached(archive)
    assert not stale.exists() and alive.exists()
    assert read_bundle(archive).root == root and root.parent.parent == cache
