"""A tiny SmolVLM (Idefics3) checkpoint directory, built in the tests from random weights.

The directory has what a downloaded ``HuggingFaceTB/SmolVLM-256M-Instruct`` has: config.json and
model.safetensors (``save_pretrained`` of a random ``SmolVLMForConditionalGeneration``), a
byte-level BPE tokenizer.json with SmolVLM's special tokens (``<fake_token_around_image>``,
``<image>``, ``<global-img>``, ``<row_R_col_C>``, ``<end_of_utterance>``), tokenizer_config.json,
preprocessor_config.json (image splitting on), processor_config.json (image_seq_len) and
chat_template.json (SmolVLM's template).

Sizes: 32 x 32 tiles of 8 x 8 patches (16 patches, pixel shuffle by 2 -> 4 image tokens per
tile), images resized to a longest edge of 96 (up to 3 x 3 tiles and the global image).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CORPUS = (
    "User: Assistant: Can you describe this image? What color is the star?",
    "a red circle on a blue square", "two green triangles and one yellow star", "how many shapes are there",
    "the quick brown fox jumps over the lazy dog", "there is a cat sitting on the mat", "hello world",
)
MAX_GRID = 6  # <row_1_col_1> .. <row_6_col_6>, as SmolVLM's vocabulary has
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>", "<fake_token_around_image>",
           "<image>", "<global-img>", *(f"<row_{r}_col_{c}>" for r in range(1, MAX_GRID + 1)
                                        for c in range(1, MAX_GRID + 1)))
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] "
    "== 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == "
    "'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
TILE, PATCH, LONGEST_EDGE, SCALE = 32, 8, 96, 2
IMAGE_SEQ_LEN = (TILE // PATCH) ** 2 // SCALE ** 2  # 4


@dataclass(frozen=True)
class TinySource:
    directory: Path
    image_token_id: int
    eos_id: int  # <end_of_utterance>
    vocab_size: int


def build_tokenizer(path: Path, vocab_size: int = 320) -> int:
    """Write a byte-level BPE tokenizer.json with SmolVLM's special tokens; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=list(SPECIAL), show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.save(str(path))
    return tokenizer.get_vocab_size(with_added_tokens=True)


def build_source(directory: Path, *, seed: int = 0, resample: int = 3, splitting: bool = True,
                 model_type: str = "smolvlm", logit_gain: float = 8.0) -> TinySource:
    """Write a tiny random SmolVLM (or Idefics3) checkpoint directory; ``resample`` is a Pillow filter id
    (3 bicubic, 1 lanczos). ``logit_gain`` scales the output head so that greedy choices are not
    near-ties (a random head gives almost uniform logits)."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, SmolVLMConfig, SmolVLMForConditionalGeneration

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(directory / "tokenizer.json")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    image_id, eos_id = tok.token_to_id("<image>"), tok.token_to_id("<end_of_utterance>")
    text = {"model_type": "llama", "vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
            "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
            "bos_token_id": tok.token_to_id("<|im_start|>"), "eos_token_id": eos_id, "pad_token_id": 0}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": TILE, "patch_size": PATCH}
    config_class, model_class = ((SmolVLMConfig, SmolVLMForConditionalGeneration) if model_type == "smolvlm"
                                 else (Idefics3Config, Idefics3ForConditionalGeneration))
    config = config_class(text_config=text, vision_config=vision, image_token_id=image_id, scale_factor=SCALE)
    torch.manual_seed(seed)
    model = model_class(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_gain)
    model.save_pretrained(directory)
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": text["bos_token_id"], "eos_token_id": eos_id, "pad_token_id": 0}))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "model_max_length": 512}))
    processor = "SmolVLMProcessor" if model_type == "smolvlm" else "Idefics3Processor"
    image_processor = "SmolVLMImageProcessor" if model_type == "smolvlm" else "Idefics3ImageProcessor"
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": image_processor, "processor_class": processor, "do_convert_rgb": True,
        "do_resize": True, "size": {"longest_edge": LONGEST_EDGE}, "resample": resample, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "do_pad": True, "do_image_splitting": splitting, "max_image_size": {"longest_edge": TILE}}))
    (directory / "processor_config.json").write_text(json.dumps({"processor_class": processor,
                                                                  "image_seq_len": IMAGE_SEQ_LEN}))
    (directory / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    return TinySource(directory, image_id, eos_id, vocab)


def hf_inputs(directory: Path, image_rgb, prompt: str):
    """The reference processor's (pixel_values (1, tiles, 3, S, S) float32, input_ids (1, T) int64) for one
    RGB uint8 image and a rendered prompt holding one ``<image>``: transformers' Pillow image processor
    and its prompt expansion, tokenized with the checkpoint's tokenizer."""
    import numpy as np
    from transformers import PreTrainedTokenizerFast
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
    from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

    config = json.loads((Path(directory) / "preprocessor_config.json").read_text())
    kwargs = {k: v for k, v in config.items() if k not in ("image_processor_type", "processor_class")}
    processor = SmolVLMImageProcessorPil(**kwargs)
    out = processor(images=[[image_rgb]], return_row_col_info=True, return_tensors="np")
    rows, cols = out["rows"][0][0], out["cols"][0][0]
    expanded = prompt.replace("<image>", get_image_prompt_string(
        rows, cols, IMAGE_SEQ_LEN, "<fake_token_around_image>", "<image>", "<global-img>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(Path(directory) / "tokenizer.json"))
    ids = tokenizer(expanded, add_special_tokens=False)["input_ids"]
    return np.asarray(out["pixel_values"], dtype=np.float32), np.asarray([ids], dtype=np.int64)
