"""Images in, encoder tensors out, as Hugging Face's CLIP and SigLIP image processors make them.

``image_preprocessor(config)`` returns the preprocessor a bundle's ImageConfig asks for: the
OpenCV ``ImagePreprocessor`` for the project's own contracts, or ``HFImagePreprocessor`` when the
config uses what only Hugging Face processors do (resize "shortest_edge", or a Pillow filter as
interpolation: "pil_bicubic", "pil_lanczos", "pil_bilinear"). Per image, HFImagePreprocessor
follows the processors' Pillow backend:

- decode to RGB uint8 (``load_image``: paths, bytes, or arrays, BGR unless ``rgb=True``);
- resize: "shortest_edge" scales the short side to ``shortest_edge`` pixels and the long side to
  ``int(shortest_edge * long / short)`` (transformers' ``get_resize_output_image_size``);
  "stretch" goes straight to (height, width). The filter is Pillow's in numpy (``pil_resize``,
  equal to Pillow's output) or an OpenCV one;
- "shortest_edge" then crops the centred (height, width) window, top = (h - height) // 2;
- ``(pixel / 255 - mean) / std`` per channel, channels in ``config.channel_order``.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from tinymm.errors import BundleError
from tinymm.preprocess.config import ImageConfig
from tinymm.preprocess.image import (
    _INTERPOLATION_FLAGS,
    MAX_IMAGE_PIXELS,
    ImagePreprocessor,
    ImageSource,
    as_batch,
    load_each,
    load_image,
)
from tinymm.preprocess.pil_resize import pil_filter, pil_resize

SHORTEST_EDGE = "shortest_edge"
HF_RESIZE_MODES = ("stretch", SHORTEST_EDGE)  # what HFImagePreprocessor does
UINT8_MAX = 255


def shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """(height, width) after scaling the short side of a (height, width) image to ``shortest_edge``."""
    if width <= height:
        return int(shortest_edge * height / width), shortest_edge
    return shortest_edge, int(shortest_edge * width / height)


class HFImagePreprocessor:
    """Turns images into the (N, 3, height, width) tensor of a Hugging Face style ImageConfig."""

    def __init__(self, config: ImageConfig, *, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        if not isinstance(config, ImageConfig):
            raise TypeError(f"config must be an ImageConfig, got {type(config).__name__}")
        if config.resize not in HF_RESIZE_MODES:
            raise BundleError(
                f"preprocess.image resize {config.resize!r} with interpolation {config.interpolation!r} is not "
                f"supported (this preprocessor does {list(HF_RESIZE_MODES)}); re-export the bundle"
            )
        self.config = config
        self.max_pixels = max_pixels
        std = np.asarray(config.std, dtype=np.float64)
        # (3, 1, 1) float32 in the model's channel order: x_uint8 * scale + offset = (x / 255 - mean) / std.
        self._scale = (1.0 / (UINT8_MAX * std)).astype(np.float32).reshape(3, 1, 1)
        self._offset = (-np.asarray(config.mean, dtype=np.float64) / std).astype(np.float32).reshape(3, 1, 1)

    def _resample(self, image: np.ndarray, height: int, width: int) -> np.ndarray:
        if image.shape[:2] == (height, width):
            return image
        pillow = pil_filter(self.config.interpolation)
        if pillow is not None:
            return pil_resize(image, width, height, pillow)
        return cv2.resize(image, (width, height), interpolation=_INTERPOLATION_FLAGS[self.config.interpolation])

    def resize(self, image: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 -> (height, width, 3) uint8 by the configured mode; channel order kept."""
        H, W = self.config.height, self.config.width
        if self.config.resize == "stretch":
            return self._resample(image, H, W)
        nh, nw = shortest_edge_size(image.shape[0], image.shape[1], self.config.shortest_edge)
        resized = self._resample(image, nh, nw)
        top, left = (nh - H) // 2, (nw - W) // 2  # shortest_edge >= height, width: the crop fits
        return resized[top:top + H, left:left + W]

    def __call__(self, images: ImageSource | Sequence[ImageSource], *, rgb: bool = False) -> np.ndarray:
        """One image or a batch -> (N, 3, height, width) array of config.dtype.

        Args:
            images: a path, the bytes of an encoded file, or an (H, W, 3) array (BGR unless
                ``rgb``); a list or tuple of them; or a 4-D (N, H, W, C) array of frames.
            rgb: arrays are RGB(A) rather than BGR(A).

        Raises:
            InputError: as ``load_image``, naming the position of the bad image in a batch.
        """
        batch, _ = as_batch(images)
        out = np.empty((len(batch), 3, self.config.height, self.config.width), dtype=np.float32)
        for i, bgr in enumerate(load_each(batch, lambda s: load_image(s, rgb=rgb, max_pixels=self.max_pixels))):
            # Resize in RGB: the filter is per channel, so the order only matters for the output.
            chw = self.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).transpose(2, 0, 1)  # (3, H, W) RGB
            if self.config.channel_order == "BGR":
                chw = chw[::-1]
            np.multiply(chw, self._scale, out=out[i])
            out[i] += self._offset
        return out if self.config.dtype == "float32" else out.astype(self.config.dtype)


def image_preprocessor(config: ImageConfig) -> ImagePreprocessor | HFImagePreprocessor:
    """The preprocessor of ``config``: Hugging Face style for "shortest_edge" or a Pillow filter, else OpenCV."""
    if config.resize == SHORTEST_EDGE or pil_filter(config.interpolation) is not None:
        return HFImagePreprocessor(config)
    return ImagePreprocessor(config)
