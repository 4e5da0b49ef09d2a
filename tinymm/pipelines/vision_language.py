"""The vision-language pipeline: caption, ask, classify, embed_image and embed_text.

Data path of ``caption`` and ``ask`` (``_generate`` holds it end to end)::

    images -> ImagePreprocessor -> pixel_values (N, 3, H, W) float32
           -> image_encoder -> cross.{i}.key|value (N, heads, N_img, head_dim), once per image
    prompt -> the bundle's template ("caption:", "question: {question} answer:") -> ids (T,) int64
           -> decoder_first over the prompt (prefill) -> decoder_with_past, one token per step,
              with the self-attention KV cache (greedy or beam search, tinymm.decoding)
           -> generated ids -> Tokenizer.decode -> text

``classify`` compares the image encoder's ``image_embedding`` (N, E) with the text encoder's
embedding of each label (the labels go through the bundle's "classify" template, as in
training): cosine similarity, and a softmax of ``logit_scale * cosine`` over the label set.

Every result says whether the frame is inside the model's domain: where the bundle carries a domain
check (``pipelines/domain_check.py``), a frame whose mean image token lies farther than
``domain_threshold`` from the training scenes is ``rejected`` with ``reject_reason="out_of_domain"``
(the caption or answer is still given, as the model's guess).

The components and their tensors follow export/LAYOUT.md; the hyperparameters come from the
manifest's ``model`` object (``VisionLanguageSettings``). One image gives one result, a list of
images a list of results, computed as one batch.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from tinymm.backends.base import GPU_PROVIDERS, Session
from tinymm.decoding import (
    DecodingOptions,
    Hypothesis,
    check_decoder_layout,
    count_layers,
    cross_from_outputs,
    generate,
    make_inference,
)
from tinymm.errors import BundleError, InputError
from tinymm.pipelines.domain_check import FEATURE_OUTPUT, OUT_OF_DOMAIN, DomainCheck, check_domain_threshold
from tinymm.pipelines.load_options import LoadOptions
from tinymm.pipelines.results import (
    AnswerResult,
    CaptionResult,
    ClassifyResult,
    StageTimer,
    Timings,
)
from tinymm.pipelines.sessions import bundle_tokenizer, open_sessions
from tinymm.preprocess.image import ImagePreprocessor, as_batch
from tinymm.preprocess.text import Tokenizer, TruncationWarning

if TYPE_CHECKING:
    from tinymm.bundle import Bundle

logger = logging.getLogger(__name__)

CAPTION, ASK, CLASSIFY = "caption", "ask", "classify"  # prompt template names (tasks)
DEFAULT_MAX_NEW_TOKENS = 32  # when the manifest's model object gives none
DEFAULT_LOGIT_SCALE = 100.0  # CLIP's largest logit scale, when the manifest gives none
DEFAULT_TOP_K = 5  # labels a classify result lists


@dataclass(frozen=True)
class VisionLanguageSettings:
    """What the runtime needs beyond the graphs, from the manifest's ``model`` object and text contract."""

    num_layers: int  # decoder layers (counted from decoder_first's cross.{i}.key inputs)
    eos_id: int  # the token that ends a caption or an answer
    max_length: int  # tokens the decoder holds, prompt included
    max_new_tokens: int  # default cap on generated tokens, EOS included
    logit_scale: float  # classify: probabilities are softmax(logit_scale * cosine)
    labels: tuple[str, ...]  # classify's default label set; () when the bundle ships none

    @classmethod
    def from_model_info(cls, info: Mapping[str, Any], tokenizer: Tokenizer, num_layers: int) -> VisionLanguageSettings:
        """Read and check ``info`` (the manifest's model object); BundleError naming the bad key."""
        text = tokenizer.config

        def number(key: str, default: Any, kind: type) -> Any:
            value = info.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
                raise BundleError(f"manifest model.{key}={value!r} must be a positive {kind.__name__}; re-export the bundle")
            return kind(value)

        declared = info.get("num_layers", num_layers)
        if declared != num_layers:
            raise BundleError(
                f"manifest model.num_layers={declared!r} but decoder_first takes cross K/V for {num_layers} "
                "layer(s); the manifest and the graphs disagree, re-export the bundle"
            )
        if text.eos_id < 0:
            raise BundleError("the bundle's text contract has no eos_id (-1), so decoding could never stop; re-export it")
        labels = info.get("labels", ())
        if not isinstance(labels, (list, tuple)) or not all(isinstance(x, str) and x.strip() for x in labels):
            raise BundleError(f"manifest model.labels must be a list of non-empty strings, got {labels!r:.80}")
        if "logit_scale" not in info:
            logger.warning("bundle gives no model.logit_scale; classify probabilities use %g", DEFAULT_LOGIT_SCALE)
        return cls(
            num_layers=num_layers,
            eos_id=text.eos_id,
            max_length=min(number("max_length", text.context_length, int), text.context_length),
            max_new_tokens=number("max_new_tokens", DEFAULT_MAX_NEW_TOKENS, int),
            logit_scale=number("logit_scale", DEFAULT_LOGIT_SCALE, float),
            labels=tuple(labels),
        )


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


class VisionLanguagePipeline:
    """Captions, answers, zero-shot labels and embeddings from one vision-language bundle.

    Build it with ``from_bundle`` (or ``tinymm.load``); the constructor takes the sessions, the
    preprocessors and the manifest's model object, so tests and other backends can pass their own.
    """

    family = "vision-language"

    def __init__(
        self,
        *,
        image_encoder: Session,
        decoder_first: Session,
        preprocessor: ImagePreprocessor,
        tokenizer: Tokenizer,
        decoder_with_past: Session | None = None,
        text_encoder: Session | None = None,
        model_info: Mapping[str, Any] | None = None,
        device_cache: bool = False,
        name: str = "vision-language",
        domain_check: DomainCheck | None = None,
    ) -> None:
        """decoder_with_past None decodes without a KV cache (decoder_first over the whole text each step).

        device_cache: keep the KV cache on the decoder's device between steps (GPU providers).
        domain_check: rejects frames outside the model's domain (None: every frame is answered as is).
        """
        self.image_encoder, self.decoder_first, self.decoder_with_past = image_encoder, decoder_first, decoder_with_past
        self.text_encoder, self.preprocessor, self.tokenizer, self.name = text_encoder, preprocessor, tokenizer, name
        self.device_cache = device_cache
        num_layers = count_layers(decoder_first)
        check_decoder_layout(decoder_first, decoder_with_past, num_layers)
        self.settings = VisionLanguageSettings.from_model_info(model_info or {}, tokenizer, num_layers)
        self.bundle: Bundle | None = None  # set by from_bundle; keeps an extracted archive alive
        self._label_cache: tuple[tuple[str, ...], np.ndarray] | None = None  # the last label set's embeddings
        self.domain_check = domain_check
        # Distances above it are out of domain; the bundle's calibrated threshold, inf without a check.
        self.domain_threshold = domain_check.threshold if domain_check is not None else math.inf

    @classmethod
    def from_bundle(cls, bundle: Bundle, options: LoadOptions | None = None) -> VisionLanguagePipeline:
        """Load the components of a vision-language bundle with ``options`` (default: LoadOptions())."""
        if bundle.manifest.family != cls.family:
            raise BundleError(f"bundle {bundle.name!r} is a {bundle.manifest.family} bundle, not a {cls.family} one")
        image = bundle.manifest.preprocess.image
        if image is None:
            raise BundleError(f"bundle {bundle.name!r} has no preprocess.image section; re-export it")
        sessions = open_sessions(
            bundle, ("image_encoder", "decoder_first"), ("decoder_with_past", "text_encoder"), options or LoadOptions()
        )
        with_past = sessions.get("decoder_with_past")
        pipeline = cls(
            image_encoder=sessions["image_encoder"], decoder_first=sessions["decoder_first"],
            decoder_with_past=with_past, text_encoder=sessions.get("text_encoder"),
            preprocessor=ImagePreprocessor(image), tokenizer=bundle_tokenizer(bundle),
            model_info=bundle.manifest.model, name=bundle.name,
            device_cache=with_past is not None and with_past.provider in GPU_PROVIDERS,
            domain_check=DomainCheck.from_bundle(bundle, bundle.manifest.model),
        )
        pipeline.bundle = bundle
        return pipeline

    def __repr__(self) -> str:
        return f"VisionLanguagePipeline({self.name!r}, provider={self.image_encoder.provider})"

    # ---- caption and ask -------------------------------------------------------------------

    def caption(
        self, images: Any, *, decoding: DecodingOptions | None = None, rgb: bool = False,
        domain_threshold: float | None = None,
    ) -> CaptionResult | list[CaptionResult]:
        """Describe one image (a path, encoded bytes or an (H, W, 3) array; BGR unless ``rgb``) or a list.

        Returns a CaptionResult, or a list of them for a list of images (decoded as one batch).
        domain_threshold overrides the pipeline's ``domain_threshold`` for this call.
        """
        batch, single = as_batch(images)
        threshold = self._threshold(domain_threshold)
        hyps, texts, _, domain, timings = self._generate(batch, CAPTION, [None] * len(batch), decoding, rgb, threshold)
        results = [CaptionResult(text, h.tokens, h.mean_logprob, h.finished, timings, **verdict)
                   for h, text, verdict in zip(hyps, texts, domain)]
        return results[0] if single else results

    def ask(
        self, images: Any, question: str | Sequence[str], *, decoding: DecodingOptions | None = None, rgb: bool = False,
        domain_threshold: float | None = None,
    ) -> AnswerResult | list[AnswerResult]:
        """Answer ``question`` about one image, or about each image of a list.

        ``question`` is one string (asked of every image) or a list with one question per image.
        domain_threshold overrides the pipeline's ``domain_threshold`` for this call.
        """
        batch, single = as_batch(images)
        threshold = self._threshold(domain_threshold)
        if not isinstance(question, (str, list, tuple)):
            raise InputError(
                f"question must be a string, or a list of strings (one per image); got a {type(question).__name__}"
            )
        questions = [question] * len(batch) if isinstance(question, str) else list(question)
        if len(questions) != len(batch):
            raise InputError(f"got {len(questions)} questions for {len(batch)} images; give one question, or one per image")
        for q in questions:
            if not isinstance(q, str):
                raise InputError(f"question {q!r} is a {type(q).__name__}, not a string; ask e.g. 'what color is it?'")
            if not q.strip():
                raise InputError(f"question {q!r} is empty; ask something, e.g. 'what color is the star?'")
        hyps, answers, truncated, domain, timings = self._generate(batch, ASK, questions, decoding, rgb, threshold)
        results = [AnswerResult(q, answer, h.tokens, h.mean_logprob, h.finished, timings, truncated=cut, **verdict)
                   for q, h, answer, cut, verdict in zip(questions, hyps, answers, truncated, domain)]
        return results[0] if single else results

    def _threshold(self, override: float | None) -> float:
        return self.domain_threshold if override is None else check_domain_threshold(override)

    def _domain_verdicts(self, encoded: Mapping[str, np.ndarray], threshold: float) -> list[dict[str, Any]]:
        """Per image: rejected, reject_reason and domain_score (all unset without a domain check)."""
        n = len(next(iter(encoded.values())))
        if self.domain_check is None:
            return [{} for _ in range(n)]
        distances = self.domain_check.distances(encoded[FEATURE_OUTPUT])
        return [{"rejected": bool(d > threshold), "reject_reason": OUT_OF_DOMAIN if d > threshold else None,
                 "domain_score": float(d)} for d in distances]

    def _prompt(self, task: str, text: str | None, max_new_tokens: int) -> tuple[np.ndarray, bool]:
        """(T,) int64 prompt of ``task``, its one placeholder (if any) filled with ``text``, and whether
        ``text`` was cut to fit the context (logged as one warning)."""
        if task not in self.tokenizer.tasks:
            if task == CAPTION:  # a bundle without a caption template: the decoder starts from BOS
                return np.asarray([max(self.tokenizer.config.bos_id, 0)], dtype=np.int64), False
            raise BundleError(
                f"bundle {self.name!r} has no {task!r} prompt template (it has {list(self.tokenizer.tasks)}), "
                f"so it cannot {task}; use a bundle exported for that task"
            )
        placeholders = self.tokenizer.placeholders(task)
        if len(placeholders) > 1:
            raise BundleError(f"prompt template {task!r} has placeholders {list(placeholders)}; the runtime fills one")
        fields = {placeholders[0]: text or ""} if placeholders else {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TruncationWarning)
            ids = self.tokenizer.encode_prompt(task, max_new_tokens=max_new_tokens, **fields)
        cut = [w for w in caught if issubclass(w.category, TruncationWarning)]
        for w in cut:
            logger.warning("%s (the result says truncated=True)", w.message)
        return ids, bool(cut)

    def _generate(
        self, images: list[Any], task: str, texts: list[str | None], decoding: DecodingOptions | None, rgb: bool,
        threshold: float,
    ) -> tuple[list[Hypothesis], list[str], list[bool], list[dict[str, Any]], Timings]:
        """The data path of caption and ask: preprocess, encode, prefill, decode loop, detokenize.

        Returns the best hypothesis, its text, whether its prompt was cut and the domain verdict,
        for each image, and the timings of the batch.
        """
        options = decoding if decoding is not None else DecodingOptions()
        if not isinstance(options, DecodingOptions):
            raise InputError(
                f"decoding must be a tinymm.decoding.DecodingOptions (e.g. DecodingOptions(beam_size=2)), got a "
                f"{type(options).__name__}"
            )
        settings = self.settings
        max_new = options.max_new_tokens or settings.max_new_tokens
        # A prompt is cut only where it would leave the answer less than this (at most half the context).
        reserved = min(max_new, settings.max_length // 2)
        timer = StageTimer()
        pixels = self.preprocessor(images, rgb=rgb)  # (N, 3, H, W)
        prompts, truncated = zip(*(self._prompt(task, text, reserved) for text in texts))  # N x (T_i,) int64
        timer.lap("preprocess")
        encoded = self.image_encoder.run({"pixel_values": pixels})
        cross = cross_from_outputs(encoded, settings.num_layers)  # name -> (N, heads, N_img, head_dim)
        domain = self._domain_verdicts(encoded, threshold)
        timer.lap("encode")
        by_length: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompts):  # the decoder has no padding mask: batch equal lengths
            by_length.setdefault(len(prompt), []).append(i)
        hyps: list[Hypothesis] = [None] * len(images)  # type: ignore[list-item]
        for length, rows in by_length.items():
            room = min(max_new, settings.max_length - length)
            if room < 1:
                raise InputError(f"the prompt takes {length} tokens, the whole decoder context; shorten the question")
            inference = make_inference(
                self.decoder_first, self.decoder_with_past, {k: v[rows] for k, v in cross.items()},
                settings.num_layers, device_cache=self.device_cache,
            )
            ids = np.stack([prompts[i] for i in rows])  # (n, T) int64
            generation = generate(inference, ids, eos_id=settings.eos_id, max_new_tokens=room, options=options)
            timer.add("prefill", generation.prefill_ms)
            timer.decode_ms.extend(generation.step_ms)
            for i, best in zip(rows, generation.best):
                hyps[i] = best
        timer.restart()  # the decoder timed its own steps
        texts = [self.tokenizer.decode(list(h.tokens)).strip() for h in hyps]
        timer.lap("postprocess")
        return hyps, texts, list(truncated), domain, timer.timings(len(images))

    # ---- classify and embeddings -----------------------------------------------------------

    def _require_text_encoder(self, what: str) -> Session:
        if self.text_encoder is None:
            raise BundleError(f"bundle {self.name!r} has no text_encoder component, so it cannot {what}")
        return self.text_encoder

    def embed_image(self, images: Any, *, rgb: bool = False) -> np.ndarray:
        """One image or a list -> (N, E) float32 L2-normalised image embeddings."""
        batch, _ = as_batch(images)
        pixels = self.preprocessor(batch, rgb=rgb)
        return self.image_encoder.run({"pixel_values": pixels}, ["image_embedding"])["image_embedding"]

    def embed_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """One text or a list -> (N, E) float32 L2-normalised text embeddings (through the classify template)."""
        encoder = self._require_text_encoder("embed text")
        batch = [texts] if isinstance(texts, str) else list(texts)
        if not batch:
            raise InputError("got an empty list of texts; pass at least one")
        for text in batch:
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"text {text!r} is empty; every text needs at least one word")
        if CLASSIFY in self.tokenizer.tasks:
            rows = [self._prompt(CLASSIFY, text, 0)[0] for text in batch]
        else:
            rows = [np.asarray(self.tokenizer.encode(text), dtype=np.int64) for text in batch]
        ids, lengths = self.tokenizer.encode_batch(rows)  # (N, T) int64, (N,)
        mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)  # (N, T)
        return encoder.run({"input_ids": ids, "attention_mask": mask}, ["text_embedding"])["text_embedding"]

    def _labels(self, labels: Sequence[str] | None) -> tuple[str, ...]:
        if labels is None:
            if not self.settings.labels:
                raise InputError(f"bundle {self.name!r} ships no label set; pass labels=[...] (e.g. --labels 'a cat,a dog')")
            return self.settings.labels
        chosen = (labels,) if isinstance(labels, str) else tuple(labels)
        if not chosen:
            raise InputError("got an empty label list; pass at least one label")
        for label in chosen:
            if not isinstance(label, str) or not label.strip():
                raise InputError(f"label {label!r} is empty; every label needs at least one word")
        duplicates = sorted({x for x in chosen if chosen.count(x) > 1})
        if duplicates:
            raise InputError(f"labels {duplicates} are given more than once; list each label once")
        return chosen

    def _label_embeddings(self, labels: tuple[str, ...]) -> np.ndarray:
        """(L, E) embeddings of ``labels``; the last label set's are kept, so a stream pays once."""
        cached = self._label_cache
        if cached is not None and cached[0] == labels:
            return cached[1]
        embeddings = self.embed_text(list(labels))
        self._label_cache = (labels, embeddings)
        return embeddings

    def classify(
        self, images: Any, labels: Sequence[str] | None = None, *, top_k: int = DEFAULT_TOP_K, rgb: bool = False,
        domain_threshold: float | None = None,
    ) -> ClassifyResult | list[ClassifyResult]:
        """Rank ``labels`` (default: the bundle's label set) for one image or each image of a list.

        domain_threshold overrides the pipeline's ``domain_threshold`` for this call.
        """
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k={top_k!r} must be a positive integer")
        threshold = self._threshold(domain_threshold)
        chosen = self._labels(labels)
        self._require_text_encoder("classify")
        batch, single = as_batch(images)
        timer = StageTimer()
        pixels = self.preprocessor(batch, rgb=rgb)  # (N, 3, H, W)
        timer.lap("preprocess")
        wanted = ["image_embedding"] + ([FEATURE_OUTPUT] if self.domain_check is not None else [])
        encoded = self.image_encoder.run({"pixel_values": pixels}, wanted)
        image_embedding = encoded["image_embedding"]  # (N, E)
        domain = self._domain_verdicts(encoded, threshold)
        label_embedding = self._label_embeddings(chosen)  # (L, E)
        timer.lap("encode")
        cosine = image_embedding @ label_embedding.T  # (N, L)
        probabilities = _softmax(self.settings.logit_scale * cosine)  # (N, L)
        order = np.argsort(-cosine, axis=1, kind="stable")[:, :top_k]  # (N, k)
        timer.lap("postprocess")
        timings = timer.timings(len(batch))
        results = [
            ClassifyResult(tuple(chosen[j] for j in row), tuple(float(cosine[i, j]) for j in row),
                           tuple(float(probabilities[i, j]) for j in row), timings, **domain[i])
            for i, row in enumerate(order)
        ]
        return results[0] if single else results
