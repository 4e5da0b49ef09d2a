"""A SmolVLM / Idefics3 checkpoint directory read for export: the model, its tokenizer, image
processor settings and chat template, and what the bundle's contract says about them.

A downloaded ``HuggingFaceTB/SmolVLM-256M-Instruct`` (model_type ``idefics3``) or a SmolVLM2
directory (``smolvlm``) holds config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
preprocessor_config.json and a chat template (chat_template.json, chat_template.jinja or
tokenizer_config.json's ``chat_template``). The chat template is rendered here, once per task,
into the bundle's prompt templates: the runtime carries no template engine.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from export.onnx_common import require
from export.smolvlm_onnx import image_tokens_per_tile
from tinymm.bundle import Preprocess
from tinymm.errors import InputError
from tinymm.preprocess.config import ImageConfig, TextConfig

logger = logging.getLogger(__name__)

MODEL_TYPES = ("smolvlm", "idefics3")
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILE = "tokenizer.json"
# Pillow's filter ids (PIL.Image.Resampling) -> ImageConfig.interpolation names: "pil_*" are reproduced
# exactly at run time (tinymm/preprocess/pil_resize.py); NEAREST is resized with bicubic and a warning.
PIL_FILTERS = {0: "nearest", 1: "pil_lanczos", 2: "pil_bilinear", 3: "pil_bicubic", 4: "box", 5: "hamming"}
DEFAULT_TOKENS = {"image": "<image>", "fake": "<fake_token_around_image>", "global": "<global-img>",
                  "end_of_utterance": "<end_of_utterance>"}
TOKEN_KEYS = {"image": "image_token", "fake": "fake_image_token", "global": "global_image_token",
              "end_of_utterance": "end_of_utterance_token"}
CAPTION_QUESTION = "Can you describe this image?"  # the caption task's user turn (SmolVLM's model card example)
QUESTION = "{question}"  # the ask template's placeholder
_SENTINEL = "\x00question\x00"  # rendered in place of the question, then replaced by the placeholder
MAX_NEW_TOKENS = 64  # default generation budget of caption and ask
MAX_TILES = 64  # the largest tile batch a TensorRT profile is built for


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as e:
        raise InputError(f"{path} is not readable JSON ({e}); the checkpoint directory is damaged") from e


def model_type(source: Path) -> str | None:
    """The config's model_type when ``source`` is a SmolVLM / Idefics3 checkpoint with weights, else None."""
    config = Path(source) / "config.json"
    if not config.is_file() or not any((Path(source) / f).is_file() for f in WEIGHTS_FILES):
        return None
    try:
        kind = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None
    return kind if kind in MODEL_TYPES else None


@dataclass(frozen=True, eq=False)
class SmolVLMSource:
    """A loaded checkpoint and what its files say."""

    directory: Path
    kind: str  # "smolvlm" | "idefics3"
    model: Any  # transformers ...ForConditionalGeneration, float32, eval, eager attention
    tokenizer_path: Path
    tokens: Mapping[str, str]  # image, fake, global, end_of_utterance -> token text
    token_ids: Mapping[str, int]  # the same -> id
    image_processor: Mapping[str, Any]  # preprocessor_config.json
    chat_template: str
    weights_path: Path

    @property
    def image_seq_len(self) -> int:
        return image_tokens_per_tile(self.model.config)

    @property
    def eos_id(self) -> int:
        return self.token_ids["end_of_utterance"]


def _chat_template(directory: Path, tokenizer_config: Mapping[str, Any]) -> str:
    for name in ("chat_template.json", "processor_config.json"):
        template = _json(directory / name).get("chat_template")
        if isinstance(template, str):
            return template
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, str):
        return template
    raise InputError(f"{directory} has no chat template (chat_template.json, chat_template.jinja or "
                     "tokenizer_config.json's chat_template); caption and ask prompts are rendered from it")


def _token_names(tokenizer_config: Mapping[str, Any]) -> dict[str, str]:
    extra = tokenizer_config.get("extra_special_tokens") or {}
    names = {}
    for key, attribute in TOKEN_KEYS.items():
        value = tokenizer_config.get(attribute, extra.get(attribute) if isinstance(extra, Mapping) else None)
        names[key] = value if isinstance(value, str) else DEFAULT_TOKENS[key]
    return names


def load_smolvlm_source(directory: Path) -> SmolVLMSource:
    """Load the checkpoint at ``directory`` in float32; InputError naming what is missing or inconsistent."""
    import torch
    from tokenizers import Tokenizer
    from transformers import Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration

    directory = Path(directory)
    kind = model_type(directory)
    require(kind is not None, f"{directory} is not a SmolVLM / Idefics3 checkpoint (config.json model_type "
                              f"{list(MODEL_TYPES)} and {' or '.join(WEIGHTS_FILES)})")
    tokenizer_path = directory / TOKENIZER_FILE
    require(tokenizer_path.is_file(), f"{directory} has no {TOKENIZER_FILE}; the bundle ships the checkpoint's tokenizer")
    tokenizer_config = _json(directory / "tokenizer_config.json")
    names = _token_names(tokenizer_config)
    vocab = Tokenizer.from_file(str(tokenizer_path))
    ids = {key: vocab.token_to_id(text) for key, text in names.items()}
    missing = [names[k] for k, v in ids.items() if v is None]
    require(not missing, f"{tokenizer_path} lacks the special token(s) {missing} the SmolVLM processor writes")
    model_class = SmolVLMForConditionalGeneration if kind == "smolvlm" else Idefics3ForConditionalGeneration
    try:
        model = model_class.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager").eval()
    except Exception as e:  # transformers raises many types for a damaged or foreign checkpoint
        raise InputError(f"transformers could not load {directory} as {model_class.__name__}: {e}") from e
    require(ids["image"] == model.config.image_token_id,
            f"config.json image_token_id={model.config.image_token_id} but {tokenizer_path} gives {names['image']!r} "
            f"the id {ids['image']}; the checkpoint's files disagree")
    processor = _json(directory / "preprocessor_config.json")
    require(bool(processor), f"{directory} has no preprocessor_config.json (the image processor's settings)")
    declared = _json(directory / "processor_config.json").get("image_seq_len")
    computed = image_tokens_per_tile(model.config)
    require(declared in (None, computed), f"processor_config.json image_seq_len={declared} but the vision config "
                                          f"gives {computed} image tokens per tile")
    weights = next(directory / f for f in WEIGHTS_FILES if (directory / f).is_file())
    return SmolVLMSource(directory, kind, model, tokenizer_path, names, ids, processor,
                         _chat_template(directory, tokenizer_config), weights)


def render_prompt(source: SmolVLMSource, text: str) -> str:
    """The chat template rendered for one user turn (the image, then ``text``) with the generation prompt."""
    from transformers.utils.chat_template_utils import render_jinja_template

    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    try:
        rendered = render_jinja_template(conversations=[conversation], chat_template=source.chat_template,
                                         add_generation_prompt=True)
    except Exception as e:  # jinja2 raises its own types for a broken template
        raise InputError(f"the checkpoint's chat template does not render a user turn with an image: {e}") from e
    prompt = rendered[0][0] if isinstance(rendered, tuple) else rendered
    return prompt[0] if isinstance(prompt, list) else prompt


def prompt_templates(source: SmolVLMSource) -> dict[str, str]:
    """caption and ask templates: the rendered chat prompt, ``{question}`` standing for the question."""
    image = source.tokens["image"]
    caption = render_prompt(source, CAPTION_QUESTION)
    ask = render_prompt(source, _SENTINEL).replace(_SENTINEL, QUESTION)
    for task, template in (("caption", caption), ("ask", ask)):
        require(template.count(image) == 1, f"the chat template renders {template.count(image)} {image!r} for the "
                                            f"{task} prompt; the runtime expands exactly one")
    require(QUESTION in ask, "the chat template drops the user's text; ask prompts cannot be rendered")
    return {"caption": caption, "ask": ask}


def tiling(source: SmolVLMSource) -> dict[str, Any]:
    """The manifest's ``model.tiling``: tile side, first-resize edge, splitting (transformers' defaults
    where preprocessor_config.json is silent)."""
    p = source.image_processor
    tile = (p.get("max_image_size") or {}).get("longest_edge", 364)
    require(tile == source.model.config.vision_config.image_size,
            f"preprocessor_config.json max_image_size.longest_edge={tile} but the vision encoder takes "
            f"{source.model.config.vision_config.image_size} pixel tiles")
    return {"tile": tile, "longest_edge": (p.get("size") or {}).get("longest_edge", 4 * 364),
            "splitting": bool(p.get("do_image_splitting", True)), "resize": bool(p.get("do_resize", True))}


def smolvlm_preprocess(source: SmolVLMSource) -> Preprocess:
    """The image and text sections of the contract."""
    p = source.image_processor
    resample = p.get("resample", 1)  # the SmolVLM / Idefics3 processors default to Lanczos
    require(resample in PIL_FILTERS, f"preprocessor_config.json resample={resample!r} is not a Pillow filter id")
    require(abs(p.get("rescale_factor", 1 / 255) - 1 / 255) < 1e-9 and p.get("do_rescale", True)
            and p.get("do_normalize", True), "the image processor must rescale by 1/255 and normalize")
    tile = tiling(source)["tile"]
    image = ImageConfig(height=tile, width=tile, resize="stretch", interpolation=PIL_FILTERS[resample],
                        mean=tuple(p.get("image_mean", (0.5, 0.5, 0.5))), std=tuple(p.get("image_std", (0.5, 0.5, 0.5))),
                        channel_order="RGB")
    text_cfg = source.model.config.text_config
    bos = source.model.config.text_config.bos_token_id
    specials = {source.tokens[k]: source.token_ids[k] for k in ("image", "fake", "global", "end_of_utterance")}
    text = TextConfig(tokenizer=TOKENIZER_FILE, context_length=text_cfg.max_position_embeddings,
                      bos_id=bos if isinstance(bos, int) else -1, eos_id=source.eos_id, pad_id=-1, unk_id=-1,
                      add_bos=False, add_eos=False, special_tokens=specials,
                      prompt_templates=prompt_templates(source), kind="hf-tokenizers")
    return Preprocess(image=image, text=text)


def smolvlm_model_info(source: SmolVLMSource, num_layers: int, num_kv_heads: int, head_dim: int) -> dict[str, Any]:
    """The manifest's ``model`` object (keys of the SmolVLM contract, export/LAYOUT.md)."""
    cfg = source.model.config
    text = cfg.text_config
    return {
        "num_layers": num_layers, "num_kv_heads": num_kv_heads, "head_dim": head_dim,
        "hidden_size": text.hidden_size, "vocab_size": text.vocab_size,
        "image_token_id": source.token_ids["image"], "image_seq_len": source.image_seq_len,
        "image_tokens": {k: source.tokens[k] for k in ("image", "fake", "global")},
        "tiling": tiling(source), "max_length": text.max_position_embeddings, "max_new_tokens": MAX_NEW_TOKENS,
        "dynamic_dims": {"batch": 8, "tiles": MAX_TILES, "seq": text.max_position_embeddings,
                         "past": text.max_position_embeddings, "new": 1},
    }
