"""SIGTERM during ``distill cache``: a clean stop that a rerun of the same command resumes from.

A cluster preempting a job sends SIGTERM, then SIGKILL after a grace period. While the teacher loads
(nothing written yet) the signal stops the run at once. While rows are being cached it only sets a
flag, checked after every batch (:func:`check`): stopping there leaves the writer consistent, and
its ``__exit__`` seals the rows it buffered into a complete shard, records it, and closes the skip
logs. The run then ends with one :class:`CacheInterrupted` line saying what is kept, exit code 2.
A SIGKILL (or a second SIGTERM past the grace period) is survived too, by the writer's durability
model; the clean stop only keeps the open shard's rows.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import DistillError


class CacheInterrupted(DistillError):
    """``distill cache`` stopped by SIGTERM; the message says what is kept and that the same command
    resumes from there."""


class _Sigterm(Exception):
    """Raised inside the stage where stopping is safe; turned into :class:`CacheInterrupted`."""


class _State:
    def __init__(self) -> None:
        self.installed = False
        self.received = False
        self.deferred = 0  # > 0 inside a writer: stop at the next batch boundary, not mid-write


_STATE = _State()


def _handler(signum: int, frame: Any) -> None:
    _STATE.received = True
    if not _STATE.deferred:
        raise _Sigterm()


@contextmanager
def sigterm_stops_cleanly() -> Iterator[None]:
    """Install the SIGTERM handler for the block (main thread only; elsewhere a no-op); a SIGTERM
    before any split's writer opened ends the block as ``CacheInterrupted`` (nothing written)."""
    if threading.current_thread() is not threading.main_thread() or _STATE.installed:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _handler)
    _STATE.installed, _STATE.received = True, False
    try:
        yield
    except _Sigterm:
        raise CacheInterrupted(
            "distill cache stopped by SIGTERM between splits or before caching began: every split "
            "finished before it is kept; run the same command again: it resumes from there"
        ) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        _STATE.installed = False


@contextmanager
def sigterm_keeps(root: Path) -> Iterator[None]:
    """The block writes ``root``: a SIGTERM waits for the next :func:`check`, and ends the block as
    one ``CacheInterrupted`` line naming ``root`` and what it holds (the writer has sealed it)."""
    from pipeline.cache.diskfull import written_so_far

    _STATE.deferred += 1
    try:
        check()  # a SIGTERM that came just before
        yield
    except _Sigterm:
        raise CacheInterrupted(
            f"{root}: distill cache stopped by SIGTERM; {written_so_far(root)} (the open shard sealed); "
            "run the same command again: it resumes from there"
        ) from None
    finally:
        _STATE.deferred -= 1


@contextmanager
def sigterm_waits() -> Iterator[None]:
    """A SIGTERM inside the block (a compaction) stops the run only once the block is done."""
    _STATE.deferred += 1
    try:
        yield
    finally:
        _STATE.deferred -= 1
    check()


def check() -> None:
    """Stop here if a SIGTERM came (called between batches, where the writer is consistent)."""
    if _STATE.received and _STATE.installed:
        raise _Sigterm()
