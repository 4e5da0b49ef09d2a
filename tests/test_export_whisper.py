"""``python -m export hf``: a tiny random Whisper checkpoint (CTranslate2 and Hugging Face layouts)
exported to a bundle that follows the Whisper contract, checked against torch and transformers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.requires_torch

pytest.importorskip("torch", reason="the export tier needs torch (pip install 'tinymm[train]')")
pytest.importorskip("onnx", reason="the export tier needs onnx (pip install 'tinymm[train]')")
pytest.importorskip("transformers", reason="the Whisper export tests need transformers (the hf extra)")
pytest.importorskip("tokenizers", reason="the Whisper export tests need the tokenizers wheel")

from export.families import HFExportRequest, export_source, find_family  # noqa: E402
from export.onnx_common import forbidden_nodes, kv_names  # noqa: E402
from export.parity import load_session  # noqa: E402
from export.whisper_clips import SAMPLES_DIR, load_clips  # noqa: E402
from export.whisper_decode import GreedyOptions, ort_greedy, torch_greedy  # noqa: E402
from export.whisper_onnx import whisper_graphs  # noqa: E402
from export.whisper_source import load_whisper_source  # noqa: E402
from tiny_whisper_models import save_hf_dir, write_ct2_dir  # noqa: E402
from tinymm.bundle import read_bundle, verify_bundle  # noqa: E402
from tinymm.errors import EXIT_BAD_INPUT  # noqa: E402

COMPONENTS = ("encoder", "decoder_first", "decoder_with_past")
MAX_ABS = 1e-4


@pytest.fixture(scope="module")
def ct2_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("whisper-ct2")
    write_ct2_dir(directory)
    return directory


@pytest.fixture(scope="module")
def bundle(ct2_source: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny model in every precision; clips from the shipped samples (no espeak-ng needed)."""
    out = tmp_path_factory.mktemp("bundles") / "tiny-whisper"
    request = HFExportRequest(source=ct2_source, out=out, precisions=("fp32", "fp16", "int8"), data_dir=SAMPLES_DIR,
                              eval_samples=3, progress=False, command="test")
    return export_source(request)


def _sessions(bundle, precision: str) -> dict:
    components = bundle.bundle.manifest.components
    return {c: load_session(bundle.bundle.root / components[c].variants[precision].file) for c in COMPONENTS}


def test_manifest_follows_the_contract(bundle, ct2_source: Path) -> None:
    manifest = bundle.bundle.manifest
    assert (manifest.family, manifest.architecture, manifest.tasks) == ("speech", "whisper", ("transcribe", "command"))
    assert tuple(manifest.components) == COMPONENTS
    first, past = manifest.components["decoder_first"], manifest.components["decoder_with_past"]
    layers = manifest.model["num_layers"]
    assert [s.name for s in manifest.components["encoder"].inputs] == ["input_features"]
    assert manifest.components["encoder"].inputs[0].shape == ("batch", 80, "frames")
    assert manifest.components["encoder"].outputs[0].shape == ("batch", "enc_frames", manifest.model["d_model"])
    assert [s.name for s in first.inputs] == ["input_ids", "encoder_hidden_states"]
    assert [s.name for s in first.outputs] == ["logits", *kv_names("present", layers), *kv_names("cross", layers)]
    assert [s.name for s in past.inputs] == ["input_ids", *kv_names("past_key_values", layers), *kv_names("cross", layers)]
    assert [s.name for s in past.outputs] == ["logits", *kv_names("present", layers)]
    assert past.outputs[1].shape == ("batch", manifest.model["num_heads"], "past+new", manifest.model["head_dim"])
    assert manifest.components["encoder"].roles == {"features": "input_features", "hidden_states": "encoder_hidden_states"}
    assert first.tensor("encoder_states") == "encoder_hidden_states" and past.tensor("logits") == "logits"

    model, tokens = manifest.model, load_whisper_source(ct2_source).tokens
    assert model["sot_id"] == tokens.sot and model["eot_id"] == tokens.eot
    assert model["timestamp_begin_id"] == tokens.timestamp_begin and model["no_speech_id"] == tokens.no_speech
    assert model["languages"] == dict(tokens.languages) and model["multilingual"] is True
    assert model["dynamic_dims"] == {"batch": 64, "frames": 80, "enc_frames": 40, "seq": 24, "past": 24, "new": 1}
    assert model["audio_frames_per_token"] == 2 and model["time_precision"] == 0.02
    assert [list(h) for h in model["alignment_heads"]] == [[1, 0], [1, 2]]

    audio, text = manifest.preprocess.audio, manifest.preprocess.text
    assert (audio.pad_to_seconds, audio.drop_last_frame, audio.normalization, audio.n_mels) == (30.0, True, "whisper", 80)
    assert (text.kind, text.tokenizer, text.bos_id, text.eos_id, text.add_bos) == (
        "hf-tokenizers", "tokenizer.json", tokens.sot, tokens.eot, False)
    assert text.special_tokens["<|nospeech|>"] == tokens.no_speech
    files = manifest.files
    assert {"LICENSE.whisper", "README.md", "tokenizer.json", "decoder.fp32.weights"} <= set(files)
    assert "MIT License" in (bundle.bundle.root / "LICENSE.whisper").read_text()
    card = (bundle.bundle.root / "README.md").read_text()
    assert manifest.provenance["source"]["sha256"] in card and "float32" in card
    assert {p.component for p in manifest.golden} == set(COMPONENTS)
    verify_bundle(read_bundle(bundle.bundle.root))


def test_every_variant_loads_and_has_no_control_flow(bundle) -> None:
    import onnx

    variants = bundle.bundle.manifest.components
    assert all(set(variants[c].variants) == {"fp32", "fp16", "int8"} for c in COMPONENTS), bundle.summary["int8_gate"]
    features = load_clips(2, 80, SAMPLES_DIR).features[:, :, :80]
    tokens = load_whisper_source(Path(bundle.bundle.manifest.provenance["source"]["path"])).tokens
    for precision in ("fp32", "fp16", "int8"):
        for component in COMPONENTS:
            path = bundle.bundle.root / variants[component].variants[precision].file
            assert not forbidden_nodes(onnx.load(str(path), load_external_data=False))
        ids = ort_greedy(_sessions(bundle, precision), features, GreedyOptions.from_tokens(tokens, max_new_tokens=4))
        assert len(ids) == 2


def test_onnx_matches_torch_and_transformers(bundle, ct2_source: Path) -> None:
    parity = bundle.bundle.manifest.provenance["export"]["parity"]
    assert all(entry["max_abs"] <= MAX_ABS for entry in parity["components"].values())
    assert parity["transformers"]["encoder_max_abs"] <= MAX_ABS and parity["transformers"]["logits_max_abs"] <= MAX_ABS
    # Shorter audio context than the model's (dynamic frames, sliced positional table) and other batch sizes.
    source = load_whisper_source(ct2_source)
    graphs, sessions = whisper_graphs(source.model), _sessions(bundle, "fp32")
    rng = np.random.default_rng(1)
    for batch, frames in ((1, 20), (3, 80)):
        feeds = {"input_features": rng.standard_normal((batch, 80, frames)).astype(np.float32)}
        got = sessions["encoder"].run(feeds)["encoder_hidden_states"]
        assert got.shape == (batch, frames // 2, 32)
        np.testing.assert_allclose(got, graphs["encoder"].run_torch(feeds)["encoder_hidden_states"], atol=MAX_ABS)


def test_kv_cache_decoding_equals_full_recompute(bundle, ct2_source: Path) -> None:
    source = load_whisper_source(ct2_source)
    features = load_clips(3, 80, SAMPLES_DIR).features[:, :, :80]
    options = GreedyOptions.from_tokens(source.tokens, max_new_tokens=12)
    assert ort_greedy(_sessions(bundle, "fp32"), features, options) == torch_greedy(source.model, features, options)
    assert bundle.bundle.manifest.provenance["export"]["parity"]["greedy"]["tokens_match"]


def test_hf_directory_exports_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from export.__main__ import main

    save_hf_dir(tmp_path / "hf")
    out = tmp_path / "bundle"
    code = main(["hf", str(tmp_path / "hf"), "--out", str(out), "--data", str(SAMPLES_DIR), "--json", "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["architecture"] == "whisper" and summary["variants"]["encoder"] == ["fp32"]
    assert summary["bytes_per_precision"]["fp32"] > 0 and summary["parity"]["greedy"]["tokens_match"]
    assert read_bundle(out).manifest.provenance["source"]["kind"] == "huggingface"


def test_unknown_source_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from export.__main__ import main

    (tmp_path / "src").mkdir()
    assert main(["hf", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--no-progress"]) == EXIT_BAD_INPUT
    assert "no exporter recognizes" in capsys.readouterr().err
    with pytest.raises(Exception, match="not a directory"):
        find_family(tmp_path / "missing")
