"""Typed errors. The CLI prints a ``DistillError`` as one line and exits non-zero;
anything else is a bug and keeps its traceback.

Each member also subclasses the matching built-in so callers that only know the
standard library (``except ValueError``) still catch it.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable


class DistillError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(DistillError, ValueError):
    """A config file is invalid: unknown key, wrong type, missing file, cycle."""


class DataError(DistillError, ValueError):
    """A dataset row is unusable (missing image, empty response, bad text...).

    ``reason``: the skip-reason code a stage counts the row under (``pipeline.data``'s codes; a row
    that fails with no more specific code failed to encode); ``detail``: what is wrong, for the record.
    """

    def __init__(self, message: str, reason: str = "encode_failed", detail: str = ""):
        super().__init__(message)
        self.reason = reason
        self.detail = detail


class CacheFormatError(DistillError, ValueError):
    """A cache on disk is unreadable: corrupt, truncated, foreign version."""


class CacheMismatchError(DistillError, ValueError):
    """A cache is valid but was built for something other than what is about to use it.

    ``differences`` maps each differing field to ``(expected, found)``.
    """

    def __init__(self, message: str, differences: dict[str, tuple[object, object]] | None = None):
        super().__init__(message)
        self.differences = dict(differences or {})


class CompatibilityError(DistillError, ValueError):
    """Teacher and student cannot be distilled together (tokenizer, template, processor)."""


def is_disk_full(exc: BaseException) -> bool:
    """True for a write that failed for lack of space or quota. pyarrow's, torch's and safetensors'
    writers raise errors of their own types with only the strerror text, so the text is checked on
    every type, not the errno alone."""
    full = (errno.ENOSPC, errno.EDQUOT)
    return getattr(exc, "errno", None) in full or any(os.strerror(code) in str(exc) for code in full)


def first_line(exc: BaseException) -> str:
    """An error's message cut to its first line: what a one-line message quotes of a library's error."""
    return (str(exc).splitlines() or [""])[0]


def exit_code(main: Callable[[], object]) -> int:
    """Run ``main`` as a command: 0 when it returns (or its int), 2 after printing a ``DistillError`` as
    one line on stderr. Any other exception is a bug and keeps its traceback. Every ``distill`` command,
    and so every DVC stage, goes through here: ``dvc repro`` shows the same one-line errors."""
    try:
        result = main()
    except DistillError as exc:
        sys.stderr.write(f"error: {type(exc).__name__}: {exc}\n")
        return 2
    except OSError as exc:
        # A full disk in a write that no more specific handler covered (a library's own save): still
        # one line; every write of this project is atomic, so the rerun starts from a whole state.
        if not is_disk_full(exc):
            raise
        sys.stderr.write(
            f"error: DiskFullError: no space left on device ({first_line(exc)}); free space and run the same "
            "command again\n"
        )
        return 2
    return result if isinstance(result, int) else 0


class CacheLockedError(DistillError, RuntimeError):
    """Another writer holds a cache directory's lock; the message names its pid, host and launch."""


class DiskFullError(DistillError, OSError):
    """A write failed for lack of space (or quota); the message names the directory, what is already
    written there, and that rerunning the same command resumes."""
