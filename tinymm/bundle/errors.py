"""The ways a bundle can be wrong, one BundleError subclass each.

Every class keeps BundleError's exit code (4) and adds a stable ``kind`` string that ``--json``
output reports, so that a script can tell a corrupt download (``checksum_mismatch``) from a
bundle made by a newer tinymm (``newer_format_version``) without parsing messages. Each takes a
single message that says what was given, why it is wrong and what to do.
"""

from __future__ import annotations

from tinymm.errors import BundleError


class BundleNotFoundError(BundleError):
    """The bundle path does not exist, or is neither a directory nor a bundle archive."""

    kind = "bundle_not_found"


class OutputExistsError(BundleError):
    """A writer's or extractor's output directory is not empty and may not be replaced."""

    kind = "output_exists"


class ArchiveError(BundleError):
    """A bundle archive cannot be read, or does not hold exactly one bundle."""

    kind = "bad_archive"


class UnsafeArchiveError(BundleError):
    """A bundle archive holds a link, a device file, or a member that would land outside it."""

    kind = "unsafe_archive"


class ManifestMissingError(BundleError):
    """The bundle directory has no manifest.json (or it is not a regular file)."""

    kind = "manifest_missing"


class ManifestTooLargeError(BundleError):
    """manifest.json is larger than the reader accepts; it is refused before parsing."""

    kind = "manifest_too_large"


class ManifestSyntaxError(BundleError):
    """manifest.json is not valid UTF-8 JSON (or repeats a key, or uses NaN/Infinity)."""

    kind = "manifest_syntax"


class ManifestNotObjectError(BundleError):
    """manifest.json is valid JSON, but its top level is not an object."""

    kind = "manifest_not_object"


class MissingFieldError(BundleError):
    """A required manifest field is absent; the message names its JSON path."""

    kind = "missing_field"


class FieldTypeError(BundleError):
    """A manifest field has the wrong JSON type (for example a string where a list belongs)."""

    kind = "field_type"


class InvalidValueError(BundleError):
    """A manifest field has the right type but an invalid value, or is an unknown field."""

    kind = "invalid_value"


class UnknownFormatError(BundleError):
    """The manifest's ``format`` is not ``tinymm-bundle``."""

    kind = "unknown_format"


class UnknownFormatVersionError(BundleError):
    """The manifest's ``format_version`` is not one tinymm has ever written (e.g. 0)."""

    kind = "unknown_format_version"


class NewerFormatVersionError(BundleError):
    """The manifest's ``format_version`` is newer than this tinymm reads: upgrade tinymm."""

    kind = "newer_format_version"


class InvalidPreprocessError(BundleError):
    """The manifest's preprocess section does not describe a valid preprocessing contract."""

    kind = "invalid_preprocess"


class MissingFileError(BundleError):
    """A file the manifest lists or references is absent, or is not a regular file."""

    kind = "file_missing"


class UnlistedFileError(BundleError):
    """A file is referenced (variant, golden, tokenizer, ONNX external data), or present in the bundle
    directory or archive, but not in ``files``: reading refuses it."""

    kind = "file_unlisted"


class ChecksumMismatchError(BundleError):
    """A file's size or sha256 differs from the manifest: the bundle is corrupt or was edited."""

    kind = "checksum_mismatch"


class UnsafePathError(BundleError):
    """A path would leave the bundle: ``..``, absolute, a drive letter, a backslash or a symlink out."""

    kind = "unsafe_path"


class OnnxFormatError(BundleError):
    """An ONNX file cannot be parsed far enough to find its external data and interface."""

    kind = "onnx_malformed"


class InterfaceMismatchError(BundleError):
    """An ONNX file's graph inputs or outputs differ from those its component lists."""

    kind = "interface_mismatch"


class GoldenDataError(BundleError):
    """A golden .npz file cannot be loaded safely or does not match its component's tensors."""

    kind = "golden_invalid"


class NotInBundleError(BundleError):
    """A component, precision or file was asked for that the bundle does not have."""

    kind = "not_in_bundle"


class UnknownArchitectureError(BundleError):
    """The bundle's architecture has no module in tinymm.families: a newer tinymm may run it."""

    kind = "unknown_architecture"
