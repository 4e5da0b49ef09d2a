"""The CTranslate2 model.bin reader and its mapping onto transformers' Whisper, on tiny random models."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.requires_torch

pytest.importorskip("torch", reason="the export tier needs torch (pip install 'tinymm[train]')")
pytest.importorskip("onnx", reason="the export tier needs onnx (pip install 'tinymm[train]')")
pytest.importorskip("transformers", reason="the Whisper export tests need transformers (the hf extra)")
pytest.importorskip("tokenizers", reason="the Whisper export tests need the tokenizers wheel")

from export.ctranslate2_whisper import (  # noqa: E402
    Ct2FormatError,
    hf_state_dict,
    parse_model_bin,
    read_model_bin,
    whisper_dims,
)
from export.whisper_source import (  # noqa: E402
    KIND_CT2,
    KIND_HF,
    WhisperSourceError,
    load_whisper_source,
    source_kind,
)
from tiny_whisper_models import ct2_variables, save_hf_dir, tiny_model, write_ct2_dir, write_model_bin  # noqa: E402
from tiny_whisper import build_whisper_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def ct2_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    directory = tmp_path_factory.mktemp("ct2")
    return directory, write_ct2_dir(directory)


def _state(model: object) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def test_reader_round_trips_every_variable(tmp_path: Path) -> None:
    vocab = build_whisper_tokenizer(tmp_path / "tokenizer.json")
    variables = ct2_variables(tiny_model(vocab))
    write_model_bin(tmp_path / "model.bin", variables, {"decoder/projection/weight": "decoder/embeddings/weight"},
                    dtype="float32")
    model = read_model_bin(tmp_path / "model.bin")
    assert (model.binary_version, model.spec, model.revision) == (6, "WhisperSpec", 3)
    assert model.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    for name, value in variables.items():
        np.testing.assert_array_equal(model.variables[name], value)
        assert model.variables[name].dtype == value.dtype
    np.testing.assert_array_equal(model.variables["decoder/projection/weight"], variables["decoder/embeddings/weight"])


def test_dims_come_from_shapes_and_head_scalars(tmp_path: Path) -> None:
    vocab = build_whisper_tokenizer(tmp_path / "tokenizer.json")
    hf = tiny_model(vocab, encoder_layers=3, decoder_attention_heads=2)
    write_model_bin(tmp_path / "model.bin", ct2_variables(hf), {})
    dims = whisper_dims(read_model_bin(tmp_path / "model.bin"))
    cfg = hf.config
    assert (dims.n_mels, dims.d_model, dims.vocab_size) == (cfg.num_mel_bins, cfg.d_model, cfg.vocab_size)
    assert (dims.encoder_layers, dims.decoder_layers) == (3, cfg.decoder_layers)
    assert (dims.encoder_heads, dims.decoder_heads) == (cfg.encoder_attention_heads, 2)
    assert (dims.encoder_ffn, dims.max_source_positions, dims.max_target_positions) == (
        cfg.encoder_ffn_dim, cfg.max_source_positions, cfg.max_target_positions)


def test_ct2_dir_loads_the_same_weights(ct2_dir: tuple[Path, object]) -> None:
    directory, reference = ct2_dir
    assert source_kind(directory) == KIND_CT2
    source = load_whisper_source(directory)
    expected, got = _state(reference), _state(source.model)
    assert set(got) == set(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert source.source_dtype == "float16"
    assert source.model.proj_out.weight.data_ptr() == source.model.model.decoder.embed_tokens.weight.data_ptr()


def test_tokens_and_decoding_lists(ct2_dir: tuple[Path, object]) -> None:
    directory, _ = ct2_dir
    tokens = load_whisper_source(directory).tokens
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    assert tokens.sot == tok.token_to_id("<|startoftranscript|>") and tokens.eot == tok.token_to_id("<|endoftext|>")
    assert tokens.timestamp_begin == tok.token_to_id("<|0.00|>")
    assert tokens.no_speech_text == "<|nospeech|>"
    assert tokens.languages == {"en": tok.token_to_id("<|en|>"), "de": tok.token_to_id("<|de|>"),
                                "fr": tok.token_to_id("<|fr|>")}
    assert tokens.prompt("de") == (tokens.sot, tokens.languages["de"], tokens.transcribe, tokens.no_timestamps)
    assert tokens.suppress_tokens == (tokens.sot_lm, tokens.sot_prev)
    assert tokens.alignment_heads == ((1, 0), (1, 2))


def test_hf_dir_is_recognized_and_loaded(tmp_path: Path) -> None:
    reference = save_hf_dir(tmp_path)
    assert source_kind(tmp_path) == KIND_HF
    source = load_whisper_source(tmp_path)
    for name, value in _state(reference).items():
        np.testing.assert_array_equal(_state(source.model)[name], value, err_msg=name)
    assert source.tokens.languages and source.weights_path.name == "model.safetensors"
    assert len(source.weights_sha256) == 64


def test_truncated_and_foreign_files_are_refused(tmp_path: Path) -> None:
    vocab = build_whisper_tokenizer(tmp_path / "tokenizer.json")
    write_model_bin(tmp_path / "model.bin", ct2_variables(tiny_model(vocab)), {})
    data = (tmp_path / "model.bin").read_bytes()
    with pytest.raises(Ct2FormatError, match="truncated"):
        parse_model_bin(data[: len(data) // 2])
    with pytest.raises(Ct2FormatError, match="binary version 5"):
        parse_model_bin(struct.pack("<I", 5) + data[4:])
    write_model_bin(tmp_path / "other.bin", {"x": np.zeros(2, np.float32)}, {}, spec="TransformerSpec")
    with pytest.raises(Ct2FormatError, match="not 'WhisperSpec'"):
        read_model_bin(tmp_path / "other.bin")


def test_unknown_weights_are_refused(tmp_path: Path) -> None:
    vocab = build_whisper_tokenizer(tmp_path / "tokenizer.json")
    variables = ct2_variables(tiny_model(vocab))
    variables["decoder/extra_head/weight"] = np.ones((2, 2), np.float32)
    write_model_bin(tmp_path / "model.bin", variables, {})
    with pytest.raises(Ct2FormatError, match="no place"):
        hf_state_dict(read_model_bin(tmp_path / "model.bin"))


def test_not_a_checkpoint_says_what_is_expected(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert source_kind(tmp_path) is None
    with pytest.raises(WhisperSourceError, match="model.bin"):
        load_whisper_source(tmp_path)


def test_ctranslate2_transcribes_the_written_model_like_the_converted_one(ct2_dir: tuple[Path, object]) -> None:
    """CTranslate2 itself loads the model.bin written here, and its float32 greedy tokens equal
    those of the transformers model the reader builds from the same file."""
    ctranslate2 = pytest.importorskip("ctranslate2", reason="the cross-check needs the ctranslate2 wheel")
    from export.whisper_decode import GreedyOptions, torch_greedy

    directory, _ = ct2_dir
    source = load_whisper_source(directory)
    cfg = source.model.config
    features = np.random.default_rng(0).standard_normal((2, cfg.num_mel_bins, 2 * cfg.max_source_positions))
    features = features.astype(np.float32)
    options = GreedyOptions.from_tokens(source.tokens, max_new_tokens=8)
    ct2 = ctranslate2.models.Whisper(str(directory), device="cpu", compute_type="float32")
    results = ct2.generate(ctranslate2.StorageView.from_array(features), [list(options.prompt)] * 2, beam_size=1,
                           max_length=len(options.prompt) + options.max_new_tokens, suppress_blank=True,
                           suppress_tokens=list(options.suppress_tokens), return_logits_vocab=True)
    ours = torch_greedy(source.model, features, options)
    theirs = [r.sequences_ids[0] for r in results]  # CTranslate2's max_length also counts some prompt tokens
    assert all(len(t) >= options.max_new_tokens // 2 for t in theirs)
    assert theirs == [row[: len(t)] for row, t in zip(ours, theirs)]
    import torch

    with torch.no_grad():  # the first step's logits, before any suppression
        states = source.model.model.encoder(torch.from_numpy(features)).last_hidden_state
        logits = source.model(encoder_outputs=(states,),
                              decoder_input_ids=torch.tensor([list(options.prompt)] * 2)).logits[:, -1].numpy()
    ct2_states = np.array(ct2.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
    np.testing.assert_allclose(ct2_states, states.numpy(), atol=1e-4)
    first = np.stack([np.array(r.logits[0][0]) for r in results])
    kept = first > np.finfo(np.float32).min  # CTranslate2 reports suppressed tokens at the lowest float
    assert kept.mean() > 0.9
    np.testing.assert_allclose(first[kept], logits[kept], atol=1e-4)
