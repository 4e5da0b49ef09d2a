"""Unpack a bundle shipped as one file (.tar, .tar.gz, .tgz), refusing anything unsafe.

Every member is checked before anything is written: its name must be a safe relative path
(no absolute paths, no ``..``, no backslashes), it must be a regular file or a directory (links
of any kind, devices and FIFOs are refused: a bundle needs none), and the archive must stay
under MAX_ARCHIVE_MEMBERS members and MAX_ARCHIVE_BYTES bytes unpacked. The manifest member is
then read (and parsed) first, and every other file member must be a file the manifest lists, with
the size it declares: extraction writes at most the bytes the manifest declares, and an archive
with an unlisted or resized member is refused before anything is written. Where Python provides
it, extraction also runs through tarfile's "data" filter.
"""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path

from tinymm.bundle.constants import MANIFEST_NAME, MAX_MANIFEST_BYTES
from tinymm.bundle.errors import (
    ArchiveError,
    ChecksumMismatchError,
    FieldTypeError,
    OutputExistsError,
    UnlistedFileError,
    UnsafeArchiveError,
    UnsafePathError,
)
from tinymm.bundle.parse import parse_manifest_bytes
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


def _no_bundle(archive: Path) -> ArchiveError:
    return ArchiveError(
        f"{archive}: no {MANIFEST_NAME} at the top level or in a single top-level directory; "
        "this archive does not hold a tinymm bundle"
    )


def _check_against_manifest(tar: tarfile.TarFile, members: list[tarfile.TarInfo], archive: Path) -> None:
    """Read the manifest member first; every other file member must be listed there, with its size."""
    names = {_member_name(member, archive): member for member in members}
    tops = {name.split("/", 1)[0] for name in names if name is not None}
    prefix = ""
    if MANIFEST_NAME not in names:
        top = next(iter(tops)) if len(tops) == 1 else None
        if top is None or f"{top}/{MANIFEST_NAME}" not in names:
            raise _no_bundle(archive)
        prefix = f"{top}/"
    manifest_member = names[prefix + MANIFEST_NAME]
    if not manifest_member.isfile():
        raise _no_bundle(archive)
    handle = tar.extractfile(manifest_member)
    data = b"" if handle is None else handle.read(MAX_MANIFEST_BYTES + 1)
    manifest = parse_manifest_bytes(data, f"{archive}: {manifest_member.name}")
    for name, member in names.items():
        if name is None or not member.isfile() or member is manifest_member:
            continue
        relative = name[len(prefix):] if name.startswith(prefix) else name
        entry = manifest.files.get(relative)
        if entry is None:
            raise UnlistedFileError(
                f"{archive}: member {member.name!r} is not a file its manifest lists; refusing to extract it "
                "(pack bundles with tinymm.bundle.pack_bundle, which packs the listed files only)"
            )
        if member.size != entry.size:
            raise ChecksumMismatchError(
                f"{archive}: member {member.name!r} holds {member.size} bytes but the manifest lists "
                f"{entry.size}; refusing to extract it: the archive is corrupt or was edited, pack it again"
            )


def bundle_root(dest: Path, archive: Path) -> Path:
    """The directory holding manifest.json in extraction ``dest``: itself or its single subdirectory."""
    if (dest / MANIFEST_NAME).is_file():
        return dest
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / MANIFEST_NAME).is_file():
        return entries[0]
    raise _no_bundle(archive)


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
            _check_against_manifest(tar, members, archive)
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
    return bundle_root(dest, archive)
