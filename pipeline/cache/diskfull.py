"""A full disk at any write of a cache, as one ``DiskFullError`` line that says what is kept.

Every shard, part record and manifest is written to a temporary name first (:mod:`pipeline.cache.writer`),
so a write that fails for space damages nothing written before; this turns the failure into a message
naming the directory, what it already holds, and that the same command resumes from there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.cache.cachedir import SplitDir
from pipeline.cache.manifest import read_skips
from pipeline.cache.shards import read_shard_index
from pipeline.errors import DiskFullError, first_line, is_disk_full

__all__ = ["disk_full_as_error", "written_so_far"]


@contextmanager
def disk_full_as_error(root: str | Path) -> Iterator[None]:
    """Turn a full disk (or quota) at any write of a cache into ``DiskFullError``: one line naming the
    directory, what it already holds (complete shards, rows, bytes, recorded skips), and that a rerun
    of the same command resumes from there (every shard, part record and manifest is written to a
    temporary name first, so nothing written before is damaged)."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, DiskFullError) or not is_disk_full(exc):
            raise
        raise DiskFullError(
            f"{root}: no space left on device ({first_line(exc)}); {written_so_far(Path(root))}; free space and "
            "run the same command again: it resumes from there"
        ) from exc


def written_so_far(root: Path) -> str:
    """``written so far: N rows in S complete shards (X MiB), K skips recorded``: what a stopped cache
    run leaves at ``root`` for the next run of the same command to resume from."""
    where = SplitDir(root)
    shards = where.shard_paths()
    rows = sum(len(read_shard_index(p)[1]) for p in shards)
    size = sum(p.stat().st_size for p in shards)
    skips = sum(len(read_skips(p)) for p in where.skip_logs())
    return (
        f"written so far: {rows} rows in {len(shards)} complete shards ({size / 2**20:.1f} MiB), "
        f"{skips} skips recorded"
    )
