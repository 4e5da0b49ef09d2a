"""Fuzz tier: the tokenizers (sentencepiece model, Hugging Face tokenizer.json) read mutated
files and take random text and ids, and either work or raise a TinymmError (tests/fuzz_support.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="the fuzz tier needs hypothesis (pip install 'tinymm[dev]')")
pytest.importorskip("tokenizers", reason="HFTokenizer reads tokenizer.json with the tokenizers wheel")
from fake_sessions import SCENE_SENTENCES, train_sentencepiece  # noqa: E402
from fuzz_support import FUZZ, seeds_mutated, tinymm_error_or  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from tiny_whisper import build_whisper_tokenizer  # noqa: E402

from tinymm.preprocess.config import TextConfig  # noqa: E402
from tinymm.preprocess.text import Tokenizer  # noqa: E402
from tinymm.preprocess.tokenizer import HFTokenizer  # noqa: E402

# Long prompts are cut with a TruncationWarning: expected here. A numpy warning is a bug.
pytestmark = [pytest.mark.filterwarnings("ignore::tinymm.preprocess.text.TruncationWarning"),
              pytest.mark.filterwarnings("error::RuntimeWarning")]

CONTEXT = 32
TEMPLATES = {"caption": "caption:", "ask": "question: {question} answer:"}
# Any code point, surrogates and control characters included; str or not.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=200)
NOT_TEXT = st.none() | st.integers() | st.binary(max_size=8) | st.lists(st.integers(), max_size=3)
IDS = st.lists(st.integers(-5, 2000) | st.booleans() | st.floats(allow_nan=True), max_size=40)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fuzz-tok")
    sp_path = train_sentencepiece(root / "tokenizer.model", SCENE_SENTENCES * 4, 60)
    hf_path = root / "tokenizer.json"
    vocab = build_whisper_tokenizer(hf_path)
    sp_config = TextConfig(tokenizer="tokenizer.model", context_length=CONTEXT, prompt_templates=TEMPLATES)
    hf_config = TextConfig(
        tokenizer="tokenizer.json", context_length=CONTEXT, bos_id=vocab.sot, eos_id=vocab.eot, pad_id=vocab.eot,
        unk_id=-1, add_bos=False, add_eos=False, special_tokens=vocab.special_tokens, kind="hf-tokenizers",
    )
    return {
        "sp": Tokenizer(sp_path, sp_config), "sp_bytes": sp_path.read_bytes(), "sp_config": sp_config,
        "hf": HFTokenizer(hf_path, hf_config), "hf_bytes": hf_path.read_bytes(), "hf_config": hf_config,
    }


def _open_mutated(cls, data: bytes, name: str, config: TextConfig):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        tokenizer = tinymm_error_or(cls, path, config)
        if tokenizer is not None:  # a mutation it still reads: it must still work
            tinymm_error_or(tokenizer.encode, "a red circle")
            tinymm_error_or(tokenizer.decode, list(range(min(tokenizer.vocab_size, 20))))


@FUZZ
@given(data=st.data())
def test_mutated_sentencepiece_models(files, data) -> None:
    blob = data.draw(seeds_mutated({"sp": files["sp_bytes"]}) | st.binary(max_size=256))
    _open_mutated(Tokenizer, blob, "tokenizer.model", files["sp_config"])


@FUZZ
@given(data=st.data())
def test_mutated_tokenizer_json(files, data) -> None:
    blob = data.draw(seeds_mutated({"json": files["hf_bytes"]}) | st.binary(max_size=256))
    _open_mutated(HFTokenizer, blob, "tokenizer.json", files["hf_config"])


@FUZZ
@given(text=ANY_TEXT | NOT_TEXT, ids=IDS, kind=st.sampled_from(("sp", "hf")))
def test_random_text_and_ids(files, text, ids, kind) -> None:
    tokenizer = files[kind]
    encoded = tinymm_error_or(tokenizer.encode, text)
    if encoded is not None:
        assert all(isinstance(i, int) and 0 <= i < tokenizer.vocab_size for i in encoded)
        assert isinstance(tokenizer.decode(encoded), str)
    decoded = tinymm_error_or(tokenizer.decode, ids)
    assert decoded is None or isinstance(decoded, str)
    tinymm_error_or(tokenizer.decode, np.asarray([i for i in ids if isinstance(i, int)], dtype=np.int64))


@FUZZ
@given(question=ANY_TEXT | NOT_TEXT, max_new=st.integers(-2, CONTEXT + 2) | st.none(),
       task=st.sampled_from(("ask", "caption", "nope")))
def test_random_prompts(files, question, max_new, task) -> None:
    tokenizer = files["sp"]
    fields = {"question": question} if task == "ask" else {}
    ids = tinymm_error_or(tokenizer.encode_prompt, task, max_new_tokens=max_new, **fields)
    if ids is not None:
        assert ids.dtype == np.int64 and ids.ndim == 1 and len(ids) <= CONTEXT - max_new
