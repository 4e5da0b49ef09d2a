"""The vision domain check: fitted at export on the scene splits, applied by the runtime to caption,
ask and classify, and overridable per call and from the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tinymm.errors import BundleError, InputError
from tinymm.pipelines.domain_check import DomainCheck, check_domain_threshold, fit_gaussian, mean_token


def test_the_distance_is_the_mahalanobis_distance_of_the_mean_token() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 6)) * np.arange(1, 7)
    mean, precision = fit_gaussian(features, shrinkage=0.0)
    np.testing.assert_allclose(mean, features.mean(0))
    np.testing.assert_allclose(np.linalg.inv(precision), np.cov(features, rowvar=False), rtol=1e-9)
    tokens = rng.normal(size=(3, 5, 6))  # (N, T, D)
    check = DomainCheck(mean, precision, threshold=2.0)
    z = tokens.mean(axis=1) - mean
    expected = np.sqrt([row @ precision @ row for row in z])
    np.testing.assert_allclose(check.distances(tokens), expected)
    np.testing.assert_allclose(mean_token(tokens), tokens.mean(axis=1))
    shrunk_mean, shrunk = fit_gaussian(features, shrinkage=1.0)  # all the way to trace/D * I
    np.testing.assert_allclose(np.linalg.inv(shrunk), np.trace(np.cov(features, rowvar=False)) / 6 * np.eye(6))


def test_fitting_needs_more_samples_than_dimensions_and_thresholds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="more samples than dimensions"):
        fit_gaussian(np.zeros((4, 8)))
    for bad in (0, -1.0, math.nan, True, "7"):
        with pytest.raises(InputError, match="positive number"):
            check_domain_threshold(bad)
    assert check_domain_threshold(math.inf) == math.inf


def _bundle_with(tmp_path: Path, spec: object, arrays: dict | None) -> SimpleNamespace:
    if arrays is not None:
        np.savez(tmp_path / "domain_check.npz", **arrays)
    return SimpleNamespace(file_path=lambda name: tmp_path / name)


@pytest.mark.parametrize("spec, arrays, message", [
    ({"threshold": 3.0}, None, "must be an object with a 'file'"),
    ({"file": "domain_check.npz", "threshold": 0}, {"mean": np.zeros(2), "precision": np.eye(2)}, "positive number"),
    ({"file": "domain_check.npz", "threshold": 3.0, "feature": "pixels"}, None, "this runtime computes"),
    ({"file": "domain_check.npz", "threshold": 3.0}, {"mean": np.zeros(2)}, "lacks mean/precision"),
    ({"file": "domain_check.npz", "threshold": 3.0}, {"mean": np.zeros(2), "precision": np.eye(3)}, r"\(D,\) and \(D, D\)"),
    ({"file": "domain_check.npz", "threshold": 3.0}, {"mean": np.full(2, np.nan), "precision": np.eye(2)}, "finite"),
])
def test_a_bad_domain_check_in_a_manifest_is_a_bundle_error(tmp_path: Path, spec, arrays, message) -> None:
    with pytest.raises(BundleError, match=message):
        DomainCheck.from_bundle(_bundle_with(tmp_path, spec, arrays), {"domain_check": spec})


def test_a_bundle_without_a_domain_check_has_none(tmp_path: Path) -> None:
    assert DomainCheck.from_bundle(_bundle_with(tmp_path, None, None), {}) is None


# ---- end to end: export with --data, then the runtime and the CLI -------------------------------------

torch = pytest.importorskip("torch", reason="the export tier needs torch (pip install 'tinymm[train]')")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bundle, scene data) of a tiny checkpoint exported with --data (train 80, val 12, test 12 scenes)."""
    from export.__main__ import main as export_main
    from tiny_runs import write_tiny_checkpoints
    from train.data.scene_dataset import build_specs, write_dataset

    threads = torch.get_num_threads()
    root = write_tiny_checkpoints(tmp_path_factory.mktemp("runs"), ["stop", "turn left"])
    write_dataset(root / "data", build_specs({"train": 80, "val": 12, "test": 12}, size=32, seed=0), workers=1,
                  progress=False)
    out = root / "bundle"
    try:
        code = export_main([str(root / "vlm" / "final"), "--out", str(out), "--precision", "fp32,int8", "--data",
                            str(root / "data"), "--calibration", "2", "--exporter", "torchscript", "--threads", "1",
                            "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return out, root / "data"


def test_export_fits_the_check_and_its_threshold_accepts_every_validation_scene(exported) -> None:
    import tinymm
    from tinymm.bundle import read_bundle
    from train.data.scene_dataset import SceneDataset

    bundle_dir, data = exported
    with read_bundle(bundle_dir) as bundle:
        spec = bundle.manifest.model["domain_check"]
        assert spec["file"] in bundle.manifest.files and spec["feature"] == "image_embeds.mean"
        assert spec["calibration"]["test_rejected"]["fp32"]["scenes"] == 12
        assert set(spec["calibration"]["test_rejected"]) == {"fp32", "int8"}
    vlm = tinymm.load(str(bundle_dir), precision="fp32")
    assert vlm.domain_threshold == spec["threshold"]
    val = [image for image, _ in SceneDataset(data, "val")]
    results = vlm.caption(val, rgb=True)
    distances = [r.domain_score for r in results]
    assert max(distances) <= spec["threshold"] < max(distances) + 1e-3  # the largest, rounded up
    assert not any(r.rejected for r in results) and all(r.reject_reason is None for r in results)


def test_every_vision_result_carries_the_verdict_and_a_call_can_move_the_threshold(exported) -> None:
    import tinymm

    bundle_dir, _ = exported
    vlm = tinymm.load(str(bundle_dir), precision="fp32")
    frame = np.full((32, 32, 3), 0, np.uint8)
    for result in (vlm.caption(frame, domain_threshold=1e-6), vlm.ask(frame, "how many objects are there?",
                                                                      domain_threshold=1e-6),
                   vlm.classify(frame, domain_threshold=1e-6)):
        assert result.rejected and result.reject_reason == "out_of_domain" and result.domain_score > 1e-6
        payload = result.to_dict()
        assert payload["rejected"] is True and payload["reject_reason"] == "out_of_domain"
        assert payload["domain_score"] == pytest.approx(result.domain_score, abs=1e-6)
    kept = vlm.caption(frame, domain_threshold=math.inf)
    assert not kept.rejected and kept.reject_reason is None and kept.domain_score is not None
    with pytest.raises(InputError, match="positive number"):
        vlm.ask(frame, "how many objects are there?", domain_threshold=-1)


def test_the_cli_marks_a_rejected_frame_and_json_carries_it(exported, tmp_path: Path, capsys) -> None:
    import cv2

    from tinymm.cli import main

    bundle_dir, _ = exported
    image = tmp_path / "black.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    assert main(["caption", str(image), "--bundle", str(bundle_dir), "--domain-threshold", "1e-6"]) == 0
    assert "[rejected: out_of_domain, distance " in capsys.readouterr().out
    assert main(["ask", str(image), "how many objects are there?", "--bundle", str(bundle_dir), "--json",
                 "--domain-threshold", "1e-6"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["rejected"] is True and payload["reject_reason"] == "out_of_domain" and payload["domain_score"] > 0
    assert main(["classify", str(image), "--bundle", str(bundle_dir), "--json", "--domain-threshold", "inf"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["rejected"] is False
    assert main(["caption", str(image), "--bundle", str(bundle_dir), "--domain-threshold", "0"]) == 2
    assert "positive number" in capsys.readouterr().err


def test_a_bundle_without_the_check_answers_unmarked(tmp_path: Path) -> None:
    import tinymm

    vlm = tinymm.load("scene-vlm")
    if vlm.domain_check is not None:  # the shipped bundle carries one: drop it to see the old behaviour
        vlm.domain_check, vlm.domain_threshold = None, math.inf
    result = vlm.caption(np.zeros((64, 64, 3), np.uint8))
    assert not result.rejected and result.reject_reason is None and result.domain_score is None
    assert "domain_score" not in result.to_dict() and result.to_dict()["rejected"] is False
