"""Parse manifest.json into a ``Manifest``, with errors that name the file and the JSON path.

Structure and JSON types are checked here, where the path of every value is known (a missing
field is reported as ``components.image_encoder.variants``); value rules live on the dataclasses
in ``tinymm.bundle.manifest``, whose errors are re-raised here with the path prefixed.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, TypeVar

from tinymm import __version__
from tinymm.bundle.constants import FORMAT_NAME, FORMAT_VERSION, MAX_MANIFEST_BYTES
from tinymm.bundle.errors import (
    FieldTypeError,
    InvalidPreprocessError,
    InvalidValueError,
    ManifestNotObjectError,
    ManifestSyntaxError,
    ManifestTooLargeError,
    MissingFieldError,
    NewerFormatVersionError,
    UnknownFormatError,
    UnknownFormatVersionError,
)
from tinymm.bundle.manifest import Manifest
from tinymm.bundle.specs import (
    Component,
    FileEntry,
    GoldenPair,
    Preprocess,
    TensorSpec,
    Tolerance,
    Variant,
    check_file_key,
)
from tinymm.errors import BundleError
from tinymm.preprocess.config import AudioConfig, ImageConfig, TextConfig

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_T = TypeVar("_T")

# JSON type name -> predicate on the parsed Python value.
_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    for name in ("object", "array", "string", "integer", "number"):
        if _JSON_TYPES[name](value):
            return name
    return type(value).__name__


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENTIFIER.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def _build(source: str, json_path: str, factory: Callable[..., _T], **kwargs: Any) -> _T:
    """Construct a manifest dataclass, prefixing the JSON path to any error it raises."""
    try:
        return factory(**kwargs)
    except BundleError as e:
        prefix = f"{json_path}." if json_path else ""
        raise type(e)(f"{source}: {prefix}{e}") from e


class _Object:
    """A JSON object at a known path: typed field access and a check for unknown fields."""

    def __init__(self, value: Any, path: str, source: str) -> None:
        if not isinstance(value, dict):
            raise FieldTypeError(f"{source}: {path} must be a JSON object, got {_json_type(value)}")
        self.value = value
        self.path = path
        self.source = source
        self._seen: set[str] = set()

    def get(self, key: str, kind: str, *, required: bool = True, default: Any = None) -> Any:
        self._seen.add(key)
        path = _join(self.path, key)
        if key not in self.value:
            if required:
                raise MissingFieldError(
                    f"{self.source}: missing required field {path!r}; add it (see the manifest "
                    "format in tinymm.bundle.manifest) or rebuild the bundle"
                )
            return default
        value = self.value[key]
        if not _JSON_TYPES[kind](value):
            raise FieldTypeError(
                f"{self.source}: {path} must be a JSON {kind}, got {_json_type(value)} {_short(value)}"
            )
        return value

    def child(self, key: str) -> "_Object":
        return _Object(self.get(key, "object"), _join(self.path, key), self.source)

    def optional_child(self, key: str) -> "_Object | None":
        value = self.get(key, "object", required=False)
        return None if value is None else _Object(value, _join(self.path, key), self.source)

    def finish(self) -> None:
        unknown = sorted(set(self.value) - self._seen)
        if unknown:
            where = self.path or "the top level"
            raise InvalidValueError(
                f"{self.source}: {where} has unknown field(s) {unknown}; known fields are "
                f"{sorted(self._seen)} (a typo, or a manifest from another tinymm version?)"
            )


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value)
    return f"({text})" if len(text) <= limit else f"({text[:limit]}...)"


def _tensor(value: Any, path: str, source: str) -> TensorSpec:
    obj = _Object(value, path, source)
    name = obj.get("name", "string")
    shape = obj.get("shape", "array")
    for i, dim in enumerate(shape):
        if isinstance(dim, bool) or not isinstance(dim, (int, str)):
            raise FieldTypeError(
                f"{source}: {path}.shape[{i}] must be an integer or a dimension name, "
                f"got {_json_type(dim)} {_short(dim)}"
            )
    dtype = obj.get("dtype", "string")
    obj.finish()
    return _build(source, path, TensorSpec, name=name, shape=tuple(shape), dtype=dtype)


def _component(name: str, value: Any, path: str, source: str, version: int) -> Component:
    obj = _Object(value, path, source)
    specs = {}
    for key in ("inputs", "outputs"):
        items = obj.get(key, "array")
        specs[key] = tuple(_tensor(item, f"{_join(path, key)}[{i}]", source) for i, item in enumerate(items))
    variants_obj = obj.child("variants")
    variants = {}
    for precision, raw in variants_obj.value.items():
        vobj = _Object(raw, _join(variants_obj.path, precision), source)
        file = vobj.get("file", "string")
        vobj.finish()
        variants[precision] = _build(source, vobj.path, Variant, file=file)
    roles = obj.get("roles", "object", required=False, default={}) if version >= 2 else {}
    for role, tensor in roles.items():
        if not isinstance(tensor, str):
            raise FieldTypeError(
                f"{source}: {_join(path, 'roles')}.{role} must be a JSON string (a tensor name), got "
                f"{_json_type(tensor)} {_short(tensor)}"
            )
    obj.finish()
    return _build(
        source, path, Component, name=name, inputs=specs["inputs"], outputs=specs["outputs"], variants=variants,
        roles=roles,
    )


def _golden(value: Any, path: str, source: str) -> GoldenPair:
    obj = _Object(value, path, source)
    component = obj.get("component", "string")
    inputs = obj.get("inputs", "string")
    outputs = obj.get("outputs", "string")
    tol_obj = obj.child("tolerance")
    tolerance = {}
    for precision, raw in tol_obj.value.items():
        tobj = _Object(raw, _join(tol_obj.path, precision), source)
        max_abs = tobj.get("max_abs", "number", required=False)
        min_cosine = tobj.get("min_cosine", "number", required=False)
        tobj.finish()
        tolerance[precision] = _build(source, tobj.path, Tolerance, max_abs=max_abs, min_cosine=min_cosine)
    obj.finish()
    return _build(source, path, GoldenPair, component=component, inputs=inputs, outputs=outputs, tolerance=tolerance)


def _preprocess(obj: "_Object | None", source: str) -> Preprocess:
    if obj is None:
        return Preprocess()
    configs: dict[str, Any] = {}
    for key, cls in (("image", ImageConfig), ("audio", AudioConfig), ("text", TextConfig)):
        raw = obj.get(key, "object", required=False)
        if raw is None:
            continue
        try:
            configs[key] = cls.from_dict(raw)
        except (ValueError, TypeError) as e:
            raise InvalidPreprocessError(
                f"{source}: {_join(obj.path, key)}: {e}; fix the preprocessing contract in the "
                "manifest (its fields are documented in tinymm.preprocess.config)"
            ) from e
    obj.finish()
    return _build(source, obj.path, Preprocess, **configs)


def _file_entry(value: Any, path: str, source: str) -> FileEntry:
    obj = _Object(value, path, source)
    sha256 = obj.get("sha256", "string")
    size = obj.get("bytes", "integer")
    obj.finish()
    return _build(source, path, FileEntry, sha256=sha256, size=size)


def _check_format(top: _Object, source: str) -> int:
    fmt = top.get("format", "string")
    if fmt != FORMAT_NAME:
        raise UnknownFormatError(
            f"{source}: format is {fmt!r}, expected {FORMAT_NAME!r}; this file is not a tinymm bundle manifest"
        )
    version = top.get("format_version", "integer")
    if version > FORMAT_VERSION:
        raise NewerFormatVersionError(
            f"{source}: format_version {version} was made by a newer tinymm; this is tinymm "
            f"{__version__}, which reads format_version {FORMAT_VERSION}. Upgrade with pip install -U tinymm"
        )
    if version < 1:
        raise UnknownFormatVersionError(
            f"{source}: format_version {version} is not a version tinymm has ever written "
            f"(versions start at 1; this tinymm reads {FORMAT_VERSION}); rebuild the bundle"
        )
    return version


def parse_manifest(value: Any, source: str = "manifest.json") -> Manifest:
    """Build a Manifest from the parsed JSON of manifest.json; ``source`` names it in errors."""
    if not isinstance(value, dict):
        raise ManifestNotObjectError(
            f"{source}: the top level is a JSON {_json_type(value)}, expected an object with "
            f"\"format\": {json.dumps(FORMAT_NAME)}; is this a tinymm bundle manifest?"
        )
    top = _Object(value, "", source)
    version = _check_format(top, source)
    name = top.get("name", "string")
    family = top.get("family", "string")
    # Version 1 has no architecture field (an unknown field there is refused as a typo).
    architecture = top.get("architecture", "string", required=False) if version >= 2 else None
    tasks = top.get("tasks", "array")
    for i, task in enumerate(tasks):
        if not isinstance(task, str):
            raise FieldTypeError(f"{source}: tasks[{i}] must be a JSON string, got {_json_type(task)} {_short(task)}")
    components_obj = top.child("components")
    components = {
        key: _component(key, raw, _join("components", key), source, version) for key, raw in components_obj.value.items()
    }
    preprocess = _preprocess(top.optional_child("preprocess"), source)
    golden_items = top.get("golden", "array", required=False, default=[])
    golden = tuple(_golden(raw, f"golden[{i}]", source) for i, raw in enumerate(golden_items))
    provenance = top.get("provenance", "object", required=False, default={})
    model = top.get("model", "object", required=False, default={})
    model_card = top.get("model_card", "string", required=False)
    created_by = top.get("created_by", "string", required=False)
    files_obj = top.child("files")
    files = {}
    for key, raw in files_obj.value.items():
        _build(source, "", check_file_key, path=key, where=_join("files", key))
        files[key] = _file_entry(raw, _join("files", key), source)
    top.finish()
    return _build(
        source,
        "",
        Manifest,
        name=name,
        family=family,
        architecture=architecture,
        tasks=tuple(tasks),
        components=components,
        files=files,
        preprocess=preprocess,
        golden=golden,
        provenance=provenance,
        model=model,
        model_card=model_card,
        created_by=created_by,
        format_version=version,
    )


class _DuplicateKeyError(ValueError):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_manifest_bytes(data: bytes, source: str = "manifest.json") -> Manifest:
    """Parse the bytes of manifest.json (UTF-8 JSON, at most MAX_MANIFEST_BYTES)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestTooLargeError(
            f"{source}: {len(data)} bytes is larger than the {MAX_MANIFEST_BYTES} bytes a manifest may have; "
            "keep large data in bundle files, not in the manifest"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestSyntaxError(
            f"{source}: not UTF-8 text (bad byte at offset {e.start}); a manifest is UTF-8 JSON"
        ) from e
    try:
        value = json.loads(text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise ManifestSyntaxError(
            f"{source}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}; fix the file or rebuild the bundle"
        ) from e
    except _DuplicateKeyError as e:
        raise ManifestSyntaxError(
            f"{source}: the key {str(e)!r} appears twice in one object; keep one of them"
        ) from e
    except ValueError as e:
        raise ManifestSyntaxError(f"{source}: invalid JSON: {e}; use only standard JSON numbers") from e
    except RecursionError as e:
        raise ManifestSyntaxError(f"{source}: JSON nested too deeply to be a manifest") from e
    return parse_manifest(value, source)
