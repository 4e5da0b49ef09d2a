"""Is a frame inside the vision model's domain? A calibrated distance on the image encoder's tokens.

A vision-language model answers whatever it is shown: trained on scenes of shapes and signs, it
finds objects in a black frame or in noise. The domain check tells "I don't know" from an
answer. Its feature is the mean over the image encoder's ``image_embeds`` tokens (N, T, D) ->
(N, D); its score the Mahalanobis distance of that feature from the Gaussian fitted on the
training scenes (shrunk towards a scaled identity, so that the covariance is well conditioned):

    distance = sqrt((f - mean)^T precision (f - mean))

A frame whose distance exceeds ``threshold`` is rejected, ``reject_reason="out_of_domain"``. The
exporter fits the Gaussian on training scenes and sets the threshold to the largest distance
among the validation scenes, so about one in that many in-domain frames is rejected (the
manifest's ``model.domain_check.calibration`` says how many, and what it measured on test
scenes). The mean token was chosen over the contrastive ``image_embedding``: that embedding is
trained to name the objects, and it puts frames without any near the scenes they resemble.

Manifest (``model.domain_check``)::

    {"file": "domain_check.npz", "feature": "image_embeds.mean", "threshold": 7.1, "calibration": {...}}

The file holds ``mean`` (D,) and ``precision`` (D, D), float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from tinymm.errors import BundleError, InputError

if TYPE_CHECKING:
    from tinymm.bundle import Bundle

OUT_OF_DOMAIN = "out_of_domain"  # reject_reason of a frame the check rejects
FEATURE = "image_embeds.mean"  # the only feature this runtime computes
FEATURE_OUTPUT = "image_embeds"  # the image encoder output it is computed from
DEFAULT_SHRINKAGE = 0.05  # covariance shrinkage towards trace/D * I when fitting


def check_domain_threshold(value: object) -> float:
    """``domain_threshold`` as a positive float (``math.inf`` turns the check off); InputError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
        raise InputError(f"domain_threshold={value!r} must be a positive number (inf turns the domain check off)")
    return float(value)


def mean_token(image_embeds: np.ndarray) -> np.ndarray:
    """(N, T, D) image tokens -> (N, D) float64 feature."""
    if image_embeds.ndim != 3:
        raise BundleError(f"image_embeds has shape {image_embeds.shape}; the domain check needs (N, tokens, dim)")
    return image_embeds.astype(np.float64).mean(axis=1)


def fit_gaussian(features: np.ndarray, shrinkage: float = DEFAULT_SHRINKAGE) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), precision (D, D)) of (N, D) features, the covariance shrunk towards trace/D * I."""
    if features.ndim != 2 or features.shape[0] <= features.shape[1]:
        raise ValueError(f"fitting the domain Gaussian needs more samples than dimensions, got {features.shape}")
    mean = features.mean(axis=0)
    covariance = np.cov(features, rowvar=False)
    d = covariance.shape[0]
    covariance = (1.0 - shrinkage) * covariance + shrinkage * np.trace(covariance) / d * np.eye(d)
    return mean, np.linalg.inv(covariance)


@dataclass(frozen=True)
class DomainCheck:
    """A fitted Gaussian of the mean image token and the distance above which a frame is rejected."""

    mean: np.ndarray  # (D,)
    precision: np.ndarray  # (D, D), the inverse of the shrunk covariance
    threshold: float  # distances above it are out of domain

    def distances(self, image_embeds: np.ndarray) -> np.ndarray:
        """(N, T, D) image tokens -> (N,) float64 Mahalanobis distances."""
        return self.feature_distances(mean_token(image_embeds))

    def feature_distances(self, features: np.ndarray) -> np.ndarray:
        """(N, D) mean image tokens -> (N,) float64 Mahalanobis distances."""
        centred = features - self.mean
        if centred.shape[1] != self.mean.shape[0]:
            raise BundleError(f"the domain check was fitted on {self.mean.shape[0]}-dim tokens but the image encoder "
                              f"gives {centred.shape[1]}; re-export the bundle")
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", centred, self.precision, centred), 0.0))

    @classmethod
    def from_bundle(cls, bundle: Bundle, info: Mapping[str, Any]) -> DomainCheck | None:
        """The check the manifest's ``model.domain_check`` describes; None when the bundle has none."""
        spec = info.get("domain_check")
        if spec is None:
            return None
        if not isinstance(spec, Mapping) or not isinstance(spec.get("file"), str):
            raise BundleError(f"manifest model.domain_check={spec!r:.80} must be an object with a 'file'; re-export it")
        if spec.get("feature", FEATURE) != FEATURE:
            raise BundleError(f"model.domain_check.feature={spec.get('feature')!r}; this runtime computes {FEATURE!r}")
        threshold = spec.get("threshold")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
            raise BundleError(f"model.domain_check.threshold={threshold!r} must be a positive number; re-export it")
        path = bundle.file_path(spec["file"])
        try:
            with np.load(path, allow_pickle=False) as data:
                mean, precision = data["mean"].astype(np.float64), data["precision"].astype(np.float64)
        except (OSError, KeyError, ValueError) as e:
            raise BundleError(f"domain check file {path} is unreadable or lacks mean/precision ({e}); "
                              "re-export the bundle") from e
        d = mean.shape[0] if mean.ndim == 1 else -1
        if d < 1 or precision.shape != (d, d) or not (np.isfinite(mean).all() and np.isfinite(precision).all()):
            raise BundleError(f"domain check file {path}: mean {mean.shape} and precision {precision.shape} must be "
                              "(D,) and (D, D), finite; re-export the bundle")
        return cls(mean, precision, float(threshold))


__all__ = ["DomainCheck", "OUT_OF_DOMAIN", "FEATURE", "FEATURE_OUTPUT", "check_domain_threshold", "fit_gaussian",
           "mean_token"]
