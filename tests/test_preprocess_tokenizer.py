"""The Tokenizer protocol, HFTokenizer over a tiny Whisper-style byte-level BPE tokenizer.json
built in the test, and open_tokenizer's choice by TextConfig.kind."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest

from tinymm.errors import BundleError, InputError
from tinymm.preprocess.config import TextConfig
from tinymm.preprocess.tokenizer import HFTokenizer, Tokenizer, open_tokenizer

pytest.importorskip("tokenizers", reason="HFTokenizer reads tokenizer.json with the tokenizers wheel")
from tiny_whisper import build_whisper_tokenizer  # noqa: E402  (needs tokenizers)

SAMPLES = ["turn left", " go forward three meters", "Zürich café naïve façade", "robot 🤖 ロボット", "", "  two  spaces"]


@pytest.fixture(scope="module")
def whisper_files(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    vocab = build_whisper_tokenizer(path)
    config = TextConfig(
        tokenizer="tokenizer.json", context_length=448, bos_id=vocab.sot, eos_id=vocab.eot, pad_id=vocab.eot,
        unk_id=-1, add_bos=False, add_eos=False, special_tokens=vocab.special_tokens, kind="hf-tokenizers",
    )
    return path, vocab, config


@pytest.fixture(scope="module")
def hf(whisper_files) -> HFTokenizer:
    path, _, config = whisper_files
    return HFTokenizer(path, config)


@pytest.mark.parametrize("text", SAMPLES)
def test_byte_level_round_trip(hf, text):
    ids = hf.encode(text)
    assert all(isinstance(i, int) for i in ids)
    assert hf.decode(ids) == text
    assert hf.decode(np.asarray(ids, dtype=np.int64)) == text


def test_unseen_characters_become_bytes_not_unknowns(hf, whisper_files):
    _, vocab, _ = whisper_files
    ids = hf.encode("机器人")
    assert ids and max(ids) < vocab.eot  # byte tokens, no special or unknown id


def test_decode_skips_special_tokens_unless_asked(hf, whisper_files):
    _, vocab, _ = whisper_files
    text_ids = hf.encode("turn left")
    ids = [vocab.sot, vocab.languages["en"], vocab.transcribe, vocab.no_timestamps, *text_ids, vocab.eot]
    assert hf.decode(ids) == "turn left"
    kept = hf.decode(ids, skip_special_tokens=False)
    assert kept.startswith("<|startoftranscript|><|en|><|transcribe|><|notimestamps|>")
    assert kept.endswith("turn left<|endoftext|>")


def test_special_tokens_are_single_ids_and_never_produced_by_text(hf, whisper_files):
    _, vocab, _ = whisper_files
    assert hf.token_to_id("<|endoftext|>") == vocab.eot
    assert hf.token_to_id("<|0.00|>") == vocab.timestamp_begin
    assert hf.token_to_id("<|30.00|>") == vocab.timestamp_begin + 1500
    assert hf.token_to_id("no such token") is None
    assert hf.id_to_piece(vocab.no_timestamps) == "<|notimestamps|>"
    assert hf.id_to_piece(hf.encode(" left")[0]).startswith("Ġ")  # byte-level: a space is Ġ
    assert hf.vocab_size == vocab.vocab_size == vocab.timestamp_begin + 1501


def test_bad_ids_are_input_errors(hf):
    with pytest.raises(InputError, match="outside the vocabulary"):
        hf.decode([hf.vocab_size])
    with pytest.raises(InputError, match="1-D integer array"):
        hf.decode(np.zeros((1, 2), dtype=np.int64))
    with pytest.raises(InputError, match="must be a str"):
        hf.encode(b"bytes")  # type: ignore[arg-type]


def test_text_that_is_not_valid_unicode_is_an_input_error(hf):
    with pytest.raises(InputError, match="not valid Unicode"):
        hf.encode("stop \ud800 now")  # a lone surrogate, as a bad decode leaves it


def test_both_tokenizers_satisfy_the_protocol(hf, whisper_files, tmp_path):
    path, _, config = whisper_files
    assert isinstance(hf, Tokenizer)
    assert isinstance(open_tokenizer(path, config), HFTokenizer)
    spm = pytest.importorskip("sentencepiece", reason="the sentencepiece kind needs sentencepiece")
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["turn left", "go forward three meters"] * 20),
                                   model_writer=buffer, vocab_size=30, model_type="bpe", byte_fallback=False,
                                   pad_id=0, bos_id=1, eos_id=2, unk_id=3, minloglevel=2)
    model = tmp_path / "speech.model"
    model.write_bytes(buffer.getvalue())
    sp = open_tokenizer(model, TextConfig(tokenizer="speech.model", context_length=16, special_tokens={"<x>": 30}))
    assert isinstance(sp, Tokenizer) and not isinstance(sp, HFTokenizer)
    assert sp.decode(sp.encode("turn left")) == "turn left"
    assert sp.token_to_id("<x>") == 30 and sp.token_to_id(sp.id_to_piece(5)) == 5
    assert sp.token_to_id("no-such-piece") is None


def test_config_that_does_not_match_the_file_is_a_bundle_error(whisper_files):
    path, vocab, config = whisper_files
    wrong = dict(config.special_tokens, **{"<|endoftext|>": vocab.sot})
    with pytest.raises(BundleError, match="do not match"):
        HFTokenizer(path, dataclasses.replace(config, special_tokens=wrong))
    with pytest.raises(BundleError, match="outside the vocabulary"):
        HFTokenizer(path, dataclasses.replace(config, eos_id=vocab.vocab_size))
    with pytest.raises(BundleError, match="reads text.kind"):
        HFTokenizer(path, dataclasses.replace(config, kind="sentencepiece"))


def test_missing_or_malformed_file_is_a_bundle_error(whisper_files, tmp_path):
    _, _, config = whisper_files
    with pytest.raises(BundleError, match="does not exist"):
        HFTokenizer(tmp_path / "absent.json", config)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "nope"}))
    with pytest.raises(BundleError, match="not a valid Hugging Face tokenizer.json"):
        HFTokenizer(bad, config)


def test_the_file_path_is_kept(hf, whisper_files):
    assert hf.path == Path(whisper_files[0]) and hf.config is whisper_files[2]
