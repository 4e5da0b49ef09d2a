"""The vision-language model as four ONNX components, with the inputs that check them.

Components (the contract in export/LAYOUT.md), L = decoder layers, nh heads, hs head size::

    image_encoder      pixel_values (batch, 3, S, S) float32
                       -> image_embeds (batch, N_img, Cd), image_embedding (batch, E),
                          cross.{i}.key|value (batch, nh, N_img, hs) for i < L (computed once per image)
    text_encoder       input_ids, attention_mask (batch, seq) int64 -> text_embedding (batch, E)
    decoder_first      input_ids (batch, seq) int64, cross.{i}.key|value
                       -> logits (batch, seq, V), present.{i}.key|value (batch, nh, seq, hs)
    decoder_with_past  input_ids (batch, new) int64, past_key_values.{i}.key|value (batch, nh, past, hs),
                       cross.{i}.key|value -> logits (batch, new, V), present.{i}.key|value (batch, nh, past+new, hs)

Two decoder graphs rather than one merged graph with an If node: TensorRT cannot build the
merged kind. Inputs that check the export come from the scene generator (or a written scene
dataset), preprocessed by the runtime's own ImagePreprocessor and Tokenizer.
"""

from __future__ import annotations

import warnings
import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from export.onnx_common import (
    ComponentGraph,
    Feeds,
    Prepared,
    SampleOptions,
    by_component,
    kv_names,
    require,
    split_rows,
)
from export.parity import greedy_parity
from tinymm.bundle import Preprocess, TensorSpec
from tinymm.preprocess.config import ImageConfig
from tinymm.preprocess.image import ImagePreprocessor
from tinymm.preprocess.text import Tokenizer, TruncationWarning
from train.models.vlm import VisionLanguageModel
from train.vlm_tokenizer import TOKENIZER_FILE

__all__ = ["TOKENIZER_FILE", "contract_defaults", "prepare", "vlm_graphs", "vlm_model_info", "vlm_random_cases",
           "vlm_real_cases", "load_vlm_samples"]

FAMILY = "vision-language"
TASKS = ("caption", "ask", "classify")
CAPTION_TASK = "caption"  # the prompt template the decoder checks use
DEFAULT_MAX_NEW_TOKENS = 32  # tokens a caption or answer may take, unless max_length / 2 is smaller
SCENE_STREAM = 2  # the scene generator's "test" stream: scenes training never sees
# Example sizes used for tracing: every dynamic dimension >= 2 so none is frozen to 1.
EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_PAST, EXAMPLE_NEW = 2, 3, 3, 2
RANDOM_SIZES = ((1, 2, 1), (3, 5, 2))  # (batch, seq, new) of the random parity cases


class ImageEncoderGraph(nn.Module):
    """pixel_values -> (image_embeds, image_embedding, cross k0, v0, k1, v1, ...)."""

    def __init__(self, model: VisionLanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tokens, _ = self.model.image_encoder(pixel_values)  # (B, G*G, Ce), run once for both heads
        embeds = self.model.projector(tokens)  # (B, N_img, Cd)
        return (embeds, self.model._pool_image(tokens), *self.model.cross_kv(embeds))


class TextEncoderGraph(nn.Module):
    """(input_ids, attention_mask) -> (text_embedding,)."""

    def __init__(self, model: VisionLanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model.embed_text(input_ids, attention_mask),)


class DecoderFirstGraph(nn.Module):
    """(input_ids, cross k0, v0, ...) -> (logits, present k0, v0, ...)."""

    def __init__(self, model: VisionLanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, *cross: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, present = self.model.decode_first(input_ids, cross)
        return (logits, *present)


class DecoderWithPastGraph(nn.Module):
    """(input_ids, past k0, v0, ..., cross k0, v0, ...) -> (logits, present k0, v0, ...)."""

    def __init__(self, model: VisionLanguageModel) -> None:
        super().__init__()
        self.model = model
        self.n_kv = 2 * model.config.dec_layers

    def forward(self, input_ids: torch.Tensor, *past_and_cross: torch.Tensor) -> tuple[torch.Tensor, ...]:
        past, cross = past_and_cross[: self.n_kv], past_and_cross[self.n_kv:]
        logits, present = self.model.decode_with_past(input_ids, past, cross)
        return (logits, *present)


def vlm_graphs(model: VisionLanguageModel) -> dict[str, ComponentGraph]:
    """The four components of ``model`` (put in eval mode here), with specs and example inputs."""
    model.eval()
    cfg = model.config
    L, nh, hs, n_img = cfg.dec_layers, cfg.dec_heads, cfg.dec_dim // cfg.dec_heads, cfg.num_image_tokens
    B, T, P, N = EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_PAST, EXAMPLE_NEW
    gen = torch.Generator().manual_seed(0)

    def kv_specs(prefix: str, length: int | str) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(name, ("batch", nh, length, hs), "float32") for name in kv_names(prefix, L))

    def ids(*shape: int) -> torch.Tensor:
        return torch.randint(0, cfg.vocab_size, shape, generator=gen)

    def kv(length: int) -> tuple[torch.Tensor, ...]:
        return tuple(torch.randn(B, nh, length, hs, generator=gen) for _ in range(2 * L))

    cross = kv_specs("cross", n_img)
    graphs = [
        ComponentGraph(
            "image_encoder", ImageEncoderGraph(model).eval(),
            inputs=(TensorSpec("pixel_values", ("batch", 3, cfg.image_size, cfg.image_size), "float32"),),
            outputs=(TensorSpec("image_embeds", ("batch", n_img, cfg.dec_dim), "float32"),
                     TensorSpec("image_embedding", ("batch", cfg.embed_dim), "float32"), *cross),
            example=(torch.randn(B, 3, cfg.image_size, cfg.image_size, generator=gen),),
        ),
        ComponentGraph(
            "text_encoder", TextEncoderGraph(model).eval(),
            inputs=(TensorSpec("input_ids", ("batch", "seq"), "int64"),
                    TensorSpec("attention_mask", ("batch", "seq"), "int64")),
            outputs=(TensorSpec("text_embedding", ("batch", cfg.embed_dim), "float32"),),
            example=(ids(B, T), torch.tensor([[1] * T, [1] * (T - 1) + [0]], dtype=torch.int64)),
        ),
        ComponentGraph(
            "decoder_first", DecoderFirstGraph(model).eval(),
            inputs=(TensorSpec("input_ids", ("batch", "seq"), "int64"), *cross),
            outputs=(TensorSpec("logits", ("batch", "seq", cfg.vocab_size), "float32"), *kv_specs("present", "seq")),
            example=(ids(B, T), *kv(n_img)),
        ),
        ComponentGraph(
            "decoder_with_past", DecoderWithPastGraph(model).eval(),
            inputs=(TensorSpec("input_ids", ("batch", "new"), "int64"), *kv_specs("past_key_values", "past"), *cross),
            outputs=(TensorSpec("logits", ("batch", "new", cfg.vocab_size), "float32"),
                     *kv_specs("present", "past+new")),
            example=(ids(B, N), *kv(P), *kv(n_img)),
        ),
    ]
    return {graph.name: graph for graph in graphs}


def default_max_new_tokens(model: VisionLanguageModel) -> int:
    """DEFAULT_MAX_NEW_TOKENS, or half the decoder's context when that is smaller."""
    return min(DEFAULT_MAX_NEW_TOKENS, model.config.max_text_len // 2)


def vlm_model_info(model: VisionLanguageModel, labels: Sequence[str], max_new_tokens: int) -> dict[str, Any]:
    """The manifest's ``model`` object for a vision-language bundle (keys in export/LAYOUT.md)."""
    cfg = model.config
    return {
        "num_layers": cfg.dec_layers,
        "num_heads": cfg.dec_heads,
        "head_dim": cfg.dec_dim // cfg.dec_heads,
        "hidden_size": cfg.dec_dim,
        "vocab_size": cfg.vocab_size,
        "max_length": cfg.max_text_len,
        "image_size": cfg.image_size,
        "num_image_tokens": cfg.num_image_tokens,
        "embed_dim": cfg.embed_dim,
        "logit_scale": float(model.logit_scale_value().detach()),
        "max_new_tokens": int(max_new_tokens),
        "labels": list(labels),
    }


@dataclass(frozen=True)
class VLMSamples:
    """Real inputs: scenes and their captions, preprocessed by the runtime's own code."""

    pixel_values: np.ndarray  # (N, 3, S, S) float32
    prompt_ids: np.ndarray  # (N, T0) int64: the caption prompt, the same for every image
    text_ids: np.ndarray  # (N, T) int64: one caption per image, right-padded with pad_id
    text_mask: np.ndarray  # (N, T) int64: 1 = token, 0 = padding
    source: str  # where the scenes came from, for the provenance

    def head(self, count: int) -> "VLMSamples":
        """The first ``count`` samples (padding columns no row uses are dropped)."""
        width = max(int(self.text_mask[:count].sum(axis=1).max()), 1)
        return VLMSamples(self.pixel_values[:count], self.prompt_ids[:count], self.text_ids[:count, :width],
                          self.text_mask[:count, :width], self.source)


def caption_prompt(tokenizer: Tokenizer) -> np.ndarray:
    """(T0,) int64: the caption prompt, or the bos token alone when the tokenizer has no caption template."""
    if CAPTION_TASK in tokenizer.tasks and not tokenizer.placeholders(CAPTION_TASK):
        return tokenizer.encode_prompt(CAPTION_TASK)
    return np.asarray([max(tokenizer.config.bos_id, 0)], dtype=np.int64)


CALIBRATION_SPLITS = ("train", "val")  # INT8 calibration reads training scenes, never the test split


def load_vlm_samples(
    count: int, image: ImageConfig, tokenizer: Tokenizer, data_dir: str | Path | None = None, seed: int = 0,
    prefer: tuple[str, ...] = ("test", "val"),
) -> VLMSamples:
    """``count`` scenes with one caption each: from ``data_dir`` when given, else generated.

    From ``data_dir``, the first split of ``prefer`` that exists (then any split) is read: the golden
    pairs come from test, INT8 calibration from train, so that the accuracy gate never scores the
    int8 model on the scenes it was calibrated on. Generated scenes are scene ``i`` of the
    generator's test stream for ``seed`` (deterministic).
    """
    if data_dir is not None:
        from train.data.scene_dataset import SPLITS, SceneDataset

        split = next(s for s in (*prefer, *SPLITS) if _has_split(data_dir, s))
        scenes = SceneDataset(data_dir, split)
        items = [scenes[i] for i in range(min(count, len(scenes)))]
        source = f"scene dataset {data_dir} split {split}"
    else:
        from train.data.scene_dataset import generate_example
        from train.data.scene_render import RenderConfig
        from train.data.scene_world import WorldConfig

        world, render = WorldConfig(), RenderConfig()
        items = [generate_example(world, render, seed, SCENE_STREAM, i) for i in range(count)]
        source = f"generated scenes (seed {seed}, stream {SCENE_STREAM}, {world.width}x{world.height})"
    pixels = ImagePreprocessor(image)([im for im, _ in items], rgb=True).astype(np.float32)  # (N, 3, S, S)
    with warnings.catch_warnings():  # a caption longer than the context is cut to it, as in training
        warnings.simplefilter("ignore", TruncationWarning)
        ids, lengths = tokenizer.encode_batch([ann["captions"][0]["text"] for _, ann in items])
    mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
    prompt = np.tile(caption_prompt(tokenizer), (len(items), 1))
    return VLMSamples(pixels, prompt, ids, mask, source)


def _has_split(data_dir: str | Path, split: str) -> bool:
    root = Path(data_dir)
    return any((base / split / "annotations.jsonl").is_file() for base in (root, root / "scenes"))


def _chain(graphs: dict[str, ComponentGraph], pixels: np.ndarray, prompt: np.ndarray, text: Feeds,
           new_len: int) -> dict[str, dict[str, np.ndarray]]:
    """Feeds for every component, each fed by the torch outputs of the one before it."""
    L = sum(spec.name.startswith("cross.") for spec in graphs["decoder_first"].inputs) // 2
    image_out = graphs["image_encoder"].run_torch({"pixel_values": pixels})
    cross = {name: image_out[name] for name in kv_names("cross", L)}
    first_in = {"input_ids": prompt, **cross}
    first_out = graphs["decoder_first"].run_torch(first_in)
    greedy = first_out["logits"][:, -1].argmax(-1).astype(np.int64)  # (B,)
    new_ids = np.tile(greedy[:, None], (1, new_len))  # (B, new)
    past = {p: first_out[q] for p, q in zip(kv_names("past_key_values", L), kv_names("present", L))}
    return {
        "image_encoder": {"pixel_values": pixels},
        "text_encoder": dict(text),
        "decoder_first": first_in,
        "decoder_with_past": {"input_ids": new_ids, **past, **cross},
    }


def vlm_real_cases(graphs: dict[str, ComponentGraph], samples: VLMSamples) -> dict[str, dict[str, np.ndarray]]:
    """One feeds dict per component from real samples (the decoder_with_past step feeds the greedy token)."""
    text = {"input_ids": samples.text_ids, "attention_mask": samples.text_mask}
    return _chain(graphs, samples.pixel_values, samples.prompt_ids, text, new_len=1)


def vlm_random_cases(
    graphs: dict[str, ComponentGraph], rng: np.random.Generator, batch: int, seq: int, new: int
) -> dict[str, dict[str, np.ndarray]]:
    """Fresh random feeds of the given sizes: pixels ~ N(0, 1), uniform token ids, padded text rows."""
    image = graphs["image_encoder"].inputs[0].shape
    vocab = graphs["decoder_first"].outputs[0].shape[-1]
    pixels = rng.standard_normal((batch, *image[1:])).astype(np.float32)
    prompt = rng.integers(0, vocab, (batch, seq), dtype=np.int64)
    lengths = rng.integers(1, seq + 1, batch)
    lengths[0] = seq  # at least one full row, so the padded width is seq
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    text = {"input_ids": rng.integers(0, vocab, (batch, seq), dtype=np.int64), "attention_mask": mask}
    cases = _chain(graphs, pixels, prompt, text, new_len=new)
    cases["decoder_with_past"]["input_ids"] = rng.integers(0, vocab, (batch, new), dtype=np.int64)
    return cases


def contract_defaults(model: VisionLanguageModel) -> dict[str, Any]:
    """The training recipe's contract: train/vlm_data.image_config and train/vlm_tokenizer.text_config."""
    from train.vlm_data import image_config
    from train.vlm_tokenizer import text_config

    return {"image": image_config(model.config.image_size), "text": text_config(model.config.max_text_len)}


def prepare(model: VisionLanguageModel, meta: Mapping[str, Any], tokenizer_path: Path, sections: Mapping[str, Any],
            sources: Mapping[str, str], options: SampleOptions) -> Prepared:
    """Check the contract and tokenizer against the model; build graphs, inputs and the model object.

    ``sections`` holds the "image" and "text" contract sections; ``meta`` is the checkpoint's
    config.json (``extra["labels"]`` overrides the scene label set for classify).
    """
    from train.data.scene_language import all_labels

    cfg = model.config
    image, text = sections["image"], dataclasses.replace(sections["text"], tokenizer=tokenizer_path.name)
    require((image.height, image.width) == (cfg.image_size, cfg.image_size),
            f"the image contract is {image.height}x{image.width} but the model takes {cfg.image_size}x{cfg.image_size}")
    require(text.context_length <= cfg.max_text_len,
            f"text.context_length={text.context_length} exceeds the decoder's max_text_len={cfg.max_text_len}")
    tokenizer = Tokenizer(tokenizer_path, text)
    require(tokenizer.vocab_size == cfg.vocab_size,
            f"tokenizer {tokenizer_path} has {tokenizer.vocab_size} ids but the model's vocabulary is {cfg.vocab_size} "
            "(the decoder would emit ids the tokenizer cannot decode, or never emit some); pass the tokenizer "
            "the model was trained with")
    graphs = vlm_graphs(model)
    samples = load_vlm_samples(options.golden_batch, image, tokenizer, options.data_dir, options.seed)
    rng = np.random.default_rng(options.seed)
    max_new = default_max_new_tokens(model)

    @functools.cache
    def calibration() -> dict[str, list[dict[str, np.ndarray]]]:
        more = load_vlm_samples(options.calibration_samples, image, tokenizer, options.data_dir, options.seed + 1,
                                prefer=CALIBRATION_SPLITS)
        return split_rows(vlm_real_cases(graphs, more))

    return Prepared(
        family=FAMILY, tasks=TASKS, model=model, graphs=graphs, preprocess=Preprocess(image=image, text=text),
        tokenizer_path=tokenizer_path,
        model_info=vlm_model_info(model, meta.get("extra", {}).get("labels") or all_labels(), max_new),
        real_cases=vlm_real_cases(graphs, samples),
        random_cases=by_component([vlm_random_cases(graphs, rng, b, s, n) for b, s, n in RANDOM_SIZES]),
        calibration=calibration,
        greedy=lambda sessions: greedy_parity(model, sessions, samples.pixel_values, samples.prompt_ids, max_new),
        sources={**sources, "real_inputs": samples.source},
    )
