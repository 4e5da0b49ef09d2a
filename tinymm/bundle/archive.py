"""Unpack a bundle shipped as one file (.tar, .tar.gz, .tgz), refusing anything unsafe.

Every member is checked before anything is written: its name must be a safe relative path
(no absolute paths, no ``..``, no backslashes), it must be a regular file or a directory (links
of any kind, devices and FIFOs are refused: a bundle needs none), and the archive must stay
under MAX_ARCHIVE_MEMBERS members and MAX_ARCHIVE_BYTES bytes unpacked. Where Python provides
it, extraction also runs through tarfile's "data" filter.
"""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path

from tinymm.bundle.constants import MANIFEST_NAME
from tinymm.bundle.errors import ArchiveError, FieldTypeError, OutputExistsError, UnsafeArchiveError, UnsafePathError
from tinymm.bundle.paths import check_relative_path

logger = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MAX_ARCHIVE_MEMBERS = 10_000  # files and directories in one archive
MAX_ARCHIVE_BYTES = 16 * 1024**3  # 16 GiB of unpacked file data


def is_archive_name(path: Path) -> bool:
    """True if ``path`` has a bundle archive suffix."""
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _member_name(member: tarfile.TarInfo, archive: Path) -> str | None:
    """The member's canonical relative name, or None for the archive's root directory entry."""
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    if member.isdir() and not name.startswith("/"):
        name = name.rstrip("/")
    if name in ("", "."):
        return None
    try:
        return check_relative_path(name, f"{archive}: archive member")
    except (UnsafePathError, FieldTypeError) as e:
        raise UnsafeArchiveError(f"{e} (refusing to extract this archive)") from e


def _checked_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = []
    total_bytes = 0
    for count, member in enumerate(tar, start=1):
        if count > MAX_ARCHIVE_MEMBERS:
            raise UnsafeArchiveError(
                f"{archive}: more than {MAX_ARCHIVE_MEMBERS} members; a bundle has far fewer files"
            )
        name = _member_name(member, archive)
        if member.issym() or member.islnk():
            raise UnsafeArchiveError(
                f"{archive}: member {member.name!r} is a link (to {member.linkname!r}); bundle archives "
                "hold only regular files and directories"
            )
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(
                f"{archive}: member {member.name!r} is a device file or FIFO; bundle archives hold only "
                "regular files and directories"
            )
        total_bytes += member.size
        if total_bytes > MAX_ARCHIVE_BYTES:
            raise UnsafeArchiveError(
                f"{archive}: unpacks to more than {MAX_ARCHIVE_BYTES} bytes; refusing to extract it"
            )
        if name is not None:
            members.append(member)
    return members


def _bundle_root(dest: Path, archive: Path) -> Path:
    if (dest / MANIFEST_NAME).is_file():
        return dest
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / MANIFEST_NAME).is_file():
        return entries[0]
    raise ArchiveError(
        f"{archive}: no {MANIFEST_NAME} at the top level or in a single top-level directory; "
        "this archive does not hold a tinymm bundle"
    )


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract bundle archive ``archive`` into ``dest`` (absent or empty) and return the bundle root.

    The root is ``dest`` itself, or the archive's single top-level directory.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise OutputExistsError(f"cannot extract {archive} into {dest}: it exists and is not an empty directory")
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = _checked_members(tar, archive)
            dest.mkdir(parents=True, exist_ok=True)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # Python without extraction filters: the member checks above are the guard
                tar.extractall(dest, members=members)
    except getattr(tarfile, "FilterError", ()) as e:  # () catches nothing where filters are missing
        raise UnsafeArchiveError(f"{archive}: refused by tarfile's data filter: {e}") from e
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ArchiveError(
            f"{archive}: not a readable tar archive ({e}); pack bundles with tinymm.bundle.pack_bundle"
        ) from e
    logger.debug("extracted %s into %s", archive, dest)
    return _bundle_root(dest, archive)
