"""The parts of a manifest: tensor specs, components and their variants, golden pairs, files.

Each is a frozen dataclass checked once on construction, so a manifest built in Python (by the
writer) obeys the same rules as one read from disk. The format is documented in
``tinymm.bundle.manifest``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from tinymm.bundle.constants import DTYPES, MANIFEST_NAME, PRECISIONS, SHA256_HEX_CHARS
from tinymm.bundle.errors import FieldTypeError, InvalidValueError, NotInBundleError
from tinymm.bundle.paths import check_relative_path
from tinymm.bundle.validate import as_mapping, as_tuple, check_choice, check_name, check_unique, got
from tinymm.preprocess.config import AudioConfig, ImageConfig, TextConfig

_SHA256 = re.compile(rf"^[0-9a-f]{{{SHA256_HEX_CHARS}}}$")

Dim = int | str  # a fixed size, or the name of a dynamic dimension ("batch")


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output of a component's ONNX graph."""

    name: str  # graph input/output name
    shape: tuple[Dim, ...]  # positive ints are fixed sizes; strings name dynamic dims ("batch")
    dtype: str  # numpy dtype name, one of DTYPES

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise FieldTypeError(f"name must be a non-empty string, got {got(self.name)}")
        shape = as_tuple("shape", self.shape, (int, str), "ints or dimension names")
        for i, dim in enumerate(shape):
            if isinstance(dim, bool):
                raise FieldTypeError(f"shape[{i}] must be an int or a dimension name, got {got(dim)}")
            if isinstance(dim, int) and dim < 1:
                raise InvalidValueError(f"shape[{i}]={dim} must be a positive size, or a name for a dynamic dim")
            if isinstance(dim, str) and not dim.strip():
                raise InvalidValueError(f"shape[{i}] is an empty dimension name; name it, e.g. 'batch'")
        object.__setattr__(self, "shape", shape)
        check_choice("dtype", self.dtype, DTYPES)

    def __str__(self) -> str:
        return f"{self.name} [{', '.join(str(d) for d in self.shape)}] {self.dtype}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class Variant:
    """One precision of a component: an ONNX file in the bundle."""

    file: str  # bundle-relative POSIX path of the ONNX model

    def __post_init__(self) -> None:
        check_relative_path(self.file, "file")

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file}


def _check_precision_keys(field_name: str, mapping: Mapping[str, Any]) -> None:
    unknown = sorted(set(mapping) - set(PRECISIONS))
    if unknown:
        raise InvalidValueError(f"{field_name} has precision(s) {unknown}; the precisions are {list(PRECISIONS)}")


@dataclass(frozen=True)
class Component:
    """One ONNX graph of a model (an encoder, a decoder step) in one or more precisions.

    Every variant has the same graph inputs and outputs, so fp16 and int8 variants keep
    float32 inputs and outputs (they cast inside the graph).
    """

    name: str  # the key in the manifest's "components" object
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    variants: Mapping[str, Variant]  # precision (one of PRECISIONS) -> file
    # What each tensor means to the runtime (format v2): role -> input or output name, e.g.
    # {"features": "input_features"}. Empty: the family's default names (export/LAYOUT.md).
    roles: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name("name", self.name)
        for label in ("inputs", "outputs"):
            specs = as_tuple(label, getattr(self, label), TensorSpec, "tensor specs")
            if not specs:
                raise InvalidValueError(f"{label} is empty; list every graph {label[:-1]} with its shape and dtype")
            check_unique(f"{label} names", [s.name for s in specs])
            object.__setattr__(self, label, specs)
        variants = as_mapping("variants", self.variants, Variant, "variants")
        if not variants:
            raise InvalidValueError("variants is empty; give at least the fp32 ONNX file")
        _check_precision_keys("variants", variants)
        object.__setattr__(self, "variants", variants)
        roles = as_mapping("roles", self.roles, str, "tensor names")
        tensors = {s.name for s in (*self.inputs, *self.outputs)}
        for role, tensor in roles.items():
            check_name(f"roles key {role!r}", role)
            if tensor not in tensors:
                raise InvalidValueError(
                    f"roles[{role!r}]={tensor!r} is not an input or output of component {self.name!r}; "
                    f"it has {sorted(tensors)}"
                )
        object.__setattr__(self, "roles", roles)

    def tensor(self, role: str, default: str | None = None) -> str:
        """The tensor name of ``role``: the manifest's roles entry, else ``default`` (the layout's name)."""
        if role in self.roles:
            return self.roles[role]
        if default is None:
            raise NotInBundleError(
                f"component {self.name!r} declares no tensor for role {role!r}; its roles are "
                f"{sorted(self.roles)}. Re-export the bundle (python -m export)"
            )
        return default

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions this component ships, in PRECISIONS order."""
        return tuple(p for p in PRECISIONS if p in self.variants)

    def variant(self, precision: str) -> Variant:
        """The variant at ``precision``; NotInBundleError naming the available ones otherwise."""
        if precision not in self.variants:
            raise NotInBundleError(
                f"component {self.name!r} has no {precision!r} variant; choose one of {list(self.precisions)}"
            )
        return self.variants[precision]

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "variants": {p: self.variants[p].to_dict() for p in self.precisions},
            **({"roles": dict(self.roles)} if self.roles else {}),
        }


@dataclass(frozen=True)
class Tolerance:
    """How close a precision's outputs must be to the golden outputs."""

    max_abs: float | None = None  # largest allowed absolute difference, >= 0
    min_cosine: float | None = None  # smallest allowed cosine similarity of flattened outputs, in [-1, 1]

    def __post_init__(self) -> None:
        if self.max_abs is None and self.min_cosine is None:
            raise InvalidValueError('a tolerance needs max_abs, min_cosine or both, e.g. {"max_abs": 1e-4}')
        for name, low, high in (("max_abs", 0.0, math.inf), ("min_cosine", -1.0, 1.0)):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise FieldTypeError(f"{name} must be a number, got {got(value)}")
            if math.isnan(value) or not low <= value <= high:
                raise InvalidValueError(f"{name}={value!r} must be in [{low}, {high}]")

    def __str__(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.to_dict().items())

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in (("max_abs", self.max_abs), ("min_cosine", self.min_cosine)) if v is not None}


@dataclass(frozen=True)
class GoldenPair:
    """Inputs and reference outputs of one component, for a parity check after loading."""

    component: str  # name of a component in the manifest
    inputs: str  # bundle path of an .npz with one array per component input
    outputs: str  # bundle path of an .npz with one array per component output
    tolerance: Mapping[str, Tolerance]  # precision -> tolerance

    def __post_init__(self) -> None:
        check_name("component", self.component)
        check_relative_path(self.inputs, "inputs")
        check_relative_path(self.outputs, "outputs")
        tolerance = as_mapping("tolerance", self.tolerance, Tolerance, "tolerances")
        if not tolerance:
            raise InvalidValueError('tolerance is empty; give one per precision, e.g. {"fp32": {"max_abs": 1e-4}}')
        _check_precision_keys("tolerance", tolerance)
        object.__setattr__(self, "tolerance", tolerance)

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "tolerance": {p: self.tolerance[p].to_dict() for p in PRECISIONS if p in self.tolerance},
        }


@dataclass(frozen=True)
class FileEntry:
    """The size and sha256 of one file in the bundle (its path is the key in ``files``)."""

    sha256: str  # 64 lowercase hex digits
    size: int  # in bytes; "bytes" in the JSON

    def __post_init__(self) -> None:
        if not isinstance(self.sha256, str):
            raise FieldTypeError(f"sha256 must be a string, got {got(self.sha256)}")
        if not _SHA256.match(self.sha256):
            raise InvalidValueError(
                f"sha256={self.sha256!r} is not {SHA256_HEX_CHARS} lowercase hex digits; recompute it with sha256sum"
            )
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise FieldTypeError(f"bytes must be an integer, got {got(self.size)}")
        if self.size < 0:
            raise InvalidValueError(f"bytes={self.size} must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "bytes": self.size}


def check_file_key(path: Any, where: str) -> str:
    """A key of ``files``: a safe relative path, and not manifest.json itself."""
    check_relative_path(path, where)
    if path == MANIFEST_NAME:
        raise InvalidValueError(f"{where}: {MANIFEST_NAME} cannot list itself in files; remove that entry")
    return path


@dataclass(frozen=True)
class Preprocess:
    """The preprocessing contract: how images, audio and text become model tensors."""

    image: ImageConfig | None = None
    audio: AudioConfig | None = None
    text: TextConfig | None = None  # text.tokenizer is a bundle path

    def __post_init__(self) -> None:
        for name, cls in (("image", ImageConfig), ("audio", AudioConfig), ("text", TextConfig)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, cls):
                raise FieldTypeError(f"{name} must be a {cls.__name__} or None, got {got(value)}")
        if self.text is not None:
            check_relative_path(self.text.tokenizer, "text.tokenizer")

    def to_dict(self) -> dict[str, Any]:
        sections = (("image", self.image), ("audio", self.audio), ("text", self.text))
        return {name: config.to_dict() for name, config in sections if config is not None}
