"""Pillow's resize filters, in numpy: what Hugging Face image processors (CLIP, SigLIP, SmolVLM) resize with.

The processors of those checkpoints resize with ``PIL.Image.resize(..., resample)``, BICUBIC for
CLIP and SigLIP, LANCZOS for SmolVLM, and a model is only as good as its preprocessing matches its
training. OpenCV's filters are different ones (``INTER_CUBIC`` has a = -0.75 and no antialias), so
they cannot stand in. This module reproduces Pillow's ``Resample.c`` for 8-bit images without
Pillow at run time, for its convolution filters (box, bilinear, hamming, bicubic, lanczos):

- the filter's kernel, widened by the scale when downscaling (an antialias filter: the kernel
  spans ``support * scale`` source pixels on each side);
- per output pixel, the taps ``[xmin, xmax)`` around ``center = (x + 0.5) * scale`` rounded as
  Pillow rounds them, normalised to sum 1, then turned into 22-bit fixed-point integers;
- two 1-D passes, each rounding (``+ 2**21``, floor-shift by 22) and clipping to uint8, as Pillow
  stores its intermediate image in uint8. Which pass runs first changes the result by several
  levels wherever the first pass clips (saturated edges, noise), so it follows Pillow 13.0's rule
  (``vertical_first``).

The fixed-point sums are int32, as in Pillow, so the result equals Pillow's bit for bit for L and
RGB images (tests/test_pil_resize.py checks it on uint8 noise over the whole 0..255 range). Pillow
premultiplies alpha before resizing LA and RGBA images; this module filters every channel alike.
Weights depend only on (input size, output size, filter) and are kept in a small cache.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import numpy as np

from tinymm.errors import InputError

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point fraction bits for 8-bit images (2 bits of headroom)
_ONE = 1 << PRECISION_BITS
_HALF = 1 << (PRECISION_BITS - 1)  # added before the shift: round half up
WEIGHT_CACHE_SIZE = 64  # (in, out, filter) triples kept; a camera stream needs one or two
BICUBIC_A = -0.5  # Pillow's cubic coefficient (OpenCV uses -0.75)
LANCZOS_LOBES = 3.0  # Lanczos-3: sinc(x) * sinc(x / 3) on [-3, 3)
# Pillow writes the Hamming window's constants as C floats; their float32 values enter the double sum.
HAMMING_ALPHA, HAMMING_BETA = float(np.float32(0.54)), float(np.float32(0.46))


def _box(x: float) -> float:
    return 1.0 if -0.5 < x <= 0.5 else 0.0


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _hamming(x: float) -> float:
    x = abs(x)
    if x == 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    x = x * math.pi
    return math.sin(x) / x * (HAMMING_ALPHA + HAMMING_BETA * math.cos(x))


def _bicubic(x: float) -> float:
    x, a = abs(x), BICUBIC_A
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / LANCZOS_LOBES) if -LANCZOS_LOBES <= x < LANCZOS_LOBES else 0.0


class PilFilter(NamedTuple):
    """One of Pillow's convolution filters: its kernel and its support (source pixels each side at scale 1)."""

    kernel: Callable[[float], float]
    support: float
    resample_id: int  # PIL.Image.Resampling value, as preprocessor_config.json's "resample" stores it


# Pillow's filter names (lower case) -> filter. Python's math.sin is C's sin, so the kernels (and weights) match.
FILTERS = {
    "box": PilFilter(_box, 0.5, 4),
    "bilinear": PilFilter(_bilinear, 1.0, 2),
    "hamming": PilFilter(_hamming, 1.0, 5),
    "bicubic": PilFilter(_bicubic, 2.0, 3),
    "lanczos": PilFilter(_lanczos, LANCZOS_LOBES, 1),
}
PIL_PREFIX = "pil_"  # ImageConfig.interpolation names Pillow's filters "pil_bicubic", "pil_lanczos", ...


@functools.lru_cache(maxsize=WEIGHT_CACHE_SIZE)
def resize_weights(in_size: int, out_size: int, filter: str = "bicubic") -> tuple[np.ndarray, np.ndarray]:
    """The taps of a 1-D resize from ``in_size`` to ``out_size`` pixels, as Pillow computes them.

    Returns (index (out_size, K) int64, weight (out_size, K) int32): output pixel i is
    ``sum_k weight[i, k] * source[index[i, k]]`` in 22-bit fixed point (weights scaled by 2**22).
    Unused taps have weight 0 and a valid index. Both arrays are read-only.
    """
    kernel, support, _ = _filter(filter)
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = support * filter_scale
    inv_filter_scale = 1.0 / filter_scale  # Pillow multiplies by the inverse; dividing can differ by an ulp
    ksize = int(math.ceil(support)) * 2 + 1
    index = np.zeros((out_size, ksize), dtype=np.int64)
    weight = np.zeros((out_size, ksize), dtype=np.int32)
    for i in range(out_size):
        center = (i + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as C's cast
        count = min(int(center + support + 0.5), in_size) - xmin
        k = [kernel((x + xmin - center + 0.5) * inv_filter_scale) for x in range(count)]
        total = 0.0
        for w in k:  # summed in order, as Pillow does (np.sum's pairwise order can differ by an ulp)
            total += w
        if total != 0.0:
            k = [w / total for w in k]
        # Pillow rounds half away from zero when it makes the weights integers.
        weight[i, :count] = [int(w * _ONE - 0.5) if w < 0 else int(w * _ONE + 0.5) for w in k]
        index[i, :count] = np.arange(xmin, xmin + count)
        index[i, count:] = xmin  # weight 0: any valid index will do
    index.setflags(write=False)
    weight.setflags(write=False)
    return index, weight


def _filter(name: str) -> PilFilter:
    if name not in FILTERS:
        raise InputError(f"filter={name!r} is not one of Pillow's filters this module reproduces: {list(FILTERS)}")
    return FILTERS[name]


def _pass(image: np.ndarray, axis: int, out_size: int, filter: str) -> np.ndarray:
    """Resize ``image`` (H, W, C) uint8 along ``axis`` (0 rows, 1 columns) to ``out_size``; uint8 out."""
    index, weight = resize_weights(image.shape[axis], out_size, filter)
    shape = list(image.shape)
    shape[axis] = out_size
    acc = np.full(shape, _HALF, dtype=np.int32)  # Pillow's int accumulator; it cannot overflow (2 spare bits)
    for k in range(index.shape[1]):  # one tap at a time: memory stays at one output image
        w = weight[:, k].reshape((-1, 1, 1) if axis == 0 else (1, -1, 1))
        acc += np.take(image, index[:, k], axis=axis) * w
    return np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8)


def vertical_first(in_h: int, in_w: int, out_h: int, out_w: int) -> bool:
    """Whether Pillow 13.0 runs the vertical pass first: when the height shrinks by more than twice as
    many pixels as the width does (a growing width counts as a negative shrink).

    Pillow documents no rule (its main branch runs the horizontal pass first unless the image is over
    100 times taller than wide). This one is measured on Pillow 13.0.0 with RGB uint8 noise: the order
    it picks equals Pillow's output on each of 3000 random (in, out) size pairs of 1..400 pixels (600
    per filter), where the other order differs from it on 99% of the pairs (25% for box), and on both
    sides of its boundary (in_h - out_h = 2 * (in_w - out_w): horizontal first; one more: vertical).
    """
    return out_h < in_h and in_h - out_h > 2 * (in_w - out_w)


def pil_filter(interpolation: str) -> str | None:
    """The Pillow filter an ImageConfig interpolation names ("pil_lanczos" -> "lanczos"); None for OpenCV's."""
    name = interpolation.removeprefix(PIL_PREFIX)
    return name if name != interpolation and name in FILTERS else None


def pil_resize(image: np.ndarray, width: int, height: int, filter: str = "bicubic") -> np.ndarray:
    """Resize an (H, W, C) or (H, W) uint8 image to (height, width) exactly as Pillow's ``filter`` does.

    ``filter`` is a key of FILTERS ("bicubic", "lanczos", "bilinear", "box", "hamming"). Channel
    order is kept (the filter treats channels alike). Returns a new C-contiguous uint8 array (a
    copy of the input when the size is unchanged, as Pillow returns a copy).

    Raises:
        InputError: not a uint8 array of 2 or 3 dimensions, an empty image, a size below 1, or an
            unknown filter.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
        described = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InputError(f"pil_resize takes a non-empty (H, W) or (H, W, C) uint8 array, got a {described}")
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"pil_resize {name}={value!r} must be a positive integer")
    _filter(filter)
    if image.shape[:2] == (height, width):
        return image.copy()
    planar = image.ndim == 2
    out = image[:, :, None] if planar else image
    passes = [(1, int(width)), (0, int(height))]  # (axis, size), the intermediate stored as uint8
    if vertical_first(image.shape[0], image.shape[1], height, width):
        passes.reverse()
    for axis, size in passes:
        if out.shape[axis] != size:
            out = _pass(out, axis, size, filter)
    return np.ascontiguousarray(out[:, :, 0] if planar else out)


def pil_bicubic_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``pil_resize`` with Pillow's BICUBIC: (H, W[, C]) uint8 -> (height, width[, C]) uint8."""
    return pil_resize(image, width, height, "bicubic")


def pil_lanczos_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``pil_resize`` with Pillow's LANCZOS: (H, W[, C]) uint8 -> (height, width[, C]) uint8."""
    return pil_resize(image, width, height, "lanczos")
