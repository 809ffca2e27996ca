"""How the tuner reads a harness's timings: the objective's figure as ``fp32 reference / ratio``.

Trials are measured minutes apart, or by other workers on other machines of the same kind;
each is timed interleaved with the fp32 baseline (``qbench.harness``), and its figure (median,
p90, p99 per call: ``qbench.objectives``) is the study's fixed fp32 reference of that figure
divided by the paired ratio on it, which keeps trials comparable despite drift.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from qbench.harness import FP32, Evaluator
from qbench.measure import Samples, TimingProtocol
from qbench.objectives import MEDIAN, Objective
from qbench.statistics import Speedup, relative

if TYPE_CHECKING:
    from qbench.harness import Loaded

TRIAL_PROTOCOL = TimingProtocol(warmup_count=5, warmup_seconds=0.1, min_count=30, min_seconds=0.4, max_seconds=10.0)
#: While a trial is timed, "could it still win?" is asked after every round: a lighter interval.
STOP_RESAMPLES = 200


def trial_protocol(objective: Objective, protocol: TimingProtocol = TRIAL_PROTOCOL) -> TimingProtocol:
    """``protocol`` with at least the samples the objective's figure needs (a p99 needs hundreds)."""
    return replace(protocol, min_count=max(protocol.min_count, objective.min_samples))


@dataclass(frozen=True)
class TrialTiming:
    latency_ms: float  # fp32 reference median / speedup
    speedup: float
    speedup_ci_low: float
    speedup_ci_high: float


def time_against_baseline(
    evaluator: Evaluator,
    plans: Mapping[str, Loaded],
    reference_ms: float,
    protocol: TimingProtocol = TRIAL_PROTOCOL,
    stop: Callable[[Samples], bool] | None = None,
    objective: Objective = MEDIAN,
) -> dict[str, TrialTiming]:
    """Time loaded candidates interleaved with fp32, each in its own worker; one TrialTiming per
    candidate, on the ``objective``'s figure. ``stop`` may end the timing early (``measure_interleaved``)."""
    samples = evaluator.time(plans, trial_protocol(objective, protocol), stop=stop)
    timings = {}
    for key in plans:
        ratio = objective.ratio(samples[FP32], samples[key], getattr(samples, "block", 1))
        timings[key] = TrialTiming(reference_ms / ratio.ratio, ratio.ratio, ratio.ci_low, ratio.ci_high)
    return timings


class clearly_slower:  # noqa: N801 - used like a function that builds a ``stop``
    """A ``stop`` for timing one candidate ("c") against fp32: true once its paired speedup is
    clearly below 1, or clearly below the ``incumbent``'s (each against fp32 in its own rounds,
    the uncertainty of both carried). Such a plan cannot win, so its rough figure is enough;
    ``decided`` says whether it fired."""

    def __init__(self, incumbent: Speedup | None, objective: Objective = MEDIAN) -> None:
        self.incumbent, self.objective, self.decided = incumbent, objective, False

    def __call__(self, samples: Samples) -> bool:
        if self.objective.bound_ms is not None:  # a served rate costs seconds: never checked per round
            return False
        candidate = self.objective.ratio(samples[FP32], samples["c"], samples.block, STOP_RESAMPLES)
        slower = candidate.ci_high < 1.0
        if not slower and self.incumbent is not None:
            slower = relative(candidate, self.incumbent).ci_high < 1.0
        self.decided = self.decided or slower
        return slower
