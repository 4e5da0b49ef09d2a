"""tinymm.preprocess.pil_resize against Pillow's own resize filters, and the Hugging Face image contract.

Every comparison is exact (or within float32 rounding after normalisation): the images use the whole
0..255 range, uint8 noise included, where the filters overshoot, the intermediate image clips and
Pillow's pass order shows.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from tinymm.errors import BundleError, InputError
from tinymm.preprocess.config import ImageConfig
from tinymm.preprocess.image_tiles import TileConfig, TilePreprocessor
from tinymm.preprocess.pil_resize import (FILTERS, pil_bicubic_resize, pil_filter, pil_lanczos_resize, pil_resize,
                                          resize_weights, vertical_first)

PILLOW = {"box": Image.BOX, "bilinear": Image.BILINEAR, "hamming": Image.HAMMING, "bicubic": Image.BICUBIC,
          "lanczos": Image.LANCZOS}
# (in_h, in_w, out_h, out_w): up, down, mixed, tiny, large factors, non-square, both pass orders
SIZES = [(37, 53, 224, 224), (480, 640, 224, 298), (640, 480, 298, 224), (300, 200, 64, 96), (96, 128, 32, 43),
         (5, 7, 13, 11), (224, 224, 160, 160), (64, 48, 200, 150), (1000, 750, 224, 224), (120, 90, 120, 45),
         (200, 40, 96, 20), (90, 60, 32, 69), (1, 9, 4, 1), (700, 5, 3, 2)]


def _natural(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random image with smooth regions and hard, saturated edges (0 and 255), as photos and rendered scenes have."""
    coarse = rng.integers(0, 256, (max(2, h // 6), max(2, w // 6), 3), dtype=np.uint8)
    image = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
    for value in (0, 255, 0):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        cv2.circle(image, (x, y), int(rng.integers(1, max(2, min(h, w) // 3))), (value, 255 - value, value), -1)
    return image


def _pillow(image: np.ndarray, width: int, height: int, filter: str = "bicubic") -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), PILLOW[filter]))


def _two_orders(image: np.ndarray, width: int, height: int, filter: str) -> tuple[np.ndarray, np.ndarray]:
    """(horizontal pass first, vertical pass first), each through a uint8 intermediate image."""
    across = _pillow(_pillow(image, width, image.shape[0], filter), width, height, filter)
    down = _pillow(_pillow(image, image.shape[1], height, filter), width, height, filter)
    return across, down


@pytest.mark.parametrize("filter", ["bicubic", "lanczos", "bilinear"])
@pytest.mark.parametrize("in_h,in_w,out_h,out_w", SIZES)
def test_equals_pillow_on_noise_and_saturated_edges(in_h, in_w, out_h, out_w, filter):
    rng = np.random.default_rng(in_h * 1000 + out_w)
    for image in (_natural(rng, in_h, in_w), rng.integers(0, 256, (in_h, in_w, 3), dtype=np.uint8)):
        ours, theirs = pil_resize(image, out_w, out_h, filter), _pillow(image, out_w, out_h, filter)
        assert ours.shape == theirs.shape == (out_h, out_w, 3) and ours.dtype == np.uint8
        assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("filter", ["box", "hamming"])
def test_the_other_convolution_filters_equal_pillow(filter):
    rng = np.random.default_rng(2)
    for in_h, in_w, out_h, out_w in SIZES[:6]:
        image = rng.integers(0, 256, (in_h, in_w, 3), dtype=np.uint8)
        assert np.array_equal(pil_resize(image, out_w, out_h, filter), _pillow(image, out_w, out_h, filter))


@pytest.mark.parametrize("filter", ["bicubic", "lanczos"])
def test_pass_order_follows_pillow_at_the_boundary_of_its_rule(filter):
    # Vertical first when the height shrinks by more than twice as many pixels as the width: on noise the
    # two orders differ, so each side of the boundary (equal: horizontal first; one more: vertical) shows it.
    rng = np.random.default_rng(4)
    seen = set()
    for in_w, out_w, out_h in ((60, 40, 30), (45, 30, 9), (33, 32, 50), (80, 20, 7)):
        for extra in (0, 1):
            in_h = out_h + 2 * (in_w - out_w) + extra
            image = rng.integers(0, 256, (in_h, in_w), dtype=np.uint8)
            across, down = _two_orders(image, out_w, out_h, filter)
            assert not np.array_equal(across, down)  # else this case could not tell the orders apart
            first = vertical_first(in_h, in_w, out_h, out_w)
            assert first == bool(extra)
            assert np.array_equal(pil_resize(image, out_w, out_h, filter), down if first else across)
            seen.add(first)
    assert seen == {False, True}
    assert vertical_first(21, 10, 20, 100) and not vertical_first(20, 10, 22, 100)  # a growing width or height


def test_named_functions_and_interpolation_names():
    image = np.random.default_rng(6).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    assert np.array_equal(pil_bicubic_resize(image, 17, 40), _pillow(image, 17, 40, "bicubic"))
    assert np.array_equal(pil_lanczos_resize(image, 17, 40), _pillow(image, 17, 40, "lanczos"))
    assert [pil_filter(n) for n in ("pil_bicubic", "pil_lanczos", "pil_bilinear", "bicubic", "area", "pil_area")] == \
        ["bicubic", "lanczos", "bilinear", None, None, None]
    assert {f.resample_id for f in FILTERS.values()} == {int(PILLOW[name]) for name in FILTERS}
    assert all(int(PILLOW[name]) == FILTERS[name].resample_id for name in FILTERS)


def test_opencv_filters_are_not_the_same_filters():
    image = _natural(np.random.default_rng(3), 300, 200)
    for flag, filter in ((cv2.INTER_CUBIC, "bicubic"), (cv2.INTER_LANCZOS4, "lanczos")):
        other = cv2.resize(image, (64, 96), interpolation=flag)
        # the reason this module exists
        assert np.abs(other.astype(int) - _pillow(image, 64, 96, filter).astype(int)).max() > 1


def test_grayscale_same_size_and_weights():
    gray = np.random.default_rng(1).integers(0, 256, (20, 30), dtype=np.uint8)
    assert np.array_equal(pil_bicubic_resize(gray, 30, 20), gray) and pil_bicubic_resize(gray, 30, 20) is not gray
    for filter in ("bicubic", "lanczos"):
        assert np.array_equal(pil_resize(gray, 11, 47, filter), _pillow(gray, 11, 47, filter))
        index, weight = resize_weights(30, 11, filter)
        assert weight.dtype == np.int32 and not weight.flags.writeable and not index.flags.writeable
        assert np.abs(weight.sum(axis=1) - 2 ** 22).max() <= weight.shape[1]  # each row sums to one, rounded per tap
        assert resize_weights(30, 11, filter) is resize_weights(30, 11, filter)  # cached per (in, out, filter)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8), "image.png"])
def test_bad_input_is_an_input_error(bad):
    with pytest.raises(InputError, match="uint8"):
        pil_bicubic_resize(bad, 8, 8)
    with pytest.raises(InputError, match="width=0"):
        pil_bicubic_resize(np.zeros((4, 4, 3), np.uint8), 0, 8)
    with pytest.raises(InputError, match="'nearest' is not one of"):
        pil_resize(np.zeros((4, 4, 3), np.uint8), 8, 8, "nearest")


def test_image_config_shortest_edge_and_pillow_filters_are_backwards_compatible():
    old = ImageConfig(64, 64, resize="center_crop", interpolation="bicubic")
    assert "shortest_edge" not in old.to_dict() and ImageConfig.from_dict(old.to_dict()) == old
    clip = ImageConfig(224, 224, resize="shortest_edge", shortest_edge=224, interpolation="pil_bicubic")
    assert ImageConfig.from_dict(clip.to_dict()) == clip and clip.to_dict()["shortest_edge"] == 224
    for name in ("pil_lanczos", "pil_bilinear"):
        config = ImageConfig(32, 32, interpolation=name)
        assert ImageConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="interpolation"):
        ImageConfig(32, 32, interpolation="pil_nearest")
    with pytest.raises(ValueError, match="shortest_edge"):
        ImageConfig(224, 224, resize="shortest_edge")
    with pytest.raises(ValueError, match="shortest_edge"):
        ImageConfig(224, 224, resize="stretch", shortest_edge=256)
    with pytest.raises(ValueError, match="crop fits"):
        ImageConfig(224, 224, resize="shortest_edge", shortest_edge=200)


@pytest.mark.parametrize("processor", ["clip", "siglip", "siglip-lanczos"])
def test_hf_preprocessor_matches_the_transformers_processor(processor):
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

    from tinymm.preprocess.hf_image import HFImagePreprocessor, image_preprocessor

    if processor == "clip":
        reference = CLIPImageProcessorPil(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
        config = ImageConfig(48, 48, resize="shortest_edge", shortest_edge=48, interpolation="pil_bicubic",
                             mean=tuple(reference.image_mean), std=tuple(reference.image_std))
    else:
        lanczos = processor == "siglip-lanczos"
        reference = SiglipImageProcessorPil(size={"height": 40, "width": 40}, resample=1 if lanczos else 3)
        config = ImageConfig(40, 40, resize="stretch", interpolation="pil_lanczos" if lanczos else "pil_bicubic")
    assert isinstance(image_preprocessor(config), HFImagePreprocessor)
    rng = np.random.default_rng(5)
    images = [_natural(rng, 90, 120), _natural(rng, 120, 70), rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)]
    ours = HFImagePreprocessor(config)([im[:, :, ::-1].copy() for im in images])  # BGR in, as from OpenCV
    theirs = reference(images=images, return_tensors="np")["pixel_values"]
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-5  # the same uint8 pixels; only float32 rounding differs


@pytest.mark.parametrize("resample,interpolation", [(1, "pil_lanczos"), (1, "lanczos"), (2, "pil_bilinear")])
def test_smolvlm_tiles_match_the_transformers_processor(resample, interpolation, caplog):
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    # The bundle's interpolation, "pil_lanczos", or the bare Pillow name that older bundles wrote.
    image_config = ImageConfig(32, 32, interpolation=interpolation)
    config = TileConfig.from_model_info({"tiling": {"tile": 32, "longest_edge": 96, "splitting": True}}, image_config)
    tiles = TilePreprocessor(config)
    assert config.resample == interpolation.removeprefix("pil_") and not caplog.records  # no fallback warning
    reference = SmolVLMImageProcessorPil(size={"longest_edge": 96}, max_image_size={"longest_edge": 32},
                                         resample=resample, do_image_splitting=True)
    rng = np.random.default_rng(8)
    for h, w in ((200, 40), (50, 70), (31, 33), (120, 121)):
        image = _natural(rng, h, w)
        ours, rows, cols = tiles(image)
        out = reference(images=[[image]], return_row_col_info=True, return_tensors="np")
        assert (rows, cols) == (out["rows"][0][0], out["cols"][0][0])
        assert np.abs(ours - out["pixel_values"][0]).max() <= 1e-6


def test_tiles_refuse_a_filter_that_is_not_pillows():
    with pytest.raises(BundleError, match="resample='area'"):
        TileConfig.from_model_info({"tiling": {"tile": 32, "longest_edge": 96, "splitting": True}},
                                   ImageConfig(32, 32, interpolation="area"))
