"""Tiny bundles for the bundle and CLI tests, and the table of ways to break one.

Imported by test_bundle*.py and test_cli*.py; its own test checks that the tiny bundle is valid
(test_bundle_errors.py checks that every breakage in BREAKAGES is caught).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from tinymm.bundle import (
    BundleWriter,
    ChecksumMismatchError,
    Component,
    FieldTypeError,
    GoldenDataError,
    GoldenPair,
    InterfaceMismatchError,
    InvalidPreprocessError,
    InvalidValueError,
    ManifestMissingError,
    ManifestNotObjectError,
    ManifestSyntaxError,
    ManifestTooLargeError,
    MissingFieldError,
    MissingFileError,
    NewerFormatVersionError,
    OnnxFormatError,
    Preprocess,
    TensorSpec,
    Tolerance,
    UnknownFormatError,
    UnknownFormatVersionError,
    UnlistedFileError,
    UnsafePathError,
    Variant,
    read_bundle,
    verify_bundle,
)
from tinymm.bundle.constants import MAX_MANIFEST_BYTES
from tinymm.errors import BundleError
from tinymm.preprocess.config import ImageConfig, TextConfig

onnx = pytest.importorskip("onnx", reason="the test models are built with the onnx package (pip install 'tinymm[dev]')")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

IN_FEATURES, OUT_FEATURES = 4, 2  # the tiny model: x (batch, 4) -> y (batch, 2)
MODEL = "model.onnx"
GOLDEN_IN, GOLDEN_OUT = "golden/model.inputs.npz", "golden/model.outputs.npz"
TOKENIZER = "tokenizer.model"


def tiny_weights() -> np.ndarray:
    """(4, 2) float32."""
    return np.arange(IN_FEATURES * OUT_FEATURES, dtype=np.float32).reshape(IN_FEATURES, OUT_FEATURES) / 10


def tiny_model(*, input_name: str = "x", weight: Any = None) -> Any:
    """An onnx.ModelProto: ``input_name`` (batch, 4) float32 -> MatMul -> y (batch, 2) float32."""
    weight = numpy_helper.from_array(tiny_weights(), "w") if weight is None else weight
    graph = helper.make_graph(
        [helper.make_node("MatMul", [input_name, "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", IN_FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", OUT_FEATURES])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def external_weight(location: str) -> Any:
    """A TensorProto "w" whose data is declared to live in file ``location`` (nothing is written)."""
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[IN_FEATURES, OUT_FEATURES])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * IN_FEATURES * OUT_FEATURES))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def golden_inputs() -> dict[str, np.ndarray]:
    return {"x": np.linspace(-1, 1, 3 * IN_FEATURES, dtype=np.float32).reshape(3, IN_FEATURES)}


def write_tiny_bundle(root: Path, *, external_data: bool = False, overwrite: bool = False, tasks=("embed",)):
    """Write a valid tiny bundle to ``root`` with BundleWriter and return the Bundle."""
    inputs = golden_inputs()
    with BundleWriter(root, overwrite=overwrite) as writer:
        model_path = writer.path(MODEL)
        if external_data:
            onnx.save_model(tiny_model(), str(model_path), save_as_external_data=True,
                            location=MODEL + ".data", size_threshold=0)
        else:
            onnx.save_model(tiny_model(), str(model_path))
        writer.add_bytes(TOKENIZER, b"a sentencepiece model would be here")
        writer.add_arrays(GOLDEN_IN, inputs)
        writer.add_arrays(GOLDEN_OUT, {"y": inputs["x"] @ tiny_weights()})
        writer.add_text("README.md", "# tiny\nA test bundle.\n")
        return writer.write(
            name="tiny",
            family="example",
            tasks=list(tasks),
            components={
                "model": Component(
                    name="model",
                    inputs=(TensorSpec("x", ("batch", IN_FEATURES), "float32"),),
                    outputs=(TensorSpec("y", ("batch", OUT_FEATURES), "float32"),),
                    variants={"fp32": Variant(MODEL)},
                )
            },
            preprocess=Preprocess(
                image=ImageConfig(height=8, width=8), text=TextConfig(tokenizer=TOKENIZER, context_length=16)
            ),
            golden=[GoldenPair("model", GOLDEN_IN, GOLDEN_OUT, {"fp32": Tolerance(max_abs=1e-5)})],
            provenance={"teacher": None, "command": "pytest", "metrics": {"acc": 1.0}},
        )


def edit_manifest(root: Path, mutate: Callable[[dict], Any]) -> None:
    """Load manifest.json, let ``mutate`` change the dict in place, write it back."""
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data, indent=2))


def relist(root: Path, *names: str) -> None:
    """Record the current sha256 and size of files ``names`` in manifest.json (adding them if needed)."""

    def update(data: dict) -> None:
        for name in names:
            blob = (root / name).read_bytes()
            data["files"][name] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}

    edit_manifest(root, update)


def replace_model(root: Path, model: Any) -> None:
    """Overwrite model.onnx with ``model`` and update its checksum, so only the model is wrong."""
    (root / MODEL).write_bytes(model.SerializeToString())
    relist(root, MODEL)


def read_and_verify(root: Path):
    """read_bundle then verify_bundle: every check tinymm has."""
    with read_bundle(root) as bundle:
        return verify_bundle(bundle)


def _flip_byte(root: Path) -> None:
    data = bytearray((root / MODEL).read_bytes())
    data[-1] ^= 0xFF
    (root / MODEL).write_bytes(bytes(data))


def _symlink_out(root: Path) -> None:
    outside = root.parent / "outside.onnx"
    os.replace(root / MODEL, outside)
    os.symlink(outside, root / MODEL)


def _set(*keys: str, value: Any) -> Callable[[Path], None]:
    """A breakage that sets manifest field ``keys`` (a JSON path) to ``value``."""

    def mutate(data: dict) -> None:
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value

    return lambda root: edit_manifest(root, mutate)


def _delete(*keys: str) -> Callable[[Path], None]:
    def mutate(data: dict) -> None:
        for key in keys[:-1]:
            data = data[key]
        del data[keys[-1]]

    return lambda root: edit_manifest(root, mutate)


def _write_manifest(text: str | bytes) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        path = root / "manifest.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())

    return write


def _garbage_model(root: Path) -> None:
    (root / MODEL).write_bytes(b"\xff" * 64)
    relist(root, MODEL)


def _bad_golden_dtype(root: Path) -> None:
    np.savez(root / GOLDEN_IN, x=golden_inputs()["x"].astype(np.float64))
    relist(root, GOLDEN_IN)


def _pickled_golden(root: Path) -> None:
    np.savez(root / GOLDEN_IN, x=np.array([{"not": "numbers"}], dtype=object))
    relist(root, GOLDEN_IN)


# name -> (break a valid tiny bundle in place, the error read+verify must raise, a fragment of its message)
BREAKAGES: dict[str, tuple[Callable[[Path], None], type[BundleError], str]] = {
    "manifest_missing": (lambda root: (root / "manifest.json").unlink(), ManifestMissingError, "no manifest.json"),
    "manifest_too_large": (_write_manifest(b" " * (MAX_MANIFEST_BYTES + 1)), ManifestTooLargeError, "larger than"),
    "malformed_json": (
        _write_manifest('{\n  "format": "tinymm-bundle",\n  "name": ,\n}'), ManifestSyntaxError, "line 3 column 11"
    ),
    "duplicate_key": (_write_manifest('{"format": "a", "format": "b"}'), ManifestSyntaxError, "'format' appears twice"),
    "not_an_object": (_write_manifest("[1, 2, 3]"), ManifestNotObjectError, "top level is a JSON array"),
    "missing_field": (_delete("components", "model", "variants"), MissingFieldError, "'components.model.variants'"),
    "missing_top_field": (_delete("files"), MissingFieldError, "'files'"),
    "wrong_type": (_set("tasks", value="embed"), FieldTypeError, "tasks must be a JSON array, got string"),
    "wrong_shape_type": (_set("components", "model", "inputs", 0, "shape", value=[1.5]), FieldTypeError, "shape[0]"),
    "unknown_field": (_set("colour", value="red"), InvalidValueError, "unknown field(s) ['colour']"),
    "bad_value": (_set("family", value="toaster"), InvalidValueError, "family='toaster'"),
    "unknown_format": (_set("format", value="onnx-zip"), UnknownFormatError, "'onnx-zip'"),
    "unknown_version": (_set("format_version", value=0), UnknownFormatVersionError, "format_version 0"),
    "newer_version": (_set("format_version", value=3), NewerFormatVersionError, "pip install -U tinymm"),
    "invalid_preprocess": (_set("preprocess", "image", "height", value=-8), InvalidPreprocessError, "preprocess.image"),
    "file_missing": (lambda root: (root / GOLDEN_OUT).unlink(), MissingFileError, "golden/model.outputs.npz"),
    "file_unlisted": (_delete("files", MODEL), UnlistedFileError, "components.model.variants.fp32.file='model.onnx'"),
    "tokenizer_unlisted": (_delete("files", TOKENIZER), UnlistedFileError, "preprocess.text.tokenizer"),
    "checksum_mismatch": (_flip_byte, ChecksumMismatchError, "'model.onnx' has sha256"),
    "size_mismatch": (
        lambda root: (root / "README.md").write_text("edited"), ChecksumMismatchError, "'README.md' has 6 bytes"
    ),
    "path_dotdot": (
        _set("components", "model", "variants", "fp32", "file", value="../model.onnx"), UnsafePathError, "'..'"
    ),
    "path_absolute": (_set("golden", 0, "inputs", value="/etc/passwd"), UnsafePathError, "absolute path"),
    "path_drive_letter": (_set("model_card", value="C:/README.md"), UnsafePathError, "drive letter"),
    "path_backslash": (
        _set("preprocess", "text", "tokenizer", value="sub\\tokenizer.model"), UnsafePathError, "backslash"
    ),
    "symlink_escape": (_symlink_out, UnsafePathError, "outside the bundle"),
    "onnx_malformed": (_garbage_model, OnnxFormatError, "not a valid ONNX"),
    "interface_mismatch": (
        lambda root: replace_model(root, tiny_model(input_name="pixels")), InterfaceMismatchError, "['pixels']"
    ),
    "golden_dtype": (_bad_golden_dtype, GoldenDataError, "dtype float64"),
    "golden_pickle": (_pickled_golden, GoldenDataError, "no pickles"),
}


@pytest.fixture()
def tiny_bundle(tmp_path: Path) -> Path:
    """A valid tiny bundle directory, written by BundleWriter."""
    root = tmp_path / "tiny"
    write_tiny_bundle(root)
    return root


def test_tiny_bundle_is_valid(tiny_bundle: Path) -> None:
    report = read_and_verify(tiny_bundle)
    assert report.files_checked == 5 and report.golden_checked == 1
