"""The Optuna study: one categorical per layer group, latency as the objective, the accuracy
budget (and an optional weight-size budget) as real Optuna constraints (``Trial.set_constraint``),
seeded with fp32, each uniform precision and the sensitivity ladder.

Storage is any Optuna RDB URL (a SQLite file by default, PostgreSQL for several workers):
trials are written as they finish, so a killed run resumes where it stopped, and workers on
identical machines share one study through Optuna's own distributed mode. Heartbeats turn the
trials of a killed worker into failures instead of leaving them running forever.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from qbench.errors import QbenchError, describe, first_line
from qbench.harness import DropEstimate, Evaluator, Loaded
from qbench.objectives import objective
from qbench.plan import PrecisionPlan
from qbench.runspec import Tune
from qbench.search._sensitivity import SensitivityReport
from qbench.search._space import OPTION_PREFIX, SearchSpace
from qbench.search._trial_timing import (
    TrialTiming,
    clearly_slower,
    time_against_baseline,
    trial_protocol,
)
from qbench.statistics import Speedup
from qbench.store import safe_url, without_password

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.FAIL)
HEARTBEAT_SECONDS = 2
GRACE_SECONDS = 6  # a killed worker's trial is failed (and counted) this soon after
BUDGET_CONSTRAINT = "accuracy_drop_over_budget"
MEMORY_CONSTRAINT = "weight_mb_over_budget"  # relative: (MB - max_mb) / max_mb
SEEDED_ATTR = "seeded"
SEED_WAIT_SECONDS = 600.0  # the creator measures fp32 and seeds right after creating the study
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class StudySettings:
    max_drop: float
    n_trials: int = 40
    timeout: float | None = None
    patience: int | None = 20  # stop after this many finished trials without a better feasible one
    pareto: bool | str = False  # multi-objective: True (the figure, drop) or "mb" (the figure, MB within the budget)
    ladder: int = 8  # seed "keep the k most sensitive groups in float" for k = 1..ladder
    seed: int = 0
    max_mb: float | None = None  # budget on the built artifact's size (weights), in MB (1e6 bytes)
    # Decide each trial's accuracy and latency sequentially (stop once the answer is clear);
    # off: score every trial on the whole tuning set and time it with the full trial protocol.
    sequential: bool = True
    objective: str = "p50"  # the figure minimized (``qbench.objectives``)

    @classmethod
    def from_tune(cls, tune: Tune) -> StudySettings:
        """The study part of a run spec's ``Tune`` (validated there)."""
        return cls(
            max_drop=tune.max_drop,
            n_trials=tune.trials,
            timeout=tune.timeout,
            patience=tune.patience,
            pareto=tune.pareto,
            seed=tune.seed,
            max_mb=tune.max_mb,
            sequential=tune.sequential,
            objective=tune.objective,
        )

    def __post_init__(self) -> None:
        objective(self.objective)
        if not 0 <= self.seed <= 2**32 - 1:
            raise QbenchError(f"`seed` must be between 0 and 2**32 - 1, but got {self.seed}")
        if not 0 <= self.max_drop < 1:
            raise QbenchError(f"`max_drop` must be between 0 and 1 (e.g. 0.01 or 1%), but got {self.max_drop}")
        if self.n_trials < 1:
            raise QbenchError(f"`trials` must be at least 1, but got {self.n_trials}")
        if self.timeout is not None and self.timeout <= 0:
            raise QbenchError(f"`timeout` must be a positive number of seconds, but got {self.timeout}")
        if self.max_mb is not None and not self.max_mb > 0:
            raise QbenchError(f"`max_mb` must be a positive number of megabytes, but got {self.max_mb}")


def front_axis(pareto: bool | str) -> str | None:
    """The Pareto front's second axis: ``drop``, ``mb``, or None without ``--pareto``."""
    return "mb" if pareto == "mb" else ("drop" if pareto else None)


def violation(trial: FrozenTrial) -> float:
    """How far the trial exceeds its budgets, the worst of them (<= 0: feasible; unscored: 1)."""
    return max(trial.constraints.values()) if trial.constraints else 1.0


def _rdb_storage(storage_url: str) -> optuna.storages.RDBStorage:
    """Open (creating its tables if needed) an RDB storage with heartbeats. Workers that start
    together on an empty database race to create the tables; the loser retries and finds them."""
    import sqlalchemy as sa

    sqlite = storage_url.startswith("sqlite")
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" but stable since Optuna 2.x
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    storage_url,
                    heartbeat_interval=HEARTBEAT_SECONDS,
                    grace_period=GRACE_SECONDS,
                    engine_kwargs={"connect_args": {"timeout": 30}} if sqlite else None,
                )
            break
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):  # "already exists"
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    if sqlite:
        _serialize_sqlite_transactions(storage.engine)
    return storage


def _serialize_sqlite_transactions(engine) -> None:
    """Start every transaction with BEGIN IMMEDIATE (SQLAlchemy's recipe for pysqlite).

    Optuna hands a queued trial to one worker by reading it as WAITING and writing RUNNING in one
    transaction, locked with SELECT ... FOR UPDATE, which SQLite ignores; and pysqlite begins a
    transaction only at the first write. So two workers both read WAITING, both take the trial,
    and the second to finish dies on "Cannot tell a COMPLETE trial" (2 processes popping 60
    queued trials shared 13-28 of them). BEGIN IMMEDIATE takes the write lock first: the second
    worker reads RUNNING and moves on."""
    import sqlalchemy as sa

    @sa.event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # pysqlite stops issuing its own deferred BEGIN

    @sa.event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections pooled while the tables were created lack the connect hook


def open_study(storage_url: str, study_name: str, settings: StudySettings) -> tuple[optuna.Study, bool]:
    """The study, and whether this call created it. Creation is atomic in the storage (a unique
    study name), so when workers start together exactly one of them learns it is the creator."""
    try:
        storage = _rdb_storage(storage_url)
    except Exception as exc:  # SQLAlchemy and driver errors all mean "cannot use this URL"
        raise QbenchError(
            f"cannot open study storage {safe_url(storage_url)}: {without_password(first_line(exc), storage_url)}"
        ) from None  # the chained exception would print the URL with its password
    # The sampler reads each trial's constraint (set with Trial.set_constraint) to tell feasible
    # from infeasible trials, so the budget shapes where it searches, not only what we keep.
    sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=8, multivariate=True)
    directions = ["minimize", "minimize"] if settings.pareto else ["minimize"]
    try:
        return optuna.create_study(storage=storage, sampler=sampler, study_name=study_name, directions=directions), True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, sampler=sampler, study_name=study_name)
    if len(study.directions) != len(directions):
        raise QbenchError(
            f"study {study_name!r} in {safe_url(storage_url)} was created "
            f"{'with' if len(study.directions) == 2 else 'without'} --pareto; pass another --study"
        )
    return study, False


def seed_study(
    study: optuna.Study,
    space: SearchSpace,
    report: SensitivityReport | None,
    ladder: int,
    creator: bool = True,
    precisions: Sequence[str] = ("int8",),
) -> None:
    """Enqueue fp32, each of ``precisions`` uniformly, the first of them in each scheme (every
    searched option's other values, one at a time), and the ladder in the report's precision.

    Only the worker that created the study seeds it; another worker waits until the seeds are
    in (so it neither queues them again nor samples ahead of them). A resumed study was seeded
    already. Should the creator die before seeding, a waiting worker seeds after SEED_WAIT_SECONDS."""
    if not creator:
        if _seeded_by_creator(study):
            return
        log.warning("the worker that created study %s has not seeded it; seeding here", study.study_name)
    # Options left out of an enqueued trial would be sampled at random: pin them to the defaults.
    defaults = {OPTION_PREFIX + field: values[0] for field, values in space.option_choices}
    uniform = {p: {**space.uniform(p), **defaults} for p in precisions}
    seeds = [{**space.uniform("fp32"), **defaults}, *uniform.values()]
    seeds += [variant for _, variant in space.option_variants(uniform[precisions[0]])]
    if report is not None:
        order = report.ordered_groups()
        low = {**space.uniform(report.precision), **defaults}
        for k in range(1, min(ladder, len(order) - 1) + 1):
            seeds.append({**low, **{name: "fp32" for name in order[:k]}})
    for params in seeds:
        study.enqueue_trial(params, skip_if_exists=True)
    study.set_user_attr(SEEDED_ATTR, True)


def _seeded_by_creator(study: optuna.Study) -> bool:
    deadline = time.monotonic() + SEED_WAIT_SECONDS
    while SEEDED_ATTR not in study.user_attrs:  # read from the storage on each access
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def finished_count(study: optuna.Study) -> int:
    """Trials that count against ``n_trials``: complete or failed (not those pruned because the
    budget was used up when they started)."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def trial_summary(study: optuna.Study) -> str:
    """``"12 trials: 9 plans measured, 2 repeats reused, 1 failed"``."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    reused = sum(1 for t in complete if "reused_from" in t.user_attrs)
    failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    return (
        f"{len(complete) + failed} trials: {len(complete) - reused} plans measured, "
        f"{reused} repeats reused, {failed} failed"
    )


def feasible_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Completed, timed trials within the budget, fastest first."""
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if violation(t) <= 0 and t.user_attrs.get("timed")
    ]
    return sorted(trials, key=lambda t: t.values[0])


def pareto_front(study: optuna.Study, axis: str = "drop") -> list[FrozenTrial]:
    """Scored trials no other scored trial beats on both the objective's figure and ``axis``:
    the accuracy drop (on the full tuning set), or the size (``mb``: trials within every budget)."""
    timed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("timed")]
    if axis == "mb":
        timed = [t for t in timed if violation(t) <= 0 and "mb" in t.user_attrs]
    front = []
    for t in timed:
        figure, other = t.values[0], t.user_attrs[axis]
        dominated = any(
            o.values[0] <= figure
            and o.user_attrs[axis] <= other
            and (o.values[0] < figure or o.user_attrs[axis] < other)
            for o in timed
        )
        repeat = any(trial_plan(t).content_hash == trial_plan(f).content_hash for f in front)  # reused measurement
        if not dominated and not repeat:
            front.append(t)
    return sorted(front, key=lambda t: t.values[0])


def trial_speedup(trial: FrozenTrial) -> Speedup:
    """A timed trial's paired speedup against fp32, with its interval."""
    return Speedup(trial.user_attrs["speedup"], *trial.user_attrs["speedup_ci"])


def trial_plan(trial: FrozenTrial) -> PrecisionPlan:
    return PrecisionPlan.from_json(trial.user_attrs["plan"], f"trial {trial.number}")


class _Objective:
    def __init__(self, evaluator: Evaluator, space: SearchSpace, settings: StudySettings, reference_ms: float):
        self.evaluator, self.space, self.settings, self.reference_ms = evaluator, space, settings, reference_ms
        self.objective = objective(settings.objective)
        self.axis = front_axis(settings.pareto)
        self.drop_front = self.axis == "drop"  # a front of drops scores and times plans over the budget too

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        study = trial.study
        # Count only running trials numbered below this one: when two workers start trials at
        # once, exactly the lower-numbered one goes ahead, so the total lands on n_trials.
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        ahead = sum(1 for t in running if t.number < trial.number)
        if finished_count(study) + ahead >= self.settings.n_trials:
            study.stop()
            raise optuna.TrialPruned("the study's trial budget is used up")
        assignment = {name: trial.suggest_categorical(name, values) for name, values in self.space.parameters()}
        earlier = self._measured(study, trial, len(assignment))
        if earlier is not None:  # samplers repeat plans in small spaces; reuse, don't re-measure
            return self._reuse(trial, earlier)
        plan = self.evaluator.resolve(self.space.plan(assignment, f"trial-{trial.number}"))
        trial.set_user_attr("plan", plan.to_json())
        trial.set_user_attr("low_precision_layers", len(plan.layers))
        try:
            return self._score(trial, plan)
        except Exception as exc:
            trial.set_user_attr("error", describe(exc))
            raise

    @staticmethod
    def _measured(study: optuna.Study, trial: optuna.Trial, choices: int) -> FrozenTrial | None:
        """The trial that measured this plan already, if any. When another worker is measuring
        it right now, wait for its result rather than measure the plan twice; should that trial
        fail (a killed worker's trial fails after the heartbeat's grace period), measure it here.

        Of two trials of one plan the lower number measures and the other waits, so a trial also
        waits while a lower-numbered one is still making its ``choices``: until then it cannot
        tell whether they chose the same plan (both measured one plan in a CI run when it did not)."""
        while True:
            trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
            same = [
                t
                for t in trials
                if t.number != trial.number and t.params == trial.params and "reused_from" not in t.user_attrs
            ]
            done = [t for t in same if t.state == TrialState.COMPLETE and "plan" in t.user_attrs]
            if done:
                return done[0]
            same_numbers = {t.number for t in same}
            ahead = [t for t in trials if t.state == TrialState.RUNNING and t.number < trial.number]
            if not any(t.number in same_numbers or len(t.params) < choices for t in ahead):
                return None
            time.sleep(POLL_SECONDS)
            with warnings.catch_warnings():  # "experimental" since Optuna 2.9, as heartbeats are
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # a killed worker's trial, so the wait ends

    def _reuse(self, trial: optuna.Trial, earlier: FrozenTrial) -> float | tuple[float, float]:
        for key, value in earlier.user_attrs.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("reused_from", earlier.number)
        for key, value in (earlier.constraints or {BUDGET_CONSTRAINT: 1.0}).items():
            trial.set_constraint(key, value)
        return tuple(earlier.values) if self.settings.pareto else earlier.values[0]

    def _record_drop(self, trial: optuna.Trial, estimate: DropEstimate | float) -> float:
        drop = estimate if isinstance(estimate, float) else estimate.drop
        trial.set_user_attr("drop", drop)
        if not isinstance(estimate, float):
            trial.set_user_attr("drop_samples", estimate.samples)
            trial.set_user_attr("drop_verdict", estimate.verdict)
        trial.set_constraint(BUDGET_CONSTRAINT, drop - self.settings.max_drop)
        return drop

    def _measure(self, trial: optuna.Trial, loaded: Loaded) -> tuple[float, TrialTiming | None]:
        """The drop and, unless it is over the budget (outside ``--pareto``), the timing.

        Sequentially: the first look at accuracy rejects a plan clearly over the budget; then
        the plan is timed against fp32, stopping early once it is clearly slower than fp32 or
        the fastest feasible trial so far (paired, each against fp32); only a plan that could
        still win is scored on as much data as its budget decision needs. Otherwise
        (``--exhaustive``, ``--pareto``): all the tuning data and the full trial protocol. ``loaded``
        is scored here and timed in its own worker process (``Evaluator.time``)."""
        budget = self.settings.max_drop
        if not self.settings.sequential or self.drop_front:  # the Pareto front wants exact drops
            drop = self._record_drop(trial, self.evaluator.accuracy_drop(loaded.runner, quick=False))
            if drop > budget and not self.drop_front:
                return drop, None
            return drop, self._time(loaded)
        scored: list = []
        first = self.evaluator.sequential_drop(loaded.runner, budget, most=self.evaluator.first_look, scored=scored)
        if first.verdict != "partial" and first.drop > budget:  # decided over the budget already
            return self._record_drop(trial, first), None
        best = feasible_trials(trial.study)
        stop = clearly_slower(trial_speedup(best[0]) if best else None, self.objective)
        timing = self._time(loaded, stop)
        estimate = first if stop.decided or first.verdict != "partial" else None
        if estimate is None:
            estimate = self.evaluator.sequential_drop(loaded.runner, budget, scored=scored)
        trial.set_user_attr("beaten", stop.decided)  # timing stopped: clearly slower, cannot win
        drop = self._record_drop(trial, estimate)
        return drop, None if drop > budget else timing

    def _time(self, loaded: Loaded, stop: clearly_slower | None = None) -> TrialTiming:
        """The plan's figure on the objective, from a paired timing against fp32."""
        timings = time_against_baseline(
            self.evaluator, {"c": loaded}, self.reference_ms, stop=stop, objective=self.objective
        )
        return timings["c"]

    def _result(self, trial: optuna.Trial, figure: float, drop: float) -> float | tuple[float, float]:
        """The objective's figure, and with ``--pareto`` the front's second axis."""
        if self.axis is None:
            return figure
        return (figure, drop) if self.axis == "drop" else (figure, trial.user_attrs["mb"])

    def _score(self, trial: optuna.Trial, plan: PrecisionPlan) -> float | tuple[float, float]:
        if self.objective.size:
            return self._score_size(trial, plan)
        if not plan.layers and self.settings.max_mb is None and self.axis != "mb":
            return self._fp32(trial)
        started = time.perf_counter()
        if self.settings.max_mb is not None or self.axis == "mb":  # the build alone tells its size
            mb = self.evaluator.build(plan).size_bytes / 1e6
            trial.set_user_attr("mb", mb)
        if self.settings.max_mb is not None:  # over the size budget: no session, no accuracy
            over = mb / self.settings.max_mb - 1
            trial.set_constraint(MEMORY_CONSTRAINT, over)
            if over > 0:
                trial.set_user_attr("timed", False)
                trial.set_constraint(BUDGET_CONSTRAINT, 0.0)  # not scored; every trial has both keys
                return self._result(trial, self.reference_ms, 1.0)
        loaded = self.evaluator.load(plan)  # the artifact just built is a cache hit
        try:
            drop, timing = self._measure(trial, loaded)
        finally:
            loaded.close()
        if timing is None:
            trial.set_user_attr("timed", False)
            return self._result(trial, self.reference_ms, drop)
        trial.set_user_attr("timed", True)
        trial.set_user_attr("speedup", timing.speedup)
        trial.set_user_attr("speedup_ci", [timing.speedup_ci_low, timing.speedup_ci_high])
        trial.set_user_attr("seconds", time.perf_counter() - started)
        return self._result(trial, timing.latency_ms, drop)

    def _fp32(self, trial: optuna.Trial) -> float | tuple[float, float]:
        """A plan with every layer in fp32 is the baseline itself: no drop, and fp32's speed
        exactly (timing it against itself only measured noise, 12 s of an LLM tune)."""
        self._record_drop(trial, 0.0)
        trial.set_user_attr("timed", True)
        trial.set_user_attr("speedup", 1.0)
        trial.set_user_attr("speedup_ci", [1.0, 1.0])
        trial.set_user_attr("seconds", 0.0)
        return self._result(trial, self.reference_ms, 0.0)

    def _score_size(self, trial: optuna.Trial, plan: PrecisionPlan) -> float | tuple[float, float]:
        """The ``mb`` objective: the built artifact's size, where the plan keeps the accuracy
        budget (decided as for a timed objective); nothing is timed. Its "speedup" is fp32's MB
        over the plan's, exact."""
        mb = self.evaluator.build(plan).size_bytes / 1e6
        trial.set_user_attr("mb", mb)
        if self.settings.max_mb is not None:
            trial.set_constraint(MEMORY_CONSTRAINT, mb / self.settings.max_mb - 1)
        loaded = self.evaluator.load(plan)  # the artifact just built is a cache hit
        try:
            if self.settings.sequential and not self.drop_front:
                estimate = self.evaluator.sequential_drop(loaded.runner, self.settings.max_drop)
            else:  # the Pareto front wants exact drops
                estimate = self.evaluator.accuracy_drop(loaded.runner, quick=False)
        finally:
            loaded.close()
        drop = self._record_drop(trial, estimate)
        scored = drop <= self.settings.max_drop or self.drop_front
        trial.set_user_attr("timed", scored)  # "scored on the objective": feasible, on the front
        smaller = self.reference_ms / mb
        trial.set_user_attr("speedup", smaller)
        trial.set_user_attr("speedup_ci", [smaller, smaller])
        return self._result(trial, mb if scored else self.reference_ms, drop)


def run_study(
    study: optuna.Study,
    evaluator: Evaluator,
    space: SearchSpace,
    settings: StudySettings,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> None:
    """Run trials until the study has ``n_trials`` finished ones, the timeout passes, or
    ``patience`` finished trials bring no better feasible latency."""
    if "fp32_reference_ms" not in study.user_attrs:  # the first worker fixes the scale of the figure
        goal = objective(settings.objective)
        if goal.size:  # fp32's MB: the figure of the mb objective
            reference = evaluator.build(evaluator.resolve(PrecisionPlan(name="fp32"))).size_bytes / 1e6
        else:
            reference = evaluator.measure_baseline_ms(trial_protocol(goal), goal.percentile)
        if goal.bound_ms is not None and reference > goal.bound_ms:  # no rate is served within it
            raise QbenchError(
                f"fp32's p99 call takes {reference:.2f} ms here, over the {goal.bound_ms:g} ms bound of {goal.name}: "
                f"no rate keeps p99 within it; give a bound above {reference:.2f} ms, or use --objective p99"
            )
        study.set_user_attr("fp32_reference_ms", reference)
        study.set_user_attr("space", json.dumps([list(g.layers) for g in space.groups]))
    reference_ms = study.user_attrs["fp32_reference_ms"]

    def patience(study: optuna.Study, trial: FrozenTrial) -> None:
        if on_trial is not None:
            on_trial(study, trial)
        if settings.patience is None:
            return
        finished = sorted(study.get_trials(deepcopy=False, states=FINISHED), key=lambda t: t.number)
        best_at, best = None, float("inf")
        for index, t in enumerate(finished):
            if t.state == TrialState.COMPLETE and t.user_attrs.get("timed") and violation(t) <= 0:
                if t.values[0] < best * 0.99:  # a 1 % gain counts as progress; less is timing noise
                    best, best_at = t.values[0], index
        if best_at is not None and len(finished) - 1 - best_at >= settings.patience:
            log.info("no better feasible plan in %d trials; stopping", settings.patience)
            study.stop()

    remaining = settings.n_trials - finished_count(study)
    if remaining <= 0:
        return
    study.optimize(
        _Objective(evaluator, space, settings, reference_ms),
        n_trials=remaining,
        timeout=settings.timeout,
        catch=(Exception,),
        callbacks=[patience],
    )
