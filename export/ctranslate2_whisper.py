"""Read a CTranslate2 Whisper model (``model.bin``) and map it onto Hugging Face Whisper weights.

A CTranslate2 model directory (what ``ct2-transformers-converter`` and faster-whisper write)
holds ``model.bin``, ``config.json`` (suppress ids, language ids, alignment heads) and the
tokenizer. ``model.bin`` (binary version 6, little endian) is::

    u32 binary version | string spec name ("WhisperSpec") | u32 spec revision (3)
    u32 variable count, then per variable:
        string name | u8 rank | u32 dims[rank] | u8 dtype (DTYPES) | u32 byte count | data
    u32 alias count, then per alias: string alias | string name of the variable it repeats
    (string = u16 length including a trailing NUL, then the UTF-8 bytes and the NUL)

Names are scopes such as ``decoder/layer_0/self_attention/linear_0/weight``. The Whisper spec
fuses projections: encoder and decoder self-attention ``linear_0`` is q|k|v stacked on the
output axis, ``linear_1`` the output projection; decoder cross-attention ``linear_0`` is q,
``linear_1`` k|v, ``linear_2`` the output. Whisper's k projections have no bias: their slice of
a fused bias is zero. ``decoder/projection/weight`` is usually an alias of the token
embedding (the tied output head). Scalars (``num_heads``, flags) are stored as variables too.

    model = read_model_bin(Path("whisper-base/model.bin"))
    dims = whisper_dims(model)                  # WhisperDims(d_model=512, ...)
    state = hf_state_dict(model, dims)          # name -> float32 array, WhisperForConditionalGeneration's keys
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from tinymm.errors import InputError

logger = logging.getLogger(__name__)

BINARY_VERSION = 6  # the model.bin layout this reader knows (CTranslate2 4.x)
SPEC_NAME = "WhisperSpec"
SPEC_REVISION = 3
MODEL_FILE = "model.bin"
# dtype ids of model.bin: ctranslate2.specs.model_spec._dtype_to_type_id's order.
DTYPES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
BYTES_PER_ELEMENT = {"float32": 4, "int8": 1, "int16": 2, "int32": 4, "float16": 2, "bfloat16": 2}
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
BFLOAT16_SHIFT = 16  # a bfloat16 is the top 16 bits of a float32


class Ct2FormatError(InputError):
    """A model.bin that is not a CTranslate2 Whisper model this reader understands."""

    kind = "ct2_format_error"


@dataclass(frozen=True, eq=False)
class Ct2Model:
    """The parsed content of a model.bin: every variable by name, aliases resolved."""

    path: Path
    binary_version: int
    spec: str  # e.g. "WhisperSpec"
    revision: int
    variables: Mapping[str, np.ndarray]  # name -> array in the stored dtype (bfloat16 as float32)
    aliases: Mapping[str, str]  # alias -> the variable name it repeats (also resolved in ``variables``)

    def get(self, name: str) -> np.ndarray:
        """The variable ``name``; Ct2FormatError naming the file when it is absent."""
        if name not in self.variables:
            raise Ct2FormatError(f"{self.path}: no variable {name!r} in this {self.spec} model; is it a "
                                 "Whisper model converted by CTranslate2 4.x?")
        return self.variables[name]

    def scalar(self, name: str) -> int:
        return int(self.get(name).reshape(-1)[0])


class _Cursor:
    """Little-endian reads from a bytes buffer, with the file name in every error."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.offset = data, path, 0

    def take(self, count: int) -> bytes:
        if self.offset + count > len(self.data):
            raise Ct2FormatError(f"{self.path} ends at byte {len(self.data)} while {count} more bytes were expected "
                                 f"at offset {self.offset}: the file is truncated (re-copy or re-convert it)")
        chunk = self.data[self.offset:self.offset + count]
        self.offset += count
        return chunk

    def unpack(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.unpack("H"))
        return raw.rstrip(b"\0").decode("utf-8")


def _array(raw: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "bfloat16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << BFLOAT16_SHIFT
        return bits.view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


def parse_model_bin(data: bytes, path: Path = Path(MODEL_FILE)) -> Ct2Model:
    """Parse the bytes of a model.bin (see the module docstring); ``path`` names it in errors."""
    cursor = _Cursor(data, path)
    version = cursor.unpack("I")
    if version != BINARY_VERSION:
        raise Ct2FormatError(f"{path} has CTranslate2 binary version {version}; this reader knows version "
                             f"{BINARY_VERSION} (CTranslate2 4.x): re-convert the model with ct2-transformers-converter 4.x")
    spec, revision = cursor.string(), cursor.unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(cursor.unpack("I")):
        name = cursor.string()
        shape = tuple(cursor.unpack("I") for _ in range(cursor.unpack("B")))
        type_id = cursor.unpack("B")
        if type_id not in DTYPES:
            raise Ct2FormatError(f"{path}: variable {name!r} has dtype id {type_id}; known ids are {DTYPES}")
        dtype, size = DTYPES[type_id], cursor.unpack("I")
        expected = int(np.prod(shape, dtype=np.int64)) * BYTES_PER_ELEMENT[dtype]
        if size != expected:
            raise Ct2FormatError(f"{path}: variable {name!r} {dtype}{list(shape)} should hold {expected} bytes but "
                                 f"declares {size}: the file is corrupt or of another format")
        variables[name] = _array(cursor.take(size), dtype, shape)
    aliases = {}
    if cursor.offset < len(data):  # binary version >= 3 always writes the alias count
        for _ in range(cursor.unpack("I")):
            alias, target = cursor.string(), cursor.string()
            aliases[alias] = target
    for alias, target in aliases.items():
        if target not in variables:
            raise Ct2FormatError(f"{path}: alias {alias!r} points at {target!r}, which is not a variable")
        variables[alias] = variables[target]
    if cursor.offset != len(data):
        raise Ct2FormatError(f"{path}: {len(data) - cursor.offset} bytes follow the aliases; the file is not a "
                             f"CTranslate2 binary version {BINARY_VERSION} model")
    return Ct2Model(path, version, spec, revision, variables, aliases)


def read_model_bin(path: Path) -> Ct2Model:
    """Read and parse a model.bin; Ct2FormatError when it is not a CTranslate2 Whisper model."""
    path = Path(path)
    if not path.is_file():
        raise Ct2FormatError(f"{path} does not exist; give the model.bin of a CTranslate2 Whisper directory")
    model = parse_model_bin(path.read_bytes(), path)
    if model.spec != SPEC_NAME:
        raise Ct2FormatError(f"{path} holds a {model.spec!r} model, not {SPEC_NAME!r}; give a Whisper model")
    if model.revision != SPEC_REVISION:
        logger.warning("%s: %s revision %d, this reader was written for revision %d", path, model.spec,
                       model.revision, SPEC_REVISION)
    return model


@dataclass(frozen=True)
class WhisperDims:
    """Hyperparameters of a Whisper model, read from the shapes of its weights."""

    n_mels: int  # mel bands of the input features
    d_model: int  # width of encoder and decoder
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn: int  # hidden width of the encoder MLP
    decoder_ffn: int
    vocab_size: int
    max_source_positions: int  # encoder positions (1500 = 30 s after the stride-2 conv)
    max_target_positions: int  # decoder positions (448 tokens)

    def __post_init__(self) -> None:
        for name in ("encoder_heads", "decoder_heads"):
            if self.d_model % getattr(self, name):
                raise Ct2FormatError(f"{name}={getattr(self, name)} does not divide d_model={self.d_model}")


def _layer_count(model: Ct2Model, stack: str) -> int:
    count = 0
    while f"{stack}/layer_{count}/ffn/linear_0/weight" in model.variables:
        count += 1
    if not count:
        raise Ct2FormatError(f"{model.path}: no {stack}/layer_0; this is not a Whisper {stack}")
    return count


def whisper_dims(model: Ct2Model) -> WhisperDims:
    """The hyperparameters of a Whisper model.bin (heads from its ``num_heads`` scalars)."""
    conv1 = model.get("encoder/conv1/weight")  # (d_model, n_mels, 3)
    embeddings = model.get("decoder/embeddings/weight")  # (V, d_model)
    return WhisperDims(
        n_mels=conv1.shape[1], d_model=conv1.shape[0],
        encoder_layers=_layer_count(model, "encoder"), decoder_layers=_layer_count(model, "decoder"),
        encoder_heads=model.scalar("encoder/num_heads"), decoder_heads=model.scalar("decoder/num_heads"),
        encoder_ffn=model.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn=model.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        vocab_size=embeddings.shape[0],
        max_source_positions=model.get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=model.get("decoder/position_encodings/encodings").shape[0],
    )


def _split(array: np.ndarray, parts: int, name: str) -> list[np.ndarray]:
    if array.shape[0] % parts:
        raise Ct2FormatError(f"{name} has {array.shape[0]} rows, not a multiple of {parts} fused projections")
    return np.split(array, parts, axis=0)


class _Mapper:
    """Copies model.bin variables to HF names and remembers which ones it used."""

    def __init__(self, model: Ct2Model) -> None:
        self.model, self.out, self.used = model, {}, set()

    def get(self, name: str) -> np.ndarray:
        self.used.add(name)
        return self.model.get(name)

    def optional(self, name: str) -> np.ndarray | None:
        return self.get(name) if name in self.model.variables else None

    def linear(self, ct2: str, hf: str, names: tuple[str, ...] = ()) -> None:
        """Linear ``ct2`` (weight, bias) to HF ``hf``; a fused one is split into ``names`` (k has no bias)."""
        weight, bias = self.get(f"{ct2}/weight"), self.optional(f"{ct2}/bias")
        if not names:
            self.out[f"{hf}.weight"] = weight
            if bias is not None:
                self.out[f"{hf}.bias"] = bias
            return
        biases = _split(bias, len(names), ct2) if bias is not None else [None] * len(names)
        for name, w, b in zip(names, _split(weight, len(names), ct2), biases):
            self.out[f"{hf}.{name}.weight"] = w
            if b is not None and name != "k_proj":
                self.out[f"{hf}.{name}.bias"] = b
            elif b is not None and np.any(b):
                raise Ct2FormatError(f"{ct2}: the k projection has a non-zero bias, which Whisper does not have")

    def norm(self, ct2: str, hf: str) -> None:
        self.out[f"{hf}.weight"], self.out[f"{hf}.bias"] = self.get(f"{ct2}/gamma"), self.get(f"{ct2}/beta")


def hf_state_dict(model: Ct2Model, dims: WhisperDims | None = None) -> dict[str, np.ndarray]:
    """The weights of ``model`` under WhisperForConditionalGeneration's state-dict names, as float32.

    Every float tensor of the model.bin must find a place (Ct2FormatError otherwise);
    ``proj_out.weight`` is the token embedding (Whisper ties them).
    """
    dims = dims or whisper_dims(model)
    m = _Mapper(model)
    for conv in ("conv1", "conv2"):
        m.linear(f"encoder/{conv}", f"model.encoder.{conv}")
    for stack, count in (("encoder", dims.encoder_layers), ("decoder", dims.decoder_layers)):
        m.out[f"model.{stack}.embed_positions.weight"] = m.get(f"{stack}/position_encodings/encodings")
        m.norm(f"{stack}/layer_norm", f"model.{stack}.layer_norm")
        for i in range(count):
            ct2, hf = f"{stack}/layer_{i}", f"model.{stack}.layers.{i}"
            m.linear(f"{ct2}/self_attention/linear_0", f"{hf}.self_attn", ("q_proj", "k_proj", "v_proj"))
            m.linear(f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
            m.norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
            if stack == "decoder":
                m.linear(f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
                m.linear(f"{ct2}/attention/linear_1", f"{hf}.encoder_attn", ("k_proj", "v_proj"))
                m.linear(f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
                m.norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
            m.linear(f"{ct2}/ffn/linear_0", f"{hf}.fc1")
            m.linear(f"{ct2}/ffn/linear_1", f"{hf}.fc2")
            m.norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")
    embeddings = m.out["model.decoder.embed_tokens.weight"] = m.get("decoder/embeddings/weight")
    projection, bias = m.optional("decoder/projection/weight"), m.optional("decoder/projection/bias")
    if projection is not None and not np.array_equal(projection, embeddings):
        raise Ct2FormatError(f"{model.path}: decoder/projection/weight differs from the token embedding; "
                             "untied Whisper heads are not supported")
    if bias is not None and np.any(bias):
        raise Ct2FormatError(f"{model.path}: decoder/projection/bias is non-zero; Whisper's head has no bias")
    m.out["proj_out.weight"] = embeddings
    unused = [name for name, value in model.variables.items()
              if value.dtype.name in FLOAT_DTYPES and value.ndim > 0 and name not in m.used]
    if unused:
        raise Ct2FormatError(f"{model.path}: weights {unused[:5]} have no place in a Hugging Face Whisper model; "
                             "this CTranslate2 model is not a plain Whisper")
    return {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in m.out.items()}
