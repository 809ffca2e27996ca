"""Scoring candidate plans of one model against one fp32 baseline, inside one process.

Calibration runs once; the fp32 session stays loaded so every candidate is timed interleaved
with it, and latency is reported as ``fp32 reference median / measured speedup``, which keeps
trials measured minutes apart (or by other workers) comparable despite drift.
"""

from __future__ import annotations

import logging
import pathlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from qbench.bench import evaluation_outputs, timed_call
from qbench.data import Dataset, fixed_batch_size
from qbench.errors import QbenchError
from qbench.machine import Machine
from qbench.measure import LatencyStats, Protocol, measure_interleaved, speedup
from qbench.metrics import Metric
from qbench.model import OnnxModel
from qbench.plan import PrecisionPlan

if TYPE_CHECKING:
    from qbench.backends import Backend, Calibration

log = logging.getLogger(__name__)

TRIAL_PROTOCOL = Protocol(warmup_count=5, warmup_seconds=0.1, min_count=30, min_seconds=0.4, max_seconds=10.0)


@dataclass(frozen=True)
class Timing:
    latency_ms: float  # fp32 reference median / speedup
    speedup: float
    speedup_ci_low: float
    speedup_ci_high: float


class PlanEvaluator:
    """Owns the fp32 baseline session; call ``close()`` when done. Not thread-safe."""

    def __init__(
        self,
        *,
        backend: Backend,
        model: OnnxModel,
        calibration_data: Dataset,
        evaluation_data: Dataset,
        metric: Metric,
        machine: Machine,
        threads: int,
        workdir: pathlib.Path,
        batch_size: int = 1,
        quick_samples: int = 512,
    ) -> None:
        self.backend, self.model, self.metric, self.machine = backend, model, metric, machine
        self.threads, self.workdir = threads, workdir
        self.calibration_data, self.evaluation_data = calibration_data, evaluation_data
        if metric.needs_labels and evaluation_data.labels is None:
            raise QbenchError(
                f"metric {metric.name!r} needs labels, but {evaluation_data.source} has no 'labels' array"
            )
        self.fixed_batch = fixed_batch_size(model)
        self.quick_data = evaluation_data.take(0, min(quick_samples, len(evaluation_data)))
        self.feeds = next(evaluation_data.batches(self.fixed_batch or batch_size))
        self._calibrations: dict[str, Calibration] = {}
        self.baseline_plan = backend.resolve_plan(PrecisionPlan(name="fp32"), machine)
        artifact = backend.build(model, self.baseline_plan, None, workdir)
        self._baseline = backend.load(artifact, threads, shared_process=True)
        self.reference = evaluation_outputs(self._baseline, evaluation_data, self.fixed_batch)
        metric.check_labels(evaluation_data.labels, self.reference, evaluation_data.source)
        self.baseline_accuracy = self._score(self.reference, evaluation_data)
        self.baseline_quick_accuracy = self._score(self.reference[: len(self.quick_data)], self.quick_data)

    def calibration(self, method: str) -> Calibration:
        if method not in self._calibrations:
            self._calibrations[method] = self.backend.calibrate(self.model, self.calibration_data, method, self.workdir)
        return self._calibrations[method]

    def _score(self, outputs: np.ndarray, data: Dataset) -> float:
        return self.metric(outputs, data.labels, self.reference[: len(data)])

    def resolve(self, plan: PrecisionPlan) -> PrecisionPlan:
        return self.backend.resolve_plan(plan, self.machine)

    def load(self, plan: PrecisionPlan):
        """Build and load a resolved plan; the caller closes the runner."""
        calibration = self.calibration(plan.options.calibration) if plan.needs_calibration else None
        artifact = self.backend.build(self.model, plan, calibration, self.workdir)
        return self.backend.load(artifact, self.threads, shared_process=True)

    def accuracy_drop(self, runner, quick: bool) -> float:
        """Drop from the fp32 baseline on the quick subset or the whole evaluation set."""
        data = self.quick_data if quick else self.evaluation_data
        baseline = self.baseline_quick_accuracy if quick else self.baseline_accuracy
        return baseline - self._score(evaluation_outputs(runner, data, self.fixed_batch), data)

    def measure_baseline_ms(self, protocol: Protocol = TRIAL_PROTOCOL) -> float:
        samples = measure_interleaved({"fp32": timed_call(self._baseline, self.feeds)}, protocol)["fp32"]
        return LatencyStats.from_samples(samples).median_ms

    def time_against_baseline(
        self, runners: dict[str, object], reference_ms: float, protocol: Protocol = TRIAL_PROTOCOL
    ) -> dict[str, Timing]:
        """Time several loaded candidates interleaved with fp32; one Timing per candidate."""
        calls = {"__fp32__": timed_call(self._baseline, self.feeds)}
        calls.update({key: timed_call(runner, self.feeds) for key, runner in runners.items()})
        samples = measure_interleaved(calls, protocol)
        timings = {}
        for key in runners:
            ratio = speedup(samples["__fp32__"], samples[key])
            timings[key] = Timing(reference_ms / ratio.ratio, ratio.ratio, ratio.ci_low, ratio.ci_high)
        return timings

    def close(self) -> None:
        self._baseline.close()
