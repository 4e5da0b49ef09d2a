"""Image loading and preprocessing: formats, conversions, resize geometry, normalization, errors."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from tinymm.errors import InputError
from tinymm.preprocess import image as image_module
from tinymm.preprocess.config import ImageConfig
from tinymm.preprocess.image import (
    ALPHA_BACKGROUND,
    ImageHeader,
    ImagePreprocessor,
    load_image,
    read_image_header,
)

# Identity normalization: the tensor is pixel / 255, so expected values are easy to state.
PLAIN = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _pattern(h: int = 23, w: int = 37) -> np.ndarray:
    """A deterministic (h, w, 3) uint8 BGR image with distinct channels."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 7) % 256, (y * 11) % 256, (x + y) * 3 % 256], axis=-1).astype(np.uint8)


def _encode(ext: str, image: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, image, params or [])
    assert ok, f"cv2 could not encode {ext}"
    return buf.tobytes()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


# --------------------------------------------------------------------------------------------
# Formats and sources
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ext, params, exact",
    [
        (".png", None, True),
        (".bmp", None, True),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], True),  # quality > 100 = lossless
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 90], False),
        (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95], False),
    ],
)
def test_every_format_decodes_from_bytes_and_path(tmp_path, ext, params, exact) -> None:
    src = _pattern()
    data = _encode(ext, src, params)
    path = tmp_path / f"bild_äöü_{ext[1:]}{ext}"  # non-ASCII path
    path.write_bytes(data)
    for source in (data, bytearray(data), memoryview(data), path, str(path)):
        out = load_image(source)
        assert out.shape == src.shape and out.dtype == np.uint8
        diff = np.abs(out.astype(int) - src.astype(int))
        assert diff.max() == 0 if exact else diff.mean() < 12


@pytest.mark.parametrize(
    "ext, params, fmt",
    [(".png", None, "PNG"), (".bmp", None, "BMP"), (".jpg", None, "JPEG"),
     (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], "WebP"), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80], "WebP")],
)
def test_header_gives_width_and_height(ext, params, fmt) -> None:
    assert read_image_header(_encode(ext, _pattern(23, 37), params)) == ImageHeader(fmt, 37, 23)


def test_webp_vp8x_header_with_alpha() -> None:
    bgra = np.dstack([_pattern(23, 37), np.full((23, 37), 200, np.uint8)])
    data = _encode(".webp", bgra, [cv2.IMWRITE_WEBP_QUALITY, 80])
    assert data[12:16] in (b"VP8X", b"VP8L")
    assert read_image_header(data) == ImageHeader("WebP", 37, 23)


def test_grayscale_file_and_arrays_become_three_equal_channels() -> None:
    gray = _pattern()[:, :, 0]
    for source in (_encode(".png", gray), gray, gray[:, :, None]):
        out = load_image(source)
        assert out.shape == (*gray.shape, 3)
        for c in range(3):
            np.testing.assert_array_equal(out[:, :, c], gray)


def test_alpha_is_composited_onto_white() -> None:
    bgra = np.zeros((2, 3, 4), np.uint8)
    bgra[..., :3] = (10, 20, 30)
    bgra[0, :, 3] = (0, 255, 128)
    bgra[1, :, 3] = 255
    expected_half = np.round(np.array([10, 20, 30]) * 128 / 255 + ALPHA_BACKGROUND * 127 / 255)
    for source in (_encode(".png", bgra), bgra):
        out = load_image(source)
        np.testing.assert_array_equal(out[0, 0], [ALPHA_BACKGROUND] * 3)  # fully transparent
        np.testing.assert_array_equal(out[0, 1], [10, 20, 30])  # opaque
        np.testing.assert_array_equal(out[0, 2], expected_half)
        np.testing.assert_array_equal(out[1], [[10, 20, 30]] * 3)


def test_sixteen_bit_is_scaled_with_rounding_not_truncated() -> None:
    # 256 / 257 rounds to 1 where truncation (x >> 8) gives 0; 33025 / 257 = 128.5 rounds up.
    values = np.array([0, 256, 128 * 257, 65535, 128 * 257 + 129, 128 * 257 + 128], np.uint16)
    img16 = np.repeat(np.repeat(values[None, :, None], 2, axis=0), 3, axis=2)
    expected = [0, 1, 128, 255, 129, 128]
    for source in (_encode(".png", img16), img16):
        out = load_image(source)
        np.testing.assert_array_equal(out[0, :, 0], expected)


def test_float_arrays_in_unit_range() -> None:
    img = np.full((4, 5, 3), 0.5, np.float32)
    img[0, 0] = (0.0, 1.0, 1.0 / 255)
    out = load_image(img)
    assert out[1, 1, 0] == 128  # round(127.5)
    np.testing.assert_array_equal(out[0, 0], [0, 255, 1])
    assert load_image(img.astype(np.float64))[1, 1, 0] == 128
    assert load_image(img.astype(np.float16))[1, 1, 0] == 128


def test_rgb_flag_swaps_channels_of_arrays() -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 255  # red in RGB order
    np.testing.assert_array_equal(load_image(rgb, rgb=True)[0, 0], [0, 0, 255])  # BGR: red last
    np.testing.assert_array_equal(load_image(rgb)[0, 0], [255, 0, 0])  # taken as BGR: blue
    rgba = np.dstack([rgb, np.full((2, 2), 255, np.uint8)])
    np.testing.assert_array_equal(load_image(rgba, rgb=True)[0, 0], [0, 0, 255])


def test_uint8_bgr_array_is_not_copied() -> None:
    img = _pattern()
    assert load_image(img) is img


# --------------------------------------------------------------------------------------------
# Resize geometry, normalization, dtype, batching
# --------------------------------------------------------------------------------------------


def _pre(h: int, w: int, **kw) -> ImagePreprocessor:
    kw = {"interpolation": "nearest", "channel_order": "BGR", **PLAIN, **kw}
    return ImagePreprocessor(ImageConfig(h, w, **kw))


def test_stretch_maps_halves_to_halves() -> None:
    img = np.zeros((10, 20, 3), np.uint8)
    img[:, 10:] = 255  # right half white
    out = _pre(6, 6, resize="stretch")(img)[0, 0]
    np.testing.assert_array_equal(out[:, :3], 0)
    np.testing.assert_array_equal(out[:, 3:], 1)
    geometry = _pre(6, 6, resize="stretch").geometry(10, 20)
    np.testing.assert_allclose(geometry.to_model([[10, 5]]), [[3, 3]])


def test_letterbox_centres_content_with_pad_borders() -> None:
    img = np.full((20, 40, 3), 255, np.uint8)
    pre = _pre(20, 20, resize="letterbox", pad_value=0)
    out = pre(img)[0, 0]  # content is 10 rows tall, centred: rows 5..14
    np.testing.assert_array_equal(out[:5], 0)
    np.testing.assert_array_equal(out[5:15], 1)
    np.testing.assert_array_equal(out[15:], 0)
    g = pre.geometry(20, 40)
    assert (g.scale_x, g.scale_y, g.offset_x, g.offset_y) == (0.5, 0.5, 0.0, 5.0)
    np.testing.assert_allclose(g.to_model([[40, 20]]), [[20, 15]])
    np.testing.assert_allclose(g.to_source(g.to_model([[3.5, 7.25]])), [[3.5, 7.25]])
    # A tall image gets side borders instead.
    tall = _pre(20, 20, resize="letterbox", pad_value=0)(np.full((40, 20, 3), 255, np.uint8))[0, 0]
    np.testing.assert_array_equal(tall[:, :5], 0)
    np.testing.assert_array_equal(tall[:, 5:15], 1)


def test_letterbox_pad_value_is_normalized_like_pixels() -> None:
    pre = ImagePreprocessor(ImageConfig(8, 8, resize="letterbox", pad_value=114))
    out = pre(np.zeros((2, 8, 3), np.uint8))
    np.testing.assert_allclose(out[0, :, 0, 0], (114 / 255 - 0.5) / 0.5, rtol=1e-6)


def test_center_crop_keeps_the_middle() -> None:
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :10] = (0, 0, 255)  # red left quarter
    img[:, 10:30] = (0, 255, 0)  # green middle half
    img[:, 30:] = (255, 0, 0)  # blue right quarter
    pre = _pre(10, 10, resize="center_crop")
    out = pre(img)[0]  # BGR order
    np.testing.assert_array_equal(out[1], 1)  # green everywhere
    np.testing.assert_array_equal(out[0], 0)
    np.testing.assert_array_equal(out[2], 0)
    g = pre.geometry(20, 40)
    np.testing.assert_allclose(g.to_model([[10, 0], [30, 20]]), [[0, 0], [10, 10]])


def test_normalization_and_channel_order() -> None:
    img = np.empty((4, 4, 3), np.uint8)
    img[:] = (10, 20, 30)  # B, G, R
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    rgb = ImagePreprocessor(ImageConfig(2, 2, mean=mean, std=std, channel_order="RGB"))(img)
    expected_rgb = [(30 / 255 - 0.1) / 0.5, (20 / 255 - 0.2) / 0.25, (10 / 255 - 0.3) / 0.125]
    np.testing.assert_allclose(rgb[0, :, 0, 0], expected_rgb, rtol=1e-6)
    bgr = ImagePreprocessor(ImageConfig(2, 2, mean=mean, std=std, channel_order="BGR"))(img)
    expected_bgr = [(10 / 255 - 0.1) / 0.5, (20 / 255 - 0.2) / 0.25, (30 / 255 - 0.3) / 0.125]
    np.testing.assert_allclose(bgr[0, :, 0, 0], expected_bgr, rtol=1e-6)
    # An RGB array gives the same tensor as the BGR one when flagged.
    rgb_input = np.ascontiguousarray(img[:, :, ::-1])
    np.testing.assert_array_equal(
        ImagePreprocessor(ImageConfig(2, 2, mean=mean, std=std))(rgb_input, rgb=True), rgb
    )


def test_float16_output() -> None:
    out = ImagePreprocessor(ImageConfig(8, 8, dtype="float16"))(_pattern())
    assert out.dtype == np.float16 and out.shape == (1, 3, 8, 8)
    ref = ImagePreprocessor(ImageConfig(8, 8))(_pattern())
    np.testing.assert_allclose(out.astype(np.float32), ref, atol=2e-3)


def test_batches_of_mixed_sources_and_4d_arrays(tmp_path) -> None:
    img = _pattern()
    path = tmp_path / "a.png"
    path.write_bytes(_encode(".png", img))
    pre = ImagePreprocessor(ImageConfig(16, 12, resize="letterbox"))
    single = pre(img)
    batch = pre([img, path, _encode(".bmp", img), np.zeros((5, 9), np.uint8)])
    assert batch.shape == (4, 3, 16, 12) and batch.dtype == np.float32
    for i in range(3):
        np.testing.assert_array_equal(batch[i], single[0])
    frames = np.stack([img, img[::-1]])
    assert pre(frames).shape == (2, 3, 16, 12)
    np.testing.assert_array_equal(pre(frames)[0], single[0])


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "area", "lanczos"])
@pytest.mark.parametrize("resize", ["stretch", "letterbox", "center_crop"])
def test_every_mode_and_filter_gives_the_model_shape(resize, interpolation) -> None:
    pre = ImagePreprocessor(ImageConfig(9, 13, resize=resize, interpolation=interpolation))
    for shape in [(480, 640, 3), (7, 3, 3), (13, 9, 3), (1, 1, 3)]:
        out = pre(np.full(shape, 200, np.uint8))
        assert out.shape == (1, 3, 9, 13)
        if resize != "letterbox":
            np.testing.assert_allclose(out, (200 / 255 - 0.5) / 0.5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path) -> None:
    missing = tmp_path / "nope.jpg"
    with pytest.raises(InputError, match="nope.jpg.*does not exist"):
        load_image(missing)
    with pytest.raises(InputError, match="directory"):
        load_image(tmp_path)


def test_empty_bytes_and_empty_file(tmp_path) -> None:
    with pytest.raises(InputError, match="empty"):
        load_image(b"")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.png.*empty"):
        load_image(empty)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp"])
def test_truncated_files_are_refused(ext) -> None:
    rng = np.random.default_rng(0)
    data = _encode(ext, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for cut in (len(data) // 2, len(data) - 40):
        with pytest.raises(InputError, match="truncated|corrupt|damaged"):
            load_image(data[:cut])
    with pytest.raises(InputError):
        load_image(data[:10])  # header cut short


def test_non_image_data_and_unsupported_formats() -> None:
    with pytest.raises(InputError, match="not a JPEG, PNG, BMP, WebP file"):
        load_image(b"hello, this is plain text and not an image at all")
    with pytest.raises(InputError, match="not a JPEG"):
        load_image(_encode(".tiff", _pattern()))
    with pytest.raises(InputError, match="cannot read an image from a int"):
        load_image(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((4, 4, 3), np.int32), "dtype int32"),
        (np.zeros((4, 4, 3), bool), "dtype bool"),
        (np.zeros((4, 4, 2), np.uint8), r"shape \(4, 4, 2\)"),
        (np.zeros((4,), np.uint8), "not an image"),
        (np.zeros((0, 4, 3), np.uint8), "not an image"),
        (np.zeros((4, 0), np.uint8), "not an image"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.full((4, 4, 3), np.inf, np.float32), "NaN or infinite"),
        (np.full((4, 4, 3), 255.0, np.float32), r"\[0, 1\]"),
        (np.full((4, 4, 3), -0.5, np.float32), r"\[0, 1\]"),
    ],
)
def test_bad_arrays_are_refused(array, match) -> None:
    with pytest.raises(InputError, match=match):
        load_image(array)


def _bomb_png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _bomb_jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + b"\xff\xff" + sof0 + b"\xff\xda\x00\x08" + b"\x00" * 100


def _bomb_bmp(width: int, height: int) -> bytes:
    dib = struct.pack("<IiiHHIIiiII", 40, width, -height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 16, 0, 0, 54) + dib + b"\x00" * 16


def _bomb_webp(width: int, height: int) -> bytes:
    size = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + size
    body = b"WEBP" + vp8x + b"\x00" * 32
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("make", [_bomb_png, _bomb_jpeg, _bomb_bmp, _bomb_webp])
def test_decompression_bombs_are_refused_from_the_header(make, monkeypatch) -> None:
    data = make(16000, 16000)  # 256 megapixels claimed by a file of ~100 bytes
    assert len(data) < 200
    header = read_image_header(data)
    assert (header.width, header.height) == (16000, 16000)

    def must_not_decode(*args, **kwargs):
        raise AssertionError("cv2.imdecode was called on a decompression bomb")

    monkeypatch.setattr(image_module.cv2, "imdecode", must_not_decode)
    with pytest.raises(InputError, match="16000x16000 = 256000000 pixels.*decompression bombs"):
        load_image(data)
    with pytest.raises(InputError, match="image 1 of the batch of 2"):
        ImagePreprocessor(ImageConfig(8, 8))([_pattern(), data])


def test_pixel_limit_is_checked_again_after_decoding(monkeypatch) -> None:
    data = _encode(".png", _pattern(20, 20))
    with pytest.raises(InputError, match="header-declared size 20x20"):
        load_image(data, max_pixels=100)
    # A header that understates the size is caught once the pixels are decoded.
    monkeypatch.setattr(image_module, "read_image_header", lambda data, what="": ImageHeader("PNG", 2, 2))
    with pytest.raises(InputError, match="decoded size 20x20"):
        load_image(data, max_pixels=100)


def test_zero_size_header_is_refused() -> None:
    with pytest.raises(InputError, match="0x5.*at least one pixel"):
        load_image(_bomb_png(0, 5))


def test_empty_batch_is_refused() -> None:
    with pytest.raises(InputError, match="empty batch"):
        ImagePreprocessor(ImageConfig(8, 8))([])


def test_strided_memoryview_source() -> None:
    data = _encode(".png", _pattern())
    doubled = bytes(b for pair in zip(data, data) for b in pair)
    np.testing.assert_array_equal(load_image(memoryview(doubled)[::2]), _pattern())
