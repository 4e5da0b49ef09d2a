"""Read a bundle from a directory or a single-file archive, validating it on the way in.

``read_bundle`` refuses, with a BundleError subclass whose message names the file and the fix:
a missing path; a directory without manifest.json; a manifest that is too large, not JSON, not an
object, of another format or an unknown or newer version, or has a missing, mistyped or invalid
field or preprocess section; a path that escapes the bundle; a referenced file that is not listed
in ``files``; a listed file that is missing, or whose size (always) or sha256 (unless
``verify_checksums=False``) differs; a file in the directory that ``files`` does not list
(kind ``file_unlisted``); an ONNX component that cannot be parsed, or whose external
data is unsafe, missing or unlisted.
"""

from __future__ import annotations

import logging
import shutil
import weakref
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from tinymm.bundle.archive import ARCHIVE_SUFFIXES, extract_archive, is_archive_name
from tinymm.bundle.constants import MANIFEST_NAME, MAX_MANIFEST_BYTES, PRECISIONS
from tinymm.bundle.errors import BundleNotFoundError, ManifestMissingError, ManifestTooLargeError, NotInBundleError
from tinymm.bundle.extract_cache import extract_cached
from tinymm.bundle.golden import load_npz
from tinymm.bundle.integrity import check_files, check_model, check_models, check_no_unlisted_files
from tinymm.bundle.manifest import Component, GoldenPair, Manifest
from tinymm.bundle.parse import parse_manifest_bytes
from tinymm.bundle.paths import resolve_inside

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)


class Bundle:
    """A validated bundle on disk: its root directory and its manifest.

    A bundle given a ``temporary_dir`` owns that directory: ``close()``
    (or leaving a ``with`` block, or garbage collection) removes it.
    """

    def __init__(self, root: str | Path, manifest: Manifest, *, temporary_dir: Path | None = None) -> None:
        self._root = Path(root)
        self._manifest = manifest
        self._cleanup = (
            weakref.finalize(self, shutil.rmtree, temporary_dir, ignore_errors=True) if temporary_dir else None
        )

    @property
    def root(self) -> Path:
        """The bundle directory (the one holding manifest.json)."""
        return self._root

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def name(self) -> str:
        return self._manifest.name

    def component(self, name: str) -> Component:
        """The component called ``name``; NotInBundleError naming the available ones otherwise."""
        return self._manifest.component(name)

    def component_path(self, component: str, precision: str = "fp32") -> Path:
        """Path of the ONNX file of ``component`` at ``precision`` (fp32, fp16 or int8)."""
        if precision not in PRECISIONS:
            raise NotInBundleError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
        return self.file_path(self.component(component).variant(precision).file)

    def checked_component_path(self, component: str, precision: str = "fp32") -> Path:
        """``component_path``, after scanning that ONNX file and checking its external data."""
        path = self.component_path(component, precision)
        check_model(self._root, self._manifest, self.component(component).variant(precision).file)
        return path

    def file_path(self, name: str) -> Path:
        """Path of listed bundle file ``name`` (a bundle-relative POSIX path)."""
        if name not in self._manifest.files:
            raise NotInBundleError(
                f"bundle {self._manifest.name!r} lists no file {name!r}; its files are {sorted(self._manifest.files)}"
            )
        return self._root / name

    @property
    def tokenizer_path(self) -> Path | None:
        """The sentencepiece model of the text contract, or None for a bundle without text."""
        text = self._manifest.preprocess.text
        return None if text is None else self.file_path(text.tokenizer)

    @property
    def model_card_path(self) -> Path | None:
        """The model card (usually README.md), or None when the manifest names none."""
        card = self._manifest.model_card
        return None if card is None else self.file_path(card)

    def golden_arrays(self, pair: GoldenPair) -> tuple[dict[str, "np.ndarray"], dict[str, "np.ndarray"]]:
        """The recorded (inputs, outputs) of a golden pair: tensor name -> array, dtypes as stored.

        Shapes and dtypes follow the component's TensorSpecs (``verify_bundle`` checks that).
        """
        inputs = load_npz(self.file_path(pair.inputs), f"golden inputs of {pair.component!r}")
        outputs = load_npz(self.file_path(pair.outputs), f"golden outputs of {pair.component!r}")
        return inputs, outputs

    def close(self) -> None:
        """Remove the temporary directory of a bundle read from an archive (no-op otherwise)."""
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Bundle(name={self._manifest.name!r}, root={str(self._root)!r})"


def read_manifest(root: Path) -> Manifest:
    """Parse ``root/manifest.json`` without looking at the other files."""
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ManifestMissingError(
            f"{root}: no {MANIFEST_NAME}; this directory is not a tinymm bundle. Give the directory that "
            "holds manifest.json, or build one (e.g. python scripts/make_example_bundle.py DIR)"
        )
    resolve_inside(root, MANIFEST_NAME, str(manifest_path))
    size = manifest_path.stat().st_size
    if size > MAX_MANIFEST_BYTES:  # refused before reading it into memory
        raise ManifestTooLargeError(
            f"{manifest_path}: {size} bytes is larger than the {MAX_MANIFEST_BYTES} bytes a manifest may "
            "have; keep large data in bundle files, not in the manifest"
        )
    return parse_manifest_bytes(manifest_path.read_bytes(), str(manifest_path))


def _read_directory(root: Path, *, verify_checksums: bool, scan_models: bool,
                    temporary_dir: Path | None = None) -> Bundle:
    manifest = read_manifest(root)
    check_files(root, manifest, verify_checksums=verify_checksums)
    if scan_models:
        check_models(root, manifest)
    check_no_unlisted_files(root, manifest)  # after the scan, whose messages about external data say more
    hashed = "verified" if verify_checksums else "skipped"
    logger.debug("read bundle %r from %s (checksums %s)", manifest.name, root, hashed)
    return Bundle(root, manifest, temporary_dir=temporary_dir)


def read_bundle(path: str | Path, *, verify_checksums: bool = True, scan_models: bool = True,
                extract_to: str | Path | None = None) -> Bundle:
    """Read and validate the bundle at ``path``: a directory, or a .tar/.tar.gz/.tgz archive of one.

    An archive is extracted (safely: see archive.py) into ``extract_to`` (absent or empty), or
    else once into the user's cache, keyed by the archive's content, and reused (extract_cache.py).
    ``verify_checksums=False`` skips hashing (sizes are still compared);
    ``verify_bundle`` hashes later. ``scan_models=False`` defers the ONNX scan (external data kept
    inside the bundle) to ``Bundle.checked_component_path``, so that a loader scans only the variants
    it opens: the pure-Python scan is the slowest part of reading a bundle.
    """
    path = Path(path).absolute()
    if not path.exists():
        raise BundleNotFoundError(
            f"bundle {str(path)!r} does not exist; give a bundle directory (one holding {MANIFEST_NAME}) "
            f"or a bundle archive ({', '.join(ARCHIVE_SUFFIXES)})"
        )
    if path.is_dir():
        return _read_directory(path, verify_checksums=verify_checksums, scan_models=scan_models)
    if path.name == MANIFEST_NAME:
        raise BundleNotFoundError(
            f"{str(path)!r} is a manifest file; give its bundle directory {str(path.parent)!r} instead"
        )
    if not path.is_file() or not is_archive_name(path):
        raise BundleNotFoundError(
            f"bundle {str(path)!r} is not a directory nor a bundle archive ({', '.join(ARCHIVE_SUFFIXES)}); "
            "give a bundle directory or archive"
        )
    if extract_to is not None:
        root = extract_archive(path, Path(extract_to))
        return _read_directory(root, verify_checksums=verify_checksums, scan_models=scan_models)
    root = extract_cached(path)
    return _read_directory(root, verify_checksums=verify_checksums, scan_models=scan_models)
