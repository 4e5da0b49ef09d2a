"""Bundles: self-describing directories (or archives) of ONNX models, tokenizer and contract.

Read one with ``read_bundle``, check it in depth with ``verify_bundle``, write one with
``BundleWriter`` and pack it into a single file with ``pack_bundle``. The manifest format is
documented in ``tinymm.bundle.manifest``; the failure kinds in ``tinymm.bundle.errors``.

Module map: constants (format names and limits), errors, paths (safe relative paths),
validate + specs + manifest (the frozen dataclasses), parse (JSON -> Manifest), onnx_scan
(external data and graph interface without the onnx package), integrity (sizes, sha256,
external data), golden (safe .npz loading), archive (safe extraction), reader, verify, writer,
pack.
"""

from __future__ import annotations

from tinymm.bundle.constants import (
    DTYPES,
    FAMILIES,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    PRECISIONS,
)
from tinymm.bundle.errors import (
    ArchiveError,
    BundleNotFoundError,
    ChecksumMismatchError,
    FieldTypeError,
    GoldenDataError,
    InterfaceMismatchError,
    InvalidPreprocessError,
    InvalidValueError,
    ManifestMissingError,
    ManifestNotObjectError,
    ManifestSyntaxError,
    ManifestTooLargeError,
    MissingFieldError,
    MissingFileError,
    NewerFormatVersionError,
    NotInBundleError,
    OnnxFormatError,
    OutputExistsError,
    UnknownArchitectureError,
    UnknownFormatError,
    UnknownFormatVersionError,
    UnlistedFileError,
    UnsafeArchiveError,
    UnsafePathError,
)
from tinymm.bundle.manifest import Manifest
from tinymm.bundle.pack import pack_bundle
from tinymm.bundle.parse import parse_manifest, parse_manifest_bytes
from tinymm.bundle.reader import Bundle, read_bundle
from tinymm.bundle.specs import Component, FileEntry, GoldenPair, Preprocess, TensorSpec, Tolerance, Variant
from tinymm.bundle.verify import VerifyReport, verify_bundle
from tinymm.bundle.writer import BundleWriter

__all__ = [
    "ArchiveError",
    "Bundle",
    "BundleNotFoundError",
    "BundleWriter",
    "ChecksumMismatchError",
    "Component",
    "DTYPES",
    "FAMILIES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FieldTypeError",
    "FileEntry",
    "GoldenDataError",
    "GoldenPair",
    "InterfaceMismatchError",
    "InvalidPreprocessError",
    "InvalidValueError",
    "MANIFEST_NAME",
    "MAX_MANIFEST_BYTES",
    "Manifest",
    "ManifestMissingError",
    "ManifestNotObjectError",
    "ManifestSyntaxError",
    "ManifestTooLargeError",
    "MissingFieldError",
    "MissingFileError",
    "NewerFormatVersionError",
    "NotInBundleError",
    "OnnxFormatError",
    "OutputExistsError",
    "PRECISIONS",
    "Preprocess",
    "TensorSpec",
    "Tolerance",
    "UnknownArchitectureError",
    "UnknownFormatError",
    "UnknownFormatVersionError",
    "UnlistedFileError",
    "UnsafeArchiveError",
    "UnsafePathError",
    "Variant",
    "VerifyReport",
    "pack_bundle",
    "parse_manifest",
    "parse_manifest_bytes",
    "read_bundle",
    "verify_bundle",
]
