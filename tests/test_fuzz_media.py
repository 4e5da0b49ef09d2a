"""Fuzz tier: image, audio and WAV-header readers take random and mutated bytes and arrays, and
either return what they document or raise a TinymmError (see tests/fuzz_support.py)."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz tier needs hypothesis (pip install 'tinymm[dev]')")
from fuzz_support import FUZZ, INTERESTING_U32, seeds_mutated, tinymm_error_or  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from tinymm.preprocess.audio_io import load_audio, to_mono  # noqa: E402
from tinymm.preprocess.image import load_image, read_image_header  # noqa: E402
from tinymm.streams.audio import SAMPLE_FORMATS, pcm_chunks  # noqa: E402

# A reader's numpy warning (overflow, invalid value) is a bug too: it leaks onto stderr.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

RATE = 16000
MAX_FUZZ_SECONDS = 5.0  # load_audio's cap in these tests: a mutated size field must not make work
ARRAY_DTYPES = (np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64, np.float16, np.float32, np.float64,
                np.bool_, np.complex64)


def _image_seeds() -> dict[str, bytes]:
    import cv2

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    seeds = {}
    for ext in (".png", ".jpg", ".bmp", ".webp"):
        ok, encoded = cv2.imencode(ext, image)
        assert ok, ext
        seeds[ext] = encoded.tobytes()
    ok, encoded = cv2.imencode(".png", np.dstack([image, image[..., :1]]))  # with alpha
    seeds["rgba.png"] = encoded.tobytes()
    return seeds


def _wav(tag: int, channels: int, rate: int, bits: int, payload: bytes, *, extensible: bool = False,
         byte_rate: int | None = None, block_align: int | None = None, data_size: int | None = None) -> bytes:
    align = (channels * bits // 8 if block_align is None else block_align) & 0xFFFF  # the fields' widths
    byte_rate = (rate * align if byte_rate is None else byte_rate) & 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, channels, rate, byte_rate, align, bits)
    if extensible:
        guid = struct.pack("<H", tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt += struct.pack("<HHI", 22, bits, 0) + guid
    size = len(payload) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _wav_seeds() -> dict[str, bytes]:
    tone = np.sin(np.linspace(0, 40, 400))
    return {
        "pcm16": _wav(1, 1, RATE, 16, (tone * 3e4).astype("<i2").tobytes()),
        "pcm8": _wav(1, 1, 8000, 8, (tone * 100 + 128).astype(np.uint8).tobytes()),
        "pcm24-stereo": _wav(1, 2, 44100, 24, b"".join(int(v * 8e6).to_bytes(3, "little", signed=True)
                                                       for v in np.repeat(tone[:100], 2))),
        "float32": _wav(3, 1, RATE, 32, tone.astype("<f4").tobytes()),
        "float64-ext": _wav(3, 1, 48000, 64, tone.astype("<f8").tobytes(), extensible=True),
    }


IMAGE_SEEDS = _image_seeds()
WAV_SEEDS = _wav_seeds()


def _check_image(image) -> None:
    if image is not None:
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def _check_audio(result) -> None:
    if result is not None:
        samples, rate = result
        assert samples.dtype == np.float32 and samples.ndim == 2 and samples.shape[0] > 0 and rate > 0
        assert np.isfinite(samples).all()
        assert to_mono(samples).shape == (samples.shape[0],)


# ---- images -----------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_as_an_image(data: bytes) -> None:
    _check_image(tinymm_error_or(load_image, data))
    tinymm_error_or(read_image_header, data)


@FUZZ
@given(seeds_mutated(IMAGE_SEEDS))
def test_mutated_images(data: bytes) -> None:
    _check_image(tinymm_error_or(load_image, data, max_pixels=1 << 16))
    tinymm_error_or(read_image_header, data)


@FUZZ
@given(hnp.arrays(st.sampled_from(ARRAY_DTYPES), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)))
def test_arrays_as_images(array: np.ndarray) -> None:
    _check_image(tinymm_error_or(load_image, array))


# ---- audio and WAV headers --------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_as_audio(data: bytes) -> None:
    _check_audio(tinymm_error_or(load_audio, data, max_seconds=MAX_FUZZ_SECONDS))
    _check_audio(tinymm_error_or(load_audio, b"RIFF\x00\x00\x00\x00WAVE" + data, max_seconds=MAX_FUZZ_SECONDS))


@FUZZ
@given(seeds_mutated(WAV_SEEDS))
def test_mutated_wav_files(data: bytes) -> None:
    _check_audio(tinymm_error_or(load_audio, data, max_seconds=MAX_FUZZ_SECONDS))


@FUZZ
@given(
    tag=st.sampled_from((0, 1, 2, 3, 6, 7, 0x55, 0xFFFE)),
    channels=st.sampled_from((0, 1, 2, 7, 64, 65535)),
    rate=st.sampled_from((0, 1, 8000, RATE, 768_000, *INTERESTING_U32)),
    bits=st.sampled_from((0, 1, 4, 8, 12, 16, 24, 32, 64, 65535)),
    extensible=st.booleans(),
    byte_rate=st.none() | st.sampled_from(INTERESTING_U32),
    block_align=st.none() | st.integers(0, 65535),
    data_size=st.none() | st.sampled_from(INTERESTING_U32),
    payload=st.binary(max_size=256),
)
def test_wav_headers(tag, channels, rate, bits, extensible, byte_rate, block_align, data_size, payload) -> None:
    wav = _wav(tag, channels, rate, bits, payload, extensible=extensible, byte_rate=byte_rate,
               block_align=block_align, data_size=data_size)
    _check_audio(tinymm_error_or(load_audio, wav, max_seconds=MAX_FUZZ_SECONDS))


@FUZZ
@given(
    array=hnp.arrays(st.sampled_from(ARRAY_DTYPES), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=8)),
    rate=st.none() | st.sampled_from((-1, 0, 1, RATE, 2**40)) | st.floats(allow_nan=True),
)
def test_arrays_as_audio(array: np.ndarray, rate) -> None:
    _check_audio(tinymm_error_or(load_audio, array, sample_rate=rate, max_seconds=MAX_FUZZ_SECONDS))


@FUZZ
@given(data=st.binary(max_size=2048), sample_format=st.sampled_from(sorted(SAMPLE_FORMATS)))
def test_raw_pcm_streams(data: bytes, sample_format: str) -> None:
    chunks = tinymm_error_or(lambda: list(pcm_chunks(io.BytesIO(data), RATE, sample_format, chunk_ms=10)))
    if chunks is not None:
        assert all(c.dtype == np.float32 and np.isfinite(c).all() for c in chunks)
