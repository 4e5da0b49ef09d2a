"""The sha256 of a file: bundle checksums, engine-cache keys and export provenance all use this."""

from __future__ import annotations

import hashlib
from pathlib import Path

HASH_CHUNK_BYTES = 1 << 20  # read size when hashing, 1 MiB: large models never sit whole in memory


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at `path`, read in HASH_CHUNK_BYTES chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
