"""``qbench tune``: sensitivity, the study, and a final selection measured on held-out data."""

from __future__ import annotations

import hashlib
import logging
import pathlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import pandas as pd

from qbench import phases
from qbench.benchmark import BenchSettings, run_bench
from qbench.cache import short_stem
from qbench.data import Dataset
from qbench.errors import QbenchError
from qbench.fidelity import budget_interval
from qbench.harness import FIRST_LOOK, Harness, Loaded
from qbench.machine import Machine, isa_summary
from qbench.measure import TimingProtocol
from qbench.metrics import Metric
from qbench.model import OnnxModel
from qbench.objectives import objective
from qbench.plan import PlanOptions, PrecisionPlan, TunedOn, recipe_plan
from qbench.report.tables import markdown_table
from qbench.runspec import LoadedSubject, RunSpec
from qbench.scenario import LATENCY, Scenario
from qbench.search._select import select, smallest
from qbench.search._sensitivity import SensitivityReport, analyze_sensitivity
from qbench.search._space import SearchSpace, build_space
from qbench.search._study import (
    SEEDED_ATTR,
    StudySettings,
    feasible_trials,
    front_axis,
    open_study,
    pareto_front,
    run_study,
    seed_study,
    trial_plan,
    trial_speedup,
    trial_summary,
)
from qbench.search._trial_timing import trial_protocol
from qbench.statistics import Speedup, relative
from qbench.store import Leaderboard, ResultRow
from qbench.workers import WorkerPool
from qbench.workload import BATCH, Workload

if TYPE_CHECKING:
    from qbench.backends import Backend

log = logging.getLogger(__name__)

FINAL_PROTOCOL = TimingProtocol(warmup_count=10, warmup_seconds=0.5, min_count=100, min_seconds=3.0, max_seconds=60.0)
#: A sequential tune screens the finalists with this much of each one's run time, and races the
#: plans that could still win with the full protocol.
SCREEN_SECONDS = 1.0
MAX_FINALISTS = 5
#: What a layer may become by default: static int8 for CNNs and encoders; for a decoder LLM's
#: decode and prefill, the formats people squeeze chat models with (no activation calibration).
DEFAULT_PRECISIONS = ("fp32", "int8")
LLM_PRECISIONS = ("fp32", "int4-weight", "int8-weight", "int8-dynamic")


def default_precisions(workload: Workload) -> tuple[str, ...]:
    return DEFAULT_PRECISIONS if workload.kind == "batch" else LLM_PRECISIONS


def default_grouping(workload: Workload) -> str:
    """One choice per layer, or per repeated block position for an LLM's prefill and decode."""
    return "layer" if workload.kind == "batch" else "repeated"


def searched_options(
    backend: Backend, machine: Machine, model: OnnxModel, precisions: Sequence[str] = ("int8",)
) -> dict[str, tuple]:
    """The options to search for plans made of ``precisions``, each with this machine's default
    first (the value the plan resolves to when the search leaves it unset). The native quantizer
    is a baseline, not a choice: it takes no per-layer plan. The backend says which options it
    lets the tuner search (``Backend.searched_options``)."""
    searchable = backend.searched_options()
    defaults: dict[str, object] = {}
    for precision in precisions:  # a uniform plan per precision shows the default of its options
        layers = [layer.name for layer in model.layers if precision in backend.precisions(layer)]
        resolved = backend.resolve_plan(PrecisionPlan.uniform(layers, precision), machine).options
        for option in searchable:
            if defaults.get(option) is None:
                defaults[option] = resolved.get(option)
    searched = {}
    for option, values in backend.option_choices().items():
        values = tuple(v for v in values if not (option == "quantizer" and v == "native"))
        if option not in searchable or len(values) < 2:
            continue
        changes = searchable[option]
        if changes is not None and not changes & set(precisions):
            continue  # no layer of these precisions reads it
        searched[option] = tuple(sorted(values, key=lambda v: v != defaults[option]))
    return searched


@dataclass
class TuneResult:
    winner: ResultRow | None  # the leaderboard row of the chosen plan (None: nothing beats fp32)
    baseline: ResultRow
    rows: list[ResultRow]
    front: pd.DataFrame
    sensitivity: SensitivityReport | None
    study_name: str
    trials: str  # what the study holds: plans measured, repeats reused, failures
    notes: list[str] = field(default_factory=list)
    output_dir: pathlib.Path | None = None
    winner_speedup: Speedup | None = None  # against fp32, paired (the head-to-head race when there was one)
    race: pd.DataFrame | None = None  # the final head-to-head table, if plans were raced
    phases: pd.DataFrame | None = None  # wall seconds per stage and activity (``qbench.phases``)
    model: OnnxModel | None = None
    storage_url: str = ""
    tuning_samples: int = 0
    holdout_samples: int = 0


def default_study_name(inputs: TuneInputs, tune_settings: TuneSettings, space: SearchSpace) -> str:
    """A name that changes with anything that makes trials incomparable or the space different."""
    model, backend, machine, metric = inputs.model, inputs.backend, inputs.machine, inputs.metric
    settings, tuning_data, workload = tune_settings.study, inputs.tuning_data, tune_settings.workload
    goal = (settings.objective, tune_settings.batch_size)
    scale = [f"{goal[0]} at batch {goal[1]}"] if goal != ("p50", 1) else []  # the default keeps older names
    key = "|".join(
        [
            model.content_hash,
            backend.name,
            machine.fingerprint_hash,
            metric.name,
            tuning_data.content_hash,
            f"{settings.max_drop:g}",
            {False: "latency", True: "pareto"}.get(settings.pareto, f"pareto-{settings.pareto}"),
            "sequential" if settings.sequential else "exhaustive",
            str(workload),
            f"{settings.max_mb}",
            *scale,
            repr([(g.layers, g.choices) for g in space.groups] + list(space.option_choices)),
        ]
    )
    return f"{model.name}-{backend.name}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def split_holdout(data: Dataset, fraction: float) -> tuple[Dataset, Dataset]:
    """Tune on the first part, select on the held-out rest (a prefix split keeps samples apart)."""
    if not 0 < fraction < 1:
        raise QbenchError(f"`holdout` must be a fraction between 0 and 1, but got {fraction}")
    cut = int(round(len(data) * (1 - fraction)))
    if cut < 1 or cut >= len(data):
        raise QbenchError(f"{data.source}: {len(data)} samples are too few to hold out {fraction:.0%}")
    return data.take(0, cut), data.take(cut, len(data))


@dataclass(frozen=True)
class TuneInputs:
    """What a tune works on: the model, its data split three ways, the metric, where it runs."""

    model: OnnxModel
    calibration_data: Dataset
    tuning_data: Dataset  # searched on
    holdout_data: Dataset  # the final selection's
    metric: Metric
    backend: Backend
    machine: Machine

    def harness(self, settings: TuneSettings, evaluation: Dataset, **extra) -> Harness:
        return Harness(
            backend=self.backend,
            model=self.model,
            calibration_data=self.calibration_data,
            evaluation_data=evaluation,
            metric=self.metric,
            machine=self.machine,
            threads=settings.threads,
            workdir=settings.results_dir / "cache",
            workload=settings.workload,
            batch_size=settings.batch_size,
            **extra,
        )


@dataclass(frozen=True)
class TuneSettings:
    """How the tuner runs: the study's budgets and stopping rules (``study``), what a layer may
    become, where the study and the outputs are kept, and the final selection's protocol."""

    study: StudySettings
    threads: int
    storage_url: str
    results_dir: pathlib.Path
    study_name: str | None = None
    workload: Workload = BATCH
    precisions: Sequence[str] | None = None  # default: ``default_precisions(workload)``
    grouping: str | None = None  # default: ``default_grouping(workload)``
    options: PlanOptions = field(default_factory=PlanOptions)
    quick_samples: int = FIRST_LOOK
    final_protocol: TimingProtocol = FINAL_PROTOCOL
    profile: bool = False
    run_spec: RunSpec | None = None  # stored with every final-selection row
    batch_size: int = 1  # samples per timed call (the throughput objective's batch)


def tune(
    inputs: TuneInputs,
    settings: TuneSettings,
    board: Leaderboard,
    progress: Callable[[str], None] = lambda _msg: None,
    on_trial: Callable | None = None,
) -> TuneResult:
    """Search per-layer precisions (one choice per layer or per repeated position), timing the
    settings' workload; then measure the finalists, each uniform plan and the runtime's own int8
    on held-out data and return the fastest within the budgets."""
    timer = phases.PhaseTimer()
    with timer.running():
        availability = inputs.backend.probe()
        if not availability.available:
            raise QbenchError(f"backend {inputs.backend.name!r} is not usable here: {availability.reason}")
        space, offered = tuning_space(inputs, settings)
        # A random order makes every prefix a random subset: sensitivity's quick subset and the
        # sequential accuracy checks score prefixes.
        inputs = replace(inputs, tuning_data=inputs.tuning_data.shuffled())
        study_name = settings.study_name or default_study_name(inputs, settings, space)
        progress(f"study {study_name}: {len(space.groups)} layer groups, {space.size} plans in the space")
        study, created = open_study(settings.storage_url, study_name, settings.study)  # fails before any work
        pool = WorkerPool()  # timing workers for the whole tune: a process per slot, not per trial
        try:
            harness = inputs.harness(settings, inputs.tuning_data, quick_samples=settings.quick_samples, pool=pool)
            try:
                report = _search(study, created, harness, space, offered, settings.study, timer, progress, on_trial)
                plans, native = final_plans(
                    study, harness, space, offered, inputs, settings.study.max_drop, _axis(settings)
                )
            finally:
                harness.close()
            with timer.stage("final selection"):
                earlier = _trial_speedups(study)
                rows, selection = _final_selection(inputs, settings, plans, board, progress, pool, earlier)
        finally:
            pool.close()
        better = "smaller" if objective(settings.study.objective).size else "faster"
        winner, speed, notes = judge(rows, selection, native, settings.study.max_drop, better)
        board.record_selection(selection.ranked, winner)  # tables rank these rows as the tuner did
        if not feasible_trials(study):
            notes.insert(
                0,
                f"no plan with low-precision layers met the budget (max drop {settings.study.max_drop:g}) "
                "on the tuning data",
            )
        result = TuneResult(
            winner,
            rows[0],
            rows,
            _front_table(pareto_front(study, _axis(settings)), settings.study.objective),
            report,
            study_name,
            trial_summary(study),
            notes,
            winner_speedup=speed,
            race=selection.race,
            model=inputs.model,
            storage_url=settings.storage_url,
            tuning_samples=len(inputs.tuning_data),
            holdout_samples=len(inputs.holdout_data),
        )
        with timer.stage("outputs"):
            result.output_dir = _write_outputs(result, inputs, settings)
    result.phases = timer.table()
    _store_phases(study, timer)
    return result


def tuning_space(inputs: TuneInputs, settings: TuneSettings) -> tuple[SearchSpace, list[str]]:
    """The search space and the low precisions it offers (a QbenchError when there are none)."""
    model, backend = inputs.model, inputs.backend
    low = [p for p in dict.fromkeys(settings.precisions or default_precisions(settings.workload)) if p != "fp32"]
    space = build_space(
        model,
        backend.precisions,
        settings.options,
        allowed=("fp32", *low),
        option_choices=searched_options(backend, inputs.machine, model, low),
        grouping=settings.grouping or default_grouping(settings.workload),
    )
    offered = [p for p in low if any(p in g.choices for g in space.groups)]
    if not offered:
        raise QbenchError(
            f"{model.name} has no layer that {backend.name} can run in {' or '.join(low)}; nothing to tune "
            "(`qbench layers` lists what each layer can take; pick others with --precisions)"
        )
    return space, offered


def _search(study, created, harness, space, offered, study_settings, timer, progress, on_trial):
    """Sensitivity (the order of the seeds), the seeds, then the study; returns the sensitivity,
    or None where the study was seeded already (resumed, or joined by another worker): the
    sensitivity pass only orders the seeds."""
    harness.require_baseline()
    report = None
    # Outside --pareto (whose front wants plans at every drop), a uniform plan clearly within
    # the budget needs no ladder back toward fp32, nor the group order it follows.
    budget = None if study_settings.pareto else study_settings.max_drop
    if created or SEEDED_ATTR not in study.user_attrs:
        with timer.stage("sensitivity"):
            report = analyze_sensitivity(harness, space, offered[0], progress, full=False, budget=budget)
    seed_study(study, space, report, study_settings.ladder, creator=created, precisions=offered)
    drop = f"; uniform {offered[0]} drop {report.uniform_drop:+.4f} (quick set)" if report else " (seeded already)"
    progress(f"search: up to {study_settings.n_trials} trials{drop}")
    with timer.stage("search"):
        run_study(study, harness, space, study_settings, _counting(timer, on_trial))
    return report


def _axis(settings: TuneSettings) -> str:
    """The Pareto front's second axis: the accuracy drop unless ``--pareto mb`` asks for the size."""
    return front_axis(settings.study.pareto) or "drop"


def final_plans(study, harness, space, offered, inputs: TuneInputs, max_drop: float, axis: str = "drop"):
    """The plans the final selection measures: the finalists, each uniform plan (a finalist that
    is one takes its name, so the winner is never slower than one) and the runtime's own int8.

    The seeded uniform plans of the first precision in each other scheme (``weight_symmetric=True``,
    a block size, …) come too where their trial met the budget and was not clearly slower than
    fp32: one short trial timing minutes apart from another's does not decide between them
    (SmolLM2 on a Zen 3: a trial put symmetric int4 at 0.82× a tuned plan that it beats by 1.2×
    with each plan alone in its process)."""
    uniform = [harness.resolve(space.plan(space.uniform(p), f"uniform-{p}")) for p in offered]
    known = {plan.content_hash for plan in uniform}
    feasible, front = feasible_trials(study), pareto_front(study, axis)
    timed = _trial_speedups(study)
    for label, assignment in space.option_variants(space.uniform(offered[0])):
        variant = harness.resolve(space.plan(assignment, f"uniform-{offered[0]}-{label}"))
        speed = timed.get(variant.content_hash)
        if speed is not None and speed.ci_high >= 1.0 and variant.content_hash not in known:
            uniform.append(variant)
            known.add(variant.content_hash)
    anchors = [t for t in front + feasible if trial_plan(t).content_hash in known]
    finalists = _finalists(feasible, front, max_drop, harness.resolve(PrecisionPlan(name="fp32")), anchors)
    finalists = [plan for plan in finalists if plan.content_hash not in known]
    native = _native_plan(inputs.backend, inputs.model)
    return finalists + uniform + ([native] if native else []), native


def _trial_speedups(study) -> dict[str, Speedup]:
    """Each feasible timed trial's speedup against fp32, by plan hash."""
    timed = [t for t in feasible_trials(study) if "speedup_ci" in t.user_attrs]
    return {trial_plan(t).content_hash: trial_speedup(t) for t in timed}


def _final_selection(
    inputs: TuneInputs, settings: TuneSettings, plans, board, progress, pool: WorkerPool, earlier: dict[str, Speedup]
):
    """Screen ``plans`` on the held-out data (bench rows), then race the ones that could still
    win, by the screen or by their ``earlier`` timings (the trials', in other worker processes)."""
    progress(f"final selection: {len(plans)} plans against fp32 on {len(inputs.holdout_data)} held-out samples")
    final = settings.final_protocol
    screen = replace(final, min_seconds=min(final.min_seconds, SCREEN_SECONDS)) if settings.study.sequential else final
    goal = objective(settings.study.objective)
    bench_settings = BenchSettings(
        threads=settings.threads,
        batch_size=settings.batch_size,
        protocol=trial_protocol(goal, screen),
        kind="tune",
        profile=settings.profile,
        workload=settings.workload,
        spec=settings.run_spec,
        config_hash=settings.run_spec.config_hash() if settings.run_spec else None,
        scenario=Scenario("throughput", settings.batch_size) if goal.per_sample else LATENCY,
        objective=goal,
        accuracy_budget=settings.study.max_drop if settings.study.sequential else None,
    )
    rows = run_bench(
        LoadedSubject(inputs.model, inputs.calibration_data, inputs.holdout_data, inputs.metric, synthetic=False),
        plans,
        backend=inputs.backend,
        machine=inputs.machine,
        board=board,
        workdir=settings.results_dir / "cache",
        progress=progress,
        settings=bench_settings,
        pool=pool,
    )
    study = settings.study
    within = [r for r in rows[1:] if _fits(r, study.max_drop, study.max_mb)]

    if goal.size:  # sizes are exact: nothing to race
        return rows, smallest(within, rows[0])

    def make_harness() -> Harness:
        return inputs.harness(settings, inputs.holdout_data, score=False, pool=pool)

    with _HeadToHead(make_harness, trial_protocol(goal, final), progress) as race:
        return rows, select(within, race.time if rows[0].ok else None, goal, earlier)


def _fits(row: ResultRow, max_drop: float, max_mb: float | None) -> bool:
    small = max_mb is None or (row.artifact_bytes or 0) / 1e6 <= max_mb
    return row.ok and row.accuracy_drop <= max_drop and small


def judge(rows: Sequence[ResultRow], selection, native: PrecisionPlan | None, max_drop: float, better: str = "faster"):
    """The winner of the final selection as the tuner returns it, its speedup and the notes:
    native-int8 is the floor, and a winner not measurably faster than fp32 is said to be so
    (and dropped if it is slower). Pure: tested on recorded rows."""
    candidates = rows[1:]
    native_row = next((r for r in candidates if native and r.plan_hash == native.content_hash), None)
    notes = list(selection.notes)
    winner, speed = selection.winner, selection.winner_speedup
    if winner is not None and winner is native_row:
        # The floor: a tuned plan slower than the runtime's own int8 within the budget is never returned.
        notes.append(
            f"native-int8 met the budget on held-out data and no tuned plan was {better}; "
            "returning it (the tuner's space did not beat the runtime's own quantization here)"
        )
    elif native_row is not None and native_row.ok and native_row.accuracy_drop > max_drop:
        notes.append(
            f"native-int8: {native_row.speedup:.2f}× fp32, drop {native_row.accuracy_drop:+.4f}, outside the budget"
        )
    if winner is not None and speed.ci_high < 1.0:
        notes.append(
            f"the best plan within the budget ({winner.plan_name}) is slower than fp32 ({speed.ratio:.2f}×); keep fp32"
        )
        winner = None
    elif winner is not None and speed.ci_low <= 1.0:
        notes.append(
            f"{winner.plan_name} is not measurably faster than fp32 "
            f"(speedup {speed.ratio:.2f}×, 95% CI {speed.ci_low:.2f}–{speed.ci_high:.2f})"
        )
    notes += _interval_notes(winner, max_drop)
    for r in candidates:
        if r.ok and r.plan_name.startswith("tuned-") and r.accuracy_drop > max_drop:
            notes.append(
                f"{r.plan_name} met the budget while tuning but dropped {r.accuracy_drop:+.4f} on held-out data"
            )
    return winner, speed if winner is not None else None, notes


def _interval_notes(winner: ResultRow | None, max_drop: float) -> list[str]:
    """A note when the winner's held-out interval of the budget metric (a token metric's) is
    wider than a quarter of the budget: the data is too small to decide the budget reliably."""
    interval = budget_interval(winner.fidelity, winner.metric) if winner is not None else None
    if interval is None or interval[1] - interval[0] <= max_drop / 4:
        return []
    low, high = interval
    return [
        f"{winner.plan_name}'s held-out {winner.metric} interval ({low:.4g}–{high:.4g}) is wider than a quarter "
        f"of the budget ({max_drop / 4:.4g}): too little held-out text to decide this budget reliably; "
        "evaluate more text (--data) or keep more of it out (--holdout)"
    ]


def _counting(timer: phases.PhaseTimer, on_trial: Callable | None) -> Callable:
    """The study's per-trial callback, counting trials for the per-trial time breakdown."""

    def callback(study, trial) -> None:
        timer.count()
        if on_trial is not None:
            on_trial(study, trial)

    return callback


def _store_phases(study, timer: phases.PhaseTimer) -> None:
    """Keep each run's breakdown with the study (a resumed study adds a run)."""
    runs = list(study.user_attrs.get("phases", []))
    study.set_user_attr("phases", [*runs, timer.as_json()])


class _HeadToHead:
    """Times the final contenders head to head with fp32, loading each once for all batches
    (artifacts come from the build cache); the harness is made only if a race is needed."""

    def __init__(
        self, make_harness: Callable[[], Harness], protocol: TimingProtocol, progress: Callable[[str], None]
    ) -> None:
        self.make_harness, self.protocol, self.progress = make_harness, protocol, progress
        self.harness: Harness | None = None
        self.loaded: dict[str, Loaded] = {}

    def __enter__(self) -> _HeadToHead:
        return self

    def time(self, contenders: Sequence[ResultRow], stop: Callable | None = None):
        if self.harness is None:
            self.harness = self.make_harness()
            self.harness.require_baseline()
        for row in contenders:
            if row.plan_hash not in self.loaded:
                self.loaded[row.plan_hash] = self.harness.load(PrecisionPlan.from_json(row.plan))
        names = ", ".join(r.plan_name for r in contenders)
        self.progress(f"race {names} head to head with fp32")
        plans = {r.plan_hash: self.loaded[r.plan_hash] for r in contenders}
        return self.harness.time(plans, self.protocol, stop=stop, again=True)

    def __exit__(self, *_exc) -> None:
        for loaded in self.loaded.values():
            loaded.close()
        if self.harness is not None:
            self.harness.close()


def _finalists(
    feasible: list, front: list, max_drop: float, baseline: PrecisionPlan, anchors: Sequence = ()
) -> list[PrecisionPlan]:
    """Candidates for the held-out check: the fastest feasible plans, and the fastest ones that
    met the budget with a margin (half of it, and no drop at all). Plans at the edge of the
    budget on the tuning data often miss it on held-out data; the safer ones give the final
    selection something to fall back on that is still faster than fp32.

    A trial that cannot win is left out: one clearly slower than fp32, or one that an ``anchor``
    (a trial of a plan the final selection measures anyway, a uniform one) beats clearly on
    speed (paired, each against fp32) with no more accuracy drop."""
    picks = feasible[:2]
    for margin in (0.5 * max_drop, 0.0):
        safer = [t for t in feasible if t.user_attrs["drop"] <= margin]
        picks += safer[:1]
    picks += front
    picks = [t for t in picks if not _cannot_win(t, anchors)]
    chosen, seen = [], {baseline.content_hash}  # the final selection times fp32 anyway
    for trial in picks:
        plan = trial_plan(trial)
        all_fp32 = all(precision == "fp32" for precision in plan.layers.values())  # fp32 under other options
        if plan.content_hash not in seen and not all_fp32:
            seen.add(plan.content_hash)
            chosen.append(PrecisionPlan(plan.layers, plan.options, f"tuned-t{trial.number}"))
    return chosen[:MAX_FINALISTS]


def _cannot_win(trial, anchors: Sequence) -> bool:
    if "speedup_ci" not in trial.user_attrs:
        return False
    mine = trial_speedup(trial)
    if mine.ci_high < 1.0:
        return True
    return any(
        a.user_attrs["drop"] <= trial.user_attrs["drop"] and relative(mine, trial_speedup(a)).ci_high < 1.0
        for a in anchors
        if "speedup_ci" in a.user_attrs and a.number != trial.number
    )


def _native_plan(backend: Backend, model: OnnxModel) -> PrecisionPlan | None:
    """The runtime's own whole-model int8 (recipe native-int8), where the backend has one."""
    if "native" not in backend.option_choices().get("quantizer", ()):
        return None
    return recipe_plan("native-int8", ((layer.name, layer.op_type) for layer in model.layers))


FIGURE_COLUMNS = {"p50": "latency ms", "mb": "MB", "throughput": "ms per call"}


def _front_table(front, figure: str = "p50") -> pd.DataFrame:
    """The Pareto front; its figure column is the objective's (``latency ms`` for the median)."""
    return pd.DataFrame(
        [
            {
                "trial": t.number,
                FIGURE_COLUMNS.get(figure, f"{figure} ms per call"): round(t.values[0], 4),
                "smaller" if figure == "mb" else "speedup": round(t.user_attrs.get("speedup", float("nan")), 3),
                "accuracy drop": round(t.user_attrs["drop"], 4),
                **({"MB": round(t.user_attrs["mb"], 3)} if "mb" in t.user_attrs and figure != "mb" else {}),
                "low-precision layers": t.user_attrs.get("low_precision_layers"),
            }
            for t in front
        ]
    )


def _write_outputs(result: TuneResult, inputs: TuneInputs, settings: TuneSettings) -> pathlib.Path:
    """The Pareto front, and the winner's plan (with where and for what it was tuned) and built
    model, under ``results_dir/tuned``."""
    results_dir = settings.results_dir
    model, backend, workdir = inputs.model, inputs.backend, results_dir / "cache"
    out = results_dir / "tuned" / f"{short_stem(model.name)}-{model.content_hash[:8]}-{backend.name}"
    out.mkdir(parents=True, exist_ok=True)
    result.front.to_csv(out / "pareto.csv", index=False)
    (out / "pareto.md").write_text(f"# Pareto front of {result.study_name}\n\n{markdown_table(result.front)}\n")
    if result.winner is not None:
        plan = replace(PrecisionPlan.from_json(result.winner.plan), tuned=_tuned_on(result, inputs, settings))
        (out / "plan.json").write_text(plan.to_json())
        calibration = backend.calibration_for(plan, model, inputs.calibration_data, workdir)
        artifact = backend.build(model, plan, calibration, workdir)
        for part in (artifact.path, *artifact.companions):  # an OpenVINO IR is .xml + .bin
            shutil.copyfile(part, out / f"model{part.suffix}")
    return out


def _tuned_on(result: TuneResult, inputs: TuneInputs, settings: TuneSettings) -> TunedOn:
    winner, machine = result.winner, inputs.machine
    speedup = result.winner_speedup.ratio if result.winner_speedup is not None else winner.speedup
    return TunedOn(
        machine_hash=machine.fingerprint_hash,
        cpu=machine.cpu_model,
        isa=isa_summary(machine.isa),
        backend=inputs.backend.name,
        model_hash=inputs.model.content_hash,
        metric=inputs.metric.name,
        max_drop=settings.study.max_drop,
        workload=str(settings.workload),
        scenario=winner.scenario or "latency",
        speedup=float(speedup),
        drop=float(winner.accuracy_drop or 0.0),
    )
