"""The cache's entropy profile: mean, share above the threshold and per-class blocks, by hand."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from pipeline.cache.format import CachedSample
from pipeline.inspection.entropy import entropy_profile, format_profile

NEG = -np.inf


def _sample(
    sid: str, targets: list[int], ids: list[list[int]], probs: list[list[float]], tails: list[float]
) -> CachedSample:
    n = len(targets)
    lps = np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32)
    tail = np.asarray([math.log(t) if t > 0 else NEG for t in tails], dtype=np.float32)
    t = np.asarray(targets, dtype=np.int64)
    tlp = np.zeros(n, dtype=np.float32)
    return CachedSample(sid, "h", n + 1, np.arange(1, n + 1), t, np.asarray(ids, np.int64), lps, tail, tlp)


@dataclass
class FakeReader:
    """The reader surface iter_samples needs (sample_ids + get), no shards."""

    samples: list[CachedSample]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def sample_ids(self) -> list[str]:
        return [s.sample_id for s in self.samples]

    def get(self, sid: str) -> CachedSample:
        return next(s for s in self.samples if s.sample_id == sid)


READER = FakeReader(
    [
        # target 5: a 50/50 teacher (log 2 = 0.693 nats); target 7: certain (0 nats)
        _sample("a", [5, 7], [[5, 6], [7, 6]], [[0.5, 0.5], [1.0, 1e-30]], [0.0, 0.0]),
        # target 6: 0.8 / 0.1 / tail 0.1 -> 0.639 nats
        _sample("b", [6], [[6, 5]], [[0.8, 0.1]], [0.1]),
    ]
)
H_B = -(0.8 * math.log(0.8) + 2 * 0.1 * math.log(0.1))


def test_overall_numbers() -> None:
    prof = entropy_profile(READER)
    assert (prof["rows"], prof["tokens"]) == (2, 3)
    assert prof["mean"] == pytest.approx((math.log(2) + 0 + H_B) / 3, abs=1e-5)
    assert prof["share_above"] == pytest.approx(2 / 3)
    assert entropy_profile(READER, threshold=0.65)["share_above"] == pytest.approx(1 / 3)


def test_classes_and_row_filter() -> None:
    prof = entropy_profile(READER, classify=lambda t: "object" if t in (5, 6) else "phrasing")
    obj, phr = prof["by_class"]["object"], prof["by_class"]["phrasing"]
    assert obj["tokens"] == 2 and obj["share_of_tokens"] == pytest.approx(2 / 3)
    assert obj["mean"] == pytest.approx((math.log(2) + H_B) / 2, abs=1e-5)
    assert (phr["tokens"], phr["share_above"]) == (1, 0.0)
    only_b = entropy_profile(READER, sample_ids={"b"})
    assert (only_b["rows"], only_b["tokens"]) == (1, 1)
    assert only_b["tail_p90"] == pytest.approx(0.1, rel=1e-5)
    assert "object" in format_profile(prof) and "66.7% above 0.5" in format_profile(prof)


def test_empty_cache() -> None:
    prof = entropy_profile(FakeReader([]), classify=str)
    assert prof["tokens"] == 0 and math.isnan(prof["mean"]) and prof["by_class"] == {}
