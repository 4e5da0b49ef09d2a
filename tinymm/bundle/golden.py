"""Load golden .npz files safely and check them against a component's tensor specs."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from tinymm.bundle.errors import GoldenDataError
from tinymm.bundle.specs import TensorSpec

if TYPE_CHECKING:
    import numpy as np

MAX_GOLDEN_BYTES = 256 * 1024 * 1024  # largest uncompressed size of one golden .npz, in bytes


def load_npz(path: Path, what: str) -> dict[str, "np.ndarray"]:
    """Read every array of an .npz file (no pickles). ``what`` names the file in errors.

    Returns name -> array, each with the dtype and shape stored in the file.
    """
    import numpy as np

    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (OSError, zipfile.BadZipFile) as e:
        raise GoldenDataError(f"{what}: {str(path)!r} is not a readable .npz file ({e}); rebuild the bundle") from e
    if declared > MAX_GOLDEN_BYTES:
        raise GoldenDataError(
            f"{what}: {str(path)!r} unpacks to {declared} bytes, more than the {MAX_GOLDEN_BYTES} "
            "a golden file may hold; record fewer or smaller examples"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise GoldenDataError(
            f"{what}: cannot load {str(path)!r} as plain arrays ({e}); golden files hold numeric arrays, no pickles"
        ) from e


def check_arrays(arrays: Mapping[str, "np.ndarray"], specs: tuple[TensorSpec, ...], what: str) -> None:
    """Check that ``arrays`` has exactly the tensors of ``specs``, with their dtypes and fixed sizes.

    A symbolic dimension (e.g. "batch") must have the same size in every array that uses it.
    """
    expected = [spec.name for spec in specs]
    if sorted(arrays) != sorted(expected):
        raise GoldenDataError(f"{what}: holds arrays {sorted(arrays)}, the component expects {sorted(expected)}")
    symbolic: dict[str, tuple[int, str]] = {}  # dim name -> (size, array that set it)
    for spec in specs:
        array = arrays[spec.name]
        if str(array.dtype) != spec.dtype:
            raise GoldenDataError(
                f"{what}: array {spec.name!r} has dtype {array.dtype}, the component expects {spec.dtype}"
            )
        if array.ndim != len(spec.shape):
            raise GoldenDataError(
                f"{what}: array {spec.name!r} has shape {array.shape}, the component expects {list(spec.shape)}"
            )
        for axis, (size, dim) in enumerate(zip(array.shape, spec.shape)):
            if isinstance(dim, int) and size != dim:
                raise GoldenDataError(
                    f"{what}: array {spec.name!r} has size {size} on axis {axis}, the component expects "
                    f"{dim} (shape {list(spec.shape)})"
                )
            if isinstance(dim, str):
                seen_size, seen_in = symbolic.setdefault(dim, (size, spec.name))
                if size != seen_size:
                    raise GoldenDataError(
                        f"{what}: dimension {dim!r} is {size} in array {spec.name!r} but {seen_size} "
                        f"in array {seen_in!r}"
                    )
