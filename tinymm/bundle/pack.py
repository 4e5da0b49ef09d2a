"""Pack a bundle directory into one .tar, .tar.gz or .tgz file that ``read_bundle`` accepts."""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path

from tinymm.bundle.archive import ARCHIVE_SUFFIXES, is_archive_name
from tinymm.bundle.constants import MANIFEST_NAME
from tinymm.bundle.errors import InvalidValueError
from tinymm.bundle.reader import read_bundle


def _normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Archive members without the packer's user names and ids."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack_bundle(bundle_dir: str | Path, archive: str | Path) -> Path:
    """Pack the bundle at ``bundle_dir`` (verified first) into a .tar, .tar.gz or .tgz file.

    The archive holds one top-level directory named after the bundle, with manifest.json and
    every listed file (unlisted files are left out). Returns the archive path.
    """
    archive = Path(archive)
    if not is_archive_name(archive):
        raise InvalidValueError(f"archive name {str(archive)!r} must end with one of {list(ARCHIVE_SUFFIXES)}")
    with read_bundle(bundle_dir, verify_checksums=True) as bundle:
        mode = "w" if archive.name.lower().endswith(".tar") else "w:gz"
        top = bundle.manifest.name
        fd, tmp_name = tempfile.mkstemp(prefix=f".{archive.name}.", dir=archive.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            with tarfile.open(tmp, mode) as tar:
                tar.add(bundle.root / MANIFEST_NAME, arcname=f"{top}/{MANIFEST_NAME}", filter=_normalized)
                for rel in sorted(bundle.manifest.files):
                    tar.add(bundle.root / rel, arcname=f"{top}/{rel}", recursive=False, filter=_normalized)
            os.replace(tmp, archive)
        finally:
            tmp.unlink(missing_ok=True)
    return archive
