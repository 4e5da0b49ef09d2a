"""What an encoded image's header says (format, width, height), read without decoding a pixel.

``read_image_header`` lets ``load_image`` refuse an image over the pixel limit before OpenCV
allocates it, and name the format of a damaged file. JPEG, PNG, BMP and WebP (VP8, VP8L, VP8X).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tinymm.errors import InputError

SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "WebP")

# File signatures and header layouts.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8"
_JPEG_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0-7: no length field
_JPEG_SOF_MARKERS = frozenset(m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC))  # not DHT, JPG, DAC
_JPEG_SCAN_OR_END = frozenset([0xDA, 0xD9])  # SOS, EOI
_WEBP_VP8_START_CODE = b"\x9d\x01\x2a"
_WEBP_VP8L_SIGNATURE = 0x2F
_WEBP_DIMENSION_MASK = 0x3FFF  # VP8 and VP8L store 14-bit dimensions


@dataclass(frozen=True)
class ImageHeader:
    """What an encoded image's header says, read without decoding any pixel."""

    format: str  # one of SUPPORTED_FORMATS
    width: int  # pixels
    height: int  # pixels


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


__all__ = ["SUPPORTED_FORMATS", "ImageHeader", "read_image_header"]
