"""SmolVLM / Idefics3: a SigLIP vision encoder whose projected features replace the image tokens of
a Llama decoder's prompt (the SmolVLM bundle of export/LAYOUT.md, ``python -m export hf``).

Data path of ``caption`` and ``ask`` (``SmolVLMPipeline._answer`` holds it end to end)::

    image (path, bytes or (H, W, 3) array) -> RGB uint8
    -> tiles (n, 3, S, S) float32, rows, cols                        [TilePreprocessor: the checkpoint's processor]
    -> vision_encoder -> image_features (n, N, C) -> (n * N, C)
    prompt: the bundle's template (the checkpoint's chat template, rendered at export) with
       ``<image>`` expanded into the tiles' token string (<fake_token_around_image><row_R_col_C>
       <image> x N per tile, the global image last) and ``{question}`` filled
       -> ids (T,) through the checkpoint's tokenizer.json
    -> embed_tokens, image features over the image tokens -> decoder_first (prefill)
       -> decoder_with_past one token per step with the KV cache (greedy or beam search)
    -> generated ids -> text

Each image is decoded on its own: prompts differ in length with the tile count, and an int8
decoder's dynamic scales would otherwise depend on the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from tinymm.decoding.options import DecodingOptions
from tinymm.decoding.prefix_embeds import PrefixEmbedsInference, check_prefix_layout, count_kv_layers
from tinymm.errors import BundleError, InputError
from tinymm.pipelines.results import AnswerResult, CaptionResult, StageTimer
from tinymm.preprocess.image import as_batch, load_image
from tinymm.preprocess.image_tiles import TileConfig, TilePreprocessor

if TYPE_CHECKING:
    from tinymm.backends.base import Session
    from tinymm.bundle import Bundle
    from tinymm.decoding.search import Hypothesis
    from tinymm.pipelines.load_options import LoadOptions
    from tinymm.preprocess.tokenizer import Tokenizer

ARCHITECTURE = "smolvlm"
CAPTION, ASK = "caption", "ask"  # prompt template names (tasks)
QUESTION = "{question}"  # the placeholder of the ask template
COMPONENTS = ("vision_encoder", "embed_tokens", "decoder_first")
OPTIONAL_COMPONENTS = ("decoder_with_past",)
DEFAULT_MAX_NEW_TOKENS = 64


@dataclass(frozen=True)
class SmolVLMSettings:
    """What the runtime needs beyond the graphs, from the manifest's ``model`` object."""

    image_token_id: int  # the prompt token whose embedding rows take the image features
    image_seq_len: int  # N: image tokens per tile
    image_token: str  # "<image>": in the templates, and repeated N times per tile in the prompt
    fake_image_token: str  # "<fake_token_around_image>": opens each tile, closes the global image
    global_image_token: str  # "<global-img>": marks the global image
    eos_id: int  # ends a caption or an answer (the chat template's end of turn)
    max_length: int  # tokens the decoder holds, prompt included
    max_new_tokens: int  # default cap on generated tokens

    @classmethod
    def from_model_info(cls, info: Mapping[str, Any], eos_id: int) -> SmolVLMSettings:
        tokens = info.get("image_tokens")
        if not isinstance(tokens, Mapping) or not all(isinstance(tokens.get(k), str) for k in ("image", "fake", "global")):
            raise BundleError(f"manifest model.image_tokens must name the image, fake and global tokens, got "
                              f"{tokens!r:.80}; re-export the bundle")
        for key in ("image_token_id", "image_seq_len", "max_length"):
            value = info.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "image_token_id" else 1):
                raise BundleError(f"manifest model.{key}={value!r} must be a positive integer; re-export the bundle")
        if eos_id < 0:
            raise BundleError("the bundle's text contract has no eos_id (-1), so decoding could never stop; re-export it")
        return cls(image_token_id=info["image_token_id"], image_seq_len=info["image_seq_len"],
                   image_token=tokens["image"], fake_image_token=tokens["fake"], global_image_token=tokens["global"],
                   eos_id=eos_id, max_length=info["max_length"],
                   max_new_tokens=int(info.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)))


def image_prompt(rows: int, cols: int, settings: SmolVLMSettings) -> str:
    """The text that stands for one image of rows x cols tiles (0 x 0: the global image alone), as
    transformers' SmolVLM / Idefics3 processors write it."""
    s = settings
    image = s.image_token * s.image_seq_len
    whole = f"{s.fake_image_token}{s.global_image_token}{image}{s.fake_image_token}"
    if rows == 0 and cols == 0:
        return whole
    grid = "".join("".join(f"{s.fake_image_token}<row_{r + 1}_col_{c + 1}>{image}" for c in range(cols)) + "\n"
                   for r in range(rows))
    return f"{grid}\n{whole}"


class SmolVLMPipeline:
    """Captions and answers from a SmolVLM / Idefics3 bundle.

    Build it with ``from_bundle`` (or ``tinymm.load``); the constructor takes the sessions, the
    preprocessor, the tokenizer and the manifest's model object, so tests can pass their own.
    """

    family = "vision-language"

    def __init__(self, *, vision_encoder: Session, embed_tokens: Session, decoder_first: Session,
                 tiles: TilePreprocessor, tokenizer: Tokenizer, model_info: Mapping[str, Any],
                 decoder_with_past: Session | None = None, name: str = "smolvlm") -> None:
        """decoder_with_past None decodes without a KV cache (decoder_first over the whole text each step)."""
        self.vision_encoder, self.embed_tokens = vision_encoder, embed_tokens
        self.decoder_first, self.decoder_with_past = decoder_first, decoder_with_past
        self.tiles, self.tokenizer, self.name = tiles, tokenizer, name
        self.num_layers = count_kv_layers(decoder_first)
        check_prefix_layout(embed_tokens, decoder_first, decoder_with_past, self.num_layers)
        self.settings = SmolVLMSettings.from_model_info(model_info, tokenizer.config.eos_id)
        self.templates = dict(tokenizer.config.prompt_templates)
        for task in (CAPTION, ASK):
            if self.templates.get(task, "").count(self.settings.image_token) != 1:
                raise BundleError(f"prompt template {task!r} must hold {self.settings.image_token!r} once, got "
                                  f"{self.templates.get(task)!r:.120}; re-export the bundle")
        if QUESTION not in self.templates[ASK]:
            raise BundleError(f"prompt template 'ask' has no {QUESTION} placeholder; re-export the bundle")
        # No domain check ships with this architecture: nothing is rejected, whatever the threshold.
        self.domain_threshold = math.inf
        self.bundle: Bundle | None = None  # set by from_bundle; keeps an extracted archive alive

    @classmethod
    def from_bundle(cls, bundle: Bundle, options: LoadOptions | None = None) -> SmolVLMPipeline:
        """Load the components of a SmolVLM bundle with ``options`` (default: LoadOptions())."""
        from tinymm.pipelines.load_options import LoadOptions
        from tinymm.pipelines.sessions import bundle_tokenizer, open_sessions

        manifest = bundle.manifest
        if manifest.family != cls.family or manifest.preprocess.image is None:
            raise BundleError(f"bundle {bundle.name!r} is not a SmolVLM vision-language bundle with a "
                              "preprocess.image section; re-export it with python -m export hf")
        tiles = TilePreprocessor(TileConfig.from_model_info(manifest.model, manifest.preprocess.image))
        sessions = open_sessions(bundle, COMPONENTS, OPTIONAL_COMPONENTS, options or LoadOptions())
        pipeline = cls(vision_encoder=sessions["vision_encoder"], embed_tokens=sessions["embed_tokens"],
                       decoder_first=sessions["decoder_first"], decoder_with_past=sessions.get("decoder_with_past"),
                       tiles=tiles, tokenizer=bundle_tokenizer(bundle), model_info=manifest.model, name=bundle.name)
        pipeline.bundle = bundle
        return pipeline

    def __repr__(self) -> str:
        return f"SmolVLMPipeline({self.name!r}, provider={self.vision_encoder.provider})"

    def caption(self, images: Any, *, decoding: DecodingOptions | None = None, rgb: bool = False,
                domain_threshold: float | None = None) -> CaptionResult | list[CaptionResult]:
        """Describe one image (a path, encoded bytes or an (H, W, 3) uint8 array, BGR unless ``rgb``) or a
        list of them, through the checkpoint's chat template. domain_threshold is accepted for the
        vision-language surface; this architecture has no domain check, so nothing is rejected."""
        self._threshold(domain_threshold)
        batch, single = as_batch(images)
        results = []
        for image in batch:
            hyp, text, timer = self._answer(image, CAPTION, None, decoding, rgb)
            results.append(CaptionResult(text, hyp.tokens, hyp.mean_logprob, hyp.finished, timer.timings(1)))
        return results[0] if single else results

    def ask(self, images: Any, question: str | Sequence[str], *, decoding: DecodingOptions | None = None,
            rgb: bool = False, domain_threshold: float | None = None) -> AnswerResult | list[AnswerResult]:
        """Answer ``question`` (one string, or one per image) about one image or each image of a list."""
        self._threshold(domain_threshold)
        batch, single = as_batch(images)
        if not isinstance(question, (str, list, tuple)):
            raise InputError(f"question must be a string, or a list of strings (one per image); got a "
                             f"{type(question).__name__}")
        questions = [question] * len(batch) if isinstance(question, str) else list(question)
        if len(questions) != len(batch):
            raise InputError(f"got {len(questions)} questions for {len(batch)} images; give one question, or one per image")
        for q in questions:
            if not isinstance(q, str) or not q.strip():
                raise InputError(f"question {q!r} is empty or not a string; ask something, e.g. 'what color is the star?'")
        results = []
        for image, q in zip(batch, questions):
            hyp, text, timer = self._answer(image, ASK, q, decoding, rgb)
            results.append(AnswerResult(q, text, hyp.tokens, hyp.mean_logprob, hyp.finished, timer.timings(1)))
        return results[0] if single else results

    def _threshold(self, override: float | None) -> float:
        if override is None:
            return self.domain_threshold
        if isinstance(override, bool) or not isinstance(override, (int, float)) or math.isnan(override) or override <= 0:
            raise InputError(f"domain_threshold={override!r} must be a positive number (inf turns the domain check off)")
        return float(override)

    def preprocess(self, image: Any, task: str, question: str | None = None,
                   rgb: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """One image and its task -> (pixel_values (tiles, 3, S, S) float32, input_ids (T,) int64): what the
        checkpoint's processor gives for the rendered chat prompt."""
        rgb_image = np.ascontiguousarray(load_image(image, rgb=rgb)[:, :, ::-1])  # BGR -> RGB
        pixels, rows, cols = self.tiles(rgb_image)
        template = self.templates[task].replace(self.settings.image_token, image_prompt(rows, cols, self.settings))
        text = template.replace(QUESTION, question) if question is not None else template
        return pixels, np.asarray(self.tokenizer.encode(text), dtype=np.int64)

    def _answer(self, image: Any, task: str, question: str | None, decoding: DecodingOptions | None,
                rgb: bool) -> tuple[Hypothesis, str, StageTimer]:
        """The data path: tiles and prompt, vision encoder, prefill and decode loop, detokenize."""
        from tinymm.decoding.search import generate

        options = decoding if decoding is not None else DecodingOptions()
        if not isinstance(options, DecodingOptions):
            raise InputError(f"decoding must be a tinymm.decoding.DecodingOptions (e.g. DecodingOptions(beam_size=2)), "
                             f"got a {type(options).__name__}")
        timer = StageTimer()
        pixels, ids = self.preprocess(image, task, question, rgb)
        room = min(options.max_new_tokens or self.settings.max_new_tokens, self.settings.max_length - len(ids))
        if room < 1:
            raise InputError(f"the prompt takes {len(ids)} tokens of the decoder's {self.settings.max_length}; "
                             "shorten the question or use a smaller image")
        timer.lap("preprocess")
        features = self.vision_encoder.run({"pixel_values": pixels}, ["image_features"])["image_features"]
        timer.lap("encode")
        inference = PrefixEmbedsInference(self.embed_tokens, self.decoder_first, self.decoder_with_past,
                                          features.reshape(-1, features.shape[-1]), self.settings.image_token_id,
                                          self.num_layers)
        generation = generate(inference, ids[None, :], eos_id=self.settings.eos_id, max_new_tokens=room, options=options)
        timer.add("prefill", generation.prefill_ms)
        timer.decode_ms.extend(generation.step_ms)
        timer.restart()
        best = generation.best[0]
        text = self.tokenizer.decode(list(best.tokens)).strip()
        timer.lap("postprocess")
        return best, text, timer


def from_bundle(bundle: Bundle, options: LoadOptions | None = None) -> SmolVLMPipeline:
    """The caption / ask pipeline of a SmolVLM bundle, its components loaded with ``options``."""
    return SmolVLMPipeline.from_bundle(bundle, options)
