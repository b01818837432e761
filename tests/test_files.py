"""The atomic writes every command uses outside the cache writer: a failure leaves the old file, a
full disk is one line, no temporary file is left behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pipeline.errors import DiskFullError, exit_code
from pipeline.files import atomic_path, atomic_write


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_atomic_write_replaces_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(DiskFullError) as info, atomic_write(target) as fh:
        fh.write("new, half")
        raise _enospc()
    message = str(info.value)
    assert str(target) in message and "left as it was" in message and "\n" not in message
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    with atomic_write(target) as fh:
        fh.write("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_atomic_path_removes_the_temporary_on_any_error(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "table.parquet"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("writer bug")
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_a_full_disk_no_handler_covered_is_still_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def main() -> None:
        raise OSError("IOError: [Errno 28] " + os.strerror(errno.ENOSPC) + "\nsecond line")

    assert exit_code(main) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on device" in err and "run the same command again" in err

    def other() -> None:
        raise OSError(errno.EACCES, "denied")

    with pytest.raises(OSError):
        exit_code(other)
