"""Audio decoding, mono mixing, resampling, log-mel features and the AudioPreprocessor."""

from __future__ import annotations

import io
import struct
import sys
import types
import wave

import numpy as np
import pytest

from tinymm.errors import InputError
from tinymm.preprocess import audio_io
from tinymm.preprocess.audio import (
    FEATURE_PAD_VALUE,
    AudioPreprocessor,
    analysis_window,
    batch_features,
    frame_count,
    hz_to_mel,
    mel_filterbank,
    mel_to_hz,
    min_samples,
)
from tinymm.preprocess.audio_io import load_audio, resample, to_mono
from tinymm.preprocess.config import AudioConfig

_EXTENSIBLE_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


def _ints(bits: int, frames: int, channels: int) -> np.ndarray:
    """Deterministic integer samples spanning the full range of a PCM width."""
    rng = np.random.default_rng(bits * 10 + channels)
    if bits == 8:
        x = rng.integers(0, 256, (frames, channels))
        x[0, 0], x[1, 0] = 0, 255
        return x.astype(np.uint8)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    x = rng.integers(lo, hi + 1, (frames, channels), dtype=np.int64)
    x[0, 0], x[1, 0] = lo, hi
    return x


def _pcm_bytes(ints: np.ndarray, bits: int) -> bytes:
    if bits == 8:
        return ints.astype(np.uint8).tobytes()
    if bits == 24:
        return (ints.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]).tobytes()
    return ints.astype("<i2" if bits == 16 else "<i4").tobytes()


def _expected(ints: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return ((ints.astype(np.float64) - 128) / 128).astype(np.float32)
    return (ints / 2.0 ** (bits - 1)).astype(np.float32)


def _wave_module_wav(ints: np.ndarray, bits: int, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(ints.shape[1])
        w.setsampwidth(bits // 8)
        w.setframerate(rate)
        w.writeframes(_pcm_bytes(ints, bits))
    return buf.getvalue()


def _riff(fmt_body: bytes, data: bytes, extra_chunks: bytes = b"", data_size: int | None = None) -> bytes:
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_body)) + fmt_body + extra_chunks
    body += b"data" + struct.pack("<I", len(data) if data_size is None else data_size) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _fmt(tag: int, channels: int, rate: int, bits: int) -> bytes:
    block = channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)


def _fmt_extensible(sub_tag: int, channels: int, rate: int, bits: int) -> bytes:
    guid = struct.pack("<H", sub_tag) + _EXTENSIBLE_GUID_TAIL
    return _fmt(0xFFFE, channels, rate, bits) + struct.pack("<HHI", 22, bits, 0) + guid


def _float_wav(samples: np.ndarray, rate: int, bits: int = 32) -> bytes:
    data = samples.astype("<f4" if bits == 32 else "<f8").tobytes()
    return _riff(_fmt(3, samples.shape[1], rate, bits), data)


def _sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# WAV decoding
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 16, 24, 32])
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_pcm_wav_round_trip(tmp_path, bits, channels) -> None:
    ints = _ints(bits, 101, channels)
    data = _wave_module_wav(ints, bits, 22050)
    path = tmp_path / f"klang_{bits}_{channels}_é.wav"
    path.write_bytes(data)
    for source in (data, path, str(path), memoryview(data)):
        samples, rate = load_audio(source)
        assert rate == 22050
        assert samples.shape == (101, channels) and samples.dtype == np.float32
        np.testing.assert_array_equal(samples, _expected(ints, bits))
        assert samples.min() >= -1.0 and samples.max() <= 1.0


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("channels", [1, 2])
def test_float_wav_round_trip(bits, channels) -> None:
    x = np.random.default_rng(1).uniform(-1, 1, (77, channels)).astype(np.float32)
    samples, rate = load_audio(_float_wav(x, 8000, bits))
    assert rate == 8000 and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, x)


@pytest.mark.parametrize("sub_tag, bits", [(1, 16), (1, 24), (3, 32)])
def test_extensible_wav(sub_tag, bits) -> None:
    if sub_tag == 3:
        x = np.random.default_rng(2).uniform(-1, 1, (50, 2)).astype(np.float32)
        data, expected = x.astype("<f4").tobytes(), x
    else:
        ints = _ints(bits, 50, 2)
        data, expected = _pcm_bytes(ints, bits), _expected(ints, bits)
    samples, rate = load_audio(_riff(_fmt_extensible(sub_tag, 2, 48000, bits), data))
    assert rate == 48000
    np.testing.assert_array_equal(samples, expected)


def test_odd_chunks_are_skipped_with_padding_and_unknown_data_size_reads_to_end() -> None:
    ints = _ints(16, 20, 1)
    odd_chunk = b"LIST" + struct.pack("<I", 3) + b"abc" + b"\x00"  # odd size, one pad byte
    data = _riff(_fmt(1, 1, 16000, 16), _pcm_bytes(ints, 16), extra_chunks=odd_chunk)
    np.testing.assert_array_equal(load_audio(data)[0], _expected(ints, 16))
    streaming = _riff(_fmt(1, 1, 16000, 16), _pcm_bytes(ints, 16), data_size=0xFFFFFFFF)
    np.testing.assert_array_equal(load_audio(streaming)[0], _expected(ints, 16))


def test_arrays_need_a_rate_and_are_scaled_by_dtype() -> None:
    x = np.array([0, 16384, -32768], np.int16)
    samples, rate = load_audio(x, sample_rate=16000)
    assert rate == 16000 and samples.shape == (3, 1)
    np.testing.assert_array_equal(samples[:, 0], [0, 0.5, -1.0])
    stereo = np.zeros((10, 2), np.float64)
    assert load_audio(stereo, sample_rate=8000)[0].dtype == np.float32
    np.testing.assert_array_equal(load_audio(np.array([128, 0], np.uint8), sample_rate=8000)[0][:, 0], [0, -1])
    with pytest.raises(InputError, match="without sample_rate"):
        load_audio(np.zeros(100, np.float32))
    with pytest.raises(InputError, match="transpose"):
        load_audio(np.zeros((2, 16000), np.float32), sample_rate=16000)
    with pytest.raises(InputError, match="sample rate"):
        load_audio(np.zeros(100, np.float32), sample_rate=0)
    with pytest.raises(InputError, match="int64"):
        load_audio(np.zeros(100, np.int64), sample_rate=16000)


def test_to_mono() -> None:
    stereo = np.array([[1.0, 0.0], [0.5, -0.5]], np.float32)
    np.testing.assert_array_equal(to_mono(stereo), [0.5, 0.0])
    mono = np.array([0.1, 0.2], np.float32)
    assert to_mono(mono) is mono
    np.testing.assert_array_equal(to_mono(mono[:, None]), mono)


# --------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_resample_keeps_frequency_and_amplitude() -> None:
    x = _sine(1000, 1.0, 44100, amplitude=0.5)
    y = resample(x, 44100, 16000)
    assert y.dtype == np.float32 and abs(len(y) - 16000) <= 1
    core = y[800:-800]  # away from the filter's edge transients
    spectrum = np.abs(np.fft.rfft(core * np.hanning(len(core))))
    peak_hz = np.argmax(spectrum) * 16000 / len(core)
    assert abs(peak_hz - 1000) < 2
    assert abs(_rms(core) - 0.5 / np.sqrt(2)) < 0.005


def test_resample_removes_tones_above_the_new_nyquist() -> None:
    x = _sine(10000, 1.0, 44100, amplitude=0.5)  # 10 kHz > 8 kHz Nyquist at 16 kHz
    y = resample(x, 44100, 16000)
    attenuation_db = 20 * np.log10(_rms(y[800:-800]) / _rms(x))
    assert attenuation_db < -40


def test_resample_identity_and_channels() -> None:
    x = np.random.default_rng(3).uniform(-1, 1, (300, 2)).astype(np.float32)
    assert resample(x, 16000, 16000) is x
    y = resample(x, 48000, 16000)
    assert y.shape == (100, 2) and y.dtype == np.float32
    with pytest.raises(InputError, match="orig_rate"):
        resample(x, -5, 16000)


# --------------------------------------------------------------------------------------------
# Log-mel features
# --------------------------------------------------------------------------------------------


def test_mel_scales() -> None:
    assert hz_to_mel(1000.0, "slaney") == pytest.approx(15.0)
    assert hz_to_mel(500.0, "slaney") == pytest.approx(7.5)
    assert hz_to_mel(6400.0, "slaney") == pytest.approx(15.0 + 27.0)
    assert hz_to_mel(700.0, "htk") == pytest.approx(2595 * np.log10(2))
    hz = np.array([0.0, 300.0, 999.0, 1000.0, 4000.0, 8000.0])
    for scale in ("slaney", "htk"):
        np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz, scale), scale), hz, atol=1e-9)


def test_filterbank_shape_and_normalization() -> None:
    cfg = AudioConfig()
    fb = mel_filterbank(cfg)
    assert fb.shape == (80, 201) and fb.dtype == np.float32
    assert (fb >= 0).all() and (fb.max(axis=1) > 0).all()
    # Slaney norm: each triangle has unit area in Hz (sum of weights times bin width), checked
    # with fine FFT bins so that sampling the triangles costs little accuracy.
    fine = AudioConfig(n_fft=4096, win_length=4096)
    areas = mel_filterbank(fine).sum(axis=1) * fine.sample_rate / fine.n_fft
    np.testing.assert_allclose(areas, 1.0, rtol=0.01)
    peak = mel_filterbank(AudioConfig(mel_norm="none", mel_scale="htk", n_mels=40))
    assert peak.max() <= 1.0 and peak.max(axis=1).min() > 0.5


def test_window_is_periodic_and_centred() -> None:
    w = analysis_window(AudioConfig(n_fft=512, win_length=400))
    assert w.shape == (512,)
    assert (w[:56] == 0).all() and (w[456:] == 0).all()
    expected = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    np.testing.assert_allclose(w[56:456], expected, atol=1e-7)


def test_features_shape_frame_count_and_whisper_range() -> None:
    cfg = AudioConfig()
    pre = AudioPreprocessor(cfg)
    x = _sine(440, 1.0, 16000) + 0.01 * np.random.default_rng(4).standard_normal(16000).astype(np.float32)
    feats = pre.features(x)
    assert feats.shape == (80, frame_count(16000, cfg)) == (80, 101)
    assert feats.dtype == np.float32
    # whisper: at most 8 log10 units of range, mapped by (x + 4) / 4.
    assert feats.max() - feats.min() <= 2.0 + 1e-6
    assert frame_count(400, AudioConfig(center=False)) == 1
    assert min_samples(cfg) == 201 and min_samples(AudioConfig(center=False)) == 400


def test_silence_sits_at_the_log_floor() -> None:
    pre = AudioPreprocessor(AudioConfig(normalization="none", log="log10", log_floor=1e-10))
    np.testing.assert_allclose(pre.features(np.zeros(1600, np.float32)), -10.0)
    pre_ln = AudioPreprocessor(AudioConfig(normalization="none", log="ln", log_floor=1e-5))
    np.testing.assert_allclose(pre_ln.features(np.zeros(1600, np.float32)), np.log(1e-5), rtol=1e-6)


def test_utterance_normalization() -> None:
    pre = AudioPreprocessor(AudioConfig(normalization="utterance"))
    ramp = np.linspace(0.01, 1, 16000, dtype=np.float32)  # loudness grows, so bands vary over time
    x = np.random.default_rng(5).standard_normal(16000).astype(np.float32) * ramp
    feats = pre.features(x)
    np.testing.assert_allclose(feats.mean(axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(feats.std(axis=1), 1.0, atol=1e-3)


def test_float16_features() -> None:
    x = _sine(300, 0.5, 16000)
    half = AudioPreprocessor(AudioConfig(dtype="float16")).features(x)
    full = AudioPreprocessor(AudioConfig()).features(x)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float32), full, atol=2e-3)


def test_call_batches_decodes_mixes_and_resamples() -> None:
    cfg = AudioConfig()
    pre = AudioPreprocessor(cfg)
    short = _sine(500, 0.5, 16000)
    long = _sine(700, 1.0, 16000)
    stereo_44k = np.stack([_sine(500, 0.5, 44100), _sine(500, 0.5, 44100)], axis=1)
    wav_44k = _wave_module_wav(np.round(stereo_44k * 32767).astype(np.int64), 16, 44100)
    feats, lengths = pre([short, long, wav_44k], sample_rate=16000)
    assert feats.shape == (3, 80, 101) and feats.dtype == np.float32
    np.testing.assert_array_equal(lengths, [51, 101, 51])
    assert lengths.dtype == np.int64
    np.testing.assert_array_equal(feats[0, :, :51], pre.features(short))
    assert (feats[0, :, 51:] == FEATURE_PAD_VALUE).all()
    # The resampled 44.1 kHz stereo file gives (nearly) the features of the 16 kHz original.
    assert np.abs(feats[2, :, 2:49] - feats[0, :, 2:49]).max() < 0.05
    single, single_len = pre(short, sample_rate=16000)
    assert single.shape == (1, 80, 51) and single_len.tolist() == [51]


def test_batch_features_pads() -> None:
    a, b = np.ones((3, 2), np.float32), np.full((3, 4), 2, np.float32)
    out, lengths = batch_features([a, b])
    assert out.shape == (2, 3, 4) and lengths.tolist() == [2, 4]
    assert (out[0, :, 2:] == FEATURE_PAD_VALUE).all()


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_empty_audio() -> None:
    with pytest.raises(InputError, match="no samples"):
        load_audio(_wave_module_wav(np.zeros((0, 1), np.int64), 16, 16000))
    with pytest.raises(InputError, match="empty"):
        load_audio(b"")
    with pytest.raises(InputError, match="no samples"):
        load_audio(np.zeros(0, np.float32), sample_rate=16000)


def test_too_short_for_one_frame_says_how_many() -> None:
    pre = AudioPreprocessor(AudioConfig())
    with pytest.raises(InputError, match="has 150 samples.*at least 201"):
        pre.features(np.zeros(150, np.float32))
    with pytest.raises(InputError, match="clip 1 of the batch of 2: .*at least 201"):
        pre([np.zeros(1600, np.float32), np.zeros(150, np.float32)], sample_rate=16000)


def test_nan_and_inf_samples() -> None:
    bad = np.zeros(1600, np.float32)
    bad[10] = np.nan
    pre = AudioPreprocessor(AudioConfig())
    with pytest.raises(InputError, match="NaN"):
        pre.features(bad)
    with pytest.raises(InputError, match="NaN"):
        pre(bad, sample_rate=16000)
    bad[10] = np.inf
    with pytest.raises(InputError, match="infinite"):
        load_audio(_float_wav(bad[:, None], 16000))


def test_too_long_audio_is_refused_before_decoding(monkeypatch) -> None:
    pre = AudioPreprocessor(AudioConfig(max_seconds=2.0))
    long_wav = _wave_module_wav(np.full((8000 * 3, 1), 128, np.int64), 8, 8000)  # 3 s at 8 kHz

    def must_not_decode(*args, **kwargs):
        raise AssertionError("samples were decoded before the duration check")

    monkeypatch.setattr(audio_io, "_decode_samples", must_not_decode)
    with pytest.raises(InputError, match=r"3\.00 s long .* cap of 2\.0 s; split it"):
        pre(long_wav)
    monkeypatch.undo()
    with pytest.raises(InputError, match=r"3\.00 s long.*cap of 2\.0 s"):
        pre(np.zeros(48000, np.float32), sample_rate=16000)
    with pytest.raises(InputError, match=r"3\.00 s long.*cap of 2\.0 s"):
        pre.features(np.zeros(48000, np.float32))


@pytest.mark.parametrize(
    "fmt_body, match",
    [
        (_fmt(6, 1, 8000, 8), "A-law"),
        (_fmt(7, 1, 8000, 8), "mu-law"),
        (_fmt(1, 1, 8000, 12), "12-bit PCM"),
        (_fmt(3, 1, 8000, 16), "16-bit float"),
        (_fmt(0x55, 1, 8000, 0), "MP3"),
        (_fmt(0xFFFE, 1, 8000, 16) + b"\x16\x00", "short fmt chunk"),
        (_fmt(0xFFFE, 1, 8000, 16) + struct.pack("<HHI", 22, 16, 0) + b"\x01" * 16, "unknown sub-format"),
        (struct.pack("<HHIIHH", 1, 2, 8000, 32000, 3, 16), "inconsistent fmt"),
    ],
)
def test_unsupported_wav_formats(fmt_body, match) -> None:
    with pytest.raises(InputError, match=match):
        load_audio(_riff(fmt_body, b"\x00" * 64))


def test_truncated_wav_files() -> None:
    full = _wave_module_wav(_ints(16, 1000, 2), 16, 16000)
    with pytest.raises(InputError, match="truncated: its data chunk declares 4000 bytes but only"):
        load_audio(full[:1000])
    with pytest.raises(InputError, match="truncated"):
        load_audio(full[:30])  # inside the fmt chunk
    with pytest.raises(InputError, match="truncated"):
        load_audio(full[:6])
    no_data = b"RIFF" + struct.pack("<I", 28) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + _fmt(1, 1, 8000, 16)
    with pytest.raises(InputError, match="no complete data chunk"):
        load_audio(no_data)


def test_missing_file_and_conflicting_rate(tmp_path) -> None:
    with pytest.raises(InputError, match="nope.wav.*does not exist"):
        load_audio(tmp_path / "nope.wav")
    data = _wave_module_wav(_ints(16, 10, 1), 16, 16000)
    with pytest.raises(InputError, match="sample_rate=8000 was given but .* 16000 Hz"):
        load_audio(data, sample_rate=8000)
    assert load_audio(data, sample_rate=16000)[1] == 16000


def test_other_formats_without_soundfile(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "soundfile", None)  # makes `import soundfile` fail
    with pytest.raises(InputError, match="not a WAV file.*pip install soundfile"):
        load_audio(b"fLaC\x00\x00\x00\x22" + b"\x00" * 40)


def test_other_formats_through_soundfile(monkeypatch) -> None:
    decoded = np.random.default_rng(6).uniform(-1, 1, (500, 2)).astype(np.float32)

    class FakeSoundFile:
        def __init__(self, fileobj):
            if fileobj.read(4) != b"fLaC":
                raise RuntimeError("Format not recognised.")
            self.frames, self.samplerate = len(decoded), 22050

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, dtype, always_2d):
            assert dtype == "float32" and always_2d
            return decoded

    monkeypatch.setitem(sys.modules, "soundfile", types.SimpleNamespace(SoundFile=FakeSoundFile))
    samples, rate = load_audio(b"fLaC" + b"\x00" * 40)
    assert rate == 22050
    np.testing.assert_array_equal(samples, decoded)
    with pytest.raises(InputError, match="could not be decoded.*Format not recognised"):
        load_audio(b"junk" * 10)
    with pytest.raises(InputError, match="0.02 s long"):
        load_audio(b"fLaC" + b"\x00" * 40, max_seconds=0.01)


def test_features_input_checks() -> None:
    pre = AudioPreprocessor(AudioConfig())
    with pytest.raises(InputError, match="to_mono"):
        pre.features(np.zeros((1600, 2), np.float32))
    with pytest.raises(InputError, match="dtype int16"):
        pre.features(np.zeros(1600, np.int16))
    with pytest.raises(InputError, match="empty batch"):
        pre([])
    with pytest.raises(InputError, match="cannot read audio from a float"):
        pre(1.5)  # type: ignore[arg-type]


def test_too_many_mels_for_the_fft_warns_and_stays_finite(caplog) -> None:
    cfg = AudioConfig(n_fft=64, win_length=64, hop_length=32, n_mels=80)
    with caplog.at_level("WARNING", logger="tinymm.preprocess.audio"):
        pre = AudioPreprocessor(cfg)
    assert "have no FFT bin" in caplog.text
    feats = pre.features(_sine(440, 0.2, 16000))
    assert feats.shape == (80, frame_count(3200, cfg)) and np.isfinite(feats).all()


def test_strided_memoryview_sources() -> None:
    data = _wave_module_wav(_ints(16, 10, 1), 16, 16000)
    doubled = bytes(b for pair in zip(data, data) for b in pair)
    samples, _ = load_audio(memoryview(doubled)[::2])
    np.testing.assert_array_equal(samples, load_audio(data)[0])
