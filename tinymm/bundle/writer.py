"""Write a bundle: stage its files, checksum them, write the manifest, validate, then publish.

The bundle is assembled in a hidden staging directory next to ``out_dir``; ``write()`` lists
every staged file with its sha256 and size, writes manifest.json atomically (temporary file and
rename), reads the bundle back with every check of ``read_bundle`` and ``verify_bundle``, and only
then moves it to ``out_dir`` in one rename. A failed export therefore never leaves a half-written
bundle where a good one was.

    with BundleWriter("bundles/scene-vlm", overwrite=True) as writer:
        writer.add_file("image_encoder.onnx", exported_onnx_path)
        writer.add_bytes("tokenizer.model", sentencepiece_model_bytes)
        writer.add_arrays("golden/image_encoder.inputs.npz", {"pixel_values": x})
        bundle = writer.write(name="scene-vlm", family="vision-language", tasks=["caption"], ...)
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
import weakref
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from tinymm import __version__
from tinymm.bundle.constants import MANIFEST_NAME, MODEL_CARD_NAME
from tinymm.bundle.errors import (
    InvalidValueError,
    MissingFileError,
    OutputExistsError,
    UnlistedFileError,
    UnsafePathError,
)
from tinymm.bundle.integrity import sha256_file
from tinymm.bundle.manifest import Component, FileEntry, GoldenPair, Manifest, Preprocess
from tinymm.bundle.paths import check_relative_path
from tinymm.bundle.reader import Bundle, read_bundle
from tinymm.bundle.verify import verify_bundle

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class BundleWriter:
    """Assemble a bundle and publish it at ``out_dir`` once it validates.

    ``out_dir`` must be absent or empty, unless ``overwrite=True``, which replaces an existing
    bundle (a directory holding manifest.json) after the new one validated. A non-empty
    directory that is not a bundle is never replaced.
    """

    def __init__(self, out_dir: str | Path, *, overwrite: bool = False) -> None:
        self.out_dir = Path(out_dir).absolute()
        self.overwrite = overwrite
        self._check_destination()
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        # mkdir (not mkdtemp) so that the published directory gets the usual umask permissions.
        self._staging = self.out_dir.parent / f".{self.out_dir.name}.partial-{uuid.uuid4().hex[:12]}"
        self._staging.mkdir()
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._staging, ignore_errors=True)
        self._done = False

    def _check_destination(self) -> None:
        out = self.out_dir
        if not out.exists() and not out.is_symlink():
            return
        if not out.is_dir() or out.is_symlink():
            raise OutputExistsError(f"cannot write a bundle to {str(out)!r}: it exists and is not a directory")
        if not any(out.iterdir()):
            return
        if not self.overwrite:
            raise OutputExistsError(
                f"cannot write a bundle to {str(out)!r}: the directory is not empty; pick a new directory "
                "or pass overwrite=True (--force) to replace the bundle in it"
            )
        if not (out / MANIFEST_NAME).is_file():
            raise OutputExistsError(
                f"refusing to replace {str(out)!r}: it is not empty and holds no {MANIFEST_NAME}, so it is "
                "not a bundle; remove it yourself or pick another directory"
            )

    @property
    def staging_dir(self) -> Path:
        """The directory the bundle is assembled in until ``write()`` publishes it."""
        return self._staging

    def path(self, name: str) -> Path:
        """Where bundle file ``name`` (a relative POSIX path) goes; for tools that write files themselves.

        Use it for ``onnx.save_model(..., save_as_external_data=True)``, which writes its data file
        next to the model: every file under the staging directory becomes part of the bundle.
        """
        self._check_open()
        check_relative_path(name, "bundle file name")
        if name == MANIFEST_NAME:
            raise InvalidValueError(f"bundle file name: {MANIFEST_NAME} is written by write(), not added")
        target = self._staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def add_file(self, name: str, source: str | Path) -> Path:
        """Copy file ``source`` into the bundle as ``name``; returns the staged path."""
        if not Path(source).is_file():
            raise MissingFileError(f"cannot add {str(source)!r} to the bundle as {name!r}: it is not a file")
        target = self.path(name)
        shutil.copyfile(source, target)
        return target

    def add_bytes(self, name: str, data: bytes) -> Path:
        """Store ``data`` in the bundle as ``name``; returns the staged path."""
        target = self.path(name)
        target.write_bytes(data)
        return target

    def add_text(self, name: str, text: str) -> Path:
        """Store ``text`` (UTF-8) in the bundle as ``name``; returns the staged path."""
        return self.add_bytes(name, text.encode("utf-8"))

    def add_arrays(self, name: str, arrays: Mapping[str, "np.ndarray"]) -> Path:
        """Store named arrays as an uncompressed .npz (e.g. golden inputs); object arrays are refused."""
        import numpy as np

        converted = {key: np.asarray(value) for key, value in arrays.items()}
        for key, value in converted.items():
            if value.dtype.hasobject:
                raise InvalidValueError(f"{name}: array {key!r} has dtype object; store numeric arrays only")
        target = self.path(name)
        with open(target, "wb") as f:
            np.savez(f, **converted)
        return target

    def _staged_files(self) -> dict[str, Path]:
        files: dict[str, Path] = {}
        for directory, dirs, names in os.walk(self._staging):
            for entry in dirs + names:
                full = Path(directory) / entry
                rel = full.relative_to(self._staging).as_posix()
                if full.is_symlink():
                    raise UnsafePathError(f"staged file {rel!r} is a symlink; add the real file with add_file()")
            for file_name in names:
                full = Path(directory) / file_name
                rel = full.relative_to(self._staging).as_posix()
                if rel != MANIFEST_NAME:
                    files[check_relative_path(rel, "staged file")] = full
        return files

    def write(
        self,
        *,
        name: str,
        family: str,
        tasks: Sequence[str],
        components: Mapping[str, Component],
        preprocess: Preprocess | None = None,
        golden: Sequence[GoldenPair] = (),
        provenance: Mapping[str, Any] | None = None,
        model_card: str | None = None,
        model: Mapping[str, Any] | None = None,
        architecture: str | None = None,
    ) -> Bundle:
        """Checksum the staged files, write manifest.json, validate, and publish at ``out_dir``.

        ``model_card`` defaults to README.md when one was added; ``model`` is the manifest's
        free-form object of model hyperparameters; ``architecture`` names the tinymm.families
        module that runs the bundle (None: the family's default). Returns the published bundle.
        On failure nothing is published and the staged files are removed.
        """
        self._check_open()
        try:
            staged = self._staged_files()
            files = {
                rel: FileEntry(sha256=sha256_file(path), size=path.stat().st_size)
                for rel, path in sorted(staged.items())
            }
            if model_card is None and MODEL_CARD_NAME in files:
                model_card = MODEL_CARD_NAME
            try:
                manifest = Manifest(
                    name=name,
                    family=family,
                    tasks=tuple(tasks),
                    components=components,
                    files=files,
                    preprocess=preprocess if preprocess is not None else Preprocess(),
                    golden=tuple(golden),
                    provenance=dict(provenance or {}),
                    model=dict(model or {}),
                    model_card=model_card,
                    created_by=f"tinymm {__version__}",
                    architecture=architecture,
                )
            except UnlistedFileError as e:
                raise MissingFileError(
                    f"{e} (a file the manifest refers to was never added: use add_file first)"
                ) from e
            _write_atomic(self._staging / MANIFEST_NAME, manifest.to_json().encode("utf-8"))
            verify_bundle(read_bundle(self._staging, verify_checksums=True))
            self._publish()
        except BaseException:
            self.abort()
            raise
        logger.info(
            "wrote bundle %r to %s (%d files, %d bytes)", manifest.name, self.out_dir, len(files), manifest.total_bytes
        )
        return Bundle(self.out_dir, manifest)

    def _publish(self) -> None:
        self._check_destination()  # again: the directory may have changed while we worked
        out = self.out_dir
        backup = None
        if out.exists():
            if any(out.iterdir()):
                backup = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:12]}"
                os.replace(out, backup)
            else:
                out.rmdir()
        try:
            os.replace(self._staging, out)
        except OSError:
            if backup is not None:
                os.replace(backup, out)
            raise
        self._done = True
        self._cleanup.detach()
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)

    def _check_open(self) -> None:
        if self._done:
            raise RuntimeError(f"this BundleWriter already finished (bundle at {self.out_dir}); make a new one")

    def abort(self) -> None:
        """Discard the staged files; nothing is published."""
        self._done = True
        self._cleanup()

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._done:
            self.abort()
