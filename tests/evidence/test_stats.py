"""Paired seed differences and t-intervals, against values computed by hand."""

from __future__ import annotations

import math

import pytest

from pipeline.evidence.stats import best_setting, mean_interval, paired_difference

# Student t quantiles t_{0.975, df} from printed tables, so the test does not trust scipy to check scipy.
T975 = {1: 12.7062, 2: 4.30265, 4: 2.77645}


def test_interval_of_one_two_three() -> None:
    # mean 2, sd 1, se 1/sqrt(3); half-width 4.30265 / sqrt(3) = 2.48414
    iv = mean_interval([1.0, 2.0, 3.0])
    assert (iv.n, iv.mean, iv.sd) == (3, 2.0, 1.0)
    assert iv.low == pytest.approx(2 - 2.48414, abs=1e-4)
    assert iv.high == pytest.approx(2 + 2.48414, abs=1e-4)
    assert not iv.excludes_zero


def test_paired_difference_five_seeds() -> None:
    a = {0: 0.80, 1: 0.75, 2: 0.90, 3: 0.70, 4: 0.85}
    b = {0: 0.70, 1: 0.55, 2: 0.90, 3: 0.40, 4: 0.70}
    # differences 0.10, 0.20, 0.00, 0.30, 0.15: mean 0.15; deviations -.05 .05 -.15 .15 0 -> sum of
    # squares 0.05, sd sqrt(0.05 / 4) = 0.111803; half-width 2.77645 * 0.111803 / sqrt(5) = 0.138822
    d = paired_difference(a, b)
    assert d.mean == pytest.approx(0.15)
    assert d.sd == pytest.approx(math.sqrt(0.0125))
    assert d.low == pytest.approx(0.15 - 0.138822, abs=1e-5)
    assert d.high == pytest.approx(0.15 + 0.138822, abs=1e-5)
    assert d.excludes_zero
    # seed 2 ties: not a difference of one sign on every seed
    assert not d.same_sign_on_every_seed
    assert [s for s, _ in d.differences] == [0, 1, 2, 3, 4]


def test_pairing_cancels_the_seed_spread() -> None:
    # b is a plus a constant: unpaired the spread is large, paired it is zero and the interval a point.
    a = {0: 0.3, 1: 0.7, 2: 0.5}
    b = {s: v - 0.05 for s, v in a.items()}
    d = paired_difference(a, b)
    assert d.mean == pytest.approx(0.05)
    assert d.high - d.low == pytest.approx(0.0, abs=1e-9)
    assert d.same_sign_on_every_seed and d.excludes_zero


def test_two_seeds_use_one_degree_of_freedom() -> None:
    iv = mean_interval([0.0, 1.0])
    half = T975[1] * math.sqrt(0.5) / math.sqrt(2)  # sd sqrt(.5), n 2
    assert iv.high - iv.mean == pytest.approx(half, rel=1e-4)


def test_one_seed_is_unbounded() -> None:
    iv = mean_interval([0.4])
    assert iv.low == -math.inf and iv.high == math.inf and not iv.excludes_zero


def test_unpaired_seeds_and_nan_are_errors() -> None:
    with pytest.raises(ValueError, match="only in a \\[2\\]"):
        paired_difference({0: 1.0, 1: 1.0, 2: 1.0}, {0: 1.0, 1: 1.0})
    with pytest.raises(ValueError, match="NaN"):
        mean_interval([0.1, float("nan")])
    with pytest.raises(ValueError):
        mean_interval([])


def test_best_setting_by_mean_with_ties_to_the_smaller() -> None:
    # exactly representable halves, so the tie is a tie in floating point too
    grid = {3e-3: {0: 0.5, 1: 0.5}, 1e-3: {0: 0.25, 1: 0.75}, 1e-2: {0: 0.125, 1: 0.25}}
    assert best_setting(grid) == (1e-3, 0.5)  # 1e-3 and 3e-3 tie at 0.5: the smaller rate
    assert best_setting(grid, higher_is_better=False) == (1e-2, 0.1875)
    assert best_setting({**grid, 3e-3: {0: 1.0, 1: 0.5}})[0] == 3e-3
    with pytest.raises(ValueError, match="same seeds"):
        best_setting({1e-3: {0: 0.5}, 3e-3: {1: 0.5}})


def test_format() -> None:
    assert paired_difference({0: 1.0, 1: 2.0}, {0: 0.0, 1: 0.0}).format(2).startswith("+1.50 [")
