"""Compaction: rewrite a cache without superseded rows and without the rows a dataset no longer has.

The live rows whose sample_ids ``keep`` names are copied as stored (their Arrow values, never decoded
and re-encoded, so a quantized row stays bit for bit what the teacher's forward gave), with the skip
records of the other kept ids, into a sibling directory by an ordinary :class:`CacheWriter`; the
result is one generation, as a fresh cache of the same rows would be. The new directory then takes
the old one's place atomically: ``renameat2(RENAME_EXCHANGE)`` on Linux swaps the two in one step,
so a reader sees the old cache or the new one, never neither. Where the kernel lacks it, two renames
leave a short window without ``root``; :func:`finish_compaction` (which the cache stage calls once
it holds the lock) completes an interrupted swap. The writer lock file goes with the cache, so the
run holding it keeps it held; a leftover copy is never taken up as a cache.

A cache written before row digests and generations existed comes out in the current form: its rows
keep their (unknown, empty) digests, its fingerprint loses the dataset hash.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pipeline.cache.cachedir import SplitDir
from pipeline.cache.format import MANIFEST_NAME, TAG_WRITTEN, Layout
from pipeline.cache.lock import LOCK_NAME
from pipeline.cache.manifest import settings_only
from pipeline.cache.reader import CacheReader
from pipeline.cache.writer import CacheWriter
from pipeline.files import disk_full_as_one_line

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _old_dir(root: Path) -> Path:
    return root.with_name(f".{root.name}.compacted-away")


def compact(root: str | Path, keep: Collection[str], *, shard_bytes: int | None = None) -> dict[str, Any]:
    """Rewrite the cache at ``root`` holding only the live rows and skips of ``keep``; return the new
    manifest's counts. The caller holds ``root``'s writer lock. A full disk while the copy is built
    is one ``DiskFullError`` line; the copy is removed and the cache stays as it was."""
    root = Path(root)
    finish_compaction(root)
    tmp = SplitDir(root).building_dir
    shutil.rmtree(tmp, ignore_errors=True)  # an earlier compaction that stopped before its swap
    kept = "the cache is intact as it was and the partial copy was removed"
    with disk_full_as_one_line(f"{root} (compacting into {tmp.name})", kept):
        try:
            counts = _build(root, set(keep), tmp, shard_bytes)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # never left where a later run could take it up
            raise
    _swap(tmp, root)
    return counts


def _build(root: Path, keep: set[str], tmp: Path, shard_bytes: int | None) -> dict[str, Any]:
    """Write the compacted copy of ``root`` into ``tmp``; return its counts."""
    reader = CacheReader(root)  # every shard's checksum verified before anything is copied
    manifest = reader.manifest
    layout = Layout.from_dict(manifest["layout"], str(root))
    kwargs = {"shard_bytes": shard_bytes} if shard_bytes else {}
    extra = {k: manifest[k] for k in ("sources",) if k in manifest}
    with CacheWriter(
        tmp,
        fingerprint=settings_only(manifest["fingerprint"]),
        top_k=layout.top_k,
        vocab_size=layout.vocab_size,
        logprob_encoding=layout.logprob_encoding,
        extra_meta=extra,
        **kwargs,
    ) as writer:
        kept = _copy_live_rows(reader, keep, writer)
        skips = [s for s in manifest.get("skipped") or [] if s["sample_id"] in keep]
        for s in skips:
            writer.skip(s["sample_id"], s["reason"], s.get("detail", ""), s.get("row_digest", ""))
        last = (manifest.get("generations") or [{}])[-1]
        return writer.finalize(rows_in=kept + len(skips), reused=0, dataset=last.get("dataset"))


def _copy_live_rows(reader: CacheReader, keep: set[str], writer: CacheWriter) -> int:
    """Copy every live row of ``keep`` in storage order, one record batch at a time; return how many."""
    n = 0
    for batch, live in reader.iter_live_batches():
        ids = batch.column("sample_id").to_pylist()
        rows = [r for r in live if ids[r] in keep]
        for row in batch.take(rows).to_pylist() if rows else []:
            writer.add_stored(row, (TAG_WRITTEN,) if row.get("teacher_written") else ())
            n += 1
    return n


def _swap(new: Path, root: Path) -> None:
    """Put ``new`` in ``root``'s place and remove the old cache. The writer lock file that this run
    holds moves with it (linked into ``new`` first), so the lock stays held on ``root`` throughout."""
    _carry_lock(root, new)
    if _exchange(new, root):
        shutil.rmtree(new)  # now the old cache
        return
    old = _old_dir(root)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(root, old)
    os.replace(new, root)
    shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux ``renameat2``); False where the system cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, f"exchanging {a} and {b}: {os.strerror(err)}")


def _carry_lock(root: Path, new: Path) -> None:
    """Give ``new`` the lock file of ``root`` (the same file: a lock held on it stays held)."""
    lock, target = root / LOCK_NAME, new / LOCK_NAME
    if not lock.exists():
        return
    target.unlink(missing_ok=True)
    try:
        os.link(lock, target)
    except OSError:  # a filesystem without hard links: the file itself moves
        os.replace(lock, target)


def _only_the_lock(root: Path) -> bool:
    """``root`` holds nothing but what taking its writer lock creates: not a cache."""
    return root.is_dir() and set(os.listdir(root)) <= {LOCK_NAME}


def finish_compaction(root: Path) -> None:
    """Complete a compaction stopped between the two renames of the fallback swap (the old cache was
    moved beside ``root`` and ``root`` is absent): the new cache goes in when it was finished, else the
    old one goes back. Then remove what a stopped compaction left. A leftover copy on its own (a
    compaction stopped before its swap) is never a source of rows: it is removed, whatever ``root``
    holds, so a deleted split is not revived from it. The writer lock file in ``root`` (held by the
    caller) moves with the cache that takes ``root``'s place."""
    tmp, old = SplitDir(root).building_dir, _old_dir(root)
    if (old / MANIFEST_NAME).is_file() and (not root.exists() or _only_the_lock(root)):
        source = tmp if (tmp / MANIFEST_NAME).is_file() else old
        if root.exists():
            _carry_lock(root, source)
            for name in os.listdir(root):
                os.unlink(root / name)  # the lock file's other name: the lock itself stays held
            os.rmdir(root)
        os.replace(source, root)
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
