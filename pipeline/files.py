"""Writes that a full disk, a kill or a SIGTERM cannot leave half-done.

Every file this project writes outside the cache writer (exports, written-text exports, evidence
results, resolved configs, prepared datasets, figures) goes through :func:`atomic_path` or
:func:`atomic_write`: the bytes go to a temporary name beside the target and are renamed over it only
once complete, so the target holds either its old content or its new content, never a torn one. A
write that fails for lack of space becomes one :class:`~pipeline.errors.DiskFullError` line naming the
file and saying that nothing was replaced.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pipeline.errors import DiskFullError, first_line, is_disk_full

__all__ = ["atomic_path", "atomic_write", "disk_full_as_one_line", "is_disk_full", "temporary_name"]


def temporary_name(target: Path) -> Path:
    """The temporary name a write to ``target`` uses: hidden, beside it (same filesystem, so the final
    rename is atomic), and unique to this process."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


@contextmanager
def disk_full_as_one_line(what: str | Path, kept: str = "nothing was replaced") -> Iterator[None]:
    """Turn a full disk (or quota) inside the block into one ``DiskFullError`` line naming ``what`` was
    being written and what is ``kept``, ending with the remedy."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, DiskFullError) or not is_disk_full(exc):
            raise
        raise DiskFullError(
            f"{what}: no space left on device ({first_line(exc)}); {kept}; free space and run the same "
            "command again"
        ) from exc


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``target``'s content to (for writers that open a path
    themselves: pyarrow, ``datasets``, matplotlib). On success it is renamed over ``target``; on any
    error it is removed and ``target`` is left as it was. A full disk is one ``DiskFullError`` line."""
    target = Path(target)
    tmp = temporary_name(target)
    try:
        with disk_full_as_one_line(target, f"{target.name} was left as it was"):
            target.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_write(target: str | Path, mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for ``target`` (``mode`` "w" or "wb"; text defaults to UTF-8), and rename
    it over ``target`` once the block ends without error; see :func:`atomic_path`."""
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    with atomic_path(target) as tmp, open(tmp, mode, **open_kwargs) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())
