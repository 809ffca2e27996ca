import math
from dataclasses import replace

import numpy as np
import pytest

from qbench.errors import QbenchError
from qbench.measure import ROUND_ROBIN, TimingProtocol, measure_interleaved
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


class FakeMachine:
    """Runs that advance a virtual clock: ``cost`` ns each, plus ``cold`` ns for the first run
    after another candidate's (its weights evicted from the cache)."""

    def __init__(self, cost: dict[str, int], cold: dict[str, int]) -> None:
        self.now, self.cost, self.cold, self.last, self.order = 0, cost, cold, None, []

    def clock(self) -> int:
        return self.now

    def runs(self):
        def run(name):
            self.now += self.cost[name] + (self.cold[name] if self.last not in (None, name) else 0)
            self.last = name
            self.order.append(name)

        return {name: (lambda name=name: run(name)) for name in self.cost}


BLOCKS_OF_3 = TimingProtocol(
    warmup_count=2,
    warmup_seconds=0.0,
    min_count=7,
    min_seconds=0.0,
    block_runs=3,
    block_seconds=0.0,
    block_warmup=0.5,
    block_warmup_seconds=0.0,
    min_blocks=2,
)


def test_blocks_alternate_with_a_rotating_start_drop_their_warmup_and_stay_aligned():
    fake = FakeMachine(dict(a=10, b=10, c=10), dict(a=0, b=0, c=0))
    samples = measure_interleaved(fake.runs(), BLOCKS_OF_3, clock=fake.clock)
    # 3 kept and 2 dropped per block; 7 kept samples need 3 block rounds
    assert samples.block == 3 and {len(v) for v in samples.values()} == {9}
    timed = "".join(fake.order[3 * 2 :])  # after warm-up: 2 runs of each
    assert timed == "aaaaabbbbbccccc" + "bbbbbcccccaaaaa" + "cccccaaaaabbbbb"


def test_round_robin_runs_one_of_each_at_a_time():
    fake = FakeMachine(dict(a=10, b=10), dict(a=0, b=0))
    protocol = replace(BLOCKS_OF_3, **ROUND_ROBIN)
    samples = measure_interleaved(fake.runs(), protocol, clock=fake.clock)
    assert samples.block == 1 and {len(v) for v in samples.values()} == {7}
    assert "".join(fake.order[4:10]) == "abbaab"


def test_blocks_size_themselves_from_the_fastest_candidate():
    fake = FakeMachine(dict(a=1_000_000, b=4_000_000), dict(a=0, b=0))  # 1 ms and 4 ms
    protocol = TimingProtocol(warmup_count=2, warmup_seconds=0.0, min_count=1, min_seconds=0.0, min_blocks=2)
    samples = measure_interleaved(fake.runs(), protocol, clock=fake.clock)
    per_block, kept = protocol.block_shape(1_000_000)
    assert samples.block == kept == 50 and per_block == 50 + 20  # 50 ms kept, 20 ms (and 20 %) dropped


def test_blocks_remove_the_cache_cold_bias_that_round_robin_has():
    """Two equally fast models, one with more weights to fetch after the other ran: one run at a
    time makes the small one look faster; in blocks they tie, as each alone in its process."""
    fake = FakeMachine(dict(big=5_000_000, small=5_000_000), dict(big=900_000, small=200_000))
    blocks = TimingProtocol(warmup_count=3, warmup_seconds=0.0, min_count=20, min_seconds=0.0)
    samples = measure_interleaved(fake.runs(), blocks, clock=fake.clock)
    assert speedup(samples["big"], samples["small"], samples.block).ratio == pytest.approx(1.0)
    fake = FakeMachine(dict(big=5_000_000, small=5_000_000), dict(big=900_000, small=200_000))
    samples = measure_interleaved(fake.runs(), replace(blocks, **ROUND_ROBIN), clock=fake.clock)
    assert speedup(samples["big"], samples["small"], samples.block).ratio > 1.05  # "small" looks faster


def test_block_speedup_is_the_median_of_block_ratios_with_an_order_statistic_interval():
    rng = np.random.default_rng(2)
    drift = np.repeat(rng.uniform(1.0, 1.5, 12), 10)  # each block round on a differently loaded machine
    base = 10.0 * drift * rng.normal(1, 0.01, 120)
    cand = 5.0 * drift * rng.normal(1, 0.01, 120)
    blocked = speedup(base, cand, block=10)
    assert blocked.ratio == pytest.approx(2.0, rel=0.01)
    assert blocked.ci_low < 2.0 < blocked.ci_high and blocked.ci_high - blocked.ci_low < 0.05


def test_protocol_validation():
    with pytest.raises(QbenchError, match="min_count"):
        TimingProtocol(min_count=0)
    with pytest.raises(QbenchError, match="max_seconds"):
        TimingProtocol(min_seconds=5, max_seconds=1)
