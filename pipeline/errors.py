"""Typed errors. The CLI prints a ``DistillError`` as one line and exits non-zero;
anything else is a bug and keeps its traceback.

Each member also subclasses the matching built-in so callers that only know the
standard library (``except ValueError``) still catch it.
"""

from __future__ import annotations


class DistillError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(DistillError, ValueError):
    """A config file is invalid: unknown key, wrong type, missing file, cycle."""


class DataError(DistillError, ValueError):
    """A dataset row is unusable (missing image, empty response, bad text...)."""


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
