"""Safe paths inside a bundle.

Paths in a manifest, in an archive and in ONNX external data are POSIX, relative and canonical
(``golden/x.npz``, never ``./golden/x.npz`` or ``golden//x.npz``), so that one file has exactly
one name in ``files``. Resolving them against the bundle root also follows symlinks and refuses
any that land outside the root.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from tinymm.bundle.errors import FieldTypeError, MissingFileError, UnsafePathError

# "C:" or "c:" at the start: a Windows drive, absolute or drive-relative.
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
MAX_PATH_CHARS = 1024  # longest relative path accepted, in characters


def check_relative_path(value: object, where: str) -> str:
    """Return ``value`` if it is a safe, canonical POSIX path relative to the bundle root.

    ``where`` names the path's origin for messages (e.g. ``"components.enc.variants.fp32.file"``).
    Raises FieldTypeError when ``value`` is not a string and UnsafePathError when it is
    empty, absolute, uses a drive letter or backslashes, has ``.``/``..``/empty components, or
    holds control characters.
    """
    if not isinstance(value, str):
        raise FieldTypeError(
            f"{where} must be a string path relative to the bundle root, got {value!r} ({type(value).__name__})"
        )
    fix = "use a relative path with forward slashes that stays inside the bundle, e.g. 'golden/x.npz'"
    if not value:
        raise UnsafePathError(f"{where} is an empty path; {fix}")
    if len(value) > MAX_PATH_CHARS:
        raise UnsafePathError(f"{where} is {len(value)} characters long (limit {MAX_PATH_CHARS}); {fix}")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise UnsafePathError(f"{where}={value!r} contains control characters; {fix}")
    if "\\" in value:
        raise UnsafePathError(f"{where}={value!r} contains a backslash; {fix}")
    if _DRIVE_LETTER.match(value):
        raise UnsafePathError(f"{where}={value!r} starts with a drive letter; {fix}")
    if value.startswith("/"):
        raise UnsafePathError(f"{where}={value!r} is an absolute path; {fix}")
    parts = value.split("/")
    if ".." in parts:
        raise UnsafePathError(f"{where}={value!r} uses '..' and could point outside the bundle; {fix}")
    if "" in parts or "." in parts:
        canonical = "/".join(p for p in parts if p not in ("", "."))
        raise UnsafePathError(f"{where}={value!r} is not in canonical form; write it as {canonical!r}")
    return value


def resolve_inside(root: Path, relative: str, where: str) -> Path:
    """Return the real path of ``root/relative``, refusing one that resolves outside ``root``.

    ``relative`` must already have passed check_relative_path; this adds the symlink check
    (a link inside the bundle whose target lies outside it). The file need not exist.
    """
    real_root = root.resolve()
    real = (real_root / relative).resolve()
    if real != real_root and real_root not in real.parents:
        raise UnsafePathError(
            f"{where}={relative!r} resolves to {str(real)!r}, outside the bundle {str(real_root)!r} "
            f"(a symbolic link points out of it); replace the link with the file itself"
        )
    return real


def regular_file_size(path: Path, relative: str, where: str) -> int:
    """Return the size in bytes of the regular file at ``path``.

    Raises MissingFileError when it is absent, a directory or a special file (a FIFO or
    device would block or never end when read).
    """
    try:
        info = os.stat(path)
    except FileNotFoundError as e:
        raise MissingFileError(
            f"{where}: file {relative!r} is missing from the bundle; copy the complete bundle again "
            f"or re-export it"
        ) from e
    except OSError as e:
        raise MissingFileError(f"{where}: file {relative!r} cannot be read: {e}") from e
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a special file"
        raise MissingFileError(
            f"{where}: {relative!r} is {kind}, not a regular file; a bundle holds only regular files"
        )
    return info.st_size
