"""The speech model's output vocabulary: a small sentencepiece model trained on the training transcripts.

Special ids follow ``TextConfig``'s defaults: pad 0, bos 1, eos 2, unk 3. The pad id is the CTC
blank (``train.models.speech.CTC_BLANK_ID``): sentencepiece never emits it when encoding, so label
ids need no shifting and the model's output size is the vocabulary size. Transcripts are
canonical (``normalize_transcript``: lowercase a-z words), so every character is covered.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tinymm.preprocess.config import TextConfig
from tinymm.preprocess.text import Tokenizer
from tinymm.robot.transcripts import normalize_transcript
from train.models.speech import CTC_BLANK_ID

logger = logging.getLogger(__name__)

MODEL_TYPES = ("unigram", "bpe", "char")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = CTC_BLANK_ID, 1, 2, 3
TOKENIZER_FILE = "speech.model"  # the file name a bundle's TextConfig refers to
LEXICON_FILE = "lexicon.txt"  # the training transcripts' words, one per line, next to the tokenizer
GRAMMAR_FILE = "grammar.txt"  # the name of the built-in grammar the transcripts come from, next to the tokenizer
CONTEXT_LENGTH_TOKENS = 256  # longest transcript in tokens the config declares (30 s of speech at most)


@dataclass(frozen=True)
class SpeechTokenizerConfig:
    """How the vocabulary is learned."""

    vocab_size: int = 128  # pieces including the 4 special ones; small keeps CTC outputs cheap
    model_type: str = "unigram"  # unigram | bpe | char
    max_sentences: int = 1_000_000  # most distinct transcripts sentencepiece samples

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type={self.model_type!r} is not one of {list(MODEL_TYPES)}")
        if self.vocab_size < 8:
            raise ValueError(f"vocab_size={self.vocab_size} is too small: 4 special ids and the letters need more")


def speech_text_config(tokenizer_file: str = TOKENIZER_FILE) -> TextConfig:
    """The TextConfig of a speech tokenizer: special ids as trained here, no bos/eos added (CTC labels)."""
    return TextConfig(
        tokenizer=tokenizer_file, context_length=CONTEXT_LENGTH_TOKENS,
        bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID, unk_id=UNK_ID, add_bos=False, add_eos=False,
    )


def train_speech_tokenizer(
    transcripts: Iterable[str], out_path: str | Path, config: SpeechTokenizerConfig = SpeechTokenizerConfig()
) -> TextConfig:
    """Train a sentencepiece model on ``transcripts`` (normalized first) and write it to ``out_path``.

    Returns the TextConfig naming ``out_path``'s file name. The vocabulary may end up smaller than
    ``config.vocab_size`` when the transcripts hold fewer distinct pieces (a soft limit).
    """
    import sentencepiece as spm

    out_path = Path(out_path)
    sentences = sorted({normalize_transcript(t) for t in transcripts} - {""})
    if not sentences:
        raise ValueError("no transcripts to train the tokenizer on; write the training split first")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    prefix = out_path.with_suffix("")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=str(prefix),
        vocab_size=config.vocab_size,
        model_type=config.model_type,
        character_coverage=1.0,
        # Transcripts are already canonical (lowercase a-z and spaces): skipping the NFKC table
        # keeps the model file ~0.2 MB smaller, which counts against the package's size budget.
        normalization_rule_name="identity",
        pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
        hard_vocab_limit=False,
        input_sentence_size=config.max_sentences,
        num_threads=1,
        minloglevel=2,
    )
    written = prefix.with_suffix(".model")
    if written != out_path:
        written.replace(out_path)
    prefix.with_suffix(".vocab").unlink(missing_ok=True)
    text_config = speech_text_config(out_path.name)
    logger.info("trained a %s tokenizer of %d pieces on %d distinct transcripts -> %s", config.model_type,
                load_speech_tokenizer(out_path).vocab_size, len(sentences), out_path)
    return text_config


def load_speech_tokenizer(path: str | Path) -> Tokenizer:
    """The runtime's Tokenizer over a model ``train_speech_tokenizer`` wrote."""
    path = Path(path)
    return Tokenizer(path, speech_text_config(path.name))


def write_lexicon(transcripts: Iterable[str], out_path: str | Path) -> tuple[str, ...]:
    """Write the distinct words of ``transcripts`` (normalized) to ``out_path``, one per line, most
    frequent first (ties alphabetical).

    The export puts them in the bundle's ``model.lexicon``, and the runtime snaps misspelt words
    of a transcript to them (tinymm/decoding/lexicon.py), breaking ties toward the word listed first.
    """
    counts = Counter(w for t in transcripts for w in normalize_transcript(t).split())
    words = tuple(sorted(counts, key=lambda w: (-counts[w], w)))
    if not words:
        raise ValueError("no words to write a lexicon of; write the training split first")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(words) + "\n", encoding="utf-8")
    return words


def read_lexicon(path: str | Path) -> tuple[str, ...]:
    """The words of a lexicon file written by ``write_lexicon``."""
    return tuple(w for w in Path(path).read_text(encoding="utf-8").split() if w)


def write_grammar(name: str, out_path: str | Path) -> None:
    """Record that the training transcripts are sentences of the built-in grammar ``name``.

    The export puts it in the bundle's ``model.grammar``, and the runtime decodes with that
    grammar (tinymm/decoding/grammar.py).
    """
    from tinymm.robot.grammar import GRAMMAR_NAMES

    if name not in GRAMMAR_NAMES:
        raise ValueError(f"grammar {name!r} is not one of the runtime's grammars {list(GRAMMAR_NAMES)}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(name + "\n", encoding="utf-8")


def read_grammar(path: str | Path) -> str:
    """The grammar name of a file written by ``write_grammar`` (not checked: the export checks it)."""
    return Path(path).read_text(encoding="utf-8").strip()
