"""The manifest's optional ``model`` object: model hyperparameters the runtime reads from a bundle."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tinymm.bundle import (
    BundleWriter,
    Component,
    FieldTypeError,
    InvalidValueError,
    TensorSpec,
    Variant,
    parse_manifest,
    read_bundle,
)

pytest.importorskip("onnx", reason="the test model is built with the onnx package (pip install 'tinymm[dev]')")
from tiny_models import linear_model  # noqa: E402

MODEL_INFO = {
    "num_layers": 2,
    "num_heads": 4,
    "head_dim": 8,
    "logit_scale": 14.285714,
    "labels": ["a photo of a red circle", "a photo of a sign that says 4"],
    "nested": {"blank_id": 0, "flags": [True, False, None]},
}


def _write(root: Path, tmp_path: Path, model: dict | None) -> None:
    onnx_path, _ = linear_model(tmp_path / "src")
    with BundleWriter(root) as writer:
        writer.add_file("linear.onnx", onnx_path)
        writer.write(
            name="linear",
            family="example",
            tasks=["embed"],
            components={
                "linear": Component(
                    name="linear",
                    inputs=(TensorSpec("x", ("batch", 4), "float32"),),
                    outputs=(TensorSpec("y", ("batch", 3), "float32"),),
                    variants={"fp32": Variant("linear.onnx")},
                )
            },
            model=model,
        )


def test_model_field_round_trips_through_writer_json_and_reader(tmp_path: Path) -> None:
    _write(tmp_path / "b", tmp_path, MODEL_INFO)
    on_disk = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert on_disk["model"] == MODEL_INFO
    with read_bundle(tmp_path / "b") as bundle:
        model = bundle.manifest.model
        assert model["num_layers"] == 2 and model["labels"][1] == "a photo of a sign that says 4"
        assert math.isclose(model["logit_scale"], 14.285714)
        assert bundle.manifest.to_dict()["model"] == MODEL_INFO
        assert parse_manifest(bundle.manifest.to_dict()) == bundle.manifest
        with pytest.raises(TypeError):  # read-only, like provenance
            model["num_layers"] = 3  # type: ignore[index]


def test_model_field_is_optional_and_omitted_when_empty(tmp_path: Path) -> None:
    _write(tmp_path / "b", tmp_path, None)
    assert "model" not in json.loads((tmp_path / "b" / "manifest.json").read_text())
    with read_bundle(tmp_path / "b") as bundle:
        assert dict(bundle.manifest.model) == {}


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ([1, 2], FieldTypeError, "model must be a JSON object"),
        ("layers=2", FieldTypeError, "model must be a JSON object"),
    ],
)
def test_model_field_must_be_an_object(tmp_path: Path, value, error, message: str) -> None:
    _write(tmp_path / "b", tmp_path, {"num_layers": 2})
    data = json.loads((tmp_path / "b" / "manifest.json").read_text())
    data["model"] = value
    with pytest.raises(error, match=message):
        parse_manifest(data)


def test_model_field_refuses_values_json_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(InvalidValueError, match="model.logit_scale"):
        _write(tmp_path / "b", tmp_path, {"logit_scale": float("nan")})
    assert not (tmp_path / "b").exists()  # nothing published
