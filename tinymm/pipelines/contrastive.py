"""Dual-encoder (CLIP, SigLIP) bundles: image and text embeddings, and zero-shot classification.

Data path of ``classify`` (``ContrastivePipeline.classify`` holds it end to end)::

    images -> preprocess.image (HFImagePreprocessor: Pillow bicubic, CLIP's shortest-edge crop)
           -> pixel_values (N, 3, S, S) float32 -> image_encoder -> image_embedding (N, E), L2-normalised
    labels -> tokenizer.json ids, [bos] + text + [eos] cut to the context, padded with pad_id
           (to the longest label, with an attention mask: CLIP; to the context length: SigLIP)
           -> text_encoder -> text_embedding (L, E), L2-normalised
    cosine = image_embedding @ text_embedding.T (N, L)
    logits = model.logit_scale * cosine + model.logit_bias
    probabilities = softmax(logits) over the labels (CLIP) or sigmoid(logits) per label (SigLIP)

The bundle has no decoder: ``caption`` and ``ask`` raise a BundleError that says so.

The bundle (written by export/contrastive_export.py): family "vision-language", architecture
"clip" or "siglip", tasks classify, embed_image, embed_text; components ``image_encoder``
(pixel_values ["batch", 3, S, S] float32 -> image_embedding ["batch", E]) and ``text_encoder``
(input_ids ["batch", "seq"] int64 and, for CLIP, attention_mask -> text_embedding ["batch", E]),
with roles (pixels, embedding; input_ids, attention_mask, embedding); ``model``: embed_dim,
image_size, logit_scale, logit_bias, probability, text_padding, max_text_length, labels,
dynamic_dims. The family modules (tinymm/families/clip.py, siglip.py) choose the probability rule.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from tinymm.errors import BundleError, InputError
from tinymm.pipelines.results import ClassifyResult, StageTimer
from tinymm.pipelines.sessions import bundle_tokenizer, open_sessions
from tinymm.preprocess.hf_image import image_preprocessor
from tinymm.preprocess.image import as_batch

if TYPE_CHECKING:
    from tinymm.backends.base import Session
    from tinymm.bundle import Bundle
    from tinymm.pipelines.load_options import LoadOptions
    from tinymm.preprocess.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

IMAGE_ENCODER, TEXT_ENCODER = "image_encoder", "text_encoder"
SOFTMAX, SIGMOID = "softmax", "sigmoid"  # how logits become probabilities (CLIP, SigLIP)
PADDINGS = ("longest", "max_length")  # model.text_padding: to the batch's longest text, or to the context
DEFAULT_TOP_K = 5
FAMILY = "vision-language"


@dataclass(frozen=True)
class ContrastiveSettings:
    """What the runtime needs beyond the graphs, from the manifest's ``model`` object."""

    logit_scale: float  # multiplier of the cosine (exp of the checkpoint's logit_scale)
    logit_bias: float  # added after scaling (SigLIP); 0 for CLIP
    probability: str  # softmax (over the labels) | sigmoid (each label alone)
    text_padding: str  # one of PADDINGS
    labels: tuple[str, ...]  # classify's default label set; () when the bundle ships none

    @classmethod
    def from_model_info(cls, info: Mapping[str, Any], probability: str) -> ContrastiveSettings:
        """Read and check ``info``; BundleError naming the bad key."""
        def number(key: str, default: float | None) -> float:
            value = info.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise BundleError(f"manifest model.{key}={value!r} must be a finite number; re-export the bundle")
            return float(value)

        padding = info.get("text_padding", "longest")
        if padding not in PADDINGS:
            raise BundleError(f"manifest model.text_padding={padding!r} must be one of {list(PADDINGS)}; re-export it")
        labels = info.get("labels", ())
        if not isinstance(labels, (list, tuple)) or not all(isinstance(x, str) and x.strip() for x in labels):
            raise BundleError(f"manifest model.labels must be a list of non-empty strings, got {labels!r:.80}")
        if probability not in (SOFTMAX, SIGMOID):
            raise ValueError(f"probability={probability!r} must be {SOFTMAX!r} or {SIGMOID!r}")
        declared = info.get("probability", probability)
        if declared != probability:
            raise BundleError(f"manifest model.probability={declared!r} but this architecture's probabilities are "
                              f"{probability!r}; the manifest and its architecture disagree, re-export the bundle")
        return cls(number("logit_scale", None), number("logit_bias", 0.0), probability, padding, tuple(labels))


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


def _texts(texts: Any, what: str) -> tuple[str, ...]:
    chosen = (texts,) if isinstance(texts, str) else tuple(texts)
    if not chosen:
        raise InputError(f"got an empty list of {what}; pass at least one")
    for text in chosen:
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{what[:-1]} {text!r} is empty or not a string; every one needs at least one word")
    return chosen


class ContrastivePipeline:
    """Image and text embeddings and zero-shot labels from a CLIP or SigLIP bundle.

    Build it with ``from_bundle`` (or ``tinymm.load``); the constructor takes the sessions, the
    preprocessor, the tokenizer and the manifest's model object, so tests can pass their own.
    """

    family = FAMILY

    def __init__(self, *, image_encoder: Session, text_encoder: Session, preprocessor: Any, tokenizer: Tokenizer,
                 model_info: Mapping[str, Any], probability: str, name: str = "contrastive",
                 architecture: str = "contrastive", tensors: Mapping[str, str] | None = None) -> None:
        """probability: "softmax" (CLIP) or "sigmoid" (SigLIP). tensors: role -> tensor name (pixels,
        image_embedding, input_ids, attention_mask, text_embedding); the defaults are the names the exporter writes."""
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        self.preprocessor, self.tokenizer, self.name, self.architecture = preprocessor, tokenizer, name, architecture
        self.settings = ContrastiveSettings.from_model_info(model_info, probability)
        self.tensors = {"pixels": "pixel_values", "image_embedding": "image_embedding", "input_ids": "input_ids",
                        "attention_mask": "attention_mask", "text_embedding": "text_embedding", **(tensors or {})}
        self._takes_mask = self.tensors["attention_mask"] in {s.name for s in text_encoder.inputs}
        self.domain_threshold = math.inf  # no domain check in these bundles; the CLI may set it, nothing reads it
        self.bundle: Bundle | None = None  # set by from_bundle; keeps an extracted archive alive
        self._label_cache: tuple[tuple[str, ...], np.ndarray] | None = None  # the last label set's embeddings

    @classmethod
    def from_bundle(cls, bundle: Bundle, options: LoadOptions | None, probability: str) -> ContrastivePipeline:
        """Load the two encoders of a CLIP/SigLIP bundle with ``options`` (default: LoadOptions())."""
        from tinymm.pipelines.load_options import LoadOptions

        manifest = bundle.manifest
        if manifest.family != FAMILY:
            raise BundleError(f"bundle {bundle.name!r} is a {manifest.family} bundle, not a {FAMILY} one")
        if manifest.preprocess.image is None:
            raise BundleError(f"bundle {bundle.name!r} has no preprocess.image section; re-export it")
        preprocessor = image_preprocessor(manifest.preprocess.image)
        tokenizer = bundle_tokenizer(bundle)
        sessions = open_sessions(bundle, (IMAGE_ENCODER, TEXT_ENCODER), (), options or LoadOptions())
        image, text = manifest.component(IMAGE_ENCODER), manifest.component(TEXT_ENCODER)
        tensors = {"pixels": image.tensor("pixels", "pixel_values"),
                   "image_embedding": image.tensor("embedding", "image_embedding"),
                   "input_ids": text.tensor("input_ids", "input_ids"),
                   "attention_mask": text.tensor("attention_mask", "attention_mask"),
                   "text_embedding": text.tensor("embedding", "text_embedding")}
        pipeline = cls(image_encoder=sessions[IMAGE_ENCODER], text_encoder=sessions[TEXT_ENCODER],
                       preprocessor=preprocessor, tokenizer=tokenizer, model_info=manifest.model,
                       probability=probability, name=bundle.name, architecture=manifest.architecture_name,
                       tensors=tensors)
        pipeline.bundle = bundle
        return pipeline

    def __repr__(self) -> str:
        return f"ContrastivePipeline({self.name!r}, {self.architecture}, provider={self.image_encoder.provider})"

    # ---- what a dual encoder cannot do -------------------------------------------------------

    def _no_decoder(self, task: str) -> BundleError:
        return BundleError(
            f"bundle {self.name!r} ({self.architecture}) has no decoder, so it cannot {task}: it embeds images and "
            "texts (classify, embed_image, embed_text). Use a captioning vision-language bundle to caption or ask"
        )

    def caption(self, images: Any, **kwargs: Any) -> Any:
        raise self._no_decoder("caption")

    def ask(self, images: Any, question: Any = None, **kwargs: Any) -> Any:
        raise self._no_decoder("answer questions")

    # ---- embeddings ------------------------------------------------------------------------

    def _encode_images(self, images: list[Any], rgb: bool) -> np.ndarray:
        pixels = self.preprocessor(images, rgb=rgb)  # (N, 3, S, S) float32
        out = self.tensors["image_embedding"]
        return self.image_encoder.run({self.tensors["pixels"]: pixels}, [out])[out]

    def embed_image(self, images: Any, *, rgb: bool = False) -> np.ndarray:
        """One image (a path, encoded bytes or an (H, W, 3) array, BGR unless ``rgb``) or a list ->
        (N, E) float32 L2-normalised image embeddings (N = 1 for one image)."""
        batch, _ = as_batch(images)
        return self._encode_images(batch, rgb)

    def token_ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The text contract: texts -> (ids (N, T) int64, attention mask (N, T) int64: 1 token, 0 padding).

        Each row is [bos] + the text's tokens + [eos] (as the bundle's add_bos/add_eos say), the
        tokens cut so the row fits the context, then padded with pad_id to the longest row or to
        the context length (model.text_padding).
        """
        config = self.tokenizer.config
        prefix = [config.bos_id] if config.add_bos else []
        suffix = [config.eos_id] if config.add_eos else []
        room = config.context_length - len(prefix) - len(suffix)
        rows = []
        for text in texts:
            tokens = self.tokenizer.encode(text)
            if len(tokens) > room:
                logger.warning("text %r takes %d tokens; cut to %d (the model's context)", text[:40], len(tokens), room)
            rows.append(prefix + tokens[:room] + suffix)
        length = config.context_length if self.settings.text_padding == "max_length" else max(map(len, rows))
        ids = np.full((len(rows), length), max(config.pad_id, 0), dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = row
            mask[i, :len(row)] = 1
        return ids, mask

    def embed_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """One text or a list -> (N, E) float32 L2-normalised text embeddings (texts used as given)."""
        ids, mask = self.token_ids(_texts(texts, "texts"))
        feeds = {self.tensors["input_ids"]: ids}
        if self._takes_mask:
            feeds[self.tensors["attention_mask"]] = mask
        out = self.tensors["text_embedding"]
        return self.text_encoder.run(feeds, [out])[out]

    # ---- classify --------------------------------------------------------------------------

    def _labels(self, labels: Sequence[str] | None) -> tuple[str, ...]:
        if labels is None:
            if not self.settings.labels:
                raise InputError(f"bundle {self.name!r} ships no label set; pass labels=[...] (e.g. --labels 'a cat,a dog')")
            return self.settings.labels
        chosen = _texts(labels, "labels")
        duplicates = sorted({x for x in chosen if chosen.count(x) > 1})
        if duplicates:
            raise InputError(f"labels {duplicates} are given more than once; list each label once")
        return chosen

    def _label_embeddings(self, labels: tuple[str, ...]) -> np.ndarray:
        """(L, E) embeddings of ``labels``; the last label set's are kept, so a stream pays once."""
        if self._label_cache is None or self._label_cache[0] != labels:
            self._label_cache = (labels, self.embed_text(list(labels)))
        return self._label_cache[1]

    def probabilities(self, cosine: np.ndarray) -> np.ndarray:
        """(N, L) cosine similarities -> (N, L) probabilities by the family's rule (module docstring)."""
        logits = self.settings.logit_scale * cosine + self.settings.logit_bias
        return _softmax(logits) if self.settings.probability == SOFTMAX else _sigmoid(logits)

    def classify(self, images: Any, labels: Sequence[str] | None = None, *, top_k: int = DEFAULT_TOP_K,
                 rgb: bool = False, domain_threshold: float | None = None) -> ClassifyResult | list[ClassifyResult]:
        """Rank ``labels`` (default: the bundle's label set) for one image or each image of a list.

        Returns a ClassifyResult (the top_k labels, their cosine scores and probabilities), or a
        list of them for a list of images. domain_threshold is accepted for the CLI's sake and
        ignored: these bundles carry no domain check, so no frame is rejected.
        """
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k={top_k!r} must be a positive integer")
        chosen = self._labels(labels)
        batch, single = as_batch(images)
        timer = StageTimer()
        pixels = self.preprocessor(batch, rgb=rgb)  # (N, 3, S, S)
        timer.lap("preprocess")
        out = self.tensors["image_embedding"]
        image_embedding = self.image_encoder.run({self.tensors["pixels"]: pixels}, [out])[out]  # (N, E)
        label_embedding = self._label_embeddings(chosen)  # (L, E)
        timer.lap("encode")
        cosine = image_embedding @ label_embedding.T  # (N, L)
        probabilities = self.probabilities(cosine)  # (N, L)
        order = np.argsort(-cosine, axis=1, kind="stable")[:, :top_k]  # (N, k)
        timer.lap("postprocess")
        timings = timer.timings(len(batch))
        results = [ClassifyResult(tuple(chosen[j] for j in row), tuple(float(cosine[i, j]) for j in row),
                                  tuple(float(probabilities[i, j]) for j in row), timings)
                   for i, row in enumerate(order)]
        return results[0] if single else results
