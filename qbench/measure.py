"""Latency measurement: warm-up, sampling, order-statistic confidence intervals, interleaving.

Absolute times drift 5-25 % between processes on shared machines, while ratios of candidates
alternated inside one process hold to a few percent; so speedups always come from
``measure_interleaved`` and are reported as ratios of medians with a bootstrap interval.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from qbench.errors import QbenchError

RunFn = Callable[[], object]


@dataclass(frozen=True)
class Protocol:
    """How long to warm up and sample. Both the count and the duration minimum must be met."""

    warmup_count: int = 10
    warmup_seconds: float = 0.5
    min_count: int = 50
    min_seconds: float = 2.0
    max_seconds: float = 60.0
    noisy_cv: float = 0.10  # a run whose coefficient of variation exceeds this is flagged noisy

    def __post_init__(self) -> None:
        if self.warmup_count < 0 or self.min_count < 1:
            raise QbenchError(f"protocol needs warmup_count >= 0 and min_count >= 1, but got {self}")
        if not (0 <= self.warmup_seconds and 0 <= self.min_seconds <= self.max_seconds):
            raise QbenchError(f"protocol needs 0 <= warmup_seconds and 0 <= min_seconds <= max_seconds, but got {self}")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def key(self) -> str:
        """Rows measured under different protocols are never ranked together."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.as_dict().items()))


QUICK_PROTOCOL = Protocol(warmup_count=3, warmup_seconds=0.1, min_count=20, min_seconds=0.5, max_seconds=10.0)


def median_ci_indices(n: int, confidence: float = 0.95) -> tuple[int, int]:
    """0-based order-statistic indices (lo, hi) with P(x_lo <= median <= x_hi) >= confidence.

    Distribution-free: the count of samples below the true median is Binomial(n, 1/2).
    """
    if n < 1:
        raise ValueError("need at least one sample")
    alpha = 1.0 - confidence
    # Largest k with P(B <= k-1) <= alpha/2, i.e. the lower bound is the k-th order statistic.
    cdf = 0.0
    k = 0
    log_half_n = n * math.log(0.5)
    while k < n:
        term = math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + log_half_n)
        if cdf + term > alpha / 2:
            break
        cdf += term
        k += 1
    lo = max(0, k - 1)
    return lo, n - 1 - lo


@dataclass(frozen=True)
class LatencyStats:
    """Summary of raw latency samples, in milliseconds."""

    n: int
    median_ms: float
    ci_low_ms: float
    ci_high_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    cv: float
    noisy: bool

    @classmethod
    def from_samples(cls, samples_ns: np.ndarray, noisy_cv: float = Protocol.noisy_cv) -> LatencyStats:
        ms = np.sort(np.asarray(samples_ns, dtype=np.float64)) / 1e6
        if ms.size == 0:
            raise ValueError("no latency samples")
        lo, hi = median_ci_indices(ms.size)
        mean = float(ms.mean())
        std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
        cv = std / mean if mean > 0 else 0.0
        return cls(
            n=int(ms.size),
            median_ms=float(np.median(ms)),
            ci_low_ms=float(ms[lo]),
            ci_high_ms=float(ms[hi]),
            p90_ms=float(np.percentile(ms, 90)),
            p99_ms=float(np.percentile(ms, 99)),
            mean_ms=mean,
            std_ms=std,
            cv=cv,
            noisy=cv > noisy_cv,
        )


@dataclass(frozen=True)
class Speedup:
    """``baseline median / candidate median`` (above 1 means the candidate is faster)."""

    ratio: float
    ci_low: float
    ci_high: float


def speedup(baseline_ns: np.ndarray, candidate_ns: np.ndarray, rounds: int = 2000, seed: int = 0) -> Speedup:
    """Ratio of medians with a 95 % bootstrap interval that resamples interleaved rounds as pairs,
    so drift that hit both candidates in the same round cancels."""
    base = np.asarray(baseline_ns, dtype=np.float64)
    cand = np.asarray(candidate_ns, dtype=np.float64)
    n = min(base.size, cand.size)
    base, cand = base[:n], cand[:n]
    ratio = float(np.median(base) / np.median(cand))
    idx = np.random.default_rng(seed).integers(0, n, size=(rounds, n))
    boot = np.median(base[idx], axis=1) / np.median(cand[idx], axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return Speedup(ratio, float(low), float(high))


def measure(run: RunFn, protocol: Protocol, on_sample: Callable[[], None] | None = None) -> np.ndarray:
    """Warm up, then time ``run`` until the protocol's count and duration minimums are both met."""
    return measure_interleaved({"_": run}, protocol, on_sample)["_"]


def measure_interleaved(
    runs: Mapping[str, RunFn], protocol: Protocol, on_round: Callable[[], None] | None = None
) -> dict[str, np.ndarray]:
    """Time several candidates in rounds (A B C, B C A, C A B, ...) in this process.

    Each round runs every candidate once; the start rotates so no candidate always follows the
    same neighbour. Sampling stops once every candidate has ``min_count`` samples and
    ``min_seconds`` of its own run time, or when ``max_seconds`` of wall time have passed.
    Returns raw samples in nanoseconds, one entry per round, aligned across candidates.
    """
    names = list(runs)
    if not names:
        raise ValueError("nothing to measure")
    clock = time.perf_counter_ns
    start = clock()
    warm = 0
    while warm < protocol.warmup_count or clock() - start < protocol.warmup_seconds * 1e9:
        for name in names:
            runs[name]()
        warm += 1
    samples: dict[str, list[int]] = {name: [] for name in names}
    spent = dict.fromkeys(names, 0)
    need_ns = protocol.min_seconds * 1e9
    deadline = clock() + protocol.max_seconds * 1e9
    rounds = 0
    while True:
        offset = rounds % len(names)
        for name in names[offset:] + names[:offset]:
            fn = runs[name]
            t0 = clock()
            fn()
            elapsed = clock() - t0
            samples[name].append(elapsed)
            spent[name] += elapsed
        rounds += 1
        if on_round is not None:
            on_round()
        enough = rounds >= protocol.min_count and min(spent.values()) >= need_ns
        if enough or clock() >= deadline:
            break
    return {name: np.asarray(values, dtype=np.int64) for name, values in samples.items()}
