"""Reading an input file (an image or an audio clip) into bytes, with actionable errors."""

from __future__ import annotations

import os
from pathlib import Path

from tinymm.errors import InputError


def read_input_file(source: str | os.PathLike[str], kind: str) -> bytes:
    """The bytes of the file at `source`; `kind` ("image", "audio") names it in errors.

    Reading bytes (rather than letting a decoder open the path) keeps non-ASCII paths working on
    every platform and gives one place for the missing-file, directory and permission errors.
    """
    path = Path(source)
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise InputError(f"{kind} file {str(path)!r} does not exist; check the path") from e
    except IsADirectoryError as e:
        raise InputError(f"{kind} path {str(path)!r} is a directory; pass an {kind} file") from e
    except OSError as e:
        raise InputError(f"cannot read {kind} file {str(path)!r}: {e.strerror or e}; check its permissions") from e
