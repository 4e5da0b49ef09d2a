"""Extract a bundle archive once, into a cache directory keyed by the archive's content, and reuse it.

An archive is extracted into ``<cache root>/bundles-extracted/<sha256 of the archive>/`` (the cache
root is tinymm.user_cache's: ``$TINYMM_CACHE_DIR``, ``$XDG_CACHE_HOME/tinymm`` or
``~/.cache/tinymm``); later reads of the same bytes, from any path, reuse that directory. The
extraction goes into a ``.partial-<pid>-*`` directory beside it and is renamed into place in one
step, so a directory under its final name is always complete: a process killed while extracting
leaves only a partial directory, which the next extraction removes once its process is gone.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from tinymm.bundle.archive import bundle_root, extract_archive
from tinymm.bundle.errors import ArchiveError
from tinymm.hashing import sha256_file
from tinymm.user_cache import CACHE_DIR_ENV, user_cache_root

logger = logging.getLogger(__name__)

EXTRACT_DIRNAME = "bundles-extracted"  # under the user cache root
PARTIAL_PREFIX = ".partial-"  # + "<pid>-<random>": an extraction in progress, or one that was killed
STALE_PARTIAL_S = 24 * 3600  # a partial directory this old is removed even if its pid is alive (reused)


def extract_cache_dir() -> Path:
    """Where archives are extracted: ``<user cache root>/bundles-extracted`` (nothing is created)."""
    return user_cache_root() / EXTRACT_DIRNAME


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or cannot tell: keep its directory)
    return True


def remove_stale_partials(cache_dir: Path) -> list[Path]:
    """Remove the partial extractions in ``cache_dir`` whose process is gone (or that are a day old)."""
    removed = []
    for entry in cache_dir.glob(f"{PARTIAL_PREFIX}*"):
        pid_text = entry.name[len(PARTIAL_PREFIX):].split("-", 1)[0]
        try:
            age_s = time.time() - entry.stat().st_mtime
        except OSError:
            continue  # removed meanwhile
        if not pid_text.isdigit() or not _pid_alive(int(pid_text)) or age_s > STALE_PARTIAL_S:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    if removed:
        logger.info("removed %d partial bundle extraction(s) left in %s", len(removed), cache_dir)
    return removed


def extract_cached(archive: Path, cache_dir: Path | None = None) -> Path:
    """The bundle root of ``archive`` extracted under ``cache_dir`` (default extract_cache_dir()).

    Extracts only when no complete extraction of the same content is there. Raises the
    BundleError of extract_archive, or ArchiveError when the cache directory cannot be written.
    """
    archive = Path(archive)
    cache_dir = extract_cache_dir() if cache_dir is None else Path(cache_dir)
    try:
        digest = sha256_file(archive)
    except OSError as e:
        raise ArchiveError(f"{archive}: cannot be read ({e})") from e
    final = cache_dir / digest
    if final.is_dir():
        logger.debug("reusing the extraction of %s in %s", archive, final)
        return bundle_root(final, archive)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(cache_dir)
        partial = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{os.getpid()}-", dir=cache_dir))
    except OSError as e:
        raise ArchiveError(
            f"cannot extract bundle archive {archive} into the cache directory {cache_dir} ({e}); set "
            f"${CACHE_DIR_ENV} to a writable directory, or pass extract_to= (tinymm.bundle.read_bundle)"
        ) from e
    try:
        extract_archive(archive, partial)
        try:
            os.rename(partial, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(partial, ignore_errors=True)  # another process finished the same archive first
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.debug("extracted %s into %s", archive, final)
    return bundle_root(final, archive)
