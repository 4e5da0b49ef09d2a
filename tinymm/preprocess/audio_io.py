"""Audio in: WAV decoding, other formats through soundfile when installed, mono mixing, resampling.

``load_audio`` returns float32 samples of shape (samples, channels), always two-dimensional
(mono is (samples, 1)), and the sample rate in Hz. Integer PCM maps to [-1, 1]: 8-bit unsigned
as (x - 128) / 128, 16/24/32-bit signed as x / 2**(bits - 1) (the largest 32-bit value rounds to
1.0 in float32). Float WAV samples are returned as
stored (normally in [-1, 1]; a file that clips may exceed it).

WAV files are read by a small RIFF chunk parser rather than the standard library ``wave``
module: ``wave`` refuses WAVE_FORMAT_IEEE_FLOAT and WAVE_FORMAT_EXTENSIBLE files, so a parser
is needed for those anyway, and one parser for every WAV keeps a single code path with the
same checks (truncation, unsupported encodings, duration cap before decoding).
"""

from __future__ import annotations

import io
import logging
import os
import struct
from dataclasses import dataclass
from typing import Union

import numpy as np

from tinymm.errors import InputError
from tinymm.preprocess.files import read_input_file

logger = logging.getLogger(__name__)

MAX_CHANNELS = 64  # more "channels" than this is almost surely a (channels, samples) array
MIN_SAMPLE_RATE_HZ = 1_000  # a WAV header outside [MIN, MAX] is damaged (telephony is 8 kHz, studios 384 kHz)
MAX_SAMPLE_RATE_HZ = 768_000
RESAMPLE_QUALITY = "HQ"  # soxr high quality: anti-aliased, passband flat to ~0.9 Nyquist

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_FORMAT_NAMES = {
    0x0002: "Microsoft ADPCM",
    0x0006: "A-law",
    0x0007: "mu-law",
    0x0011: "IMA ADPCM",
    0x0055: "MP3",
}
# KSDATAFORMAT_SUBTYPE_* GUIDs are the format tag followed by these 14 bytes.
_EXTENSIBLE_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_RIFF_HEADER_BYTES = 12  # "RIFF", size, "WAVE"
_CHUNK_HEADER_BYTES = 8  # id, size
_FMT_BYTES = 16  # the fields every fmt chunk has
_FMT_EXTENSIBLE_BYTES = 40  # with cbSize, valid bits, channel mask and the sub-format GUID
_UNKNOWN_DATA_SIZE = 0xFFFFFFFF  # written by recorders that never patch the header: read to the end

_PCM_BITS = (8, 16, 24, 32)
_FLOAT_BITS = (32, 64)
_PCM8_ZERO = 128  # unsigned 8-bit PCM stores silence as 128
_ARRAY_SCALES = {  # integer array dtype -> factor to [-1, 1)
    np.dtype(np.int16): 1.0 / 2**15,
    np.dtype(np.int32): 1.0 / 2**31,
}

AudioSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, np.ndarray]


@dataclass(frozen=True)
class WavFormat:
    """The fields of a WAV fmt chunk that decoding needs."""

    encoding: int  # WAVE_FORMAT_PCM or WAVE_FORMAT_IEEE_FLOAT (extensible resolved to its sub-format)
    channels: int
    sample_rate: int  # Hz
    bits: int  # container bits per sample: 8, 16, 24, 32 or 64
    block_align: int  # bytes per frame (all channels)


def _describe(source: object) -> str:
    if isinstance(source, np.ndarray):
        return f"array of shape {source.shape} and dtype {source.dtype}"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"audio of {memoryview(source).nbytes} bytes"
    return f"audio file {str(source)!r}"


def _check_duration(what: str, frames: int, rate: int, max_seconds: float | None) -> None:
    if frames == 0:
        raise InputError(f"{what} contains no samples; pass a non-empty recording")
    if max_seconds is not None and frames > max_seconds * rate:
        raise InputError(
            f"{what} is {frames / rate:.2f} s long ({frames} samples at {rate} Hz), above the cap of "
            f"{max_seconds} s; split it into chunks of at most {max_seconds} s, or raise max_seconds"
        )


def _check_finite(what: str, samples: np.ndarray) -> None:
    if not np.isfinite(samples).all():
        raise InputError(f"{what} contains NaN or infinite samples; pass finite values in [-1, 1]")


# ---------------------------------------------------------------------------------------------
# WAV
# ---------------------------------------------------------------------------------------------


def _parse_fmt(mv: memoryview, body: int, size: int, what: str) -> WavFormat:
    if size < _FMT_BYTES:
        raise InputError(f"{what} has a fmt chunk of {size} bytes (needs {_FMT_BYTES}); the WAV file is malformed")
    tag, channels, rate, byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", mv, body)
    if tag == WAVE_FORMAT_EXTENSIBLE:
        if size < _FMT_EXTENSIBLE_BYTES:
            raise InputError(
                f"{what} is a WAVE_FORMAT_EXTENSIBLE file with a short fmt chunk ({size} bytes); it is malformed"
            )
        guid = bytes(mv[body + 24 : body + 40])
        if guid[2:] != _EXTENSIBLE_GUID_TAIL:
            raise InputError(
                f"{what} is a WAVE_FORMAT_EXTENSIBLE file with an unknown sub-format {guid.hex()}; "
                "convert it to 16-bit PCM or float32 WAV"
            )
        (tag,) = struct.unpack_from("<H", guid)
    is_pcm = tag == WAVE_FORMAT_PCM and bits in _PCM_BITS
    is_float = tag == WAVE_FORMAT_IEEE_FLOAT and bits in _FLOAT_BITS
    if not (is_pcm or is_float):
        name = {WAVE_FORMAT_PCM: "PCM", WAVE_FORMAT_IEEE_FLOAT: "float"}.get(tag)
        name = name or _FORMAT_NAMES.get(tag, f"format tag {tag:#06x}")
        raise InputError(
            f"{what} is a {bits}-bit {name} WAV file, which is not supported; tinymm reads 8/16/24/32-bit "
            "PCM and 32/64-bit float WAV: convert it (e.g. `ffmpeg -i in.wav -c:a pcm_s16le out.wav`)"
        )
    if not MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ:
        raise InputError(
            f"{what} declares a sample rate of {rate} Hz, outside the {MIN_SAMPLE_RATE_HZ}-{MAX_SAMPLE_RATE_HZ} Hz "
            "of real recordings: its header is damaged; re-export it (e.g. `ffmpeg -i in.wav -ar 16000 out.wav`)"
        )
    if channels == 0 or block_align != channels * bits // 8 or byte_rate != rate * block_align:
        raise InputError(
            f"{what} has an inconsistent fmt chunk (channels={channels}, sample_rate={rate}, "
            f"block_align={block_align}, byte_rate={byte_rate}, bits={bits}; block_align must be channels * "
            "bits / 8 and byte_rate sample_rate * block_align): its header is damaged; re-export it"
        )
    return WavFormat(tag, channels, rate, bits, block_align)


def _decode_samples(raw: memoryview, fmt: WavFormat) -> np.ndarray:
    """Raw little-endian sample bytes -> (frames, channels) float32."""
    if fmt.encoding == WAVE_FORMAT_IEEE_FLOAT:
        with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN follow: _check_finite refuses them
            samples = np.frombuffer(raw, dtype="<f4" if fmt.bits == 32 else "<f8").astype(np.float32)
    elif fmt.bits == 8:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - _PCM8_ZERO) * (1.0 / _PCM8_ZERO)
    elif fmt.bits == 24:
        # Place each 3-byte sample in the top of an int32 (low byte 0), then scale as 32-bit.
        packed = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        wide = np.zeros((packed.shape[0], 4), dtype=np.uint8)
        wide[:, 1:] = packed
        samples = wide.view("<i4")[:, 0].astype(np.float32) * (1.0 / 2**31)
    else:
        dtype = "<i2" if fmt.bits == 16 else "<i4"
        samples = np.frombuffer(raw, dtype=dtype).astype(np.float32) * (1.0 / 2 ** (fmt.bits - 1))
    return samples.reshape(-1, fmt.channels)


def _decode_wav(data: bytes | bytearray | memoryview, what: str, max_seconds: float | None) -> tuple[np.ndarray, int]:
    mv = memoryview(data).cast("B")
    n = len(mv)
    fmt: WavFormat | None = None
    data_span: tuple[int, int] | None = None  # (offset, bytes)
    open_ended = False  # the data chunk's size was never written: it runs to the end of the file
    pos = _RIFF_HEADER_BYTES
    while pos + _CHUNK_HEADER_BYTES <= n and (fmt is None or data_span is None):
        chunk_id = bytes(mv[pos : pos + 4])
        (size,) = struct.unpack_from("<I", mv, pos + 4)
        body = pos + _CHUNK_HEADER_BYTES
        if chunk_id == b"fmt ":
            if body + min(size, _FMT_EXTENSIBLE_BYTES) > n:
                break
            fmt = _parse_fmt(mv, body, size, what)
        elif chunk_id == b"data":
            if size == _UNKNOWN_DATA_SIZE:
                size, open_ended = n - body, True
            elif body + size > n:
                raise InputError(
                    f"{what} is truncated: its data chunk declares {size} bytes but only {n - body} "
                    "follow; the recording was cut short: re-export it"
                )
            data_span = (body, size)
        pos = body + size + (size & 1)  # chunks are padded to an even size
    if fmt is None or data_span is None:
        missing = "fmt" if fmt is None else "data"
        raise InputError(f"{what} is a truncated or malformed WAV file: no complete {missing} chunk; re-export it")
    offset, size = data_span
    frames = size // fmt.block_align
    if size % fmt.block_align:
        if fmt.channels > 1 and not open_ended:
            raise InputError(
                f"{what} declares {fmt.channels} channels of {fmt.bits}-bit samples ({fmt.block_align} bytes a "
                f"frame), but its {size} bytes of data are not a whole number of frames: the header does not "
                "describe the data (a mono recording labelled multichannel?); re-export it"
            )
        logger.warning("%s: data chunk ends with a partial frame (%d bytes); ignoring it", what, size % fmt.block_align)
    _check_duration(what, frames, fmt.sample_rate, max_seconds)
    samples = _decode_samples(mv[offset : offset + frames * fmt.block_align], fmt)
    if fmt.encoding == WAVE_FORMAT_IEEE_FLOAT:
        _check_finite(what, samples)
    return samples, fmt.sample_rate


# ---------------------------------------------------------------------------------------------
# Other formats and arrays
# ---------------------------------------------------------------------------------------------


def _decode_other(data: bytes | bytearray | memoryview, what: str, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Non-WAV data through the optional soundfile package (FLAC, OGG, MP3 with libsndfile >= 1.1)."""
    head = bytes(memoryview(data).cast("B")[:12])
    try:
        import soundfile
    except ImportError as e:
        raise InputError(
            f"{what} is not a WAV file (it starts with bytes {head!r}); tinymm reads WAV itself and other "
            "formats (FLAC, MP3, OGG) through the optional soundfile package: convert it to WAV, or "
            "`pip install soundfile`"
        ) from e
    try:
        with soundfile.SoundFile(io.BytesIO(bytes(data))) as f:
            _check_duration(what, int(f.frames), int(f.samplerate), max_seconds)
            samples = f.read(dtype="float32", always_2d=True)
            rate = int(f.samplerate)
    except InputError:
        raise
    except Exception as e:  # soundfile raises its own LibsndfileError/RuntimeError/TypeError
        raise InputError(
            f"{what} could not be decoded (it starts with bytes {head!r}): {e}; it is damaged or in a "
            "format libsndfile cannot read: convert it to WAV"
        ) from e
    _check_duration(what, samples.shape[0], rate, max_seconds)
    _check_finite(what, samples)
    return samples, rate


def _from_array(
    samples: np.ndarray, what: str, sample_rate: int | None, max_seconds: float | None
) -> tuple[np.ndarray, int]:
    if sample_rate is None:
        raise InputError(f"{what} was given without sample_rate; pass sample_rate= (in Hz) with numpy audio")
    _check_rate("sample_rate", sample_rate)
    if samples.ndim == 1:
        samples = samples[:, None]
    if samples.ndim != 2:
        raise InputError(f"{what} is not audio; pass (samples,) mono or (samples, channels) samples")
    if samples.shape[1] > MAX_CHANNELS or samples.shape[1] == 0:
        raise InputError(
            f"{what} would have {samples.shape[1]} channels; audio arrays are (samples, channels): "
            "transpose a (channels, samples) array"
        )
    if samples.dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32 becomes inf: refused next
            out = samples.astype(np.float32, copy=False)
        _check_finite(what, out)
    elif samples.dtype == np.uint8:
        out = (samples.astype(np.float32) - _PCM8_ZERO) * (1.0 / _PCM8_ZERO)
    elif samples.dtype in _ARRAY_SCALES:
        out = samples.astype(np.float32) * _ARRAY_SCALES[samples.dtype]
    else:
        raise InputError(f"{what} is not supported; pass float samples in [-1, 1], or int16, int32 or uint8 PCM")
    _check_duration(what, out.shape[0], sample_rate, max_seconds)
    return out, sample_rate


def _check_rate(name: str, rate: object) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise InputError(f"{name}={rate!r} is not a sample rate; pass a positive integer number of Hz")


def load_audio(
    source: AudioSource, *, sample_rate: int | None = None, max_seconds: float | None = None
) -> tuple[np.ndarray, int]:
    """Decode or convert any audio source to float32 samples and their rate.

    Args:
        source: a path (str or PathLike) or the bytes of a WAV file (8-bit unsigned, 16/24/32-bit
            signed PCM, 32/64-bit float, plain or WAVE_FORMAT_EXTENSIBLE, any channel count), or of
            another format when the optional ``soundfile`` package is installed; or a numpy array
            of shape (samples,) or (samples, channels): float in [-1, 1], or int16/int32/uint8 PCM.
        sample_rate: the rate of an array source in Hz (required for arrays). For a file it may
            be omitted; when given it must match the file's rate (use ``resample`` to convert).
        max_seconds: refuse audio longer than this, checked on the header before decoding.

    Returns:
        (samples, channels) float32, C-contiguous or a view of the input array, and the sample
        rate in Hz.

    Raises:
        InputError: missing or unreadable file, empty audio, truncated or unsupported data,
            NaN/inf samples, a missing sample_rate for an array, audio longer than max_seconds.
    """
    what = _describe(source)
    if isinstance(source, np.ndarray):
        return _from_array(source, what, sample_rate, max_seconds)
    if isinstance(source, (bytes, bytearray, memoryview)):
        contiguous = not isinstance(source, memoryview) or source.c_contiguous
        data: bytes | bytearray | memoryview = source if contiguous else source.tobytes()
    elif isinstance(source, (str, os.PathLike)):
        data = read_input_file(source, "audio")
    else:
        raise InputError(
            f"cannot read audio from a {type(source).__name__}; pass a path, the bytes of a WAV file, "
            "or a numpy array with sample_rate="
        )
    head = bytes(memoryview(data).cast("B")[:_RIFF_HEADER_BYTES])
    if not head:
        raise InputError(f"{what} is empty (0 bytes); pass a WAV file")
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        samples, rate = _decode_wav(data, what, max_seconds)
    elif b"RIFF".startswith(head[:4]) or head[:4] in (b"RF64", b"BW64"):
        raise InputError(
            f"{what} is a truncated WAV file, or a RIFF file that is not plain WAVE (it starts with "
            f"{head!r}); convert it to a plain WAV file"
        )
    else:
        samples, rate = _decode_other(data, what, max_seconds)
    if sample_rate is not None and sample_rate != rate:
        raise InputError(
            f"sample_rate={sample_rate} was given but {what} is recorded at {rate} Hz; sample_rate "
            "describes numpy arrays only: leave it out for files, and resample() to change the rate"
        )
    return samples, rate


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(samples,) or (samples, channels) float -> (samples,) float32, the mean of the channels."""
    samples = np.asarray(samples)
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    if samples.ndim != 2:
        raise InputError(f"to_mono got shape {samples.shape}; pass (samples,) or (samples, channels)")
    if samples.shape[1] == 1:
        return samples[:, 0].astype(np.float32, copy=False)
    return samples.mean(axis=1, dtype=np.float32)


def resample(samples: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Change the sample rate with soxr (high quality, anti-aliased).

    Args:
        samples: (samples,) or (samples, channels) float.
        orig_rate, target_rate: Hz, positive integers.

    Returns:
        float32 of shape (round(samples * target_rate / orig_rate),) or (that, channels); the
        input itself (as float32) when the rates match.
    """
    _check_rate("orig_rate", orig_rate)
    _check_rate("target_rate", target_rate)
    samples = np.asarray(samples, dtype=np.float32)
    if orig_rate == target_rate or samples.shape[0] == 0:
        return samples
    import soxr  # a runtime dependency, imported here so that reading configs stays cheap

    return soxr.resample(np.ascontiguousarray(samples), orig_rate, target_rate, quality=RESAMPLE_QUALITY)
