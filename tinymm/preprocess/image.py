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
import struct
from dataclasses import dataclass
from typing import Sequence, Union

import cv2
import numpy as np

from tinymm.errors import BundleError, InputError
from tinymm.preprocess.files import read_input_file
from tinymm.preprocess.config import ImageConfig

MAX_IMAGE_PIXELS = 50_000_000  # width * height refused above this (about 50 megapixels)
ALPHA_BACKGROUND = 255  # gray level that transparent pixels are composited onto (white)
UINT8_MAX = 255
UINT16_MAX = 65535
UINT16_PER_UINT8 = UINT16_MAX // UINT8_MAX  # 257: 65535 maps exactly to 255
FLOAT_RANGE_TOLERANCE = 1e-3  # float pixels may stray this far outside [0, 1] (then clipped)
SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "WebP")

_INTERPOLATION_FLAGS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}
_ARRAY_DTYPES = (np.uint8, np.uint16, np.float16, np.float32, np.float64)

# File signatures and header layouts.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8"
_JPEG_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0-7: no length field
_JPEG_SOF_MARKERS = frozenset(m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC))  # not DHT, JPG, DAC
_JPEG_SCAN_OR_END = frozenset([0xDA, 0xD9])  # SOS, EOI
_WEBP_VP8_START_CODE = b"\x9d\x01\x2a"
_WEBP_VP8L_SIGNATURE = 0x2F
_WEBP_DIMENSION_MASK = 0x3FFF  # VP8 and VP8L store 14-bit dimensions

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, np.ndarray]


@dataclass(frozen=True)
class ImageHeader:
    """What an encoded image's header says, read without decoding any pixel."""

    format: str  # one of SUPPORTED_FORMATS
    width: int  # pixels
    height: int  # pixels


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


# ---------------------------------------------------------------------------------------------
# Header probing (no pixel is decoded)
# ---------------------------------------------------------------------------------------------


def _truncated(what: str, fmt: str) -> InputError:
    return InputError(
        f"{what} looks like a {fmt} file but its header is truncated or malformed; "
        "the file is damaged or incomplete: re-export or re-download it"
    )


def _jpeg_size(mv: memoryview, what: str) -> tuple[int, int]:
    """Walk the JPEG marker segments up to the first start-of-frame; return (width, height)."""
    n = len(mv)
    i = len(_JPEG_SOI)
    while i + 4 <= n:
        if mv[i] != 0xFF:
            break
        marker = mv[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            i += 2
            continue
        if marker in _JPEG_SCAN_OR_END:
            break
        (length,) = struct.unpack_from(">H", mv, i + 2)
        if marker in _JPEG_SOF_MARKERS:
            if i + 9 > n:
                break
            height, width = struct.unpack_from(">HH", mv, i + 5)
            return width, height
        if length < 2:
            break
        i += 2 + length
    raise _truncated(what, "JPEG")


def _webp_size(mv: memoryview, what: str) -> tuple[int, int]:
    """Read the canvas size from a WebP file's first chunk (VP8, VP8L or VP8X)."""
    chunk = bytes(mv[12:16])
    if chunk == b"VP8X" and len(mv) >= 30:
        width = 1 + int.from_bytes(mv[24:27], "little")
        height = 1 + int.from_bytes(mv[27:30], "little")
        return width, height
    if chunk == b"VP8L" and len(mv) >= 25 and mv[20] == _WEBP_VP8L_SIGNATURE:
        (bits,) = struct.unpack_from("<I", mv, 21)
        return 1 + (bits & _WEBP_DIMENSION_MASK), 1 + ((bits >> 14) & _WEBP_DIMENSION_MASK)
    if chunk == b"VP8 " and len(mv) >= 30 and bytes(mv[23:26]) == _WEBP_VP8_START_CODE:
        width, height = struct.unpack_from("<HH", mv, 26)
        return width & _WEBP_DIMENSION_MASK, height & _WEBP_DIMENSION_MASK
    raise _truncated(what, "WebP")


def read_image_header(data: bytes | bytearray | memoryview, *, what: str = "the image") -> ImageHeader:
    """Read the format and pixel size of an encoded image from its header alone.

    Args:
        data: the encoded file's bytes (only the first bytes are read, plus JPEG marker segments).
        what: how to name the image in error messages.

    Raises:
        InputError: the data is empty, not one of SUPPORTED_FORMATS, or its header is cut short.
    """
    mv = memoryview(data).cast("B")
    if len(mv) == 0:
        raise InputError(f"{what} is empty (0 bytes); pass a JPEG, PNG, BMP or WebP file")
    head = bytes(mv[:16])
    if head.startswith(_PNG_SIGNATURE):
        if len(mv) < 24 or bytes(mv[12:16]) != b"IHDR":
            raise _truncated(what, "PNG")
        width, height = struct.unpack_from(">II", mv, 16)
        fmt = "PNG"
    elif head.startswith(_JPEG_SOI):
        width, height = _jpeg_size(mv, what)
        fmt = "JPEG"
    elif head.startswith(b"BM"):
        if len(mv) < 26:
            raise _truncated(what, "BMP")
        (dib_size,) = struct.unpack_from("<I", mv, 14)
        if dib_size == 12:  # BITMAPCOREHEADER: 16-bit unsigned sizes
            width, height = struct.unpack_from("<HH", mv, 18)
        else:  # BITMAPINFOHEADER and later: signed 32-bit, negative height = top-down rows
            width, height = struct.unpack_from("<ii", mv, 18)
            height = abs(height)
            if width < 0:
                raise _truncated(what, "BMP")
        fmt = "BMP"
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        width, height = _webp_size(mv, what)
        fmt = "WebP"
    else:
        raise InputError(
            f"{what} is not a {', '.join(SUPPORTED_FORMATS)} file (it starts with bytes {head[:8]!r}); "
            "convert it to one of these formats, or decode it yourself and pass a numpy array"
        )
    return ImageHeader(fmt, int(width), int(height))


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
        for i, source in enumerate(batch):
            try:
                image, is_rgb = _load_any_order(source, rgb, self.max_pixels)
            except InputError as e:
                if len(batch) == 1:
                    raise
                raise InputError(f"image {i} of the batch of {len(batch)}: {e}") from e
            self._normalize_into(self.resize(image), is_rgb, out[i])
        return out if self._dtype == np.float32 else out.astype(self._dtype)
