"""Latency measurement: warm-up, sampling and interleaving (the statistics are in ``statistics``).

Absolute times drift 5-25 % between processes on shared machines, while ratios of candidates
alternated inside one process hold to a few percent; so speedups always come from
``measure_interleaved`` and are reported as ratios of medians with a bootstrap interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from qbench.errors import QbenchError
from qbench.statistics import NOISY_CV

RunFn = Callable[[], object]


@dataclass(frozen=True)
class Protocol:
    """How long to warm up and sample. Both the count and the duration minimum must be met."""

    warmup_count: int = 10
    warmup_seconds: float = 0.5
    min_count: int = 50
    min_seconds: float = 2.0
    max_seconds: float = 60.0
    noisy_cv: float = NOISY_CV

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


def measure(run: RunFn, protocol: Protocol, on_sample: Callable[[], None] | None = None) -> np.ndarray:
    """Warm up, then time ``run`` until the protocol's count and duration minimums are both met."""
    return measure_interleaved({"_": run}, protocol, on_sample)["_"]


def measure_interleaved(
    runs: Mapping[str, RunFn], protocol: Protocol, on_round: Callable[[], None] | None = None
) -> dict[str, np.ndarray]:
    """Time several candidates in rounds (A B C, B C A, C A B, ...) in this process.

    Each round runs every candidate once; the start rotates, so no candidate always opens a
    round (the cyclic order, and so each candidate's predecessor, stays the same). Sampling
    stops once every candidate has ``min_count`` samples and ``min_seconds`` of its own run
    time, or when ``max_seconds`` of wall time have passed.
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
