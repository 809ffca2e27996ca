"""What the tuner minimizes, as data: each objective names the figure it reads from a plan's
samples and the one paired rule by which two plans are compared on it.

- ``p50``: the median latency; two plans compare by the median of their per-block-round ratios
  (``statistics.speedup``), as every bench row does.
- ``p90``, ``p99``: a tail; a tail has no per-round ratio, so two plans compare by the ratio of
  their percentiles over the same rounds, with an interval that resamples whole rounds
  (``statistics.percentile_ratio``). A tail needs more samples than a median to mean anything:
  ``min_samples`` raises the timing protocol's count.
- ``throughput``: samples per second at the tune's batch (``--batch``): the median's rule on
  calls of BATCH samples, shown as samples/s.
- ``server-qps:BOUND_MS``: the highest rate of Poisson arrivals one plan serves, one request at a
  time, with p99 from arrival to answer within the bound: ``statistics.served_rate`` replays an
  M/G/1 queue on each plan's call times of the same rounds (same arrivals, same draws), and two
  plans compare by the ratio of their rates, bootstrapped over rounds. ``bench --scenario
  server:max:BOUND_MS`` measures the same rate on real arrivals, each plan alone.
- ``mb``: the built model's size (weights and graph, in MB of 1e6 bytes), for models that must
  fit a memory: exact, so nothing is timed to decide it; the smallest plan within the accuracy
  budget wins, the lower drop among plans of one size. Its rows are still timed for latency.

An objective is added here and nowhere else (docs/contributing.md): the study, the final
selection, the race and the rows read it through ``Objective``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qbench.errors import QbenchError

if TYPE_CHECKING:  # choosing an objective (every command's arguments) imports neither
    import numpy as np

    from qbench.statistics import Speedup


@dataclass(frozen=True)
class Objective:
    name: str
    percentile: float  # of the per-call latency
    min_samples: int  # kept samples per plan for the figure to mean something
    per_sample: bool = False  # shown as samples/s rather than ms
    size: bool = False  # the built artifact's size, not a timing
    bound_ms: float | None = None  # server-qps: the p99 bound from arrival to answer

    def ratio(
        self, baseline_ns: np.ndarray, candidate_ns: np.ndarray, block: int = 1, resamples: int = 1000
    ) -> Speedup:
        """How much better the candidate is on this figure (above 1: better), from samples timed
        in the same rounds (``block`` per round)."""
        from qbench.statistics import percentile_ratio, rounds_of, served_rate_ratio, speedup

        if self.bound_ms is not None:
            rounds = rounds_of(baseline_ns, block), rounds_of(candidate_ns, block)
            return served_rate_ratio(*rounds, self.bound_ms * 1e6, min(resamples, 100))
        if self.percentile == 50:
            return speedup(baseline_ns, candidate_ns, block)
        return percentile_ratio(
            rounds_of(baseline_ns, block), rounds_of(candidate_ns, block), self.percentile, resamples
        )

    def pooled(self, batches: Sequence[tuple[np.ndarray, np.ndarray, int]]) -> Speedup:
        """The same comparison over several batches of rounds (a race's): ``(baseline_ns,
        candidate_ns, block)`` each, every round of every batch one paired observation."""
        import numpy as np

        from qbench.statistics import (
            Speedup,
            block_ratios,
            median_with_ci,
            percentile_ratio,
            rounds_of,
            served_rate_ratio,
        )

        if self.percentile == 50 and self.bound_ms is None:
            return Speedup(*median_with_ci(np.concatenate([block_ratios(b, c, k) for b, c, k in batches])))
        rounds = [(rounds_of(b, k), rounds_of(c, k)) for b, c, k in batches]
        baseline, candidate = [r for b, _ in rounds for r in b], [r for _, c in rounds for r in c]
        if self.bound_ms is not None:
            return served_rate_ratio(baseline, candidate, self.bound_ms * 1e6)
        return percentile_ratio(baseline, candidate, self.percentile)


OBJECTIVES = {
    "p50": Objective("p50", 50, 30),
    "p90": Objective("p90", 90, 100),
    "p99": Objective("p99", 99, 300),
    "throughput": Objective("throughput", 50, 30, per_sample=True),
    "mb": Objective("mb", 50, 30, size=True),
}
MEDIAN = OBJECTIVES["p50"]
SERVER_QPS = "server-qps"
NAMES = (*OBJECTIVES, f"{SERVER_QPS}:BOUND_MS")
MAX_BOUND_MS = 600_000.0  # as a server scenario's bound


def objective(name: object) -> Objective:
    """The objective called ``name`` (``server-qps:15`` carries its bound in ms); a one-line
    error naming the choices otherwise."""
    if isinstance(name, Objective):
        return name
    found = OBJECTIVES.get(name) if isinstance(name, str) else None
    if found is None and isinstance(name, str) and name.startswith(f"{SERVER_QPS}:"):
        return _server_qps(name)
    if found is None:
        raise QbenchError(f"unknown objective {name!r}: use one of {', '.join(NAMES)}")
    return found


def _server_qps(name: str) -> Objective:
    try:
        bound = float(name.removeprefix(f"{SERVER_QPS}:"))
    except ValueError:
        bound = math.nan
    if not 0.01 <= bound <= MAX_BOUND_MS:  # NaN fails too
        raise QbenchError(f"objective {name!r}: the p99 bound must be a number of ms from 0.01 to {MAX_BOUND_MS:g}")
    return Objective(f"{SERVER_QPS}:{bound:g}", 99, 300, bound_ms=bound)
