"""Layout, quantiser and fingerprint comparison: the pure parts of the format."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cache.format import (
    FORMAT_VERSION,
    LOGPROB_ENCODINGS,
    MAX_TOP_K,
    MAX_TOP_K_FP32,
    CachedSample,
    Layout,
)
from pipeline.cache.manifest import compare_fingerprints, flatten, mismatch_error
from pipeline.errors import CacheFormatError, CacheMismatchError
from tests.cache.helpers import assert_within_cell


@pytest.mark.parametrize("k", [1, 2, 16, 32, 64, 128, 256, MAX_TOP_K])
def test_quantiser_is_monotone_and_within_one_cell(k: int) -> None:
    lay = Layout.create(k, 151_936)
    q = lay.quantizer
    table = q.table()
    assert len(table) == q.max_level + 1 <= 256 and table[0] == -np.inf and table[-1] <= 0
    assert np.all(np.diff(table[1:]) > 0)
    lp = np.sort(
        np.concatenate([np.linspace(-120.0, 0.0, 100_001), np.log(np.linspace(0.0, 1.0, 200_001)[1:])])
    )
    levels = q.levels(lp)
    assert levels.min() == 1 and levels.max() == q.max_level
    assert np.all(np.diff(levels.astype(int)) >= 0)  # monotone
    assert set(np.unique(levels)) == set(range(1, q.max_level + 1))  # every level reachable
    assert_within_cell(lp, table[levels], lay)
    assert q.levels(np.array([-np.inf, 0.0, 1e-6])).tolist() == [0, q.max_level, q.max_level]
    # a level decodes inside its own cell: re-quantising a decoded value is the identity
    np.testing.assert_array_equal(q.levels(table[1:]), np.arange(1, q.max_level + 1))
    lower, upper = q.cell_bounds()
    p = np.exp(lp)
    assert (lower[levels] <= p * (1 + 1e-12)).all() and (p <= upper[levels] * (1 + 1e-12)).all()
    assert (lower <= np.exp(table.astype(np.float64)) * (1 + 1e-6)).all()
    assert (np.exp(table.astype(np.float64)) <= upper * (1 + 1e-6)).all()
    np.testing.assert_allclose(upper[1:-1], lower[2:])  # cells tile [0, 1]
    assert upper[-1] == 1.0


def test_layouts_and_their_metadata_round_trip() -> None:
    for enc in LOGPROB_ENCODINGS:
        for k, vocab in ((1, 2), (64, 151_936), (300, 2**20)):
            lay = Layout.create(k, vocab, enc)
            assert Layout.from_schema(lay.schema({"a": 1}), "x") == lay
            assert Layout.from_dict(lay.to_dict()) == lay
    assert Layout.create(300, 1000).target_index_bytes == 2
    with pytest.raises(ValueError, match="logprob_encoding"):
        Layout.create(8, 100, "bf16")
    with pytest.raises(ValueError, match="top_k"):
        Layout.create(MAX_TOP_K + 1, 100_000)
    assert Layout.create(MAX_TOP_K_FP32, 100_000, "fp32").target_index_bytes == 2
    with pytest.raises(ValueError, match="vocab_size"):
        Layout.create(64, 32)


def test_foreign_or_altered_layout_is_a_format_error() -> None:
    d = Layout.create(8, 1000).to_dict()
    with pytest.raises(CacheFormatError, match=f"version 99, this reader reads version {FORMAT_VERSION}"):
        Layout.from_dict({**d, "format_version": 99}, "somewhere")
    with pytest.raises(CacheFormatError, match="not the one this reader packs"):
        Layout.from_dict({**d, "id_groups": [0, 8]})
    with pytest.raises(CacheFormatError, match="unreadable layout"):
        Layout.from_dict({**d, "bogus": 1})


def test_compare_fingerprints_lists_dotted_fields() -> None:
    expected = {"teacher": {"name": "a", "hash": "1"}, "k": 64, "only_expected": 1}
    found = {"teacher": {"name": "a", "hash": "2"}, "k": 32, "only_found": [1, 2]}
    diffs = compare_fingerprints(expected, found)
    assert diffs == {
        "k": (64, 32),
        "only_expected": (1, "<missing>"),
        "only_found": ("<missing>", [1, 2]),
        "teacher.hash": ("1", "2"),
    }
    assert compare_fingerprints(expected, expected) == {}
    assert flatten({"a": {"b": {"c": 1}}, "d": {}}) == {"a.b.c": 1, "d": {}}
    err = mismatch_error("cache X", diffs)
    assert isinstance(err, CacheMismatchError) and isinstance(err, ValueError)
    assert "teacher.hash: expected '1', cache has '2'" in str(err) and err.differences == diffs


def test_sample_validation_names_the_field() -> None:
    n, k = 3, 4
    good = dict(
        sample_id="s",
        encoding_hash="00",
        num_tokens=10,
        positions=np.array([1, 2, 5]),
        target_ids=np.zeros(n, np.int64),
        topk_ids=np.tile(np.arange(k), (n, 1)),
        topk_logprobs=np.full((n, k), -1.0, np.float32),
        tail_logprobs=np.full(n, -1.0, np.float32),
        target_logprobs=np.full(n, -1.0, np.float32),
    )
    CachedSample(**good).validate(k, 10)
    bad_cases = {
        "topk_ids": dict(topk_ids=np.zeros((n, k + 1), np.int64)),
        "positions must be >= 1": dict(positions=np.array([0, 1, 2])),
        "num_tokens": dict(num_tokens=5),
        "outside": dict(target_ids=np.full(n, 10)),
        "NaN": dict(tail_logprobs=np.full(n, np.nan, np.float32)),
        "dtype": dict(topk_logprobs=np.zeros((n, k), np.int32)),
    }
    for match, change in bad_cases.items():
        with pytest.raises(ValueError, match=match):
            CachedSample(**{**good, **change}).validate(k, 10)
