"""Binding a dataset row to its cache row: the row as the cache encoded it, and the check that it
still encodes that way. Training, evaluation and inspection all call these; the diff of two encodings
itself is ``pipeline.encoding.encoding_differences``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.encoding import first_encoding_difference
from pipeline.errors import CacheMismatchError

if TYPE_CHECKING:
    from pipeline.cache.format import CachedSample
    from pipeline.data import Row
    from pipeline.encoding import EncodedRow


def as_cached(row: Row, sample: CachedSample) -> Row:
    """``row`` as the cache encoded it for ``sample``: with the teacher's response when the teacher wrote
    it (that response is then the reference for CE and KD alike)."""
    from pipeline.generation import with_response

    return with_response(row, sample.written_text) if sample.teacher_written else row


def require_cached_encoding(row: Row, enc: EncodedRow, cached: CachedSample) -> None:
    """Raise ``CacheMismatchError`` naming file, sample and first difference unless ``row`` (encoded now
    as ``enc``) is what its cache row was built from. Training and evaluation both call this."""
    bad = first_encoding_difference(enc, cached)
    if bad is not None:
        raise CacheMismatchError(
            f"{row.source}: sample {row.sample_id!r}: encoding differs from the teacher cache "
            f"(first difference: {bad}); rebuild the cache or fix the encoding settings",
            {f"sample.{row.sample_id}": ("encoding now", bad)},
        )
