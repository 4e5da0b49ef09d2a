"""The decoder graphs' weights stored once per precision (export/share_weights.py).

Two tiers: ``share_initializers`` on tiny onnx.helper graphs (needs only onnx), and a tiny VLM
exported by ``python -m export`` (``requires_torch``), compared with a copy of the same bundle
whose decoders hold their weights inline again (what the export wrote before sharing).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the export tier needs onnx (pip install 'tinymm[train]')")
ort = pytest.importorskip("onnxruntime", reason="running the models needs onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.external_data_helper import convert_model_from_external_data  # noqa: E402

from export.share_weights import (  # noqa: E402
    METADATA_KEY,
    ShareOptions,
    ShareWeightsError,
    share_decoder_weights,
    share_initializers,
)
from tinymm.bundle import read_bundle  # noqa: E402
from tinymm.bundle.errors import UnlistedFileError, UnsafePathError  # noqa: E402
from tinymm.bundle.onnx_scan import scan_onnx_file  # noqa: E402
from tinymm.cli import main as tinymm_main  # noqa: E402
from tinymm.errors import EXIT_BUNDLE  # noqa: E402

OPSET, IR_VERSION = 17, 8
PRECISIONS = ("fp32", "fp16", "int8")
SUFFIXES = {"fp32": ".onnx", "fp16": ".fp16.onnx", "int8": ".int8.onnx"}
DECODERS = ("decoder_first", "decoder_with_past")


# ---- share_initializers on tiny graphs ---------------------------------------------------------------


def _mlp(path: Path, w1: np.ndarray, w2: np.ndarray, bias: np.ndarray, names: tuple[str, str, str]) -> Path:
    """y = relu(x @ w1 + bias) @ w2, x float32 ("batch", w1.shape[0]); initializer names as given."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", names[0]], ["h"]), helper.make_node("Add", ["h", names[2]], ["hb"]),
         helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", names[1]], ["y"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", w1.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", w2.shape[1]])],
        initializer=[numpy_helper.from_array(w1, names[0]), numpy_helper.from_array(w2, names[1]),
                     numpy_helper.from_array(bias, names[2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.save(model, str(path))
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[list[Path], dict[str, np.ndarray]]:
    """Two graphs sharing w1 and the bias under other names; w2 differs; bias (64 bytes) is small."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 32)).astype(np.float32)  # 2048 bytes: shared
    bias = rng.standard_normal(32).astype(np.float32)  # 128 bytes: stays inline
    a = _mlp(tmp_path / "a.onnx", w1, rng.standard_normal((32, 8)).astype(np.float32), bias, ("W1", "W2", "b"))
    b = _mlp(tmp_path / "b.onnx", w1.copy(), rng.standard_normal((32, 8)).astype(np.float32), bias,
             ("onnx::MatMul_7", "onnx::MatMul_9", "onnx::Add_8"))
    x = rng.standard_normal((3, 16)).astype(np.float32)
    return [a, b], {"x": x, "a": _run(a, x), "b": _run(b, x)}


def _external(path: Path) -> dict[str, dict[str, str]]:
    """tensor name -> its external_data entries."""
    model = onnx.load(str(path), load_external_data=False)
    return {t.name: {e.key: e.value for e in t.external_data} for t in model.graph.initializer
            if t.data_location == TensorProto.EXTERNAL}


def test_identical_weights_under_other_names_are_stored_once(pair, tmp_path: Path) -> None:
    models, expected = pair
    result = share_initializers(models, tmp_path / "shared.weights")
    assert result is not None and result.tensors == 4 and result.distinct == 3
    assert result.weights.stat().st_size == 2048 + 2 * 32 * 8 * 4  # w1 once, both w2, no gaps (64-aligned sizes)
    a, b = _external(models[0]), _external(models[1])
    assert set(a) == {"W1", "W2"} and set(b) == {"onnx::MatMul_7", "onnx::MatMul_9"}  # the bias stays inline
    assert a["W1"] == b["onnx::MatMul_7"] == {"location": "shared.weights", "offset": "0", "length": "2048"}
    assert a["W2"]["offset"] != b["onnx::MatMul_9"]["offset"]
    assert all(int(e["offset"]) % 64 == 0 for e in [*a.values(), *b.values()])
    for path, name in zip(models, "ab"):
        np.testing.assert_array_equal(_run(path, expected["x"]), expected[name])
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        digest = hashlib.sha256(result.weights.read_bytes()).hexdigest()
        assert json.loads(props[METADATA_KEY]) == {"shared.weights": digest}


def test_offsets_follow_the_alignment_options(pair, tmp_path: Path) -> None:
    models, expected = pair
    options = ShareOptions(min_bytes=64, alignment=256, page_bytes=4096, page_align_min_bytes=1024)
    result = share_initializers(models, tmp_path / "shared.weights", options)
    offsets = sorted({int(e["offset"]) for m in models for e in _external(m).values()})
    # In initializer order (w1, w2, bias): w1 (2048 bytes, page-aligned) at 0, w2 of a (1024 bytes,
    # page-aligned) at 4096, the bias (128 bytes, 256-aligned) at 5120, w2 of b at the next page, 8192.
    assert offsets == [0, 4096, 5120, 8192] and result.padding == (4096 - 2048) + (8192 - 5248)
    for path, name in zip(models, "ab"):
        np.testing.assert_array_equal(_run(path, expected["x"]), expected[name])


def test_bad_groups_are_refused_and_small_models_left_alone(pair, tmp_path: Path) -> None:
    models, _ = pair
    assert share_initializers(models, tmp_path / "w.weights", ShareOptions(min_bytes=1 << 20)) is None
    assert not (tmp_path / "w.weights").exists()
    (tmp_path / "sub").mkdir()
    with pytest.raises(ShareWeightsError, match="side by side"):
        share_initializers(models, tmp_path / "sub" / "w.weights")
    with pytest.raises(ShareWeightsError, match="name a file twice"):
        share_initializers([models[0], models[0]], tmp_path / "w.weights")
    share_initializers(models, tmp_path / "w.weights")
    with pytest.raises(ShareWeightsError, match="already exists"):
        share_initializers(models, tmp_path / "w.weights")
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 10)
    with pytest.raises(ShareWeightsError, match="cannot read ONNX model"):
        share_initializers([tmp_path / "junk.onnx"], tmp_path / "x.weights")
    for bad in (dict(alignment=48), dict(page_bytes=32), dict(min_bytes=0)):
        with pytest.raises(ValueError, match="ShareOptions"):
            ShareOptions(**bad)


def test_only_the_decoder_pair_of_each_precision_is_grouped(pair, tmp_path: Path) -> None:
    models, expected = pair
    assert share_decoder_weights({"speech_encoder": {"fp32": models[0]}}) == {}
    shared = share_decoder_weights({"decoder_first": {"fp32": models[0]}, "decoder_with_past": {"fp32": models[1]}})
    assert list(shared) == ["fp32"] and shared["fp32"].weights == tmp_path / "decoder.fp32.weights"
    np.testing.assert_array_equal(_run(models[1], expected["x"]), expected["b"])


# ---- a tiny VLM through python -m export -------------------------------------------------------------


@pytest.fixture(scope="module")
def vlm_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch", reason="the export tier needs torch (pip install 'tinymm[train]')")
    from export.__main__ import main as export_main
    from train.checkpoint import save_checkpoint
    from train.data.scene_dataset import generate_example
    from train.data.scene_language import all_labels
    from train.data.scene_render import RenderConfig
    from train.data.scene_world import WorldConfig
    from train.models import VisionLanguageModel, VLMConfig
    from train.vlm_tokenizer import scene_corpus, train_tokenizer

    root = tmp_path_factory.mktemp("share")
    annotations = [generate_example(WorldConfig(), RenderConfig(), 0, 0, i)[1] for i in range(12)]
    train_tokenizer(scene_corpus(annotations, all_labels()), root / "vlm", vocab_size=64, context_length=24)
    threads = torch.get_num_threads()
    try:
        torch.manual_seed(0)
        model = VisionLanguageModel(VLMConfig.tiny())
        save_checkpoint(root / "vlm" / "final", model, model.config, step=1)
        code = export_main([str(root / "vlm" / "final"), "--out", str(root / "bundle"), "--precision",
                            "fp32,fp16,int8", "--calibration", "2", "--golden-batch", "1", "--threads", "1",
                            "--no-progress"])
    finally:
        torch.set_num_threads(threads)  # --threads 1 sets it for the whole process
    assert code == 0
    return root / "bundle"


@pytest.fixture(scope="module")
def unshared_bundle(vlm_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same bundle with the decoders' weights inline again and no .weights files."""
    out = tmp_path_factory.mktemp("unshared") / "bundle"
    shutil.copytree(vlm_bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for precision in PRECISIONS:
        for decoder in DECODERS:
            name = decoder + SUFFIXES[precision]
            model = onnx.load(str(out / name))  # reads the external data
            convert_model_from_external_data(model)
            del model.metadata_props[:]
            blob = model.SerializeToString()
            (out / name).write_bytes(blob)
            manifest["files"][name] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
        (out / f"decoder.{precision}.weights").unlink()
        del manifest["files"][f"decoder.{precision}.weights"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _size(bundle: Path, precision: str) -> int:
    """Bytes of the decoder files of one precision, the shared weights file included."""
    files = [bundle / (d + SUFFIXES[precision]) for d in DECODERS] + [bundle / f"decoder.{precision}.weights"]
    return sum(f.stat().st_size for f in files if f.exists())


@pytest.mark.requires_torch
def test_bundle_lists_one_shared_weights_file_per_precision(vlm_bundle: Path, capsys) -> None:
    with read_bundle(vlm_bundle) as bundle:
        files = bundle.manifest.files
    for precision in PRECISIONS:
        weights = f"decoder.{precision}.weights"
        data = (vlm_bundle / weights).read_bytes()
        assert files[weights].sha256 == hashlib.sha256(data).hexdigest() and files[weights].size == len(data)
        for decoder in DECODERS:
            locations = {e.location for e in scan_onnx_file(vlm_bundle / (decoder + SUFFIXES[precision])).external_data}
            assert locations == {weights}
        first, with_past = (_external(vlm_bundle / (d + SUFFIXES[precision])) for d in DECODERS)
        # Every stored tensor is read by both graphs: the two decoders' weights are identical, fp16 and int8 included.
        assert {(e["offset"], e["length"]) for e in first.values()} == {(e["offset"], e["length"]) for e in with_past.values()}
    capsys.readouterr()
    assert tinymm_main(["verify", str(vlm_bundle), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["passed"] == 12 and report["failed"] == 0


@pytest.mark.requires_torch
def test_sharing_saves_about_one_decoder_per_precision(vlm_bundle: Path, unshared_bundle: Path, capsys) -> None:
    assert tinymm_main(["verify", str(unshared_bundle)]) == 0  # the reference is a valid bundle too
    for precision in PRECISIONS:
        before, after = _size(unshared_bundle, precision), _size(vlm_bundle, precision)
        weights = (vlm_bundle / f"decoder.{precision}.weights").stat().st_size
        # Without sharing, both graphs hold these bytes; with it, once (less the external references).
        # (A tiny model's graphs are mostly structure; a real student's decoder is 98% weights.)
        assert 0.9 * weights < before - after <= weights, f"{precision}: {before} -> {after} bytes"


@pytest.mark.requires_torch
def test_shared_decoders_compute_exactly_what_the_inline_ones_do(vlm_bundle: Path, unshared_bundle: Path) -> None:
    import tinymm

    for decoder in DECODERS:
        with np.load(vlm_bundle / "golden" / f"{decoder}.inputs.npz") as npz:
            feeds = {name: npz[name] for name in npz.files}
        for precision in PRECISIONS:
            name = decoder + SUFFIXES[precision]
            shared, inline = (ort.InferenceSession(str(b / name), providers=["CPUExecutionProvider"])
                              for b in (vlm_bundle, unshared_bundle))
            for x, y in zip(shared.run(None, feeds), inline.run(None, feeds)):
                np.testing.assert_array_equal(x, y, err_msg=f"{name}")
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    for precision in ("fp32", "int8"):
        shared, inline = (tinymm.load(b, provider="cpu", precision=precision).caption(image)
                          for b in (vlm_bundle, unshared_bundle))
        assert (shared.token_ids, shared.mean_logprob) == (inline.token_ids, inline.mean_logprob)


@pytest.mark.requires_torch
def test_external_data_must_stay_inside_the_bundle_and_be_listed(vlm_bundle: Path, tmp_path: Path) -> None:
    escaping = tmp_path / "escaping"
    shutil.copytree(vlm_bundle, escaping)
    shutil.copy(vlm_bundle / "decoder.fp32.weights", tmp_path / "decoder.fp32.weights")  # exists outside
    model = onnx.load(str(escaping / "decoder_first.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../decoder.fp32.weights"
    blob = model.SerializeToString()
    (escaping / "decoder_first.onnx").write_bytes(blob)
    manifest = json.loads((escaping / "manifest.json").read_text())
    manifest["files"]["decoder_first.onnx"] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    (escaping / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnsafePathError, match="external data location"):
        read_bundle(escaping)
    assert tinymm_main(["verify", str(escaping)]) == EXIT_BUNDLE

    unlisted = tmp_path / "unlisted"
    shutil.copytree(vlm_bundle, unlisted)
    manifest = json.loads((unlisted / "manifest.json").read_text())
    del manifest["files"]["decoder.int8.weights"]
    (unlisted / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnlistedFileError, match="decoder.int8.weights"):
        read_bundle(unlisted)
