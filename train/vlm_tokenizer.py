"""The vision-language tokenizer: a sentencepiece model trained on the scene language.

The corpus is every caption, question, answer and label text of the training scenes plus the
full label set, so that zero-shot labels absent from the sampled scenes still tokenize well. The
ids of the control pieces are fixed to TextConfig's defaults (pad 0, bos 1, eos 2, unk 3), and
the prompt templates written into the TextConfig are the ones training, export and the runtime
all encode through ``tinymm.preprocess.text.Tokenizer``.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Iterable

from tinymm.errors import InputError
from tinymm.preprocess.config import TextConfig
from tinymm.preprocess.text import Tokenizer

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.model"
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
# Task -> template; the runtime's caption / ask / classify pipelines fill these in.
PROMPT_TEMPLATES = {
    "caption": "caption:",
    "ask": "question: {question} answer:",
    "classify": "{label}",
}
MODEL_TYPE = "unigram"
CHARACTER_COVERAGE = 1.0  # the scene language is plain ASCII: keep every character


def scene_corpus(annotations: Iterable[dict], labels: Iterable[str]) -> list[str]:
    """Every caption, question, answer and label text of the annotations, plus `labels`."""
    lines: list[str] = []
    for ann in annotations:
        lines.extend(c["text"] for c in ann["captions"])
        for qa in ann["qa"]:
            lines.extend((qa["question"], qa["answer"]))
        lines.extend(ann["labels"])
    lines.extend(labels)
    lines.extend(t.format(question="", label="").strip() for t in PROMPT_TEMPLATES.values())
    return [line for line in lines if line.strip()]


def train_tokenizer(lines: list[str], out_dir: str | Path, vocab_size: int, context_length: int) -> TextConfig:
    """Train a sentencepiece model on `lines` into out_dir/TOKENIZER_FILE; return its TextConfig.

    vocab_size is an upper bound: a small corpus gets fewer pieces (read the real count from
    ``Tokenizer.vocab_size``). context_length is the decoder's max_text_len.
    """
    import sentencepiece as spm

    if not lines:
        raise InputError("the tokenizer corpus is empty; generate scenes with captions and questions first")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            vocab_size=vocab_size,
            hard_vocab_limit=False,  # a small corpus may not fill vocab_size
            model_type=MODEL_TYPE,
            character_coverage=CHARACTER_COVERAGE,
            pad_id=PAD_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            unk_id=UNK_ID,
            minloglevel=2,
            num_threads=1,
        )
    except RuntimeError as e:
        raise InputError(f"sentencepiece could not train a {vocab_size}-piece model on {len(lines)} lines: {e}; "
                         "lower the vocabulary size or generate more scenes") from e
    (out_dir / TOKENIZER_FILE).write_bytes(model.getvalue())
    config = text_config(context_length)
    tokenizer = Tokenizer(out_dir / TOKENIZER_FILE, config)
    logger.info("tokenizer: %d pieces from %d lines -> %s", tokenizer.vocab_size, len(lines), out_dir / TOKENIZER_FILE)
    return config


def text_config(context_length: int) -> TextConfig:
    """The TextConfig of a tokenizer written by train_tokenizer (file name relative to its directory)."""
    return TextConfig(tokenizer=TOKENIZER_FILE, context_length=context_length, bos_id=BOS_ID, eos_id=EOS_ID,
                      pad_id=PAD_ID, unk_id=UNK_ID, add_bos=True, add_eos=False,
                      prompt_templates=dict(PROMPT_TEMPLATES))


def load_tokenizer(directory: str | Path, context_length: int) -> Tokenizer:
    """The Tokenizer of directory/TOKENIZER_FILE with the recipe's TextConfig."""
    return Tokenizer(Path(directory) / TOKENIZER_FILE, text_config(context_length))
