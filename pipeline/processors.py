"""One processor (tokenizer + image processor) per model directory and process.

The pair check (:mod:`pipeline.compat`) and the row encoder (:mod:`pipeline.encoding`) both need
the student's processor, and the check needs the teacher's: each is read from disk once per process and
shared. Callers check the directory (:mod:`pipeline.trust`) before asking; nothing here mutates a
processor (ms-swift's template reads it, and sets its padding side to the same value every time).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

__all__ = ["load_processor"]


@functools.lru_cache(maxsize=8)
def _load(location: str, model_type: str | None, files: tuple[tuple[str, int, int], ...]) -> Any:
    from swift.model import get_processor

    return get_processor(location, model_type=model_type)


def _files(where: Path) -> tuple[tuple[str, int, int], ...]:
    """The directory's files by name, change time and size: an edited tokenizer is read again."""
    if not where.is_dir():
        return ()
    stats = ((p.name, p.stat()) for p in sorted(where.iterdir()) if p.is_file())
    return tuple((name, st.st_mtime_ns, st.st_size) for name, st in stats)


def load_processor(location: str | Path, model_type: str | None) -> Any:
    """ms-swift's processor for the model at ``location`` (resolved, so two spellings of one directory
    share it), loaded on first use and again only when a file of the directory changed."""
    where = Path(location)
    key = str(where.resolve()) if where.exists() else str(location)
    return _load(key, model_type, _files(where))
