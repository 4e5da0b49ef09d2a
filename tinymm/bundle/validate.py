"""Small checks shared by the manifest dataclasses; each raises a typed BundleError.

Messages name the field relative to the dataclass (``shape[1]``, ``variants``); the manifest
parser prefixes the JSON path (``components.image_encoder.``) when it re-raises them.
"""

from __future__ import annotations

import math
import re
from types import MappingProxyType
from typing import Any, Mapping

from tinymm.bundle.errors import FieldTypeError, InvalidValueError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
NAME_HINT = "use letters, digits, '.', '_' and '-', starting with a letter or digit"


def got(value: Any) -> str:
    """``value`` and its type, for messages: ``'abc' (str)``."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def check_name(field_name: str, value: Any) -> None:
    """A bundle, component or task name: letters, digits, '.', '_', '-'."""
    if not isinstance(value, str):
        raise FieldTypeError(f"{field_name} must be a string, got {got(value)}")
    if not _NAME.match(value):
        raise InvalidValueError(f"{field_name}={value!r} is not a valid name; {NAME_HINT}")


def check_choice(field_name: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str):
        raise FieldTypeError(f"{field_name} must be a string, got {got(value)}")
    if value not in choices:
        raise InvalidValueError(f"{field_name}={value!r} is not one of {list(choices)}")


def as_tuple(field_name: str, value: Any, item_type: type | tuple[type, ...], item_label: str) -> tuple:
    """``value`` (a list or tuple whose items are all ``item_type``) as a tuple."""
    if not isinstance(value, (list, tuple)):
        raise FieldTypeError(f"{field_name} must be a list of {item_label}, got {got(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, item_type):
            raise FieldTypeError(f"{field_name}[{i}] must be {item_label}, got {got(item)}")
    return tuple(value)


def as_mapping(field_name: str, value: Any, item_type: type, item_label: str) -> Mapping:
    """A read-only copy of ``value`` (a mapping of str to ``item_type``)."""
    if not isinstance(value, Mapping):
        raise FieldTypeError(f"{field_name} must be an object of {item_label}, got {got(value)}")
    for key, item in value.items():
        if not isinstance(key, str):
            raise FieldTypeError(f"{field_name} keys must be strings, got {got(key)}")
        if not isinstance(item, item_type):
            raise FieldTypeError(f"{field_name}[{key!r}] must be {item_label}, got {got(item)}")
    return MappingProxyType(dict(value))


def check_unique(field_name: str, names: list[str]) -> None:
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidValueError(f"{field_name} repeats {duplicates}; each name must appear once")


def freeze_json(value: Any, where: str) -> Any:
    """A read-only copy of a JSON value: objects become MappingProxyType, lists tuples."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise FieldTypeError(f"{where} keys must be strings, got {got(key)}")
            out[key] = freeze_json(item, f"{where}.{key}")
        return MappingProxyType(out)
    if isinstance(value, (list, tuple)):
        return tuple(freeze_json(item, f"{where}[{i}]") for i, item in enumerate(value))
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidValueError(f"{where}={value!r}: JSON has no NaN or infinity; store it as a string")
    if value is None or isinstance(value, (str, int, float)):  # bool is an int
        return value
    raise FieldTypeError(f"{where} must hold only JSON values, got {got(value)}")


def thaw_json(value: Any) -> Any:
    """Plain dicts and lists from a freeze_json value, ready for json.dumps."""
    if isinstance(value, Mapping):
        return {key: thaw_json(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [thaw_json(item) for item in value]
    return value
