"""``qbench bench``: build, load, check accuracy and time several plans of one model together.

All plans are measured interleaved in one process with the fp32 baseline, so each plan's
speedup is a ratio taken under the same conditions; accuracy is measured on the very session
that was timed. A plan that fails is recorded as failed with its error and the rest go on.
This module drives a backend object it is given and never imports ``backends`` itself.
"""

from __future__ import annotations

import logging
import pathlib
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil

from qbench import __version__
from qbench.codeversion import code_version
from qbench.data import Dataset, fixed_batch_size
from qbench.errors import QbenchError, describe
from qbench.machine import Machine
from qbench.measure import LatencyStats, Protocol, measure_interleaved, speedup
from qbench.metrics import Metric
from qbench.model import OnnxModel
from qbench.plan import PrecisionPlan
from qbench.profile import PROFILE_RUNS, Profile
from qbench.store import Leaderboard, samples_to_bytes

if TYPE_CHECKING:
    from qbench.backends import Artifact, Backend, Calibration, Runner

log = logging.getLogger(__name__)
EVAL_BATCH = 64
Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchSettings:
    threads: int
    batch_size: int = 1
    protocol: Protocol = field(default_factory=Protocol)
    kind: str = "bench"
    job: str | None = None  # the suite job this run belongs to, if any
    job_hash: str | None = None
    profile: bool = False  # take a per-op profile of every measured plan, after timing

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise QbenchError(f"`threads` must be at least 1, but got {self.threads}")
        if self.batch_size < 1:
            raise QbenchError(f"`batch` must be at least 1, but got {self.batch_size}")


@dataclass
class Candidate:
    """One plan on its way through build, load, accuracy and timing."""

    plan: PrecisionPlan
    artifact: Artifact | None = None
    runner: Runner | None = None
    outputs: np.ndarray | None = None
    load_s: float | None = None
    first_inference_ms: float | None = None
    rss_delta_mb: float | None = None
    peak_rss_mb: float | None = None
    samples_ns: np.ndarray | None = None
    accuracy: float | None = None
    runner_settings: dict[str, Any] | None = None
    profile: Profile | None = None
    error: str | None = None

    def fail(self, exc: BaseException) -> None:
        self.error = describe(exc)
        log.warning("plan %s failed: %s", self.plan.name, self.error)
        log.debug("plan %s failed", self.plan.name, exc_info=exc)


def with_baseline(plans: Sequence[PrecisionPlan]) -> list[PrecisionPlan]:
    """Put the fp32 baseline first (added if missing) and drop plans that duplicate another."""
    baseline = PrecisionPlan(name="fp32")
    ordered, seen = [], set()
    for plan in [baseline, *plans]:
        if plan.content_hash not in seen:
            seen.add(plan.content_hash)
            ordered.append(plan)
    return ordered


def run_bench(
    *,
    model: OnnxModel,
    calibration_data: Dataset,
    evaluation_data: Dataset,
    metric: Metric,
    plans: Sequence[PrecisionPlan],
    backend: Backend,
    machine: Machine,
    settings: BenchSettings,
    board: Leaderboard,
    workdir: pathlib.Path,
    progress: Progress = lambda _msg: None,
) -> list[dict[str, Any]]:
    """Measure ``plans`` (plus the fp32 baseline) and record one leaderboard row per plan."""
    availability = backend.probe()
    if not availability.available:
        raise QbenchError(f"backend {backend.name!r} is not usable here: {availability.reason}")
    fixed = fixed_batch_size(model)
    if fixed is not None and settings.batch_size not in (1, fixed):
        raise QbenchError(f"the model's batch size is fixed at {fixed}; drop --batch or pass --batch {fixed}")
    batch = fixed or settings.batch_size
    if batch > len(evaluation_data):
        raise QbenchError(
            f"--batch {batch} is larger than the {len(evaluation_data)} evaluation samples of "
            f"{evaluation_data.source}; pass --batch {len(evaluation_data)} or less, or more data"
        )
    if metric.needs_labels and evaluation_data.labels is None:
        raise QbenchError(f"metric {metric.name!r} needs labels, but {evaluation_data.source} has no 'labels' array")
    candidates = [Candidate(backend.resolve_plan(p, machine)) for p in with_baseline(plans)]
    for c in candidates:  # reject bad plans before any expensive work
        backend.check_plan(c.plan, model)
    board.record_machine(machine.to_dict())

    calibrations = _calibrate(backend, model, calibration_data, candidates, workdir, progress)
    try:
        for c in candidates:
            if c.error is not None:  # its calibration failed
                continue
            progress(f"build and load {c.plan.name}")
            _prepare(c, backend, model, calibrations, evaluation_data, settings.threads, fixed, workdir)
        _score_accuracy(candidates, metric, evaluation_data)
        ready = [c for c in candidates if c.error is None]
        feeds = next(evaluation_data.batches(batch))
        progress(f"time {len(ready)} plans interleaved")
        runs = {c.plan.content_hash: timed_call(c.runner, feeds) for c in ready}
        if runs:
            measured = measure_interleaved(runs, settings.protocol)
            for c in ready:
                c.samples_ns = measured[c.plan.content_hash]
                c.runner_settings.update(c.runner.timing_notes())
    finally:
        for c in candidates:
            if c.runner is not None:
                c.runner.close()
    if settings.profile and runs:
        for c in ready:
            progress(f"profile {c.plan.name}")
            c.profile = take_profile(backend, c.artifact, c.plan.name, settings.threads, feeds)
    return _record(
        candidates,
        model,
        calibration_data,
        evaluation_data,
        metric,
        backend,
        availability.version,
        machine,
        settings,
        batch,
        board,
    )


def profile_plans(
    *,
    model: OnnxModel,
    calibration_data: Dataset,
    evaluation_data: Dataset,
    plans: Sequence[PrecisionPlan],
    backend: Backend,
    machine: Machine,
    threads: int,
    workdir: pathlib.Path,
    progress: Progress = lambda _msg: None,
) -> list[Profile]:
    """Per-op profiles of ``plans`` (the fp32 baseline first), each built as ``bench`` would
    build it and profiled on its own fresh session; no latency is timed."""
    availability = backend.probe()
    if not availability.available:
        raise QbenchError(f"backend {backend.name!r} is not usable here: {availability.reason}")
    resolved = [backend.resolve_plan(p, machine) for p in with_baseline(plans)]
    for plan in resolved:
        backend.check_plan(plan, model)
    candidates = [Candidate(plan) for plan in resolved]
    calibrations = _calibrate(backend, model, calibration_data, candidates, workdir, progress)
    failed = next((c for c in candidates if c.error is not None), None)
    if failed is not None:
        raise QbenchError(f"cannot profile {failed.plan.name}: {failed.error}")
    feeds = next(evaluation_data.batches(fixed_batch_size(model) or 1))
    profiles = []
    for plan in resolved:
        progress(f"build and profile {plan.name}")
        artifact = backend.build(model, plan, calibrations.get(plan.options.calibration), workdir)
        profiles.append(_profile(backend, artifact, plan.name, threads, feeds))
    return profiles


def _profile(
    backend: Backend, artifact: Artifact, plan_name: str, threads: int, feeds: dict[str, np.ndarray]
) -> Profile:
    """A per-op profile of ``artifact`` on a fresh session of its own."""
    return Profile(
        plan_name, backend.name, PROFILE_RUNS, tuple(backend.profile(artifact, threads, feeds, PROFILE_RUNS))
    )


def take_profile(
    backend: Backend, artifact: Artifact, plan_name: str, threads: int, feeds: dict[str, np.ndarray]
) -> Profile | None:
    """``bench --profile``'s profile: a backend without a profiler gives None (logged), not a failed plan."""
    try:
        return _profile(backend, artifact, plan_name, threads, feeds)
    except QbenchError as exc:
        log.warning("no profile of %s: %s", plan_name, exc)
        return None


def _calibrate(
    backend: Backend,
    model: OnnxModel,
    data: Dataset,
    candidates: list[Candidate],
    workdir: pathlib.Path,
    progress: Progress,
) -> dict[str, Calibration]:
    """Activation ranges per calibration method. A method that fails (an op the runtime cannot
    run, say) fails the plans that need it, each recorded with the reason; the others go on."""
    methods = {c.plan.options.calibration for c in candidates if c.plan.needs_calibration}
    calibrations = {}
    for method in sorted(methods):
        progress(f"calibrate ({method}, {len(data)} samples)")
        try:
            calibrations[method] = backend.calibrate(model, data, method, workdir)
        except QbenchError:
            raise
        except Exception as exc:
            for c in candidates:
                if c.plan.needs_calibration and c.plan.options.calibration == method:
                    c.fail(RuntimeError(f"calibration ({method}) failed: {describe(exc)}"))
    return calibrations


def timed_call(runner: Runner, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
    """What one latency sample times: an inference and, for asynchronous devices, its completion."""

    def call() -> None:
        runner.run(feeds)
        runner.synchronize()

    return call


def _prepare(
    c: Candidate,
    backend: Backend,
    model: OnnxModel,
    calibrations: dict[str, Calibration],
    data: Dataset,
    threads: int,
    fixed_batch: int | None,
    workdir: pathlib.Path,
) -> None:
    """Build, load, time the cold first inference and run the evaluation set."""
    process = psutil.Process()
    try:
        c.artifact = backend.build(model, c.plan, calibrations.get(c.plan.options.calibration), workdir)
        rss_before = process.memory_info().rss
        start = time.perf_counter()
        c.runner = backend.load(c.artifact, threads, shared_process=True)
        c.load_s = time.perf_counter() - start
        c.runner_settings = dict(c.runner.settings)
        start = time.perf_counter()
        c.runner.run(next(data.batches(fixed_batch or EVAL_BATCH)))
        c.runner.synchronize()
        c.first_inference_ms = (time.perf_counter() - start) * 1e3
        c.rss_delta_mb = (process.memory_info().rss - rss_before) / 2**20
        c.peak_rss_mb = _peak_rss_mb()
        c.outputs = evaluation_outputs(c.runner, data, fixed_batch)
    except Exception as exc:  # one plan's failure must not stop the others
        c.fail(exc)
        if c.runner is not None:
            c.runner.close()
            c.runner = None


def evaluation_outputs(runner: Runner, data: Dataset, fixed_batch: int | None) -> np.ndarray:
    """The first model output for every sample of ``data``, in order (samples on axis 0)."""
    feeds = data.batches(fixed_batch or EVAL_BATCH, keep_tail=fixed_batch is None)
    return np.concatenate([runner.run(feed)[0] for feed in feeds])


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20  # macOS reports bytes


def _score_accuracy(candidates: list[Candidate], metric: Metric, data: Dataset) -> None:
    baseline = candidates[0]
    reference = baseline.outputs
    if reference is not None:
        metric.check_labels(data.labels, reference, data.source)
    if metric.needs_reference and reference is None:
        for c in candidates[1:]:
            if c.error is None:
                c.error = (
                    f"no fp32 reference outputs for metric {metric.name!r}: the baseline failed ({baseline.error})"
                )
        return
    for c in candidates:
        if c.error is None:
            try:
                c.accuracy = metric(c.outputs, data.labels, reference)
            except QbenchError:
                raise
            except Exception as exc:  # a user metric that crashes fails that plan only
                c.fail(exc)


def _record(
    candidates: list[Candidate],
    model: OnnxModel,
    calibration_data: Dataset,
    evaluation_data: Dataset,
    metric: Metric,
    backend: Backend,
    backend_version: str | None,
    machine: Machine,
    settings: BenchSettings,
    batch: int,
    board: Leaderboard,
) -> list[dict[str, Any]]:
    run_id = uuid.uuid4().hex
    baseline = candidates[0]
    rows = []
    for c in candidates:
        row: dict[str, Any] = {
            "run_id": run_id,
            "kind": settings.kind,
            "machine_hash": machine.fingerprint_hash,
            "qbench_version": __version__,
            "code_version": code_version(),
            "job": settings.job,
            "job_hash": settings.job_hash,
            "model_name": model.name,
            "model_hash": model.content_hash,
            "data_hash": f"{calibration_data.content_hash[:8]}+{evaluation_data.content_hash[:8]}",
            "metric": metric.name,
            "plan_name": c.plan.name,
            "plan_hash": c.plan.content_hash,
            "plan": c.plan.to_json(),
            "backend": backend.name,
            "backend_version": backend_version,
            "threads": settings.threads,
            "batch_size": batch,
            "protocol": settings.protocol.as_dict(),
            "backend_settings": c.runner_settings,
        }
        if c.error is not None or c.samples_ns is None:
            row.update(status="failed", error=c.error or "not measured")
        else:
            stats = LatencyStats.from_samples(c.samples_ns, settings.protocol.noisy_cv)
            row.update(
                status="ok",
                n_samples=stats.n,
                median_ms=stats.median_ms,
                ci_low_ms=stats.ci_low_ms,
                ci_high_ms=stats.ci_high_ms,
                p90_ms=stats.p90_ms,
                p99_ms=stats.p99_ms,
                mean_ms=stats.mean_ms,
                std_ms=stats.std_ms,
                cv=stats.cv,
                noisy=stats.noisy,
                samples_ns=samples_to_bytes(c.samples_ns),
                accuracy=c.accuracy,
                build_s=c.artifact.build_seconds,
                load_s=c.load_s,
                first_inference_ms=c.first_inference_ms,
                rss_delta_mb=c.rss_delta_mb,
                peak_rss_mb=c.peak_rss_mb,
                artifact_bytes=c.artifact.size_bytes,
                realized=backend.realized_precisions(c.artifact, c.plan, model),
                profile=c.profile.to_json() if c.profile is not None else None,
            )
            if baseline.samples_ns is not None and baseline.error is None:
                ratio = speedup(baseline.samples_ns, c.samples_ns)
                row.update(
                    speedup=ratio.ratio,
                    speedup_ci_low=ratio.ci_low,
                    speedup_ci_high=ratio.ci_high,
                    accuracy_drop=baseline.accuracy - c.accuracy,
                )
        row["id"] = board.insert(row)
        rows.append(row)
    return rows
