import math

import numpy as np
import pytest

from qbench.errors import QbenchError
from qbench.measure import Protocol, measure_interleaved
from qbench.statistics import LatencyStats, median_ci_indices, speedup


def _binomial_coverage(n: int, lo: int, hi: int) -> float:
    """P(x_(lo) <= median <= x_(hi)) for 0-based order statistics of n samples."""
    return sum(math.comb(n, k) for k in range(lo + 1, hi + 1)) / 2**n


@pytest.mark.parametrize("n", [6, 10, 25, 100, 1000])
def test_median_ci_has_at_least_95_percent_coverage_and_is_tight(n):
    lo, hi = median_ci_indices(n)
    assert _binomial_coverage(n, lo, hi) >= 0.95
    if lo + 1 <= n // 2:  # one step narrower on each side would fall below 95 %
        assert _binomial_coverage(n, lo + 1, hi - 1) < 0.95


def test_median_ci_covers_true_median_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(400):
        samples = rng.lognormal(0.0, 0.5, size=60)  # true median is exactly 1
        stats = LatencyStats.from_samples(samples * 1e6)
        hits += stats.ci_low_ms <= 1.0 <= stats.ci_high_ms
    assert 0.92 <= hits / 400 <= 0.995


def test_stats_summary():
    samples_ns = np.array([1, 2, 3, 4, 100], dtype=np.int64) * 1_000_000
    stats = LatencyStats.from_samples(samples_ns, noisy_cv=0.1)
    assert stats.median_ms == 3.0 and stats.n == 5
    assert stats.mean_ms == pytest.approx(22.0)
    assert stats.noisy


def test_speedup_ratio_and_interval():
    rng = np.random.default_rng(1)
    base = rng.normal(10.0, 0.3, 500)
    cand = rng.normal(5.0, 0.2, 500)
    result = speedup(base, cand)
    assert result.ratio == pytest.approx(2.0, rel=0.02)
    assert result.ci_low < result.ratio < result.ci_high
    assert result.ci_high - result.ci_low < 0.1


def test_interleaving_alternates_and_meets_minimums():
    order = []
    runs = {name: (lambda name=name: order.append(name)) for name in "abc"}
    protocol = Protocol(warmup_count=2, warmup_seconds=0.0, min_count=7, min_seconds=0.0)
    samples = measure_interleaved(runs, protocol)
    assert {len(v) for v in samples.values()} == {7}
    timed = order[6:]  # after 2 warm-up rounds of 3
    assert timed[:3] == ["a", "b", "c"] and timed[3:6] == ["b", "c", "a"] and timed[6:9] == ["c", "a", "b"]


def test_protocol_validation():
    with pytest.raises(QbenchError, match="min_count"):
        Protocol(min_count=0)
    with pytest.raises(QbenchError, match="max_seconds"):
        Protocol(min_seconds=5, max_seconds=1)
