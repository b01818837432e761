"""The one file checksum: sha256 of a file's bytes (hex). Standard library only, so the cache format
(which imports no model or data code) and the dataset side share it."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """sha256 of the file at ``path`` (hex), read in 8 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 23):
            h.update(chunk)
    return h.hexdigest()
