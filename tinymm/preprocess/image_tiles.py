"""Idefics3 / SmolVLM image tiling: one RGB image -> the vision encoder's tiles, in numpy.

What transformers' ``SmolVLMImageProcessorPil`` (and Idefics3's, the same code) does, step by step::

    (H, W, 3) uint8 RGB
    -> resize so that the longest edge is ``longest_edge`` (the short edge keeps the aspect, even)
    -> with splitting: resize up to whole tiles of ``tile`` pixels on both edges, cut the tiles
       row-major, and append the whole image resized to tile x tile (the "global" image);
       without: the image resized to tile x tile alone (rows = cols = 0)
    -> x / 255, then (x - mean) / std per channel -> (tiles, 3, tile, tile) float32

Every resize is Pillow's on uint8 with the checkpoint's filter (``pil_resize``, equal to Pillow's
output; SmolVLM's processor defaults to Lanczos). Only Pillow's NEAREST is not reproduced: a
checkpoint that asks for it is resized with bicubic, and a warning says so.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from tinymm.errors import BundleError
from tinymm.preprocess.pil_resize import FILTERS as PIL_FILTERS
from tinymm.preprocess.pil_resize import pil_filter, pil_resize

logger = logging.getLogger(__name__)

MAX_IMAGE_SIDE = 4096  # transformers' cap on either edge after the first resize
UINT8_MAX = 255.0
FALLBACK_FILTER = "bicubic"  # stands in for a Pillow filter pil_resize does not reproduce (NEAREST)
FILTERS = ("nearest", *PIL_FILTERS)  # Pillow's filters, as TileConfig.resample names them


@dataclass(frozen=True)
class TileConfig:
    """The image processor's settings, from the bundle's ``model`` object and ``preprocess.image``."""

    tile: int  # tile side in pixels (max_image_size.longest_edge = the vision encoder's image size)
    longest_edge: int  # the first resize brings the longest edge to this (size.longest_edge)
    splitting: bool = True  # cut tiles plus a global image (do_image_splitting); False: one tile x tile image
    resize: bool = True  # do_resize: the first resize to longest_edge
    resample: str = "bicubic"  # the checkpoint's Pillow filter, one of FILTERS
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per channel, on pixels scaled to [0, 1]
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        for name in ("tile", "longest_edge"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise BundleError(f"image tiling: {name}={value!r} must be a positive integer; re-export the bundle")
        if self.resample not in FILTERS:
            raise BundleError(f"image tiling: resample={self.resample!r} is not one of {list(FILTERS)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise BundleError(f"image tiling: mean {self.mean} and std {self.std} need 3 values, std > 0")

    @classmethod
    def from_model_info(cls, info: Mapping[str, Any], image: Any) -> TileConfig:
        """From the manifest's model object (``tiling``) and its ``preprocess.image`` (mean, std, filter: "pil_lanczos",
        or the bare Pillow name "lanczos" that bundles wrote before the "pil_" interpolations existed)."""
        tiling = info.get("tiling")
        if not isinstance(tiling, Mapping):
            raise BundleError(f"manifest model.tiling must be an object (tile, longest_edge, splitting), got "
                              f"{tiling!r:.80}; re-export the bundle")
        try:
            return cls(tile=tiling["tile"], longest_edge=tiling["longest_edge"], splitting=bool(tiling["splitting"]),
                       resize=bool(tiling.get("resize", True)),
                       resample=pil_filter(image.interpolation) or image.interpolation,
                       mean=tuple(image.mean), std=tuple(image.std))
        except KeyError as e:
            raise BundleError(f"manifest model.tiling lacks {e}; re-export the bundle") from e


def _even_up(n: int) -> int:
    return n + 1 if n % 2 else n


def longest_edge_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """(height, width) with the longest edge brought to ``longest`` (the other one even), then capped at
    MAX_IMAGE_SIDE: transformers' ``get_resize_output_image_size``."""
    aspect = width / height
    if width >= height:
        width, height = longest, _even_up(int(longest / aspect))
    else:
        height, width = longest, _even_up(int(longest * aspect))
    height, width = max(height, 1), max(width, 1)
    aspect = width / height
    if width >= height and width > MAX_IMAGE_SIDE:
        width, height = MAX_IMAGE_SIDE, int(MAX_IMAGE_SIDE / aspect)
    elif height > width and height > MAX_IMAGE_SIDE:
        height, width = MAX_IMAGE_SIDE, int(MAX_IMAGE_SIDE * aspect)
    return max(height, 1), max(width, 1)


def whole_tiles_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """(height, width) rounded up to whole tiles: transformers' ``resize_for_vision_encoder``."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return height, width


def resize_rgb(image: np.ndarray, height: int, width: int, resample: str) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) uint8 with Pillow's ``resample`` filter (bicubic for NEAREST)."""
    return pil_resize(image, width, height, resample if resample in PIL_FILTERS else FALLBACK_FILTER)


class TilePreprocessor:
    """One image -> (tiles (n, 3, tile, tile) float32, rows, cols), as the checkpoint's image processor."""

    def __init__(self, config: TileConfig) -> None:
        self.config = config
        if config.resample not in PIL_FILTERS:  # once per pipeline, not per image
            logger.warning("the checkpoint resizes with Pillow's %s; this tinymm resizes with %s, so pixel values "
                           "differ from transformers' processor", config.resample, FALLBACK_FILTER)
        mean = np.asarray(config.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(config.std, dtype=np.float32).reshape(1, 3, 1, 1)
        self._mean, self._std = mean, std

    def sizes(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int] | None]:
        """The (height, width) after the first resize, and after rounding up to tiles (None without splitting)."""
        c = self.config
        first = longest_edge_size(height, width, c.longest_edge) if c.resize else (height, width)
        return first, whole_tiles_size(*first, c.tile) if c.splitting else None

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, int, int]:
        """(H, W, 3) uint8 RGB -> ((n, 3, tile, tile) float32, rows, cols); n = rows * cols + 1 when
        split (the global image last), else 1 with rows = cols = 0."""
        c = self.config
        (h, w), tiled = self.sizes(*rgb.shape[:2])
        image = resize_rgb(rgb, h, w, c.resample) if (h, w) != rgb.shape[:2] else rgb
        rows = cols = 0
        if tiled is not None:
            if tiled != image.shape[:2]:
                image = resize_rgb(image, *tiled, c.resample)
            height, width = image.shape[:2]
            if height > c.tile or width > c.tile:
                rows, cols = (height - c.tile) // c.tile + 1, (width - c.tile) // c.tile + 1
        frames = [image[r * c.tile:(r + 1) * c.tile, q * c.tile:(q + 1) * c.tile]
                  for r in range(rows) for q in range(cols)]
        whole = image if image.shape[:2] == (c.tile, c.tile) else resize_rgb(image, c.tile, c.tile, c.resample)
        frames.append(whole)
        tiles = np.stack(frames).transpose(0, 3, 1, 2).astype(np.float32)  # (n, 3, tile, tile)
        tiles *= np.float32(1.0 / UINT8_MAX)
        return (tiles - self._mean) / self._std, rows, cols
