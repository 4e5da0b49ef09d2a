"""Check a bundle's files on disk against its manifest: presence, size, sha256, ONNX external data."""

from __future__ import annotations

import logging
import os
import posixpath
from pathlib import Path
from typing import Mapping

from tinymm.bundle.constants import MANIFEST_NAME
from tinymm.bundle.errors import (
    ChecksumMismatchError,
    MissingFileError,
    OnnxFormatError,
    UnlistedFileError,
)
from tinymm.bundle.manifest import Manifest
from tinymm.bundle.onnx_scan import OnnxSummary, OnnxWireError, scan_onnx_file
from tinymm.bundle.paths import check_relative_path, regular_file_size, resolve_inside
from tinymm.bundle.specs import FileEntry
from tinymm.hashing import sha256_file

logger = logging.getLogger(__name__)

SHA256_SHOWN_CHARS = 12  # hex digits of a checksum shown in error messages
UNLISTED_SHOWN = 5  # unlisted files named in an error message


def check_file(root: Path, name: str, entry: FileEntry, *, verify_checksum: bool) -> Path:
    """Check that listed file ``name`` is inside ``root``, exists, has its size and (optionally) sha256.

    Returns its path. Raises UnsafePathError, MissingFileError or ChecksumMismatchError.
    """
    where = f"{root}: files[{name!r}]"
    path = resolve_inside(root, name, where)
    size = regular_file_size(path, name, where)
    if size != entry.size:
        raise ChecksumMismatchError(
            f"{root}: {name!r} has {size} bytes but manifest.json lists {entry.size}; the file was "
            "truncated or changed: copy the bundle again or rebuild it"
        )
    if verify_checksum:
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise ChecksumMismatchError(
                f"{root}: {name!r} has sha256 {actual[:SHA256_SHOWN_CHARS]}..., manifest.json lists "
                f"{entry.sha256[:SHA256_SHOWN_CHARS]}...; the file is corrupt or was changed: copy the "
                "bundle again or rebuild it"
            )
    return path


def check_files(root: Path, manifest: Manifest, *, verify_checksums: bool) -> None:
    """Run ``check_file`` on every file the manifest lists."""
    for name, entry in manifest.files.items():
        check_file(root, name, entry, verify_checksum=verify_checksums)
    if verify_checksums:
        logger.debug("%s: %d files match their sha256", root, len(manifest.files))


def unlisted_files(root: Path, manifest: Manifest) -> tuple[str, ...]:
    """Bundle-relative POSIX paths of the files under ``root`` that are neither manifest.json nor listed."""
    extra = []
    for directory, _dirs, names in os.walk(root):
        for file_name in names:
            rel = os.path.relpath(os.path.join(directory, file_name), root).replace(os.sep, "/")
            if rel != MANIFEST_NAME and rel not in manifest.files:
                extra.append(rel)
    return tuple(sorted(extra))


def check_no_unlisted_files(root: Path, manifest: Manifest) -> None:
    """Refuse a bundle directory holding files its manifest does not list (UnlistedFileError)."""
    extra = unlisted_files(root, manifest)
    if extra:
        shown = ", ".join(repr(name) for name in extra[:UNLISTED_SHOWN])
        more = f" and {len(extra) - UNLISTED_SHOWN} more" if len(extra) > UNLISTED_SHOWN else ""
        raise UnlistedFileError(
            f"{root}: {len(extra)} file(s) not listed in manifest.json: {shown}{more}; a bundle holds only the files "
            "its manifest lists (with their sha256): remove them, or rebuild the bundle with BundleWriter"
        )


def scan_model(root: Path, name: str) -> OnnxSummary:
    """Scan bundle file ``name`` as an ONNX model; raise OnnxFormatError if it is not one."""
    try:
        return scan_onnx_file(root / name)
    except OnnxWireError as e:
        raise OnnxFormatError(
            f"{root}: {name!r} is not a valid ONNX model ({e}); re-export the component"
        ) from e
    except OSError as e:
        raise MissingFileError(f"{root}: cannot read {name!r}: {e}") from e


def check_external_data(
    root: Path, model: str, summary: OnnxSummary, files: Mapping[str, FileEntry]
) -> tuple[str, ...]:
    """Check that every external data file of ONNX file ``model`` is safe, present and listed.

    Locations are relative to the directory of the .onnx file and may not climb out of it
    (no ``..``). Returns the bundle paths of the external data files. Raises UnsafePathError,
    MissingFileError or UnlistedFileError.
    """
    found: list[str] = []
    for external in summary.external_data:
        what = f"{root}: {model!r}: external data location of tensor {external.tensor!r}"
        location = external.location
        if not location.startswith("/"):  # "./w.bin" and "sub//w.bin" are harmless spellings: canonicalize
            location = "/".join(part for part in location.split("/") if part not in ("", "."))
        check_relative_path(location, what)
        name = posixpath.join(posixpath.dirname(model), location)
        path = resolve_inside(root, name, what)
        if not path.is_file():
            raise MissingFileError(
                f"{what}: {name!r} is missing from the bundle; export the model again with its data file"
            )
        if name not in files:
            raise UnlistedFileError(
                f"{what}: {name!r} is not listed in manifest.json files, so it has no checksum; "
                "rebuild the bundle with tinymm.bundle.BundleWriter"
            )
        if name not in found:
            found.append(name)
    return tuple(found)


def check_model(root: Path, manifest: Manifest, name: str) -> OnnxSummary:
    """Scan the component variant file ``name`` and check its external data; returns its summary."""
    summary = scan_model(root, name)
    check_external_data(root, name, summary, manifest.files)
    return summary


def check_models(root: Path, manifest: Manifest) -> dict[str, OnnxSummary]:
    """Scan every component variant file and check its external data. Returns file -> summary."""
    summaries: dict[str, OnnxSummary] = {}
    for component in manifest.components.values():
        for variant in component.variants.values():
            if variant.file not in summaries:
                summaries[variant.file] = check_model(root, manifest, variant.file)
    return summaries
