"""``qbench bench``: build, load, check accuracy and time several plans of one model together.

Every plan is timed in a worker process of its own, in alternating blocks with the fp32
baseline's worker (``qbench.workers``), so each plan's speedup is a paired ratio taken under the
same conditions and its median and tails are those of the plan alone in its process; accuracy
is measured on the very artifact that was timed. fp32 is timed against a second worker of itself
in the same rounds (the A/A check): when the two differ by more than the run can resolve, the rows
say the machine was unsteady. A plan that fails is recorded as failed with its error and the rest go on.
Scoring and timing go through ``qbench.harness``; this module decides what to measure and
records it.
"""

from __future__ import annotations

import logging
import pathlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from qbench import __version__
from qbench.codeversion import code_version
from qbench.data import Dataset, fixed_batch_size
from qbench.drift import DRIFT, DriftWorkload
from qbench.errors import QbenchError, describe
from qbench.harness import FP32, FP32_AGAIN, TIMING_CHUNK, Calibrations, Harness, Loaded, chunks
from qbench.machine import Machine
from qbench.measure import TimingProtocol
from qbench.metrics import Metric
from qbench.model import OnnxModel
from qbench.objectives import MEDIAN, Objective, objective
from qbench.plan import PrecisionPlan
from qbench.previous_run import AGAIN, PREVIOUS, PreviousPlan, find_previous_plan
from qbench.profile import PROFILE_RUNS, Profile
from qbench.runspec import LoadedSubject, RunSpec, timing_protocol
from qbench.scenario import LATENCY, Scenario, server_seconds
from qbench.statistics import Speedup, aa_check, percentile_ratio
from qbench.store import Leaderboard, ResultRow
from qbench.workers import WorkerPool
from qbench.workload import Workload

if TYPE_CHECKING:
    from qbench.backends import Artifact, Backend, Calibration

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchSettings:
    threads: int
    batch_size: int = 1
    protocol: TimingProtocol = field(default_factory=TimingProtocol)
    kind: str = "bench"
    job: str | None = None  # the suite job this run belongs to, if any
    job_hash: str | None = None
    profile: bool = False  # take a per-op profile of every measured plan, after timing
    workload: Workload = field(default_factory=Workload)  # what one timed call runs
    spec: RunSpec | None = None  # the run's settings, stored with each row
    config_hash: str | None = None  # ``spec.config_hash()``, computed once
    scenario: Scenario = LATENCY  # the deployment question the rows answer
    objective: Objective = MEDIAN  # the figure each row's speedup compares (a tune's objective)
    #: A tune's accuracy budget: a decoder's plans are scored on as many windows as decide it
    #: (``Harness.scored``); None: every plan on the whole evaluation set.
    accuracy_budget: float | None = None

    @classmethod
    def from_spec(
        cls, spec: RunSpec, kind: str = "bench", job: str | None = None, job_hash: str | None = None
    ) -> BenchSettings:
        """The settings of a normalized spec (threads filled in); a suite job's rows carry the
        hash the suite computed (``job_hash``), by which the next night finds them."""
        config_hash = spec.config_hash()
        return cls(
            threads=spec.target.threads,
            batch_size=spec.target.batch,
            protocol=timing_protocol(spec.timing),
            kind=kind,
            job=job,
            job_hash=job_hash,
            profile=spec.timing.profile,
            workload=spec.workload,
            spec=spec,
            config_hash=config_hash,
            scenario=spec.scenario,
            objective=objective(spec.tune.objective) if spec.tune else MEDIAN,
        )

    @property
    def scenario_label(self) -> str:
        """The rows' ``scenario`` column: what their figures and speedup answer."""
        if self.scenario.kind == "latency" and self.objective.percentile != 50:
            return f"latency:{self.objective.name}"
        return str(self.scenario)

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
    load_s: float | None = None
    first_inference_ms: float | None = None
    rss_delta_mb: float | None = None
    peak_rss_mb: float | None = None
    samples_ns: np.ndarray | None = None
    baseline_ns: np.ndarray | None = None  # the fp32 samples interleaved with this plan's
    block: int = 1  # samples per block round in both (``qbench.measure.Samples``)
    accuracy: float | None = None
    drop: float | None = None  # from fp32's accuracy on the same samples
    fidelity: dict[str, list[float]] | None = None  # a token metric's figures against fp32, with intervals
    runner_settings: dict[str, Any] | None = None
    aa: dict[str, float] | None = None  # fp32 against its second worker in the same rounds
    profile: Profile | None = None
    error: str | None = None
    session: Loaded | None = None  # while its chunk is loaded
    partner: PreviousPlan | None = None  # the previous run's same plan (suite jobs)
    comparison: dict[str, Any] | None = None
    reference_ms: float | None = None
    ratio: Speedup | None = None  # a server run's p99 ratio against fp32 (rounds of the same arrivals)
    server: dict[str, float] | None = None  # what a server run found: rate, p99, bound held, highest rate

    @property
    def key(self) -> str:
        return self.plan.content_hash

    def loaded(self, loaded: Loaded) -> None:
        self.artifact, self.load_s = loaded.artifact, loaded.load_s
        self.first_inference_ms, self.rss_delta_mb = loaded.first_inference_ms, loaded.rss_delta_mb
        self.peak_rss_mb = loaded.peak_rss_mb
        self.runner_settings = dict(loaded.runner.settings)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
        if self.partner is not None:
            self.partner.close()

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


def _checked_candidates(backend: Backend, model: OnnxModel, machine: Machine, plans: Sequence[PrecisionPlan]):
    availability = backend.probe()
    if not availability.available:
        raise QbenchError(f"backend {backend.name!r} is not usable here: {availability.reason}")
    candidates = [Candidate(backend.resolve_plan(p, machine)) for p in with_baseline(plans)]
    for c in candidates:  # reject bad plans before any expensive work
        backend.check_plan(c.plan, model)
    return availability, candidates


def run_bench(
    subject: LoadedSubject,
    plans: Sequence[PrecisionPlan],
    *,
    backend: Backend,
    machine: Machine,
    settings: BenchSettings,
    board: Leaderboard,
    workdir: pathlib.Path,
    progress: Progress = lambda _msg: None,
    drift: DriftWorkload | None = None,
    pool: WorkerPool | None = None,
) -> list[ResultRow]:
    """Measure ``plans`` (plus the fp32 baseline) of the loaded ``subject`` (model, data and
    metric) and record one leaderboard row per plan. ``pool``: timing workers to reuse (a tune's).

    The plans are loaded, scored and timed a chunk at a time (``TIMING_CHUNK``), each chunk
    interleaved with the fp32 session the harness keeps loaded, so memory does not grow with
    the number of plans and every speedup is a ratio measured side by side with fp32, and with
    the ``drift`` workload when given. For a suite job, each plan is then timed alone with
    its counterpart from the job's previous run (``qbench.previous_run``)."""
    model, calibration_data, evaluation_data = subject.model, subject.calibration, subject.evaluation
    availability, candidates = _checked_candidates(backend, model, machine, plans)
    board.record_machine(machine.to_dict())
    progress(f"load and score fp32 on {len(evaluation_data)} samples")
    harness = Harness(
        backend=backend,
        model=model,
        calibration_data=calibration_data,
        evaluation_data=evaluation_data,
        metric=subject.metric,
        machine=machine,
        threads=settings.threads,
        workdir=workdir,
        batch_size=settings.batch_size,
        workload=settings.workload,
        pool=pool,
        streams=settings.scenario.streams,
    )
    try:
        _measure(
            harness,
            candidates,
            settings,
            progress,
            drift,
            partners=lambda: _find_partners(
                board, machine, settings, harness, availability.version, candidates, progress
            ),
        )
    finally:
        for c in candidates:
            c.close()
        harness.close()
    measured = [c for c in candidates if c.error is None and c.samples_ns is not None]
    if settings.profile:
        feeds = harness.feeds
        for c in measured:
            progress(f"profile {c.plan.name}")
            c.profile = take_profile(backend, c.artifact, c.plan.name, settings.threads, feeds)
    return _record(
        candidates,
        model,
        calibration_data,
        evaluation_data,
        subject.metric,
        backend,
        availability.version,
        machine,
        settings,
        harness.batch_size,
        board,
    )


def _measure(
    harness: Harness,
    candidates: list[Candidate],
    settings: BenchSettings,
    progress: Progress,
    drift: DriftWorkload | None,
    partners: Callable[[], None],
) -> None:
    """Score fp32, calibrate, find each plan's previous-run counterpart (a suite job's, through
    ``partners``), then build, score and time the plans a chunk at a time."""
    baseline, others = candidates[0], candidates[1:]
    if harness.baseline is None:
        baseline.error = harness.baseline_error
    else:
        baseline.loaded(harness.baseline)
    _calibrate(harness.calibration, harness.calibration_data, candidates, progress)
    if settings.job is not None:
        partners()
    if baseline.partner is not None and baseline.error is None:
        baseline.partner.load(harness.backend, harness.feeds)
    pending = [c for c in others if c.error is None]
    size = TIMING_CHUNK // 2 if settings.job is not None else TIMING_CHUNK  # previous sessions come on top
    for number, chunk in enumerate(chunks(pending, size), start=1):
        for c in chunk:
            progress(f"build, load and score {c.plan.name}")
            _prepare(c, harness, settings.accuracy_budget)
        ready = [c for c in chunk if c.error is None]
        if ready:
            progress(f"time {len(ready)} plans interleaved with fp32 ({number}/{-(-len(pending) // size)})")
            _time_chunk(harness, baseline, ready, settings, progress, drift)
        for c in chunk:
            c.close()
    if baseline.error is None and baseline.samples_ns is None:  # no other plan: time fp32 alone
        _time_chunk(harness, baseline, [], settings, progress, drift)
    if baseline.error is None and harness.reference is not None:  # on the samples the plans were scored on
        fp32 = harness.baseline_scored(whole=settings.accuracy_budget is None)
        baseline.accuracy, baseline.drop, baseline.fidelity = fp32.accuracy, fp32.drop, fp32.fidelity


def _time_chunk(
    harness: Harness,
    baseline: Candidate,
    ready: list[Candidate],
    settings: BenchSettings,
    progress: Progress,
    drift: DriftWorkload | None,
) -> None:
    """Time a chunk in the settings' scenario; a failure other than the user's fails these plans
    only (out of memory mid-run, say), and their rows are kept."""
    try:
        _time(harness, baseline, ready, settings.protocol, drift)
        if settings.scenario.kind == "server":
            _serve(harness, baseline, ready, settings, progress)
    except QbenchError:
        raise
    except Exception as exc:
        if not ready:
            raise
        for c in ready:
            c.fail(RuntimeError(f"timing failed: {describe(exc)}"))


def _find_partners(
    board: Leaderboard,
    machine: Machine,
    settings: BenchSettings,
    harness: Harness,
    version: str | None,
    candidates: list[Candidate],
    progress: Progress,
) -> None:
    """Each plan's counterpart in the previous run of this suite job, if there was one."""
    previous = board.previous_run(settings.job, machine.fingerprint_hash)
    if previous.empty:
        return
    progress(f"find the plans of the previous run ({previous.run_id.iloc[0][:8]})")
    for c in candidates:
        if c.error is None:
            c.partner = find_previous_plan(previous, c.plan.name, harness, version, str(settings.workload))


def _prepare(c: Candidate, harness: Harness, budget: float | None) -> None:
    """Build and load one plan (and its previous run's counterpart) and score it on the
    evaluation set (with a ``budget``: a decoder on as many windows as decide it); a failure
    fails it alone."""
    if harness.unscorable:
        c.error = harness.unscorable
        return
    try:
        c.session = harness.load(c.plan)
        c.loaded(c.session)
    except Exception as exc:  # one plan's failure must not stop the others
        c.fail(exc)
        return
    if c.partner is not None:
        c.partner.load(harness.backend, harness.feeds)
    try:
        scored = harness.scored(c.session.runner, budget)
        c.accuracy, c.drop, c.fidelity = scored.accuracy, scored.drop, scored.fidelity
        if not np.isfinite(c.accuracy):  # NaN outputs, or a metric undefined on them: never a number
            raise RuntimeError(f"metric {harness.metric.name!r} is {c.accuracy} on this plan's outputs")
    except QbenchError:
        raise
    except Exception as exc:  # a run or a user metric that crashes fails that plan only
        c.fail(exc)
        c.close()


def _time(
    harness: Harness,
    baseline: Candidate,
    ready: list[Candidate],
    protocol: TimingProtocol,
    reference: DriftWorkload | None,
) -> None:
    """Time a chunk, each plan in its own worker, in alternating blocks with fp32, fp32's second
    worker (the A/A check) and the reference workload; then each plan that has a counterpart
    from the job's previous run against it alone (the A/B, with its own A/A)."""
    first = harness.baseline is not None and baseline.samples_ns is None  # fp32 keeps its first chunk's samples
    timed = [*ready, baseline] if first else ready
    others = {DRIFT: reference.deployment} if reference else {}
    samples = harness.time({c.key: c.session for c in ready}, protocol, others, again=True)
    aa = aa_check(samples[FP32], samples[FP32_AGAIN], samples.block) if FP32_AGAIN in samples else None
    for c in ready:
        c.samples_ns, c.baseline_ns, c.block, c.aa = samples[c.key], samples.get(FP32), samples.block, aa
        c.runner_settings.update(samples.loads[c.key].settings, samples_per_block=samples.block)
    if first:
        baseline.samples_ns = baseline.baseline_ns = samples[FP32]
        baseline.block, baseline.aa = samples.block, aa
        baseline.runner_settings.update(samples.loads[FP32].settings, samples_per_block=samples.block)
    for c in timed:
        c.reference_ms = float(np.median(samples[DRIFT])) / 1e6 if DRIFT in samples else None
    # Each pair is timed on its own. A second worker of tonight's artifact is timed in the same
    # rounds: that A/A ratio is the noise floor of the night, and a verdict beyond it is withheld
    # (``qbench.previous_run``; the measurements are in docs/decisions.md).
    for c in timed:
        if c.partner is not None and c.partner.ready:
            tonight = harness.deployment(c.artifact)
            pair = harness.time(
                {},
                protocol,
                {c.key: tonight, PREVIOUS: c.partner.deployment, AGAIN: harness.deployment(c.artifact)},
                with_baseline=False,
            )
            c.comparison = c.partner.comparison(pair[PREVIOUS], pair[c.key], pair.block, again_ns=pair[AGAIN])
            c.partner.close()


def _serve(harness: Harness, baseline: Candidate, ready: list[Candidate], settings: BenchSettings, progress) -> None:
    """The server scenario for a chunk: the plans and fp32 serving the same Poisson arrivals in
    rotating turns (their latencies, waiting included, replace the per-call samples, and their
    speedup is the p99 ratio over the same rounds); with a bound, whether p99 kept to it, and for
    ``server:max:BOUND`` the highest rate that does, each plan alone."""
    scenario, first = settings.scenario, baseline.server is None and baseline.error is None
    timed = [*ready, baseline] if first else ready
    for c in timed:
        c.server = {}
    if scenario.qps is not None:
        seconds = server_seconds(scenario.qps, settings.protocol.min_seconds)
        progress(f"serve {scenario.qps:g} requests/s for {seconds:.1f} s per plan ({len(timed)} plans)")
        served = harness.serve({c.key: c.session for c in ready}, scenario.qps, seconds)
        for c in timed:
            mine = served[FP32 if c is baseline else c.key]
            c.samples_ns = np.concatenate(mine)
            c.ratio = percentile_ratio(served[FP32], mine, 99) if FP32 in served else None  # fp32 failed
            p99 = float(np.percentile(c.samples_ns, 99)) / 1e6
            c.server.update(qps=scenario.qps, server_seconds=seconds, requests=len(c.samples_ns), p99_ms=p99)
            if scenario.bound_ms is not None:
                c.server.update(bound_ms=scenario.bound_ms, bound_held=p99 <= scenario.bound_ms)
    if scenario.finds_rate:
        for c in timed:
            progress(f"find the highest rate {c.plan.name} serves within p99 {scenario.bound_ms:g} ms")
            start = time.perf_counter()
            loaded = harness.require_baseline() if c is baseline else c.session
            c.server.update(
                bound_ms=scenario.bound_ms,
                max_qps=harness.highest_rate(loaded, scenario.bound_ms, progress),
                max_qps_seconds=time.perf_counter() - start,
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
    _, candidates = _checked_candidates(backend, model, machine, plans)

    calibrate = Calibrations(backend, model, calibration_data, workdir)
    calibrations = _calibrate(calibrate, calibration_data, candidates, progress)
    failed = next((c for c in candidates if c.error is not None), None)
    if failed is not None:
        raise QbenchError(f"cannot profile {failed.plan.name}: {failed.error}")
    feeds = next(evaluation_data.batches(fixed_batch_size(model) or 1))
    profiles = []
    for c in candidates:
        progress(f"build and profile {c.plan.name}")
        artifact = backend.build(model, c.plan, calibrations.get(c.plan.content_hash), workdir)
        profiles.append(_profile(backend, artifact, c.plan.name, threads, feeds))
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
    calibrate: Callable[[PrecisionPlan], Calibration | None],
    data: Dataset,
    candidates: list[Candidate],
    progress: Progress,
) -> dict[str, Calibration | None]:
    """What each plan needs of the calibration samples, by plan hash (``Backend.calibration_for``:
    activation ranges, or the samples alone for a quantizer that calibrates them itself). A
    calibration that fails (an op the runtime cannot run, say) fails the plans that need it,
    each recorded with the reason; the others go on."""
    calibrations: dict[str, Calibration | None] = {}
    announced: set[str] = set()
    for c in candidates:
        if not c.plan.needs_calibration or c.error is not None:
            continue
        method = c.plan.options.calibration
        if method not in announced:
            announced.add(method)
            progress(f"calibrate ({method}, {len(data)} samples)")
        try:
            calibrations[c.plan.content_hash] = calibrate(c.plan)
        except QbenchError:
            raise
        except Exception as exc:
            c.fail(RuntimeError(f"calibration ({method}) failed: {describe(exc)}"))
    return calibrations


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
) -> list[ResultRow]:
    run_id = uuid.uuid4().hex
    rows = []
    for c in candidates:
        row = ResultRow(
            run_id=run_id,
            kind=settings.kind,
            status="ok",
            machine_hash=machine.fingerprint_hash,
            qbench_version=__version__,
            code_version=code_version(),
            job=settings.job,
            job_hash=settings.job_hash,
            model_name=model.name,
            model_hash=model.content_hash,
            data_hash=f"{calibration_data.content_hash[:8]}+{evaluation_data.content_hash[:8]}",
            metric=metric.name,
            plan_name=c.plan.name,
            plan_hash=c.plan.content_hash,
            plan=c.plan.to_json(),
            backend=backend.name,
            backend_version=backend_version,
            threads=settings.threads,
            batch_size=batch,
            protocol=settings.protocol.as_dict(),
            workload=str(settings.workload),
            backend_settings={**(c.runner_settings or {}), **(c.aa or {}), **(c.server or {})} or None,
            run_spec=settings.spec.to_dict() if settings.spec else None,
            config_hash=settings.config_hash,
            scenario=settings.scenario_label,
        )
        if c.error is not None or c.samples_ns is None:
            row = replace(row, status="failed", error=c.error or "not measured")
        else:
            row = replace(
                row.with_samples(c.samples_ns, settings.protocol.noisy_cv),
                accuracy=c.accuracy,
                fidelity=c.fidelity,
                build_s=c.artifact.build_seconds,
                load_s=c.load_s,
                first_inference_ms=c.first_inference_ms,
                rss_delta_mb=c.rss_delta_mb,
                peak_rss_mb=c.peak_rss_mb,
                artifact_bytes=c.artifact.size_bytes,
                realized=backend.realized_precisions(c.artifact, c.plan, model),
                profile=c.profile.to_json() if c.profile is not None else None,
                artifact_key=c.artifact.key,
                reference_ms=c.reference_ms,
                comparison=c.comparison or (c.partner.comparison() if c.partner is not None else None),
            )
            if c.baseline_ns is not None:  # None when the fp32 baseline failed
                drop = c.drop
                if c.ratio is not None:
                    row = row.with_ratio(c.ratio, drop, c.aa)
                else:
                    row = row.with_speedup(c.baseline_ns, c.samples_ns, drop, c.block, c.aa, settings.objective)
        board.insert(row)
        rows.append(row)
    return rows
