"""Tokenizer over a tiny sentencepiece model trained inside the test."""

from __future__ import annotations

import dataclasses
import io
import re
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest

from tinymm.errors import BundleError, InputError
from tinymm.preprocess.config import TextConfig
from tinymm.preprocess.text import Tokenizer, TruncationWarning

spm = pytest.importorskip("sentencepiece", reason="text preprocessing needs sentencepiece")

CORPUS = [
    "the red cube is left of the blue ball",
    "how many circles are there",
    "a green sign says stop",
    "what color is the small triangle",
    "question: answer: caption: versus",
]
# With byte_fallback the 256 byte pieces are part of the vocabulary, so it cannot be ~100.
VOCAB_SIZE = 320
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
CONTEXT = 32
TEMPLATES = {
    "ask": "<image> question: {question} answer:",
    "compare": "{a} versus {b}",
    "caption": "caption:",
}

UNICODE_SAMPLES = [
    "the red cube",
    "",
    "robot 🤖 turns left 🦾",
    "机器人向左转",
    "ロボット",
    "שלום עולם",
    "مرحبا بالعالم",
    "e\u0301 cafe\u0301",  # combining acute accents
    "ﬁne ＡＢＣ ½",  # NFKC folds ligatures, full-width letters and fractions
    "Zürich, 20°C; naïve façade",
]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 40),
        model_writer=buffer,
        vocab_size=VOCAB_SIZE,
        model_type="bpe",
        byte_fallback=True,
        hard_vocab_limit=False,
        pad_id=PAD_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        num_threads=1,
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture(scope="module")
def pieces(model_path) -> int:
    return spm.SentencePieceProcessor(model_file=str(model_path)).get_piece_size()


def make_config(image_id: int, **overrides) -> TextConfig:
    fields = dict(
        tokenizer="tokenizer.model",
        context_length=CONTEXT,
        special_tokens={"<image>": image_id},
        prompt_templates=TEMPLATES,
    )
    return TextConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def tok(model_path, pieces) -> Tokenizer:
    # "<image>" is not a sentencepiece piece: its id extends the vocabulary by one.
    return Tokenizer(model_path, make_config(pieces))


def expected_roundtrip(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


# --- encode / decode --------------------------------------------------------------------------


def test_vocabulary(tok, pieces):
    assert tok.vocab_size == pieces + 1
    assert tok.id_to_piece(BOS_ID) == "<s>"
    assert tok.id_to_piece(pieces) == "<image>"
    assert tok.tasks == ("ask", "compare", "caption")
    assert tok.placeholders("compare") == ("a", "b")


@pytest.mark.parametrize("text", UNICODE_SAMPLES)
def test_unicode_roundtrip(tok, text):
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert BOS_ID not in ids and EOS_ID not in ids
    assert tok.decode(ids) == expected_roundtrip(text)


def test_empty_string(tok):
    assert tok.encode("") == []
    assert tok.decode([]) == ""


def test_text_is_nfkc_normalised(tok):
    assert tok.encode("ﬁ ＡＢ") == tok.encode("fi AB")
    assert tok.encode("e\u0301") == tok.encode("\u00e9")


def test_decode_skips_control_and_special_tokens(tok, pieces):
    ids = tok.encode("a green sign")
    noisy = [BOS_ID, pieces, *ids, EOS_ID, PAD_ID, PAD_ID]
    assert tok.decode(noisy) == "a green sign"
    assert tok.decode(np.array(noisy, dtype=np.int64)) == "a green sign"
    assert tok.decode(np.array(noisy, dtype=np.int32)) == "a green sign"


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        ([10**6], "outside the vocabulary"),
        ([-1], "outside the vocabulary"),
        ([1.0], "integer token ids"),
        ([True], "integer token ids"),
        ("abc", "sequence of token ids"),
        (np.zeros((2, 2), np.int64), "1-D integer array"),
        (np.zeros(3, np.float32), "1-D integer array"),
    ],
)
def test_decode_rejects_bad_ids(tok, ids, match):
    with pytest.raises(InputError, match=match):
        tok.decode(ids)


def test_id_to_piece_out_of_range(tok):
    with pytest.raises(InputError, match="outside the vocabulary"):
        tok.id_to_piece(tok.vocab_size)


@pytest.mark.parametrize("value", [None, b"bytes", 42, ["a"]])
def test_encode_rejects_non_str(tok, value):
    with pytest.raises(InputError, match="must be a str"):
        tok.encode(value)


def test_encode_rejects_unpaired_surrogates(tok):
    with pytest.raises(InputError, match="surrogate") as excinfo:
        tok.encode("ok \ud800 not ok")
    assert "index 3" in str(excinfo.value)


# --- prompts ----------------------------------------------------------------------------------


def test_prompt_matches_encoding_the_filled_text(tok, pieces):
    ids = tok.encode_prompt("ask", question="how many cubes?")
    assert ids.dtype == np.int64 and ids.ndim == 1
    # The special token becomes its id; the text after it is encoded in one go.
    assert ids.tolist() == [BOS_ID, pieces, *tok.encode(" question: how many cubes? answer:")]
    compare = tok.encode_prompt("compare", a="the red cube", b="the blue ball")
    assert compare.tolist() == [BOS_ID, *tok.encode("the red cube versus the blue ball")]
    assert tok.encode_prompt("caption").tolist() == [BOS_ID, *tok.encode("caption:")]


def test_prompt_add_eos_and_no_bos(model_path, pieces):
    tok = Tokenizer(model_path, make_config(pieces, add_bos=False, add_eos=True))
    assert tok.encode_prompt("caption").tolist() == [*tok.encode("caption:"), EOS_ID]


def test_field_text_is_not_scanned_for_special_tokens(tok, pieces):
    ids = tok.encode_prompt("compare", a="<image>", b="x")
    assert pieces not in ids.tolist()
    assert tok.decode(ids) == "<image> versus x"


def test_unknown_task_lists_known_tasks(tok):
    with pytest.raises(InputError) as excinfo:
        tok.encode_prompt("translate", text="hi")
    assert "'translate'" in str(excinfo.value)
    assert "['ask', 'compare', 'caption']" in str(excinfo.value)


def test_missing_placeholder_is_named(tok):
    with pytest.raises(InputError, match=r"needs field\(s\) \['b'\]"):
        tok.encode_prompt("compare", a="red")


def test_unexpected_field_is_named(tok):
    with pytest.raises(InputError, match=r"no placeholder\(s\) \['questoin'\]"):
        tok.encode_prompt("ask", question="what", questoin="typo")


@pytest.mark.parametrize("value", [3, None, b"red"])
def test_non_str_field(tok, value):
    with pytest.raises(InputError, match="prompt field 'a' must be a str"):
        tok.encode_prompt("compare", a=value, b="blue")


def test_surrogate_in_field(tok):
    with pytest.raises(InputError, match="surrogate"):
        tok.encode_prompt("compare", a="\udcff", b="blue")


@pytest.mark.parametrize("value", [-1, CONTEXT, 1.5, True])
def test_bad_max_new_tokens(tok, value):
    with pytest.raises(InputError, match="max_new_tokens"):
        tok.encode_prompt("caption", max_new_tokens=value)


def test_prompt_that_fits_does_not_warn(tok):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.encode_prompt("ask", question="what color", max_new_tokens=4)


def _cut_count(record) -> int:
    return int(re.search(r"cut (\d+) tokens", str(record.message)).group(1))


@pytest.mark.parametrize("max_new_tokens", [0, 8])
def test_long_question_is_truncated_not_the_template(model_path, tok, pieces, max_new_tokens):
    question = "how many red cubes and blue balls and green signs are left of the small triangle " * 3
    full = Tokenizer(model_path, make_config(pieces, context_length=1000)).encode_prompt("ask", question=question)
    budget = CONTEXT - max_new_tokens
    with pytest.warns(TruncationWarning) as records:
        ids = tok.encode_prompt("ask", question=question, max_new_tokens=max_new_tokens)
    assert budget - 3 <= len(ids) <= budget  # a character may take a few tokens
    assert _cut_count(records[0]) == len(full) - len(ids)
    assert "'question'" in str(records[0].message)
    # The template's own tokens are all still there, at both ends.
    head = [BOS_ID, pieces, *tok.encode(" question:")]
    tail = tok.encode("answer:")
    assert ids[: len(head)].tolist() == head
    assert ids[-len(tail) :].tolist() == tail
    kept = tok.decode(ids)[len("question: ") : -len(" answer:")]
    assert kept and question.startswith(kept)


def test_truncation_cuts_the_longest_field_first(tok):
    long_text = "the red cube is left of the blue ball " * 4
    with pytest.warns(TruncationWarning, match=r"\['a'\]"):
        ids = tok.encode_prompt("compare", a=long_text, b="a green sign")
    assert len(ids) <= CONTEXT
    assert tok.decode(ids).endswith(" versus a green sign")


def test_truncation_keeps_characters_whole(tok):
    # Byte-fallback characters take several tokens; cuts never leave half a character.
    with pytest.warns(TruncationWarning):
        ids = tok.encode_prompt("compare", a="机器人🤖e\u0301" * 10, b="x")
    text = tok.decode(ids)
    assert "\ufffd" not in text
    assert text.endswith(" versus x")


def test_budget_smaller_than_the_template(tok):
    with pytest.raises(InputError, match="without any field text"):
        tok.encode_prompt("ask", question="what", max_new_tokens=CONTEXT - 2)


# --- batches ----------------------------------------------------------------------------------


def test_batch_pads_with_pad_id(tok):
    texts = ["a red cube", "", "机器人向左转", "how many circles are there"]
    ids, lengths = tok.encode_batch(texts)
    assert ids.dtype == np.int64 and lengths.dtype == np.int64
    assert lengths.tolist() == [len(tok.encode(t)) for t in texts]
    assert ids.shape == (4, max(lengths))
    for row, length, text in zip(ids, lengths, texts, strict=True):
        assert row[:length].tolist() == tok.encode(text)
        assert (row[length:] == PAD_ID).all()


def test_batch_of_prompts(tok):
    prompts = [tok.encode_prompt("ask", question="what"), tok.encode_prompt("caption")]
    ids, lengths = tok.encode_batch(prompts + [[5, 6]])
    assert lengths.tolist() == [len(prompts[0]), len(prompts[1]), 2]
    assert ids[1, : lengths[1]].tolist() == prompts[1].tolist()


def test_batch_rows_over_the_context_are_cut(tok):
    long_text = "the red cube is left of the blue ball " * 10
    with pytest.warns(TruncationWarning, match="context_length 32"):
        ids, lengths = tok.encode_batch([long_text, "stop"])
    assert ids.shape == (2, CONTEXT)
    assert lengths.tolist() == [CONTEXT, len(tok.encode("stop"))]
    assert ids[0].tolist() == tok.encode(long_text)[:CONTEXT]


@pytest.mark.parametrize(
    ("items", "match"),
    [
        ("a single string", "non-empty list"),
        ([], "non-empty list"),
        (None, "non-empty list"),
        (["ok", 3], r"items\[1\]"),
        (["ok", [1.5]], r"items\[1\] must hold integer"),
        (["ok", "\ud800"], "surrogate"),
    ],
)
def test_batch_errors(tok, items, match):
    with pytest.raises(InputError, match=match):
        tok.encode_batch(items)


def test_batch_without_pad_id(model_path, pieces):
    tok = Tokenizer(model_path, make_config(pieces, pad_id=-1))
    ids, _ = tok.encode_batch(["stop", "stop"])  # equal lengths need no padding
    assert ids.shape[0] == 2
    with pytest.raises(InputError, match="no pad_id"):
        tok.encode_batch(["stop", "a red cube"])


# --- loading ----------------------------------------------------------------------------------


def test_missing_model_file(tmp_path, pieces):
    missing = tmp_path / "nope.model"
    with pytest.raises(BundleError, match="does not exist") as excinfo:
        Tokenizer(missing, make_config(pieces))
    assert str(missing) in str(excinfo.value)


@pytest.mark.parametrize("content", [b"", b"\x00garbage\xff" * 8])
def test_corrupt_model_file(tmp_path, pieces, content):
    path = tmp_path / "broken.model"
    path.write_bytes(content)
    with pytest.raises(BundleError) as excinfo:
        Tokenizer(path, make_config(pieces))
    assert str(path) in str(excinfo.value)
    assert excinfo.value.__cause__ is not None


def test_truncated_model_file(tmp_path, model_path, pieces):
    path = tmp_path / "truncated.model"
    path.write_bytes(model_path.read_bytes()[:500])
    with pytest.raises(BundleError, match="not a valid sentencepiece model"):
        Tokenizer(path, make_config(pieces))


def test_config_ids_outside_the_model(model_path, pieces):
    with pytest.raises(BundleError, match="text.eos_id"):
        Tokenizer(model_path, make_config(pieces, eos_id=pieces + 5))


@pytest.mark.parametrize(
    "template",
    ["{0} answer:", "{}", "{q.attr}", "{q[0]}", "{q!r}", "{q:>10}", "unclosed {q", "{max_new_tokens}"],
)
def test_malformed_templates(model_path, pieces, template):
    config = make_config(pieces, prompt_templates={"bad": template})
    with pytest.raises(BundleError, match="'bad'"):
        Tokenizer(model_path, config)


def test_tokenizer_keeps_its_config(tok):
    assert dataclasses.is_dataclass(tok.config)
    assert tok.config.context_length == CONTEXT
