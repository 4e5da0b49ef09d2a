"""Fit and calibrate a vision-language bundle's domain check (tinymm/pipelines/domain_check.py).

With ``--data DIR`` (a scene dataset written by the training recipe) the exporter runs the
exported fp32 image encoder on:

- the first ``REFERENCE_SCENES`` training scenes: the Gaussian of the mean image token;
- the validation split: the threshold is the largest distance among its scenes, so about one in
  that many in-domain frames is rejected;
- the test split: the share of in-domain frames each shipped precision rejects, recorded in the
  manifest's ``model.domain_check.calibration``.

The runtime applies the check; only the statistics are computed here.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tinymm.pipelines.domain_check import (
    DEFAULT_SHRINKAGE,
    FEATURE,
    FEATURE_OUTPUT,
    DomainCheck,
    fit_gaussian,
    mean_token,
)
from tinymm.preprocess.config import ImageConfig
from tinymm.preprocess.image import ImagePreprocessor

logger = logging.getLogger(__name__)

DOMAIN_FILE = "domain_check.npz"
REFERENCE_SCENES = 4000  # training scenes the Gaussian is fitted on (128-dim tokens: 30 per dimension)
CALIBRATION_SCENES = 1000  # validation scenes whose largest distance is the threshold (at most)
BATCH = 128


def _features(encoder_path: Path, frames: Any, count: int, image: ImageConfig) -> np.ndarray:
    """(count, D) mean image tokens of frames[0:count] through the ONNX image encoder at encoder_path."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(encoder_path), providers=["CPUExecutionProvider"])
    preprocessor = ImagePreprocessor(image)
    rows = []
    for start in range(0, count, BATCH):
        pixels = preprocessor([frames[i][0] for i in range(start, min(start + BATCH, count))], rgb=True)
        rows.append(mean_token(session.run([FEATURE_OUTPUT], {"pixel_values": pixels})[0]))
    return np.concatenate(rows)


def _has_splits(data_dir: Path, *splits: str) -> bool:
    from train.data.scene_dataset import SCENES_DIR

    root = data_dir / SCENES_DIR if (data_dir / SCENES_DIR).is_dir() else data_dir
    return all((root / split / "annotations.jsonl").is_file() for split in splits)


def fit_domain_check(data_dir: Path | None, image: ImageConfig, encoders: Mapping[str, Path],
                     out: Path) -> dict[str, Any] | None:
    """Write the check's statistics to ``out`` and return the manifest's ``model.domain_check``
    object; None (logged) when ``data_dir`` lacks the train, val and test splits.

    encoders maps each shipped precision to its image encoder file (fp32 first: it fits and calibrates).
    """
    from train.data.scene_dataset import SceneDataset

    if data_dir is None or not _has_splits(data_dir, "train", "val", "test"):
        logger.warning("no domain check: it is fitted on --data's train, val and test scene splits")
        return None
    train, val, test = (SceneDataset(data_dir, split) for split in ("train", "val", "test"))
    n_ref, n_val = min(REFERENCE_SCENES, len(train)), min(CALIBRATION_SCENES, len(val))
    mean, precision = fit_gaussian(_features(encoders["fp32"], train, n_ref, image), DEFAULT_SHRINKAGE)
    np.savez(out, mean=mean.astype(np.float32), precision=precision.astype(np.float32))
    # Calibrate with the statistics as shipped (float32), as the runtime will read them.
    check = DomainCheck(mean.astype(np.float32).astype(np.float64), precision.astype(np.float32).astype(np.float64),
                        threshold=np.inf)
    val_distances = check.feature_distances(_features(encoders["fp32"], val, n_val, image))
    # Rounded up, so that the manifest's 4 decimals still accept every validation scene.
    threshold = math.ceil(float(val_distances.max()) * 1e4) / 1e4
    rejected_on_test = {}
    for name, path in encoders.items():
        distances = check.feature_distances(_features(path, test, len(test), image))
        rejected_on_test[name] = {"scenes": len(test), "rejected": int((distances > threshold).sum())}
    spec = {
        "file": DOMAIN_FILE, "feature": FEATURE, "threshold": threshold,
        "calibration": {
            "reference": f"{n_ref} scenes of the train split of {data_dir}",
            "shrinkage": DEFAULT_SHRINKAGE,
            "threshold_rule": f"the largest distance among {n_val} scenes of the val split",
            "val_distance_percentiles": {f"p{q}": round(float(np.percentile(val_distances, q)), 4) for q in (50, 90, 99)},
            "test_rejected": rejected_on_test,
        },
    }
    logger.info("domain check: threshold %.3f; test scenes rejected %s", threshold, rejected_on_test)
    return spec
