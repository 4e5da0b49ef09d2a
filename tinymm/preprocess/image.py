"""Images in, encoder tensors out: decoding, validation, resizing and normalization with OpenCV.

``load_image`` turns a file path, the bytes of an encoded file or a numpy array into one uint8
(H, W, 3) BGR image. ``ImagePreprocessor`` turns one image or a batch of them into the
(N, 3, H, W) tensor an ``ImageConfig`` describes: it resizes on uint8 first, then scales and
normalizes the small image in one fused multiply-add, so a camera frame costs about a millisecond.

Conventions, fixed here so that training and serving agree:

- Encoded files: JPEG, PNG, BMP and WebP only. The pixel count is read from the file header and
  checked against ``max_pixels`` before anything is decoded (decompression bombs), and again after.
- JPEG files are decoded with their EXIF orientation applied; PNG, BMP and WebP are decoded as
  stored (16-bit depth and alpha kept, then converted as below).
- Alpha is composited onto a white background (``ALPHA_BACKGROUND``), not dropped, so that fully
  transparent pixels, whose color values are arbitrary, become a known color.
- 16-bit images are scaled to 8 bits with rounding (x / 257), not truncated.
- Float arrays must hold values in [0, 1]; they are scaled to uint8 with rounding.
- Grayscale becomes three equal channels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar, Union

import cv2
import numpy as np

from tinymm.errors import BundleError, InputError
from tinymm.preprocess.files import read_input_file
from tinymm.preprocess.image_header import SUPPORTED_FORMATS, ImageHeader, read_image_header  # noqa: F401  (re-exported: the public names of image loading)
from tinymm.preprocess.config import ImageConfig

MAX_IMAGE_PIXELS = 50_000_000  # width * height refused above this (about 50 megapixels)
ALPHA_BACKGROUND = 255  # gray level that transparent pixels are composited onto (white)
UINT8_MAX = 255
UINT16_MAX = 65535
UINT16_PER_UINT8 = UINT16_MAX // UINT8_MAX  # 257: 65535 maps exactly to 255
FLOAT_RANGE_TOLERANCE = 1e-3  # float pixels may stray this far outside [0, 1] (then clipped)

_INTERPOLATION_FLAGS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}
_ARRAY_DTYPES = (np.uint8, np.uint16, np.float16, np.float32, np.float64)


T = TypeVar("T")

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, np.ndarray]


@dataclass(frozen=True)
class ResizeGeometry:
    """How source pixel coordinates map to model-input coordinates: ``model = source * scale + offset``.

    Coordinates are continuous pixel coordinates with (0, 0) at the top-left corner of the
    top-left pixel, x to the right and y down, in pixels of each image.
    """

    scale_x: float
    scale_y: float
    offset_x: float  # letterbox: left border width; center_crop: minus the scaled cropped margin
    offset_y: float

    def to_model(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) float (x, y) in the source image -> (..., 2) float64 in the model input."""
        p = np.asarray(points, dtype=np.float64)
        return p * (self.scale_x, self.scale_y) + (self.offset_x, self.offset_y)

    def to_source(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) float (x, y) in the model input -> (..., 2) float64 in the source image."""
        p = np.asarray(points, dtype=np.float64)
        return (p - (self.offset_x, self.offset_y)) / (self.scale_x, self.scale_y)


@dataclass(frozen=True)
class _ResizePlan:
    """The crop, resize and border that take one source size to the model size."""

    crop: tuple[int, int, int, int]  # y0, y1, x0, x1 in the source
    resized: tuple[int, int]  # height, width after resizing the crop
    border: tuple[int, int, int, int]  # top, bottom, left, right padding after resizing
    geometry: ResizeGeometry


def _describe(source: object) -> str:
    if isinstance(source, np.ndarray):
        return f"array of shape {source.shape} and dtype {source.dtype}"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"{memoryview(source).nbytes} bytes"
    return f"image file {str(source)!r}"


def _check_pixels(what: str, width: int, height: int, max_pixels: int, stage: str) -> None:
    if width <= 0 or height <= 0:
        raise InputError(f"{what} has {stage} size {width}x{height}; an image needs at least one pixel")
    if width * height > max_pixels:
        raise InputError(
            f"{what} has {stage} size {width}x{height} = {width * height} pixels, above the limit of "
            f"{max_pixels} (a guard against decompression bombs); downscale the image first, or pass a "
            "larger max_pixels if you trust the source"
        )


# ---------------------------------------------------------------------------------------------
# Decoding and conversion to 3-channel uint8
# ---------------------------------------------------------------------------------------------


def _decode(data: bytes | bytearray | memoryview, what: str, max_pixels: int) -> np.ndarray:
    """Encoded bytes -> the decoded array as OpenCV returns it (uint8/uint16; 1, 3 or 4 channels)."""
    header = read_image_header(data, what=what)
    _check_pixels(what, header.width, header.height, max_pixels, "a header-declared")
    # JPEG has no alpha or 16-bit variants worth keeping; IMREAD_COLOR applies EXIF orientation.
    flags = cv2.IMREAD_COLOR if header.format == "JPEG" else cv2.IMREAD_UNCHANGED
    buffer = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    try:
        image = cv2.imdecode(buffer, flags)
    except cv2.error as e:
        raise InputError(
            f"{what} could not be decoded as {header.format}: {e}; the file is damaged or incomplete"
        ) from e
    if image is None or image.size == 0:
        raise InputError(
            f"{what} has a {header.format} header but its data could not be decoded; the file is "
            "truncated or corrupt: re-export or re-download it"
        )
    _check_pixels(what, image.shape[1], image.shape[0], max_pixels, "a decoded")
    return image


def _to_uint8(image: np.ndarray, what: str) -> np.ndarray:
    """uint8, uint16 or float in [0, 1] -> uint8 of the same shape (no copy for uint8)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        # Round x / 257 so that 65535 -> 255 exactly and mid-grays are not biased downwards.
        return ((image.astype(np.uint32) + UINT16_PER_UINT8 // 2) // UINT16_PER_UINT8).astype(np.uint8)
    lo, hi = float(np.min(image)), float(np.max(image))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InputError(f"{what} contains NaN or infinite values; pass finite pixel values in [0, 1]")
    if lo < -FLOAT_RANGE_TOLERANCE or hi > 1 + FLOAT_RANGE_TOLERANCE:
        raise InputError(
            f"{what} has float values in [{lo:.4g}, {hi:.4g}], but float images must be in [0, 1]; "
            "divide 0-255 data by 255 or pass it as uint8"
        )
    scaled = np.clip(image.astype(np.float32) * UINT8_MAX + 0.5, 0, UINT8_MAX)
    return scaled.astype(np.uint8)


def _composite_alpha(image: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 with alpha last -> (H, W, 3) uint8 over ALPHA_BACKGROUND (channel order kept)."""
    alpha = image[:, :, 3:]
    color = image[:, :, :3]
    if np.all(alpha == UINT8_MAX):
        return np.ascontiguousarray(color)
    a = alpha.astype(np.float32) * (1.0 / UINT8_MAX)
    blended = color.astype(np.float32) * a + ALPHA_BACKGROUND * (1.0 - a)
    return (blended + 0.5).astype(np.uint8)


def _to_three_channels(image: np.ndarray, what: str) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> contiguous (H, W, 3) uint8, order kept."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return _composite_alpha(image)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    raise InputError(
        f"{what} has shape {image.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"
    )


def _load_any_order(source: ImageSource, rgb: bool, max_pixels: int) -> tuple[np.ndarray, bool]:
    """Any image source -> ((H, W, 3) uint8, True if its channels are RGB rather than BGR)."""
    what = _describe(source)
    if isinstance(source, np.ndarray):
        if source.dtype.type not in _ARRAY_DTYPES:
            raise InputError(
                f"{what} is not supported; pass uint8, uint16 or float (values in [0, 1]) pixels"
            )
        if source.ndim not in (2, 3) or source.size == 0:
            raise InputError(
                f"{what} is not an image; expected a non-empty (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array"
            )
        return _to_three_channels(_to_uint8(source, what), what), bool(rgb)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if isinstance(source, memoryview) and not source.c_contiguous:
            source = source.tobytes()
        decoded = _decode(source, what, max_pixels)
    elif isinstance(source, (str, os.PathLike)):
        decoded = _decode(read_input_file(source, "image"), what, max_pixels)
    else:
        raise InputError(
            f"cannot read an image from a {type(source).__name__}; pass a path, the bytes of an "
            "encoded file, or a numpy array"
        )
    return _to_three_channels(_to_uint8(decoded, what), what), False  # OpenCV decodes to BGR


def load_image(source: ImageSource, *, rgb: bool = False, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode or convert any image source to one uint8 (H, W, 3) BGR image.

    Args:
        source: a path (str or PathLike) or the bytes (bytes, bytearray, memoryview) of a JPEG,
            PNG, BMP or WebP file; or a numpy array of shape (H, W), (H, W, 1), (H, W, 3) or
            (H, W, 4) with dtype uint8, uint16 or float (values in [0, 1]).
        rgb: for arrays only, say that 3- or 4-channel data is RGB(A); by default arrays are BGR(A),
            as OpenCV camera frames are. Encoded files always decode to BGR, so it is ignored there.
        max_pixels: refuse encoded images with more pixels than this (checked on the header first).

    Returns:
        (H, W, 3) uint8 BGR, C-contiguous. A uint8 BGR array that needs no conversion is
        returned as is, not copied.

    Raises:
        InputError: missing or unreadable file, empty, truncated or unsupported data, too many
            pixels, unsupported dtype or shape, empty array, NaN or out-of-range float values.
    """
    image, is_rgb = _load_any_order(source, rgb, max_pixels)
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if is_rgb else image


# ---------------------------------------------------------------------------------------------
# The preprocessor
# ---------------------------------------------------------------------------------------------


def as_batch(images: ImageSource | Sequence[ImageSource], what: str = "images") -> tuple[list[ImageSource], bool]:
    """(list of inputs, whether one input was given): a list, a tuple or a 4-D array is a batch of frames.

    InputError for an empty batch."""
    if isinstance(images, (list, tuple)) or (isinstance(images, np.ndarray) and images.ndim == 4):
        batch = list(images)
        if not batch:
            raise InputError(f"got an empty batch of {what}; pass at least one")
        return batch, False
    return [images], True


def load_each(batch: Sequence[ImageSource], load: Callable[[ImageSource], T]) -> Iterator[T]:
    """``load(source)`` for each image of a batch, in order; an InputError of an image in a batch of
    several names its position ("image 2 of the batch of 4: ...")."""
    for i, source in enumerate(batch):
        try:
            yield load(source)
        except InputError as e:
            if len(batch) == 1:
                raise
            raise InputError(f"image {i} of the batch of {len(batch)}: {e}") from e


class ImagePreprocessor:
    """Turns images into the (N, 3, height, width) tensor an ImageConfig describes.

    Per image: resize on uint8 (stretch, letterbox or center crop, with the configured OpenCV
    interpolation), then ``(pixel / 255 - mean) / std`` per channel in the configured channel
    order, as one multiply-add with factors computed here once.

    - stretch: the whole image is resized to (height, width); the aspect ratio may change.
    - letterbox: the image is scaled to fit inside (height, width) keeping its aspect ratio and
      centred, with borders of ``pad_value`` (before normalization) on the short sides.
    - center_crop: the largest centred region with the model's aspect ratio is cut from the
      source, then resized to (height, width).
    """

    def __init__(self, config: ImageConfig, *, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        if not isinstance(config, ImageConfig):
            raise TypeError(f"config must be an ImageConfig, got {type(config).__name__}")
        if config.interpolation not in _INTERPOLATION_FLAGS or config.resize not in ("stretch", "letterbox", "center_crop"):
            # Pillow-exact resizes and shortest-edge crops are the Hugging Face processors' contract.
            raise BundleError(
                f"image contract resize={config.resize!r}, interpolation={config.interpolation!r} is not an OpenCV "
                "one; build the preprocessor with tinymm.preprocess.hf_image.image_preprocessor(config)"
            )
        self.config = config
        self.max_pixels = max_pixels
        self._interpolation = _INTERPOLATION_FLAGS[config.interpolation]
        self._dtype = np.dtype(config.dtype)
        mean = np.asarray(config.mean, dtype=np.float64)
        std = np.asarray(config.std, dtype=np.float64)
        # (3, 1, 1) float32 each, in the model's channel order: x_uint8 * scale + offset.
        self._scale = (1.0 / (UINT8_MAX * std)).astype(np.float32).reshape(3, 1, 1)
        self._offset = (-mean / std).astype(np.float32).reshape(3, 1, 1)
        self._wants_rgb = config.channel_order == "RGB"

    def geometry(self, height: int, width: int) -> ResizeGeometry:
        """How coordinates in a (height, width) source image map into the model input."""
        return self._plan(height, width).geometry

    def _plan(self, h: int, w: int) -> _ResizePlan:
        H, W = self.config.height, self.config.width
        mode = self.config.resize
        if mode == "letterbox":
            s = min(W / w, H / h)
            nw, nh = max(1, min(W, round(w * s))), max(1, min(H, round(h * s)))
            top, left = (H - nh) // 2, (W - nw) // 2
            geometry = ResizeGeometry(nw / w, nh / h, float(left), float(top))
            return _ResizePlan((0, h, 0, w), (nh, nw), (top, H - nh - top, left, W - nw - left), geometry)
        if mode == "center_crop":
            if w * H > h * W:  # source is wider than the model input: crop left and right
                ch, cw = h, max(1, min(w, round(h * W / H)))
            else:
                ch, cw = max(1, min(h, round(w * H / W))), w
            y0, x0 = (h - ch) // 2, (w - cw) // 2
            sx, sy = W / cw, H / ch
            geometry = ResizeGeometry(sx, sy, -x0 * sx, -y0 * sy)
            return _ResizePlan((y0, y0 + ch, x0, x0 + cw), (H, W), (0, 0, 0, 0), geometry)
        return _ResizePlan((0, h, 0, w), (H, W), (0, 0, 0, 0), ResizeGeometry(W / w, H / h, 0.0, 0.0))

    def resize(self, image: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 -> (height, width, 3) uint8 by the configured mode; channel order kept."""
        plan = self._plan(image.shape[0], image.shape[1])
        y0, y1, x0, x1 = plan.crop
        if (y0, y1, x0, x1) != (0, image.shape[0], 0, image.shape[1]):
            image = image[y0:y1, x0:x1]
        nh, nw = plan.resized
        if (nh, nw) != image.shape[:2]:
            image = cv2.resize(image, (nw, nh), interpolation=self._interpolation)
        if any(plan.border):
            top, bottom, left, right = plan.border
            pad = (self.config.pad_value,) * 3
            image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=pad)
        return image

    def _normalize_into(self, image: np.ndarray, is_rgb: bool, out: np.ndarray) -> None:
        """(H, W, 3) uint8 -> out (3, H, W) float32, channels reordered to the model's order."""
        chw = image.transpose(2, 0, 1)
        if is_rgb != self._wants_rgb:
            chw = chw[::-1]
        np.multiply(chw, self._scale, out=out)
        out += self._offset

    def __call__(
        self, images: ImageSource | Sequence[ImageSource], *, rgb: bool = False
    ) -> np.ndarray:
        """One image or a batch -> (N, 3, height, width) tensor of config.dtype.

        Args:
            images: one source accepted by ``load_image``; a list or tuple of them; or a 4-D
                (N, H, W, C) array of N frames.
            rgb: arrays are RGB(A) rather than BGR(A) (see ``load_image``).

        Returns:
            (N, 3, height, width) array of config.dtype, channels in config.channel_order.

        Raises:
            InputError: as ``load_image``, naming the position of the bad image in a batch.
        """
        batch, _ = as_batch(images)
        out = np.empty((len(batch), 3, self.config.height, self.config.width), dtype=np.float32)
        for i, (image, is_rgb) in enumerate(load_each(batch, lambda s: _load_any_order(s, rgb, self.max_pixels))):
            self._normalize_into(self.resize(image), is_rgb, out[i])
        return out if self._dtype == np.float32 else out.astype(self._dtype)
