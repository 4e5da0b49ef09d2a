"""Round trips through BundleWriter and read_bundle, the Bundle accessors, and the manifest dataclasses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from test_bundle_fixtures import (
    GOLDEN_IN,
    GOLDEN_OUT,
    MODEL,
    TOKENIZER,
    golden_inputs,
    tiny_bundle,  # noqa: F401  (a fixture)
    tiny_model,
    tiny_weights,
    write_tiny_bundle,
)
from tinymm.bundle import (
    ChecksumMismatchError,
    Component,
    FieldTypeError,
    FileEntry,
    GoldenPair,
    InvalidValueError,
    Manifest,
    MissingFileError,
    NotInBundleError,
    OutputExistsError,
    TensorSpec,
    Tolerance,
    UnlistedFileError,
    UnsafePathError,
    Variant,
    BundleWriter,
    parse_manifest,
    read_bundle,
    verify_bundle,
)

# ---- writer -> reader ---------------------------------------------------------------------


def test_round_trip_through_writer_and_reader(tmp_path: Path) -> None:
    written = write_tiny_bundle(tmp_path / "b")
    read = read_bundle(tmp_path / "b")
    assert read.manifest == written.manifest
    manifest = read.manifest
    assert sorted(manifest.files) == ["README.md", GOLDEN_IN, GOLDEN_OUT, MODEL, TOKENIZER]
    assert manifest.files[MODEL].size == (tmp_path / "b" / MODEL).stat().st_size
    assert manifest.model_card == "README.md" and manifest.created_by.startswith("tinymm ")
    assert manifest.provenance["metrics"]["acc"] == 1.0
    assert parse_manifest(json.loads((tmp_path / "b" / "manifest.json").read_text())) == manifest
    assert parse_manifest(manifest.to_dict()) == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no staging or temporary files left


def test_bundle_accessors(tiny_bundle: Path) -> None:
    bundle = read_bundle(tiny_bundle)
    assert bundle.component_path("model") == tiny_bundle / MODEL
    assert bundle.tokenizer_path == tiny_bundle / TOKENIZER
    assert bundle.model_card_path == tiny_bundle / "README.md"
    inputs, outputs = bundle.golden_arrays(bundle.manifest.golden[0])
    np.testing.assert_array_equal(inputs["x"], golden_inputs()["x"])
    np.testing.assert_allclose(outputs["y"], golden_inputs()["x"] @ tiny_weights())
    with pytest.raises(NotInBundleError, match=r"no 'int8' variant; choose one of \['fp32'\]"):
        bundle.component_path("model", "int8")
    with pytest.raises(NotInBundleError, match=r"no component 'decoder'; it has \['model'\]"):
        bundle.component_path("decoder")
    with pytest.raises(NotInBundleError, match="lists no file"):
        bundle.file_path("../etc/passwd")


def test_skipping_checksums_still_checks_sizes_and_verify_hashes(tiny_bundle: Path) -> None:
    data = bytearray((tiny_bundle / TOKENIZER).read_bytes())
    data[0] ^= 0xFF
    (tiny_bundle / TOKENIZER).write_bytes(bytes(data))
    bundle = read_bundle(tiny_bundle, verify_checksums=False)  # same size: accepted without hashing
    with pytest.raises(ChecksumMismatchError, match="'tokenizer.model' has sha256"):
        verify_bundle(bundle)
    with pytest.raises(ChecksumMismatchError):
        read_bundle(tiny_bundle)
    (tiny_bundle / TOKENIZER).write_bytes(b"short")
    with pytest.raises(ChecksumMismatchError, match="has 5 bytes"):
        read_bundle(tiny_bundle, verify_checksums=False)


def test_an_unlisted_file_in_the_bundle_is_refused(tiny_bundle: Path) -> None:
    bundle = read_bundle(tiny_bundle)
    (tiny_bundle / "golden" / "notes.txt").parent.mkdir(exist_ok=True)
    (tiny_bundle / "golden" / "notes.txt").write_text("left here by hand")
    with pytest.raises(UnlistedFileError, match=r"1 file\(s\) not listed in manifest.json: 'golden/notes.txt'") as e:
        read_bundle(tiny_bundle, verify_checksums=False)
    assert e.value.kind == "file_unlisted" and e.value.exit_code == 4
    with pytest.raises(UnlistedFileError):  # added after the bundle was read
        verify_bundle(bundle)
    (tiny_bundle / "golden" / "notes.txt").unlink()
    assert verify_bundle(read_bundle(tiny_bundle)).files_checked == 5


def test_writer_refuses_a_non_empty_directory_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "b"
    write_tiny_bundle(out)
    with pytest.raises(OutputExistsError, match="not empty.*overwrite=True"):
        BundleWriter(out)
    before = (out / "manifest.json").read_text()
    write_tiny_bundle(out, overwrite=True, tasks=("embed", "classify"))
    assert read_bundle(out).manifest.tasks == ("embed", "classify")
    assert (out / "manifest.json").read_text() != before
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(OutputExistsError, match="not a bundle"):
        BundleWriter(other, overwrite=True)
    assert (other / "cat.jpg").exists()
    BundleWriter(tmp_path / "empty_is_fine").abort()


def test_writer_refuses_unsafe_names(tmp_path: Path) -> None:
    writer = BundleWriter(tmp_path / "b")
    for name in ("../x.onnx", "/abs.onnx", "a\\b.onnx", "./x.onnx"):
        with pytest.raises(UnsafePathError):
            writer.add_bytes(name, b"")
    with pytest.raises(InvalidValueError, match="written by write"):
        writer.add_text("manifest.json", "{}")
    with pytest.raises(InvalidValueError, match="dtype object"):
        writer.add_arrays("golden/x.npz", {"x": np.array([None], dtype=object)})
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_writer_fails_on_a_referenced_file_never_added_and_publishes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "b"
    with BundleWriter(out) as writer:
        writer.add_bytes(MODEL, tiny_model().SerializeToString())
        with pytest.raises(MissingFileError, match="golden.*never added"):
            writer.write(
                name="b",
                family="example",
                tasks=["embed"],
                components={"model": _component()},
                golden=[GoldenPair("model", GOLDEN_IN, GOLDEN_OUT, {"fp32": Tolerance(max_abs=0.0)})],
            )
    assert list(tmp_path.iterdir()) == []


def test_writer_add_file_copies_from_a_path(tmp_path: Path) -> None:
    source = tmp_path / "exported.onnx"
    source.write_bytes(tiny_model().SerializeToString())
    with BundleWriter(tmp_path / "b") as writer:
        writer.add_file("models/model.onnx", source)
        bundle = writer.write(
            name="b", family="example", tasks=["embed"], components={"model": _component("models/model.onnx")}
        )
    assert bundle.component_path("model").read_bytes() == source.read_bytes()


# ---- the dataclasses validate once, on construction ------------------------------------


def _component(file: str = MODEL) -> Component:
    return Component(
        name="model",
        inputs=(TensorSpec("x", ("batch", 4), "float32"),),
        outputs=(TensorSpec("y", ("batch", 2), "float32"),),
        variants={"fp32": Variant(file)},
    )


def _files(*names: str) -> dict[str, FileEntry]:
    return {name: FileEntry(sha256="0" * 64, size=1) for name in names}


def _manifest(**changes) -> Manifest:
    fields = dict(name="b", family="example", tasks=("x",), components={"model": _component()}, files=_files(MODEL))
    return Manifest(**{**fields, **changes})


INT8 = Tolerance(min_cosine=0.9)
replace = dataclasses.replace


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: TensorSpec("x", (0, 4), "float32"), InvalidValueError, r"shape\[0\]=0 must be a positive size"),
        (lambda: TensorSpec("x", (True,), "float32"), FieldTypeError, r"shape\[0\]"),
        (lambda: TensorSpec("x", (4,), "float64"), InvalidValueError, "dtype='float64' is not one of"),
        (lambda: Variant("../m.onnx"), UnsafePathError, "'..'"),
        (lambda: Tolerance(), InvalidValueError, "needs max_abs, min_cosine or both"),
        (lambda: Tolerance(min_cosine=1.5), InvalidValueError, r"min_cosine=1.5 must be in \[-1.0, 1.0\]"),
        (lambda: FileEntry(sha256="ABC", size=1), InvalidValueError, "64 lowercase hex"),
        (lambda: FileEntry(sha256="0" * 64, size=-1), InvalidValueError, "bytes=-1"),
        (lambda: Component("m", (), (), {}), InvalidValueError, "inputs is empty"),
        (lambda: replace(_component(), variants={"fp64": Variant(MODEL)}), InvalidValueError, r"\['fp64'\]"),
        (lambda: _manifest(tasks=()), InvalidValueError, "tasks is empty"),
        (lambda: _manifest(name="b c"), InvalidValueError, "not a valid name"),
        (lambda: _manifest(files={}), UnlistedFileError, "not listed in files"),
        (lambda: _manifest(files=_files(MODEL, "manifest.json")), InvalidValueError, "cannot list itself"),
        (
            lambda: _manifest(files=_files(MODEL, "i", "o"), golden=(GoldenPair("model", "i", "o", {"int8": INT8}),)),
            InvalidValueError,
            r"tolerance has 'int8' but component 'model' only has \['fp32'\]",
        ),
        (lambda: _manifest(provenance={"x": float("nan")}), InvalidValueError, "NaN"),
    ],
)
def test_dataclasses_refuse_invalid_values(make, error, message: str) -> None:
    with pytest.raises(error, match=message):
        make()


def test_manifest_is_frozen_and_read_only() -> None:
    manifest = _manifest(provenance={"a": [1, {"b": 2}]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.name = "c"  # type: ignore[misc]
    with pytest.raises(TypeError):
        manifest.files["other"] = FileEntry(sha256="0" * 64, size=1)  # type: ignore[index]
    with pytest.raises(TypeError):
        manifest.provenance["a"][1]["b"] = 3
    assert manifest.to_dict()["provenance"] == {"a": [1, {"b": 2}]}
