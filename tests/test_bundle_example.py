"""scripts/make_example_bundle.py builds a real bundle: it validates, tokenizes and passes its golden check."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_bundle_fixtures import onnx  # noqa: F401  (skips this file where onnx is missing)
from tinymm.backends import BackendOptions, get_backend
from tinymm.bundle import read_bundle, verify_bundle
from tinymm.preprocess.text import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_example_bundle.py"


def _script_module():
    spec = importlib.util.spec_from_file_location("make_example_bundle", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("example") / "bundle"
    _script_module().build(out, command="pytest")
    return out


def test_example_bundle_validates(example: Path) -> None:
    bundle = read_bundle(example)
    report = verify_bundle(bundle)
    manifest = bundle.manifest
    assert manifest.family == "example" and manifest.components["image_encoder"].precisions == ("fp32", "int8")
    assert report.files_checked == len(manifest.files) == 6 and report.models_checked == 2
    assert manifest.provenance["command"] == "pytest"
    assert "make_example_bundle.py" in bundle.model_card_path.read_text()


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_example_golden_pair_holds_for_each_variant(example: Path, precision: str) -> None:
    bundle = read_bundle(example)
    pair = bundle.manifest.golden[0]
    inputs, expected = bundle.golden_arrays(pair)
    assert inputs["pixel_values"].shape == (2, 3, 32, 32) and expected["image_embeds"].shape == (2, 16)
    model = bundle.component_path(pair.component, precision)
    session = get_backend("onnxruntime").load(model, BackendOptions(provider="cpu"))
    actual = session.run(inputs)["image_embeds"]
    tolerance = pair.tolerance[precision]
    if tolerance.max_abs is not None:
        assert np.abs(actual - expected["image_embeds"]).max() <= tolerance.max_abs
    if tolerance.min_cosine is not None:
        a, b = actual.ravel(), expected["image_embeds"].ravel()
        assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) >= tolerance.min_cosine
        assert not np.array_equal(actual, expected["image_embeds"])  # int8 really differs from fp32


def test_example_tokenizer_loads_with_the_text_contract(example: Path) -> None:
    bundle = read_bundle(example)
    text = bundle.manifest.preprocess.text
    tokenizer = Tokenizer(bundle.tokenizer_path, text)
    assert 32 <= tokenizer.vocab_size <= 64
    ids = tokenizer.encode_prompt("embed", text="a red circle on the left")
    assert ids[0] == text.bos_id and ids[1] == text.special_tokens["<image>"]
    assert tokenizer.decode(tokenizer.encode("a red circle")) == "a red circle"


def test_script_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    run = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 4, run.stderr
    assert "not empty" in run.stderr and "--force" in run.stderr
    run = subprocess.run([sys.executable, str(SCRIPT), str(out), "--force"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert read_bundle(out).manifest.name == "tinymm-example"
