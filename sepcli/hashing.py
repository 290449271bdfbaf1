"""Content hashes of files (model archives, downloads, weights), below every other layer."""

from __future__ import annotations

import hashlib
import os

__all__ = ["sha256_file"]

#: Bytes read per step while hashing.
CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()
