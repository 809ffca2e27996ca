"""The one place plans are scored and timed against fp32: ``bench``, the tuner, sensitivity
analysis and the benchmark scripts all go through a ``Harness``.

A harness holds, for one (model, data, backend, threads), the fp32 baseline (loaded for its
whole life, so every candidate is timed interleaved with it), the fp32 reference outputs and
accuracy, the calibrations (computed once per method) and a pool of timing workers: every
timed plan runs in a worker process of its own (``qbench.workers``), the sessions loaded here
only score. Candidates are loaded by the caller a few at a time (``TIMING_CHUNK``) and closed
after timing, so memory is bounded by the chunk, not by the number of plans (all of an OCR
model's per-layer plans at once exhausted the memory: docs/decisions.md). This module drives a
backend object it is given and never imports ``backends``.
"""

from __future__ import annotations

import math
import pathlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

import numpy as np
import psutil

from qbench import phases
from qbench.data import Dataset, fixed_batch_size
from qbench.errors import QbenchError, describe
from qbench.fidelity import TOKEN_BATCH, TokenScorer, budget_interval, intervals
from qbench.machine import Machine
from qbench.measure import Samples, TimingProtocol, measure_interleaved, measure_rates
from qbench.metrics import Metric
from qbench.model import OnnxModel
from qbench.plan import PrecisionPlan
from qbench.scenario import RATE_PROBE_SECONDS, RATE_PROBES, SERVER_ROUNDS, arrivals_ns
from qbench.statistics import drop_bounds
from qbench.workers import Deployment, WorkerPool
from qbench.workload import BATCH, Workload

if TYPE_CHECKING:
    from qbench.backends import Artifact, Backend, Calibration, Runner

EVAL_BATCH = 64
#: A sequential accuracy check scores this many samples first, then doubles; its standard error
#: comes from the drops of chunks of ``DROP_CHUNK`` samples.
FIRST_LOOK = 256
DROP_CHUNK = 64
#: The same for token metrics, in windows (of 128 tokens in the zoo: 1,024 tokens first).
TOKEN_FIRST_LOOK = 8
TOKEN_DROP_CHUNK = 2
#: Candidate sessions loaded at once (the fp32 baseline comes on top).
TIMING_CHUNK = 4
#: Calls a worker runs, untimed, before it serves a round (it was frozen; its caches are cold).
SERVER_WARMUP_CALLS = 5
FP32 = "__fp32__"
#: fp32 timed against a second worker of itself in the same rounds: the A/A check of a run.
FP32_AGAIN = "__fp32_again__"
T = TypeVar("T")


def chunks(items: Sequence[T], size: int = TIMING_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Calibrations:
    """What building each plan needs of the calibration samples (``Backend.calibration_for``),
    computed once per kind (method, and ranges or the samples alone; ranges are cached on disk
    too). A failure is remembered and raised for every plan of its kind, not computed again."""

    def __init__(self, backend: Backend, model: OnnxModel, data: Dataset, workdir: pathlib.Path) -> None:
        self.backend, self.model, self.data, self.workdir = backend, model, data, workdir
        self._found: dict[tuple[str, bool], Calibration | Exception] = {}

    def __call__(self, plan: PrecisionPlan) -> Calibration | None:
        if not plan.needs_calibration:
            return None
        key = (plan.options.calibration, self.backend.needs_ranges(plan))
        if key not in self._found:
            try:
                self._found[key] = self.backend.calibration_for(plan, self.model, self.data, self.workdir)
            except Exception as exc:  # every plan of this kind fails alike
                self._found[key] = exc
        found = self._found[key]
        if isinstance(found, Exception):
            raise found
        return found


def timed_call(runner: Runner, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
    """One inference and, for asynchronous devices, its completion, timed in this process (the
    in-process methods the benchmark scripts compare with; plans are timed in workers)."""

    def call() -> None:
        runner.run(feeds)
        runner.synchronize()

    return call


def evaluation_outputs(runner: Runner, data: Dataset, fixed_batch: int | None) -> np.ndarray:
    """The first model output for every sample of ``data``, in order (samples on axis 0)."""
    feeds = data.batches(fixed_batch or EVAL_BATCH, keep_tail=fixed_batch is None)
    return np.concatenate([runner.run(feed)[0] for feed in feeds])


def peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20  # macOS reports bytes


@dataclass
class Loaded:
    """A built and loaded plan, with what loading it cost. The caller closes ``runner``."""

    plan: PrecisionPlan
    artifact: Artifact
    runner: Runner
    load_s: float
    first_inference_ms: float
    rss_delta_mb: float
    peak_rss_mb: float | None

    def close(self) -> None:
        self.runner.close()


@dataclass(frozen=True)
class DropEstimate:
    """An accuracy drop scored on the first ``samples`` of the evaluation set, and why scoring
    stopped there: clearly ``over`` or clearly ``within`` the budget, ``all`` samples scored, or
    ``partial``: the caller's limit came first."""

    drop: float
    samples: int
    verdict: str
    low: float
    high: float


@dataclass(frozen=True)
class Scored:
    """A plan's metric on the evaluation set, its drop from fp32 on the same samples, and for a
    token metric each fidelity figure's change with its 95 % interval plus ``windows``: how
    many windows were scored (``[n]``)."""

    accuracy: float
    drop: float
    fidelity: dict[str, list[float]] | None = None


@runtime_checkable
class Evaluator(Protocol):
    """What the tuner needs from a harness; the tests' fake evaluator satisfies it too."""

    quick_data: Dataset
    first_look: int  # samples a sequential accuracy check scores first

    def resolve(self, plan: PrecisionPlan) -> PrecisionPlan: ...

    def build(self, plan: PrecisionPlan) -> Artifact: ...

    def load(self, plan: PrecisionPlan) -> Loaded: ...

    def accuracy_drop(self, runner: Runner, quick: bool) -> float: ...

    def sequential_drop(
        self, runner: Runner, budget: float, most: int | None = None, scored: list | None = None
    ) -> DropEstimate: ...

    def measure_baseline_ms(self, protocol: TimingProtocol, percentile: float = 50) -> float: ...

    def time(
        self, plans: Mapping[str, Loaded], protocol: TimingProtocol, stop: Callable[[Samples], bool] | None = None
    ) -> Mapping[str, np.ndarray]: ...


class Harness:
    """The fp32 baseline, its reference outputs and the calibrations of one model on one backend.

    Construction validates the inputs (labels, batch) and builds and loads the baseline (and,
    unless ``score`` is off, computes its reference outputs and accuracy); if the
    baseline cannot be built or run, ``baseline_error`` says why (``bench`` records that as a
    failed row) and ``require_baseline()`` raises. Call ``close()`` when done; not thread-safe.

    Sessions loaded here only score (idle threads do not spin); every timing runs each plan in a
    worker process of its own (``qbench.workers``); a ``pool`` given by the caller is shared (and
    closed by the caller).
    """

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
        workload: Workload = BATCH,
        score: bool = True,
        pool: WorkerPool | None = None,
        streams: int | None = None,
    ) -> None:
        self.backend, self.model, self.metric, self.machine = backend, model, metric, machine
        self._owns_pool = pool is None  # a tune shares one pool across its harnesses
        self.pool = WorkerPool() if pool is None else pool
        self.threads, self.workdir = threads, workdir
        self.streams = streams  # requests in flight per timed plan (throughput:BATCH:STREAMS); None: one call at a time
        self.calibration_data, self.evaluation_data = calibration_data, evaluation_data
        if metric.needs_labels and evaluation_data.labels is None:
            raise QbenchError(
                f"metric {metric.name!r} needs labels, but {evaluation_data.source} has no 'labels' array"
            )
        self.fixed_batch = fixed_batch_size(model)
        if self.fixed_batch is not None and batch_size not in (1, self.fixed_batch):
            fixed = self.fixed_batch
            raise QbenchError(f"the model's batch size is fixed at {fixed}; drop --batch or pass --batch {fixed}")
        self.batch_size = self.fixed_batch or batch_size
        if self.batch_size > len(evaluation_data):
            raise QbenchError(
                f"--batch {self.batch_size} is larger than the {len(evaluation_data)} evaluation samples of "
                f"{evaluation_data.source}; pass --batch {len(evaluation_data)} or less, or more data"
            )
        self.workload = workload
        self.feeds = workload.feeds(model, evaluation_data, self.batch_size)  # what every timed call runs
        # A decoder's logits are reduced window by window against fp32's distributions on disk.
        token = metric.token_level
        self.scorer = TokenScorer(len(evaluation_data), self._check_token_labels) if token else None
        self.eval_batch = TOKEN_BATCH if token else EVAL_BATCH
        # Windows hold many tokens each: 2 windows of 128 are 256 scored positions, and the
        # quick set (sensitivity, a trial's first look) is at most TOKEN_FIRST_LOOK windows.
        self.first_look, self.drop_chunk = (TOKEN_FIRST_LOOK, TOKEN_DROP_CHUNK) if token else (FIRST_LOOK, DROP_CHUNK)
        quick = min(quick_samples, TOKEN_FIRST_LOOK) if token else quick_samples
        self.quick_data = evaluation_data.take(0, min(quick, len(evaluation_data)))
        self.pool.prestart()  # the launcher imports while the baseline is built and scored
        self.calibration = Calibrations(backend, model, calibration_data, workdir)  # per plan: what its build needs
        self.baseline_plan = backend.resolve_plan(PrecisionPlan(name="fp32"), machine)
        self.baseline: Loaded | None = None
        self.baseline_error: str | None = None
        self.reference: np.ndarray | None = None  # fp32's outputs (a decoder's: for the windows scored so far)
        self.baseline_quick_accuracy = float("nan")
        self._baseline_accuracy: float | None = None
        try:
            self.baseline = self.load(self.baseline_plan)
            if not score:  # timing only: no reference outputs, no accuracy
                return
            # A decoder's fp32 runs the windows plans are scored on as they are reached (a
            # sequential check scores a prefix): the quick set first.
            first = self.quick_data if token else evaluation_data
            with phases.activity("accuracy"):
                self.reference = self._outputs(self.baseline.runner, first, 0, record=True)
        except Exception as exc:  # an op the runtime cannot load or run: bench records a failed row
            self.baseline_error = describe(exc)
            self.close()
            return
        if self.scorer is None:  # token metrics check their labels against each batch of logits
            metric.check_labels(evaluation_data.labels, self.reference, evaluation_data.source)
            self._baseline_accuracy = self._score(self.reference, evaluation_data)
        self.baseline_quick_accuracy = self._score(self.reference[: len(self.quick_data)], self.quick_data)
        # (a decoder's fp32 is checked on the quick set: the rest is scored when a plan needs it)
        figure = self.baseline_quick_accuracy if self.scorer is not None else self._baseline_accuracy
        if not (np.isfinite(figure) and np.isfinite(self.baseline_quick_accuracy)):
            # as any plan whose score is not a number: fp32 fails, with the reason
            self.baseline_error = f"metric {metric.name!r} is {figure} on fp32's outputs"
            self.reference = None
            self.close()

    @property
    def baseline_accuracy(self) -> float:
        """fp32's metric on the whole evaluation set (a decoder's fp32 runs the windows not
        scored yet first)."""
        if self._baseline_accuracy is None:
            if self.reference is None:
                return float("nan")
            self._baseline_accuracy = self.baseline_scored().accuracy
        return self._baseline_accuracy

    def baseline_scored(self, whole: bool = True) -> Scored:
        """fp32's own ``Scored``: on the whole evaluation set, or (``whole=False``) on the
        samples scored so far (a sequential bench's longest prefix)."""
        n = len(self.evaluation_data) if whole or self.scorer is None else len(self.reference)
        reference = self._reference_upto(n)
        accuracy = self.metric(reference, self.evaluation_data.take(0, n).labels, reference)
        fidelity = None if self.scorer is None else {**intervals(reference, reference), "windows": [n]}
        return Scored(accuracy, self.metric.drop(accuracy, accuracy), fidelity)

    def _reference_upto(self, stop: int) -> np.ndarray:
        """fp32's outputs for samples ``[0, stop)``; a decoder's fp32 runs the windows it has not yet."""
        have = len(self.reference)
        if self.scorer is not None and stop > have:
            with phases.activity("accuracy"):
                data = self.evaluation_data.take(have, stop)
                more = self._outputs(self.require_baseline().runner, data, have, record=True)
            self.reference = np.concatenate([self.reference, more])
        return self.reference[:stop]

    def require_baseline(self) -> Loaded:
        if self.baseline is None:
            raise QbenchError(f"the fp32 baseline of {self.model.name} failed: {self.baseline_error}")
        return self.baseline

    # -- build and load ------------------------------------------------------------------------

    def resolve(self, plan: PrecisionPlan) -> PrecisionPlan:
        return self.backend.resolve_plan(plan, self.machine)

    def build(self, plan: PrecisionPlan) -> Artifact:
        with phases.activity("build"):
            return self.backend.build(self.model, plan, self.calibration(plan), self.workdir)

    def load(self, plan: PrecisionPlan) -> Loaded:
        """Build and load a resolved plan and run one cold evaluation batch; the caller closes it."""
        artifact = self.build(plan)
        with phases.activity("load"):
            return self._load(plan, artifact)

    def _load(self, plan: PrecisionPlan, artifact: Artifact) -> Loaded:
        process = psutil.Process()
        rss_before = process.memory_info().rss
        start = time.perf_counter()
        runner = self.backend.load(artifact, self.threads, shared_process=True)
        load_s = time.perf_counter() - start
        try:
            start = time.perf_counter()
            # One window warms a decoder (a batch of them is seconds of prefill, every trial).
            cold = self.fixed_batch or (1 if self.scorer is not None else self.eval_batch)
            runner.run(next(self.evaluation_data.batches(cold)))
            runner.synchronize()
            first_ms = (time.perf_counter() - start) * 1e3
        except BaseException:
            runner.close()
            raise
        rss_mb = (process.memory_info().rss - rss_before) / 2**20
        return Loaded(plan, artifact, runner, load_s, first_ms, rss_mb, peak_rss_mb())

    # -- accuracy ------------------------------------------------------------------------------

    def _outputs(self, runner: Runner, data: Dataset, start: int, record: bool = False) -> np.ndarray:
        """What the metric scores for ``data``, which is samples ``[start, ...)`` of the evaluation
        set: the first output, or a token metric's per-window sums (``record``: fp32's, kept as
        the reference; a plan's windows need fp32's recorded first: ``_reference_upto``)."""
        if self.scorer is None:
            return evaluation_outputs(runner, data, self.fixed_batch)
        batch = self.fixed_batch or self.eval_batch
        return self.scorer.outputs(lambda feed: runner.run(feed)[0], data, start, batch, record)

    def _check_token_labels(self, labels: np.ndarray, logits: np.ndarray) -> None:
        self.metric.check_labels(labels, logits, self.evaluation_data.source)

    def _score(self, outputs: np.ndarray, data: Dataset) -> float:
        reference = None if self.reference is None else self._reference_upto(len(data))
        return self.metric(outputs, data.labels, reference)

    @property
    def unscorable(self) -> str | None:
        """Why no plan can be scored (the metric compares with fp32, whose baseline failed), or None."""
        if self.metric.needs_reference and self.reference is None:
            name, error = self.metric.name, self.baseline_error
            return f"no fp32 reference outputs for metric {name!r}: the baseline failed ({error})"
        return None

    def accuracy(self, runner: Runner, quick: bool = False) -> float:
        """The metric on the quick subset or the whole evaluation set, against the fp32 reference."""
        if self.unscorable:
            raise QbenchError(self.unscorable)
        data = self.quick_data if quick else self.evaluation_data
        if self.scorer is not None:
            self._reference_upto(len(data))
        with phases.activity("accuracy"):
            return self._score(self._outputs(runner, data, 0), data)

    def scored(self, runner: Runner, budget: float | None = None) -> Scored:
        """The plan's ``Scored`` on the evaluation set. With a ``budget`` a token metric scores a
        growing prefix, doubling from ``first_look`` windows, until the budget metric's interval
        lies above the budget (out), or below it and narrower than a quarter of it, or the whole
        set is scored."""
        if self.unscorable:
            raise QbenchError(self.unscorable)
        data, total = self.evaluation_data, len(self.evaluation_data)
        n = total if budget is None or self.scorer is None else min(self.first_look, total)
        outputs: list[np.ndarray] = []
        while True:
            reference = self._reference_upto(n)
            done = sum(len(o) for o in outputs)
            with phases.activity("accuracy"):
                outputs.append(self._outputs(runner, data.take(done, n), done))
            scored = np.concatenate(outputs)
            changes = intervals(scored, reference) if self.scorer is not None else None
            if n >= total or (budget is not None and self._decided(changes, budget)):
                break
            n = min(2 * n, total)
        labels = data.take(0, n).labels
        accuracy, baseline = self.metric(scored, labels, reference), self.metric(reference, labels, reference)
        if changes is not None:
            changes["windows"] = [n]
        return Scored(accuracy, self.metric.drop(baseline, accuracy), changes)

    def _decided(self, changes: dict[str, list[float]] | None, budget: float) -> bool:
        """Whether the budget metric's interval lies above the budget, or below it and narrower
        than a quarter of it (a metric without an interval is never decided early)."""
        interval = budget_interval(changes, self.metric.name)
        if interval is None:
            return False
        low, high = interval
        return low > budget or (high <= budget and high - low <= budget / 4)

    def accuracy_drop(self, runner: Runner, quick: bool) -> float:
        """Drop from the fp32 baseline on the quick subset or the whole evaluation set."""
        baseline = self.baseline_quick_accuracy if quick else self.baseline_accuracy
        return self.metric.drop(baseline, self.accuracy(runner, quick))

    def sequential_drop(
        self,
        runner: Runner,
        budget: float,
        first: int | None = None,
        most: int | None = None,
        scored: list[np.ndarray] | None = None,
    ) -> DropEstimate:
        """The drop on a growing prefix of the evaluation set (shuffle it first: ``Dataset.shuffled``),
        doubling from ``first`` samples (default: ``first_look``), stopping once the whole set's drop is clearly over or
        within ``budget`` (``statistics.drop_bounds``), or (verdict ``partial``) once ``most``
        samples are scored. ``scored`` keeps the outputs so far, so a later call goes on where
        this one stopped. Scoring all of it gives the same drop as ``accuracy_drop(quick=False)``."""
        if self.unscorable:
            raise QbenchError(self.unscorable)
        data, total = self.evaluation_data, len(self.evaluation_data)
        step = self.fixed_batch or 1
        outputs = [] if scored is None else scored
        chunk = self.drop_chunk
        look = max(first or self.first_look, 2 * chunk)
        while True:
            stop = total if look >= total else look - look % step
            done = sum(len(o) for o in outputs)
            if done > stop:  # an earlier call went past this look
                look *= 2
                continue
            if self.scorer is not None:
                self._reference_upto(stop)
            with phases.activity("accuracy"):
                if stop > done:
                    outputs.append(self._outputs(runner, data.take(done, stop), done))
                n = sum(len(o) for o in outputs)
                out = np.concatenate(outputs)
                drop = self._prefix_drop(out, 0, n)
                starts = range(0, n - chunk + 1, chunk)
                chunk_drops = np.array([self._prefix_drop(out, a, a + chunk) for a in starts])
            # A proportion's error is never taken below one sample's worth; a token metric's
            # chunks each hold thousands of positions, and KL is no proportion.
            low, high = drop_bounds(chunk_drops, drop, n, total, floor=self.scorer is None)
            if stop >= total:
                return DropEstimate(drop, n, "all", low, high)
            if low > budget or high <= budget:
                return DropEstimate(drop, n, "over" if low > budget else "within", low, high)
            if most is not None and n >= most:
                return DropEstimate(drop, n, "partial", low, high)
            look *= 2

    def _prefix_drop(self, outputs: np.ndarray, start: int, stop: int) -> float:
        """The drop on samples ``[start, stop)`` of the evaluation set, from the plan's outputs."""
        data = self.evaluation_data.take(start, stop)
        reference = None if self.reference is None else self._reference_upto(stop)[start:stop]
        baseline = self.metric(reference, data.labels, reference)
        return self.metric.drop(baseline, self.metric(outputs[start:stop], data.labels, reference))

    # -- timing --------------------------------------------------------------------------------

    def deployment(self, artifact: Artifact) -> Deployment:
        """``artifact`` as a worker times it: this harness's backend, threads and timed call."""
        return Deployment(self.backend, artifact, self.threads, self.feeds, self.streams)

    def time(
        self,
        plans: Mapping[str, Loaded],
        protocol: TimingProtocol,
        others: Mapping[str, Deployment] = {},
        with_baseline: bool = True,
        stop: Callable[[Samples], bool] | None = None,
        again: bool = False,
    ) -> Samples:
        """Raw samples of each plan, each in its own worker process, timed in alternating blocks
        with the fp32 baseline (under ``FP32``); without a baseline (it failed to load or run, or
        ``with_baseline`` is off), the plans are timed among themselves. ``others`` are timed in
        the same rounds (a reference workload, a previous run's artifact); ``again`` adds fp32's
        second worker (``FP32_AGAIN``), the A/A check. ``stop`` may end the timing early
        (``measure_interleaved``). The samples' ``loads`` say what each worker loaded."""
        deployments: dict[str, Deployment] = {}
        if self.baseline and with_baseline:
            deployments[FP32] = self.deployment(self.baseline.artifact)
            if again:
                deployments[FP32_AGAIN] = self.deployment(self.baseline.artifact)
        deployments.update({key: self.deployment(loaded.artifact) for key, loaded in plans.items()})
        deployments.update(others)
        with phases.activity("workers"):  # fork or reuse a worker per plan, load what it times
            workers = self.pool.acquire(deployments)
        with phases.activity("timing"):
            if self.streams is None:
                samples = measure_interleaved(workers, protocol, stop=stop)
            else:  # requests in flight: completed calls per second, per round
                samples = measure_rates(workers, protocol)
        samples.loads = {name: worker.load_info for name, worker in workers.items()}
        return samples

    def serve(self, plans: Mapping[str, Loaded], qps: float, seconds: float) -> dict[str, list[np.ndarray]]:
        """Each plan (and fp32, under ``FP32``) serving Poisson arrivals at ``qps`` in its own
        worker, one request at a time: ``SERVER_ROUNDS`` rounds of ``seconds / SERVER_ROUNDS``,
        the plans taking turns in a rotating order, every plan given the same arrivals in a
        round. Returns each one's latencies (arrival to answer, ns) per round."""
        deployments = {FP32: self.deployment(self.require_baseline().artifact)} if self.baseline else {}
        deployments.update({key: self.deployment(loaded.artifact) for key, loaded in plans.items()})
        with phases.activity("workers"):
            workers = self.pool.acquire(deployments)
        names = list(workers)
        served: dict[str, list[np.ndarray]] = {name: [] for name in names}
        with phases.activity("timing"):
            for number in range(SERVER_ROUNDS):
                arrivals = arrivals_ns(qps, seconds / SERVER_ROUNDS, seed=number)
                for name in names[number % len(names) :] + names[: number % len(names)]:
                    workers[name].times(SERVER_WARMUP_CALLS)  # a resumed worker's caches are cold
                    served[name].append(np.asarray(workers[name].serve(arrivals), dtype=np.int64))
        return served

    def highest_rate(self, loaded: Loaded, bound_ms: float, progress: Callable[[str], None]) -> float:
        """The highest Poisson arrival rate (requests/s) at which the plan, alone in its worker,
        keeps its p99 (waiting included) within ``bound_ms``: a bisection in log space between a
        twentieth of its capacity (one over its median service time) and its capacity, each probe
        a ``RATE_PROBE_SECONDS`` server run. 0 when even the lowest rate misses the bound."""
        worker = self.pool.acquire({"probe": self.deployment(loaded.artifact)})["probe"]
        with phases.activity("timing"):
            service_ns = float(np.median(worker.times(SERVER_WARMUP_CALLS * 4)))
            capacity = 1e9 / service_ns
            low, high, best = math.log(capacity / 20), math.log(capacity), 0.0
            for probe in range(RATE_PROBES):
                rate = math.exp(high if probe == 0 else (low + high) / 2)
                worker.times(SERVER_WARMUP_CALLS)
                latencies = worker.serve(arrivals_ns(rate, RATE_PROBE_SECONDS, seed=probe))
                held = np.percentile(latencies, 99) / 1e6 <= bound_ms
                progress(f"{loaded.plan.name}: {rate:,.1f} requests/s, p99 {np.percentile(latencies, 99) / 1e6:.2f} ms")
                if held:
                    best = max(best, rate)
                    low = math.log(rate)
                    if probe == 0:
                        break  # it holds the bound at full capacity
                else:
                    high = math.log(rate)
        return best

    def measure_baseline_ms(self, protocol: TimingProtocol, percentile: float = 50) -> float:
        """fp32's median (or another ``percentile``) per call, in ms, timed in its own worker."""
        self.require_baseline()
        return float(np.percentile(self.time({}, protocol)[FP32], percentile)) / 1e6

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()
        if self._owns_pool:
            self.pool.close()
        if self.baseline is not None:
            self.baseline.close()
            self.baseline = None
