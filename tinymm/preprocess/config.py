"""The preprocessing contract a bundle carries: image, audio and text settings.

These frozen dataclasses are the single description of how inputs become model tensors. A
bundle's manifest stores them (``to_dict``), the runtime reads them back (``from_dict``), and
train/ and export/ build them, so training and serving cannot drift apart. This module has no
heavy imports so that reading a manifest stays cheap.

Invalid values raise ValueError naming the field; the bundle reader turns that into a
BundleError that names the manifest path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, TypeVar

RESIZE_MODES = ("stretch", "letterbox", "center_crop", "shortest_edge")
# OpenCV filters, and "pil_*": Pillow's antialiased filters, what Hugging Face image processors resize
# with (tinymm.preprocess.pil_resize; read by tinymm.preprocess.hf_image and image_tiles).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "lanczos", "pil_bicubic", "pil_bilinear", "pil_lanczos")
CHANNEL_ORDERS = ("RGB", "BGR")
TENSOR_DTYPES = ("float32", "float16")
WINDOWS = ("hann", "hamming")
MEL_SCALES = ("slaney", "htk")
MEL_NORMS = ("slaney", "none")
LOG_KINDS = ("log10", "ln")
NORMALIZATIONS = ("whisper", "utterance", "none")
TOKENIZER_KINDS = ("sentencepiece", "hf-tokenizers")  # a sentencepiece .model; a Hugging Face tokenizer.json

_Config = TypeVar("_Config")


def _from_dict(cls: type[_Config], data: Mapping[str, Any]) -> _Config:
    """Build a config dataclass from a JSON object, refusing unknown keys (likely typos)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; known fields are {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        # JSON has no tuples; the dataclasses store sequences as tuples so they stay hashable.
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ValueError(str(e)) from e


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive number")


@dataclass(frozen=True)
class ImageConfig:
    """How an image becomes the encoder's (N, 3, H, W) tensor."""

    height: int  # model input height in pixels
    width: int  # model input width in pixels
    # stretch | letterbox (keep aspect, pad) | center_crop (keep aspect, crop) | shortest_edge (the short
    # side to shortest_edge pixels keeping aspect, then a centred height x width crop: CLIP's processor)
    resize: str = "stretch"
    interpolation: str = "area"  # OpenCV filter used when resizing, or pil_bicubic / pil_bilinear / pil_lanczos
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per channel, on pixels scaled to [0, 1]
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per channel, on pixels scaled to [0, 1]
    channel_order: str = "RGB"  # channel order the model was trained on
    pad_value: int = 114  # 0-255 gray level of letterbox borders
    dtype: str = "float32"  # tensor dtype handed to the model
    shortest_edge: int | None = None  # resize "shortest_edge" only: the short side in pixels before the crop

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"image.{name}={value!r} must be a positive integer")
        _check_choice("image.resize", self.resize, RESIZE_MODES)
        _check_choice("image.interpolation", self.interpolation, INTERPOLATIONS)
        _check_choice("image.channel_order", self.channel_order, CHANNEL_ORDERS)
        _check_choice("image.dtype", self.dtype, TENSOR_DTYPES)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"image.mean and image.std need 3 values, got {self.mean} and {self.std}")
        for s in self.std:
            _check_positive("image.std[i]", s)
        if isinstance(self.pad_value, bool) or not isinstance(self.pad_value, int) or not 0 <= self.pad_value <= 255:
            raise ValueError(f"image.pad_value={self.pad_value!r} must be an integer in 0..255")
        if (self.resize == "shortest_edge") != (self.shortest_edge is not None):
            raise ValueError(f"image.shortest_edge={self.shortest_edge!r} is required with resize 'shortest_edge' "
                             f"and only with it (resize is {self.resize!r})")
        if self.shortest_edge is not None and (isinstance(self.shortest_edge, bool) or not isinstance(
                self.shortest_edge, int) or self.shortest_edge < max(self.height, self.width)):
            raise ValueError(f"image.shortest_edge={self.shortest_edge!r} must be an integer >= height and width "
                             f"({self.height}x{self.width}), so that the crop fits in the resized image")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ImageConfig":
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["shortest_edge"] is None:  # absent, as in the manifests written before the field existed
            del out["shortest_edge"]
        return out


@dataclass(frozen=True)
class AudioConfig:
    """How a waveform becomes the speech encoder's (N, n_mels, frames) log-mel tensor."""

    sample_rate: int = 16000  # Hz the model was trained at; inputs are resampled to it
    n_fft: int = 400  # FFT size in samples (25 ms at 16 kHz)
    hop_length: int = 160  # samples between frames (10 ms at 16 kHz)
    win_length: int = 400  # analysis window in samples, <= n_fft (zero-padded to n_fft, centred)
    window: str = "hann"  # periodic window, as torch.hann_window makes it
    n_mels: int = 80  # mel bands
    f_min: float = 0.0  # Hz, lowest mel filter edge
    f_max: float = 8000.0  # Hz, highest mel filter edge, <= sample_rate / 2
    mel_scale: str = "slaney"  # slaney (librosa default) or htk
    mel_norm: str = "slaney"  # slaney: each filter has unit area; none: unit peak
    center: bool = True  # reflect-pad n_fft // 2 on both sides, as torch.stft(center=True)
    power: float = 2.0  # 1 for magnitude, 2 for power spectrogram
    log: str = "log10"  # log10 or ln of the clamped mel energies
    log_floor: float = 1e-10  # energies are clamped to at least this before the log
    normalization: str = "whisper"  # whisper: clamp to max-8, (x+4)/4; utterance: per-band mean/std; none
    max_seconds: float = 30.0  # longer inputs are refused with InputError (chunk them first)
    dtype: str = "float32"  # tensor dtype handed to the model
    # Whisper: pad (with zeros) or trim every clip to this many seconds before the STFT, so the
    # features always have pad_to_seconds * sample_rate / hop_length frames; None: the clip's own length.
    pad_to_seconds: float | None = None
    drop_last_frame: bool = False  # Whisper drops the STFT's last frame (3000 frames for 30 s, not 3001)

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"audio.{name}={value!r} must be a positive integer")
        if self.win_length > self.n_fft:
            raise ValueError(f"audio.win_length={self.win_length} must be <= n_fft={self.n_fft}")
        _check_choice("audio.window", self.window, WINDOWS)
        _check_choice("audio.mel_scale", self.mel_scale, MEL_SCALES)
        _check_choice("audio.mel_norm", self.mel_norm, MEL_NORMS)
        _check_choice("audio.log", self.log, LOG_KINDS)
        _check_choice("audio.normalization", self.normalization, NORMALIZATIONS)
        _check_choice("audio.dtype", self.dtype, TENSOR_DTYPES)
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(
                f"audio needs 0 <= f_min < f_max <= sample_rate/2, got f_min={self.f_min}, "
                f"f_max={self.f_max}, sample_rate={self.sample_rate}"
            )
        for name in ("power", "log_floor", "max_seconds"):
            _check_positive(f"audio.{name}", getattr(self, name))
        if self.pad_to_seconds is not None:
            _check_positive("audio.pad_to_seconds", self.pad_to_seconds)
        if not isinstance(self.drop_last_frame, bool):
            raise ValueError(f"audio.drop_last_frame={self.drop_last_frame!r} must be true or false")

    @property
    def max_samples(self) -> int:
        """Longest accepted input, in samples at the model's rate."""
        return int(self.max_seconds * self.sample_rate)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AudioConfig":
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TextConfig:
    """How text becomes token ids: a sentencepiece model, special ids and prompt templates."""

    tokenizer: str  # tokenizer file (a sentencepiece .model or a tokenizer.json), relative to the bundle root
    context_length: int  # most tokens the decoder accepts, prompt included
    bos_id: int = 1  # -1 when the vocabulary has none
    eos_id: int = 2  # -1 when the vocabulary has none
    pad_id: int = 0  # -1 when the vocabulary has none
    unk_id: int = 3  # -1 when the vocabulary has none
    add_bos: bool = True  # prepend bos_id when encoding a prompt
    add_eos: bool = False  # append eos_id when encoding a prompt
    # Named extra tokens (e.g. "<image>") and their ids.
    special_tokens: Mapping[str, int] = field(default_factory=dict)
    # Task name -> template with {placeholders}, e.g. {"ask": "question: {question} answer:"}.
    prompt_templates: Mapping[str, str] = field(default_factory=dict)
    kind: str = "sentencepiece"  # the tokenizer file's format, one of TOKENIZER_KINDS

    def __post_init__(self) -> None:
        _check_choice("text.kind", self.kind, TOKENIZER_KINDS)
        if not isinstance(self.tokenizer, str) or not self.tokenizer:
            raise ValueError(f"text.tokenizer={self.tokenizer!r} must be a file name inside the bundle")
        if isinstance(self.context_length, bool) or not isinstance(self.context_length, int) or self.context_length <= 0:
            raise ValueError(f"text.context_length={self.context_length!r} must be a positive integer")
        for name in ("bos_id", "eos_id", "pad_id", "unk_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < -1:
                raise ValueError(f"text.{name}={value!r} must be a token id, or -1 for none")
        if self.add_bos and self.bos_id < 0:
            raise ValueError("text.add_bos is true but text.bos_id is -1")
        if self.add_eos and self.eos_id < 0:
            raise ValueError("text.add_eos is true but text.eos_id is -1")
        for name, token_id in dict(self.special_tokens).items():
            if isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0:
                raise ValueError(f"text.special_tokens[{name!r}]={token_id!r} must be a token id")
        for task, template in dict(self.prompt_templates).items():
            if not isinstance(template, str):
                raise ValueError(f"text.prompt_templates[{task!r}] must be a string, got {template!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TextConfig":
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["special_tokens"] = dict(self.special_tokens)
        out["prompt_templates"] = dict(self.prompt_templates)
        return out
