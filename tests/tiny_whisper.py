"""A tiny Whisper-style tokenizer.json, built with the ``tokenizers`` wheel in the tests.

Byte-level BPE as Whisper's (GPT-2's) tokenizer: a ByteLevel pre-tokenizer without a prefix
space, a ByteLevel decoder, merges trained on a small corpus; then Whisper's special tokens as
added tokens in Whisper's order: ``<|endoftext|>``, ``<|startoftranscript|>``, one token per
language, ``<|translate|>``, ``<|transcribe|>``, ``<|startoflm|>``, ``<|startofprev|>``,
``<|nospeech|>``, ``<|notimestamps|>``, then the timestamps ``<|0.00|>`` .. ``<|30.00|>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

CORPUS = (
    "go forward three meters", "turn left", "turn right", "stop", "what color is the star",
    "pick up the red circle", "move back two meters", "how many squares are there", "put it down",
    "Zürich café naïve façade", "the quick brown fox jumps over the lazy dog", "hello world",
)
LANGUAGES = ("en", "de", "fr")
TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|> in 0.02 s steps
TIME_PRECISION_S = 0.02


@dataclass(frozen=True)
class WhisperVocab:
    """Ids of the special tokens of a tiny Whisper tokenizer.json."""

    eot: int
    sot: int
    languages: Mapping[str, int]
    translate: int
    transcribe: int
    sot_lm: int
    sot_prev: int
    no_speech: int
    no_timestamps: int
    timestamp_begin: int
    vocab_size: int  # every id, timestamps included

    @property
    def special_tokens(self) -> dict[str, int]:
        """Name -> id of the control tokens (no languages, no timestamps), as TextConfig lists them."""
        return {
            "<|endoftext|>": self.eot, "<|startoftranscript|>": self.sot, "<|translate|>": self.translate,
            "<|transcribe|>": self.transcribe, "<|startoflm|>": self.sot_lm, "<|startofprev|>": self.sot_prev,
            "<|nospeech|>": self.no_speech, "<|notimestamps|>": self.no_timestamps,
        }


def build_whisper_tokenizer(path: Path, *, languages: tuple[str, ...] = LANGUAGES, vocab_size: int = 400) -> WhisperVocab:
    """Write a byte-level BPE tokenizer.json with Whisper's special tokens to ``path``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(list(CORPUS) * 4, trainer)
    text_tokens = tokenizer.get_vocab_size()
    specials = ["<|endoftext|>", "<|startoftranscript|>", *(f"<|{code}|>" for code in languages), "<|translate|>",
                "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
    tokenizer.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in specials])
    stamps = [f"<|{i * TIME_PRECISION_S:.2f}|>" for i in range(TIMESTAMPS)]
    tokenizer.add_tokens([AddedToken(name, special=False, normalized=False) for name in stamps])
    tokenizer.save(str(path))
    ids = {name: tokenizer.token_to_id(name) for name in specials}
    assert ids["<|endoftext|>"] == text_tokens, "the special tokens must follow the text tokens"
    return WhisperVocab(
        eot=ids["<|endoftext|>"], sot=ids["<|startoftranscript|>"],
        languages={code: ids[f"<|{code}|>"] for code in languages},
        translate=ids["<|translate|>"], transcribe=ids["<|transcribe|>"], sot_lm=ids["<|startoflm|>"],
        sot_prev=ids["<|startofprev|>"], no_speech=ids["<|nospeech|>"], no_timestamps=ids["<|notimestamps|>"],
        timestamp_begin=tokenizer.token_to_id("<|0.00|>"), vocab_size=tokenizer.get_vocab_size(),
    )


# Weights drawn wider than transformers' default (0.02) and the final layer norm scaled up, so that the random
# decoder's tokens vary with the step and the audio, and the logits have clear margins (no near-ties for the
# ONNX-vs-torch comparisons to flip).
INIT_STD = 0.5
FINAL_NORM_SCALE = 3.0
SUPPRESSED_SYMBOLS = ('"', "#", "(", ")", "*", "+", "/")  # a few of openai/whisper's non-speech symbols


def write_tiny_whisper_checkpoint(directory: Path, *, seed: int = 0, languages: tuple[str, ...] = LANGUAGES,
                                  max_source_positions: int = 1500) -> WhisperVocab:
    """A random tiny WhisperForConditionalGeneration saved as a Hugging Face checkpoint directory
    (config.json, generation_config.json, model.safetensors, tokenizer.json), as the Whisper exporter reads it."""
    import torch
    from tokenizers import Tokenizer
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = build_whisper_tokenizer(directory / "tokenizer.json", languages=languages)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    suppress = sorted({tokenizer.encode(s, add_special_tokens=False).ids[0] for s in SUPPRESSED_SYMBOLS})
    begin_suppress = [*tokenizer.encode(" ", add_special_tokens=False).ids, vocab.eot]
    config = WhisperConfig(
        vocab_size=vocab.vocab_size, num_mel_bins=80, d_model=16, encoder_layers=1, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=max_source_positions, max_target_positions=448, decoder_start_token_id=vocab.sot,
        eos_token_id=vocab.eot, pad_token_id=vocab.eot, bos_token_id=vocab.eot, suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress, init_std=INIT_STD,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.model.decoder.layer_norm.weight.mul_(FINAL_NORM_SCALE)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=vocab.sot, eos_token_id=vocab.eot, pad_token_id=vocab.eot, bos_token_id=vocab.eot,
        max_length=448, suppress_tokens=suppress, begin_suppress_tokens=begin_suppress,
        no_timestamps_token_id=vocab.no_timestamps, is_multilingual=bool(languages),
        lang_to_id={f"<|{code}|>": token for code, token in vocab.languages.items()},
        task_to_id={"transcribe": vocab.transcribe, "translate": vocab.translate},
        max_initial_timestamp_index=50, return_timestamps=False,
    )
    model.save_pretrained(str(directory))
    return vocab
