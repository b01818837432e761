"""A row bound to its cache row: the teacher's response in place, and the one mismatch error."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipeline.binding import as_cached, require_cached_encoding
from pipeline.cache.format import CachedSample
from pipeline.data import Row
from pipeline.encoding import EncodedRow, encoding_hash
from pipeline.errors import CacheMismatchError

ROW = Row("s1", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a cat"}], source="f:3")


def _enc(ids: list[int], labels: list[int]) -> EncodedRow:
    return EncodedRow("s1", {"input_ids": ids, "labels": labels}, encoding_hash(ids, labels))


def _cached(enc: EncodedRow, **kw: object) -> CachedSample:
    pos = enc.target_positions()
    n = len(pos)
    sample = CachedSample(
        "s1", enc.encoding_hash, len(enc.inputs["input_ids"]), pos,
        np.asarray(enc.inputs["labels"], np.int64)[pos], np.zeros((n, 1), np.int64),
        np.zeros((n, 1), np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32),
    )  # fmt: skip
    return replace(sample, **kw)  # type: ignore[arg-type]


def test_written_rows_read_the_teachers_response() -> None:
    enc = _enc([1, 2, 3], [-100, 2, 3])
    assert as_cached(ROW, _cached(enc)) is ROW
    written = as_cached(ROW, _cached(enc, teacher_written=True, written_text="a dog"))
    assert written.messages[-1] == {"role": "assistant", "content": "a dog"} and written.sample_id == "s1"


def test_mismatch_names_file_sample_and_first_difference() -> None:
    enc = _enc([1, 2, 3], [-100, 2, 3])
    require_cached_encoding(ROW, enc, _cached(enc))
    longer = _enc([1, 2, 3, 4], [-100, 2, 3, 4])
    with pytest.raises(CacheMismatchError, match=r"f:3: sample 's1'.*input_ids length \(4 now, 3 in cache\)"):
        require_cached_encoding(ROW, longer, _cached(enc))
