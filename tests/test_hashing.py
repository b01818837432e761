"""The one file checksum."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.hashing import file_sha256


def test_file_sha256_is_the_bytes_sha256(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40_000  # past one 8 MiB read
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
