"""Paired comparisons over seeds: the mean difference of two methods with a t-interval.

Two runs with the same seed share their fresh layers and data order, so most of the seed-to-seed
spread (on the demo, 0.43-0.71 caption F1 for one setting) cancels in their difference. Comparing
the methods' means ignores that pairing and needs far more seeds for the same interval width;
pairing by seed is why every headline comparison here is ``paired_difference``.

The interval is Student's t on the per-seed differences, ``mean ± t_{(1+c)/2, n-1} * sd / sqrt(n)``
(sd with n-1): exact for normal differences, and at 5 seeds it is wide, which is the honest answer.
Pure Python plus scipy's t quantile; no torch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as _scipy_stats


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with its two-sided ``confidence`` t-interval ``[low, high]``.

    ``sd`` is the sample standard deviation (n-1); with one value it is 0 and the interval is
    unbounded (-inf, inf): one seed says nothing about the spread.
    """

    n: int
    mean: float
    sd: float
    low: float
    high: float
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0."""
        return self.low > 0 or self.high < 0

    def format(self, digits: int = 3) -> str:
        """``+0.123 [-0.010, +0.256] (n=5)``."""
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}] (n={self.n})"


@dataclass(frozen=True)
class PairedDifference(Interval):
    """``a - b`` per seed, summarised as an :class:`Interval`; ``differences`` maps seed -> a - b."""

    differences: tuple[tuple[int, float], ...] = ()

    @property
    def same_sign_on_every_seed(self) -> bool:
        """True when every seed's difference is non-zero and of one sign (the 'on every seed' target)."""
        values = [d for _, d in self.differences]
        return bool(values) and (all(d > 0 for d in values) or all(d < 0 for d in values))


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and t-interval of ``values`` (at least one; NaN values are refused, not skipped)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_interval needs at least one value")
    if any(math.isnan(x) for x in xs):
        raise ValueError(f"NaN among the values {xs}: a failed run must be rerun, not averaged over")
    n = len(xs)
    mean = statistics.fmean(xs)
    if n == 1:
        return Interval(1, mean, 0.0, -math.inf, math.inf, confidence)
    sd = statistics.stdev(xs)
    half = float(_scipy_stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(n, mean, sd, mean - half, mean + half, confidence)


def paired_difference(
    a: Mapping[int, float], b: Mapping[int, float], confidence: float = 0.95
) -> PairedDifference:
    """``a[seed] - b[seed]`` over the seeds, with the t-interval of the mean difference.

    ``a`` and ``b`` map seed -> metric. They must hold the same seeds: a seed present on one side only
    would silently unpair the comparison, so it is an error naming the seeds.
    """
    if set(a) != set(b):
        raise ValueError(
            f"paired_difference needs the same seeds on both sides: only in a {sorted(set(a) - set(b))}, "
            f"only in b {sorted(set(b) - set(a))}"
        )
    seeds = sorted(a)
    diffs = [float(a[s]) - float(b[s]) for s in seeds]
    iv = mean_interval(diffs, confidence)
    return PairedDifference(
        iv.n, iv.mean, iv.sd, iv.low, iv.high, iv.confidence, tuple(zip(seeds, diffs, strict=True))
    )


def best_setting(
    results: Mapping[float, Mapping[int, float]], *, higher_is_better: bool = True
) -> tuple[float, float]:
    """``(setting, mean)`` of the setting (e.g. a learning rate) with the best mean over its seeds.

    ``results`` maps setting -> {seed: metric}; every setting must hold the same seeds, so the
    choice is not made on different draws. Ties go to the smaller setting (the cheaper, gentler one).
    """
    if not results:
        raise ValueError("best_setting needs at least one setting")
    seed_sets = {frozenset(v) for v in results.values()}
    if len(seed_sets) != 1:
        raise ValueError(f"every setting must hold the same seeds, got {sorted(map(sorted, seed_sets))}")
    means = {k: statistics.fmean(float(x) for x in v.values()) for k, v in results.items()}
    sign = 1.0 if higher_is_better else -1.0
    best = min(sorted(means), key=lambda k: -sign * means[k])
    return best, means[best]
