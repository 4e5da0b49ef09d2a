"""Fuzz tier: the bundle readers (manifest parser, directory reader, ONNX scanner, archive
extraction) take random and mutated input and either read a bundle or raise a TinymmError
(a BundleError, as a rule; see tests/fuzz_support.py)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("hypothesis", reason="the fuzz tier needs hypothesis (pip install 'tinymm[dev]')")
from fuzz_support import FUZZ, mutated, seeds_mutated, tinymm_error_or  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_bundle_fixtures import MODEL, write_tiny_bundle  # noqa: E402  (skips without onnx)

from tinymm.bundle import pack_bundle, read_bundle, verify_bundle  # noqa: E402
from tinymm.bundle.onnx_scan import OnnxWireError, scan_onnx  # noqa: E402
from tinymm.bundle.parse import parse_manifest_bytes  # noqa: E402

FEW = settings(FUZZ, max_examples=max(FUZZ.max_examples // 3, 10))  # each example writes a bundle to disk
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
MEMBER_TYPES = (tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE)
MEMBER_NAMES = st.sampled_from(("tiny/manifest.json", "tiny/model.onnx", "tiny/x", "manifest.json", "a/b/c", "../x",
                                "/abs", "tiny/../../x", "C:\\x", "tiny\\x", "./tiny/README.md", "")) | st.text(max_size=20)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fuzz-bundle") / "tiny"
    write_tiny_bundle(root)
    archives = tmp_path_factory.mktemp("fuzz-archives")
    return {
        "root": root,
        "manifest": (root / "manifest.json").read_bytes(),
        "model": (root / MODEL).read_bytes(),
        "tar": pack_bundle(root, archives / "tiny.tar").read_bytes(),
        "tgz": pack_bundle(root, archives / "tiny.tar.gz").read_bytes(),
    }


def _read(root: Path) -> None:
    bundle = tinymm_error_or(read_bundle, root)
    if bundle is not None:
        tinymm_error_or(verify_bundle, bundle)


def _set_path(doc, path: list, value):
    """``doc`` with the value at ``path`` (keys / indexes, wrapped to what exists) replaced."""
    node = doc
    for step in path[:-1]:
        if isinstance(node, dict) and node:
            node = node[sorted(node)[step % len(node)]]
        elif isinstance(node, list) and node:
            node = node[step % len(node)]
    if isinstance(node, dict) and node:
        node[sorted(node)[path[-1] % len(node)]] = value
    elif isinstance(node, list) and node:
        node[path[-1] % len(node)] = value
    return doc


# ---- the manifest -----------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_mutated_manifest_bytes(tiny, data) -> None:
    tinymm_error_or(parse_manifest_bytes, data.draw(seeds_mutated({"m": tiny["manifest"]}) | st.binary(max_size=256)))


@FUZZ
@given(path=st.lists(st.integers(0, 50), min_size=1, max_size=5), value=JSON)
def test_manifest_fields_replaced_by_random_json(tiny, path, value) -> None:
    doc = _set_path(json.loads(tiny["manifest"]), path, value)
    tinymm_error_or(parse_manifest_bytes, json.dumps(doc).encode())


@FEW
@given(path=st.lists(st.integers(0, 50), min_size=1, max_size=5), value=JSON)
def test_bundle_directories_with_a_mutated_manifest(tiny, path, value) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tiny"
        shutil.copytree(tiny["root"], root)
        doc = _set_path(json.loads(tiny["manifest"]), path, value)
        (root / "manifest.json").write_text(json.dumps(doc))
        _read(root)


# ---- ONNX models ------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_mutated_onnx_models(tiny, data) -> None:
    blob = data.draw(seeds_mutated({"model": tiny["model"]}) | st.binary(max_size=256))
    try:
        scan_onnx(blob)
    except OnnxWireError:
        pass  # the reader turns this into OnnxFormatError naming the file, as the next test checks


@FEW
@given(data=st.data())
def test_bundles_with_a_mutated_model(tiny, data) -> None:
    blob = data.draw(mutated(tiny["model"]))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tiny"
        shutil.copytree(tiny["root"], root)
        (root / MODEL).write_bytes(blob)
        try:
            read_bundle(root, verify_checksums=False)  # sizes may still match: the scan must catch the rest
        except Exception as e:  # noqa: BLE001 - the property: only TinymmErrors
            from tinymm.errors import TinymmError

            assert isinstance(e, TinymmError), repr(e)


# ---- archives ---------------------------------------------------------------------------------


@FEW
@given(data=st.data(), suffix=st.sampled_from((".tar", ".tar.gz", ".tgz")))
def test_random_and_mutated_archives(tiny, data, suffix) -> None:
    seed = tiny["tar"] if suffix == ".tar" else tiny["tgz"]
    blob = data.draw(mutated(seed, max_ops=3) | st.binary(max_size=512))
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / f"fuzz{suffix}"
        archive.write_bytes(blob)
        _read(archive)


@FEW
@given(members=st.lists(st.tuples(MEMBER_NAMES, st.sampled_from(MEMBER_TYPES), st.binary(max_size=64)), max_size=6),
       keep_manifest=st.booleans())
def test_archives_of_random_members(tiny, members, keep_manifest) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "fuzz.tar"
        with tarfile.open(archive, "w") as tar:
            if keep_manifest:
                info = tarfile.TarInfo("tiny/manifest.json")
                info.size = len(tiny["manifest"])
                tar.addfile(info, io.BytesIO(tiny["manifest"]))
            for name, kind, payload in members:
                info = tarfile.TarInfo(name)
                info.type = kind
                if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                    info.linkname = "tiny/manifest.json"
                info.size = len(payload) if kind == tarfile.REGTYPE else 0
                try:
                    tar.addfile(info, io.BytesIO(payload) if kind == tarfile.REGTYPE else None)
                except (ValueError, UnicodeError):
                    continue  # a name tar itself cannot write
        _read(archive)
