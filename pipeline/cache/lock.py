"""One writer group per cache directory: an advisory ``fcntl.flock`` on ``<dir>/.writer.lock``.

Two cache runs on one directory would race: each one's recovery deletes the temporary shards it
finds, which may be the other's work in progress. The lock makes the second run stop at once with
an error naming the holder (pid, host, launch, start time), before it touches anything.

Under ``torchrun`` the ranks of one launch share the lock: rank 0 takes it (``CacheLock.acquire``)
and writes its holder record into the lock file; after a barrier every other rank checks
(``CacheLock.join``) that the holder is rank 0 *of its own launch*, identified by :func:`launch_id`
(``TORCHELASTIC_RUN_ID`` and the rendezvous address ``MASTER_ADDR:MASTER_PORT``, which two live
launches on one node cannot share). A second launch's ranks therefore refuse too.

The lock is advisory and released by the kernel when the holder exits, however it exits (a
SIGKILL included), so a crashed run never leaves a stale lock; the record left in the file is then
only history. ``flock`` is reliable on local disks; on NFS, Linux maps it to POSIX locks over the
network (NFSv4), so run concurrent writers of one cache on one machine or on an NFSv4 mount.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from pipeline.errors import CacheLockedError

LOCK_NAME = ".writer.lock"  # a dot name: pyarrow.dataset and shard globs pass it by


def launch_id(environ: Any = None) -> str:
    """What the ranks of one launch share and two live launches do not.

    Under torchrun: ``<TORCHELASTIC_RUN_ID>@<MASTER_ADDR>:<MASTER_PORT>``; a single process: its pid and
    host (a process is its own launch).
    """
    env = os.environ if environ is None else environ
    if env.get("MASTER_PORT") or env.get("TORCHELASTIC_RUN_ID"):
        run = env.get("TORCHELASTIC_RUN_ID", "none")
        return f"torchrun:{run}@{env.get('MASTER_ADDR', '?')}:{env.get('MASTER_PORT', '?')}"
    return f"process:{os.getpid()}@{socket.gethostname()}"


def describe(holder: dict[str, Any] | None) -> str:
    """A holder record as a phrase for error messages."""
    if not holder:
        return "another process (it has not recorded itself yet)"
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')} (launch {holder.get('launch')}, since {when})"
    )


class CacheLock:
    """The writer lock of one cache directory (created if missing). Use as a context manager.

    Args:
        root: the cache directory the lock guards.
        launch: this process's launch id (default :func:`launch_id`).
        wait_s: how long :meth:`join` waits for rank 0's record to appear.
    """

    def __init__(self, root: str | Path, launch: str | None = None, wait_s: float = 30.0):
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self.launch = launch or launch_id()
        self.wait_s = wait_s
        self._fd: int | None = None

    def _open(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def holder(self) -> dict[str, Any] | None:
        """The record the current (or last) holder wrote, or None when there is none yet."""
        try:
            record = json.loads(self.path.read_text(encoding="utf-8") or "null")
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _held_by_someone(self) -> bool:
        """True while some process holds the lock (probed with a second, non-blocking attempt)."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing the descriptor drops a lock the probe may have taken
        return False

    def acquire(self) -> CacheLock:
        """Take the lock (rank 0, or a single process) or raise ``CacheLockedError`` naming the holder."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CacheLockedError(
                f"{self.root}: another cache writer is running here: {describe(self.holder())}; wait "
                f"for it to finish or stop it (lock file {self.path})"
            ) from None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "launch": self.launch,
            "started": round(time.time(), 3),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record, sort_keys=True) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def join(self) -> CacheLock:
        """For ranks other than 0: check that rank 0 of this same launch holds the lock."""
        deadline = time.monotonic() + self.wait_s
        while True:
            held, holder = self._held_by_someone(), self.holder()
            if held and holder is not None:
                if holder.get("launch") != self.launch:
                    raise CacheLockedError(
                        f"{self.root}: another cache writer is running here: {describe(holder)}; this "
                        f"process belongs to launch {self.launch}"
                    )
                return self
            if time.monotonic() > deadline:
                raise CacheLockedError(
                    f"{self.root}: rank 0 of launch {self.launch} does not hold the writer lock "
                    f"({self.path}) after {self.wait_s:.0f} s"
                )
            time.sleep(0.05)

    def check_not_foreign(self) -> None:
        """Raise if a process of another launch holds the lock (a writer's guard before recovery)."""
        if not self.path.exists() or self._fd is not None:
            return
        holder = self.holder()
        if self._held_by_someone() and (holder is None or holder.get("launch") != self.launch):
            raise CacheLockedError(
                f"{self.root}: another cache writer is running here: {describe(holder)}; wait for it "
                "to finish or stop it"
            )

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> CacheLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
