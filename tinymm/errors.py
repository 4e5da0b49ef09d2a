"""Typed errors raised by tinymm, and the exit code the CLI maps each one to.

Every error a user can cause is a TinymmError subclass with a message that says what was
given, why it is wrong and what to do. The CLI catches these and prints one line.
"""

from __future__ import annotations

# CLI exit codes (documented in README "Exit codes").
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_BUNDLE = 4
EXIT_BACKEND = 5
EXIT_TOLERANCE = 6  # `tinymm verify` / export parity: an output is outside its golden tolerance


class TinymmError(Exception):
    """Base class of every error tinymm raises on purpose."""

    exit_code = 1
    # A stable machine-readable name for the failure, reported by `--json` output.
    kind = "error"


class UsageError(TinymmError):
    """Options that do not fit together or do not fit the bundle given (e.g. Whisper flags for a CTC bundle)."""

    exit_code = EXIT_USAGE
    kind = "usage_error"


class BundleError(TinymmError):
    """A bundle is missing, malformed, corrupt, unsafe or from a newer format version."""

    exit_code = EXIT_BUNDLE
    kind = "bundle_error"


class InputError(TinymmError):
    """An image, audio clip or text given to tinymm cannot be used."""

    exit_code = EXIT_BAD_INPUT
    kind = "bad_input"


class BackendError(TinymmError):
    """An inference backend or execution provider is unavailable or failed."""

    exit_code = EXIT_BACKEND
    kind = "backend_error"
