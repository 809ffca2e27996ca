"""The search logic against a fake evaluator whose latency and accuracy are known exactly.

A fake is right here: these tests check what the study does with measurements (constraints,
seeding, stopping, resuming, sharing), not the measurements. Real runtimes are exercised by
tests/search/test_tune.py and the backend conformance suite.
"""

from __future__ import annotations

import multiprocessing
import time
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from qbench.errors import QbenchError
from qbench.harness import FP32, DropEstimate, Evaluator
from qbench.plan import PlanOptions
from qbench.runspec import Tune
from qbench.search import StudySettings, feasible_trials, open_study, pareto_front, run_study, seed_study
from qbench.search._sensitivity import GroupSensitivity, SensitivityReport
from qbench.search._space import LayerGroup, SearchSpace, repeated_groups
from qbench.search._study import finished_count, trial_plan, trial_speedup, trial_summary, violation
from qbench.statistics import Speedup

# layer: (fp32 ms, int8 ms, accuracy drop when int8)
COSTS = {
    "a": (1.0, 0.4, 0.000),
    "b": (1.0, 0.4, 0.008),  # the one layer that must stay in float under a 0.5 % budget
    "c": (1.0, 0.5, 0.001),
    "d": (0.5, 0.3, 0.001),
    "e": (0.2, 0.25, 0.000),  # int8 makes this one slower, as happens on CPUs
    "f": (0.5, 0.2, 0.002),
}
BF16_DROP, BF16_SPEED = 0.0005, 0.6  # a plan-wide option: float layers faster, a little less accurate
SPACE = SearchSpace(tuple(LayerGroup((name,), ("fp32", "int8")) for name in COSTS), PlanOptions())


MB_FP32, MB_INT8 = 4.0, 1.0  # weight size of each layer


class FakeRunner:
    def __init__(self, plan):
        self.plan = plan
        self.runner = self  # it is its own Loaded: the tuner reads .runner and calls .close()
        mb = sum(MB_INT8 if plan.precision(name) == "int8" else MB_FP32 for name in COSTS)
        self.artifact = SimpleNamespace(size_bytes=int(mb * 1e6))

    def close(self):
        pass


class FakeEvaluator:
    """Satisfies qbench.harness.Evaluator with exactly known latency and accuracy."""

    def __init__(self, fail_layer: str | None = None, delay: float = 0.0):
        self.quick_data = list(range(1000))
        self.first_look = 256
        self.timed_plans, self.scored_plans = [], []
        self.fail_layer, self.delay = fail_layer, delay

    def resolve(self, plan):
        return plan

    def build(self, plan):
        return FakeRunner(plan).artifact

    def load(self, plan):
        if self.fail_layer and plan.precision(self.fail_layer) == "int8":
            raise RuntimeError(f"backend cannot build {self.fail_layer} in int8")
        time.sleep(self.delay)
        return FakeRunner(plan)

    def accuracy_drop(self, runner, quick):
        self.scored_plans.append(runner.plan)
        bf16 = BF16_DROP if runner.plan.options.get("inference_precision") == "bf16" else 0.0
        return bf16 + sum(drop for name, (_, _, drop) in COSTS.items() if runner.plan.precision(name) == "int8")

    def sequential_drop(self, runner, budget, most=None, scored=None):
        drop = self.accuracy_drop(runner, quick=False)
        return DropEstimate(drop, len(self.quick_data), "all", drop, drop)

    @staticmethod
    def latency(plan):
        float_scale = BF16_SPEED if plan.options.get("inference_precision") == "bf16" else 1.0
        return sum(i8 if plan.precision(name) == "int8" else fp * float_scale for name, (fp, i8, _) in COSTS.items())

    def measure_baseline_ms(self, protocol, percentile=50):
        return sum(fp for fp, _, _ in COSTS.values())

    def time(self, runners, protocol, stop=None):
        """Constant samples: the interleaved speedup is exactly fp32 latency / plan latency."""
        self.timed_plans += [r.plan for r in runners.values()]
        samples = {FP32: np.full(7, self.measure_baseline_ms(protocol) * 1e6)}
        samples.update({k: np.full(7, self.latency(r.plan) * 1e6) for k, r in runners.items()})
        return samples


def test_the_fake_evaluator_satisfies_the_harness_protocol():
    assert isinstance(FakeEvaluator(), Evaluator)


def best_possible(budget: float) -> float:
    from itertools import product

    best = float("inf")
    for choice in product(("fp32", "int8"), repeat=len(COSTS)):
        plan = SPACE.plan(dict(zip(COSTS, choice, strict=True)), "x")
        if FakeEvaluator().accuracy_drop(FakeRunner(plan), False) <= budget:
            best = min(best, FakeEvaluator.latency(plan))
    return best


def _study(tmp_path, settings, name="s"):
    return open_study(f"sqlite:///{tmp_path}/study.db", name, settings)[0]


def test_finds_the_fastest_plan_within_the_budget(tmp_path):
    settings = StudySettings(max_drop=0.005, n_trials=40, patience=None)
    study = _study(tmp_path, settings)
    seed_study(study, SPACE, None, settings.ladder)
    evaluator = FakeEvaluator()
    run_study(study, evaluator, SPACE, settings)
    best = feasible_trials(study)[0]
    assert best.values[0] == pytest.approx(best_possible(0.005))
    assert all(violation(t) <= 0 for t in feasible_trials(study))
    # a candidate over the budget is never timed
    assert all(evaluator.accuracy_drop(FakeRunner(p), False) <= 0.005 for p in evaluator.timed_plans)
    assert len(evaluator.timed_plans) < settings.n_trials


def test_seeds_run_first_in_order(tmp_path):
    settings = StudySettings(max_drop=0.005, n_trials=5, patience=None, ladder=2)
    report = SensitivityReport(
        "int8",
        4.2,
        2.0,
        0.012,
        tuple(GroupSensitivity(name, (name,), 0.0, 0.0, 0.0) for name in ["b", "f", "a", "c", "d", "e"]),
    )
    study = _study(tmp_path, settings)
    seed_study(study, SPACE, report, settings.ladder)
    seed_study(study, SPACE, report, settings.ladder)  # a second worker seeding changes nothing
    evaluator = FakeEvaluator()
    run_study(study, evaluator, SPACE, settings)
    trials = sorted(study.trials, key=lambda t: t.number)
    params = [t.params for t in trials]
    assert params[0] == SPACE.uniform("fp32")
    # fp32 is the baseline itself: no drop and exactly its speed, without being scored or timed
    assert trials[0].user_attrs["drop"] == 0 and trial_speedup(trials[0]) == Speedup(1.0, 1.0, 1.0)
    assert all(p.layers for p in evaluator.scored_plans + evaluator.timed_plans)
    assert params[1] == SPACE.uniform("int8")
    assert params[2] == {**SPACE.uniform("int8"), "b": "fp32"}
    assert params[3] == {**SPACE.uniform("int8"), "b": "fp32", "f": "fp32"}


def test_resume_keeps_finished_trials_and_counts_the_total(tmp_path):
    first = StudySettings(max_drop=0.005, n_trials=8, patience=None)
    study = _study(tmp_path, first)
    seed_study(study, SPACE, None, 0)
    run_study(study, FakeEvaluator(), SPACE, first)
    before = {t.number: (t.params, t.values) for t in study.trials if t.state == TrialState.COMPLETE}
    assert len(before) == 8
    again = StudySettings(max_drop=0.005, n_trials=14, patience=None)
    resumed = _study(tmp_path, again)  # a new process would open it the same way
    seed_study(resumed, SPACE, None, 0)
    run_study(resumed, FakeEvaluator(), SPACE, again)
    after = {t.number: (t.params, t.values) for t in resumed.trials if t.state == TrialState.COMPLETE}
    assert len(after) == 14
    assert all(after[n] == before[n] for n in before)


def test_crashing_trials_are_recorded_and_the_study_goes_on(tmp_path):
    settings = StudySettings(max_drop=0.005, n_trials=10, patience=None)
    study = _study(tmp_path, settings)
    seed_study(study, SPACE, None, 0)
    run_study(study, FakeEvaluator(fail_layer="c"), SPACE, settings)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and all("cannot build c in int8" in t.user_attrs["error"] for t in failed)
    assert len([t for t in study.trials if t.state.is_finished()]) == 10
    assert feasible_trials(study)


def test_patience_stops_a_study_that_stopped_improving(tmp_path):
    settings = StudySettings(max_drop=0.005, n_trials=200, patience=5)
    study = _study(tmp_path, settings)
    seed_study(study, SPACE, None, 0)
    run_study(study, FakeEvaluator(), SPACE, settings)
    assert len(study.trials) < 200


def test_pareto_mode_times_over_budget_plans_for_the_front(tmp_path):
    from qbench.search import pareto_front

    settings = StudySettings(max_drop=0.005, n_trials=20, patience=None, pareto=True)
    study = _study(tmp_path, settings)
    seed_study(study, SPACE, None, 0)
    run_study(study, FakeEvaluator(), SPACE, settings)
    front = pareto_front(study)
    drops = [t.user_attrs["drop"] for t in front]
    latencies = [t.values[0] for t in front]
    assert latencies == sorted(latencies) and drops == sorted(drops, reverse=True)
    # over-budget plans are timed too (up to the quick-reject margin), so the front can cross it
    assert any(t.user_attrs.get("timed") and t.user_attrs["drop"] > 0.005 for t in study.trials)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_drop": 1.5}, "max_drop"),
        ({"max_drop": 0.01, "n_trials": 0}, "trials"),
        ({"max_drop": 0.01, "timeout": -1}, "timeout"),
    ],
)
def test_settings_validation(kwargs, message):
    with pytest.raises(QbenchError, match=message):
        StudySettings(**kwargs)


def test_unreachable_storage_is_a_clear_error():
    with pytest.raises(QbenchError, match="cannot open study storage"):
        open_study("postgresql://qbench@127.0.0.1:1/none", "s", StudySettings(max_drop=0.01))


LADDER_REPORT = SensitivityReport(
    "int8", 4.2, 2.0, 0.012, tuple(GroupSensitivity(n, (n,), 0.0, 0.0, 0.0) for n in ["b", "f", "a", "c", "d", "e"])
)


def _worker(url: str, name: str, n_trials: int, start=None, ladder: int = 0) -> None:
    settings = StudySettings(max_drop=0.005, n_trials=n_trials, patience=None, ladder=ladder)
    if start is not None:
        start.wait()  # both workers open the new study at the same moment
    study, created = open_study(url, name, settings)
    seed_study(study, SPACE, LADDER_REPORT if ladder else None, ladder, creator=created)
    run_study(study, FakeEvaluator(delay=0.05), SPACE, settings)


def test_two_workers_starting_together_seed_once_and_never_remeasure(tmp_path):
    """Two `qbench tune` workers on one new study: 7 seeds queued once, no plan measured twice,
    and exactly n_trials trials counted (complete or failed, never the pruned ones)."""
    url, n_trials = f"sqlite:///{tmp_path}/shared.db", 10
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    workers = [context.Process(target=_worker, args=(url, "s", n_trials, start, 5)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=900)
        assert w.exitcode == 0
    study = optuna.load_study(study_name="s", storage=url)
    queued = [t.system_attrs["fixed_params"] for t in study.trials if "fixed_params" in t.system_attrs]
    assert len(queued) == 7 and all(queued.count(p) == 1 for p in queued)  # fp32, int8, ladder of 5
    measured = [t.params for t in study.trials if t.state == TrialState.COMPLETE and "reused_from" not in t.user_attrs]
    assert all(measured.count(p) == 1 for p in measured)
    assert finished_count(study) == n_trials
    assert trial_summary(study).startswith(f"{n_trials} trials: ")


def _take_queued(url: str, start, taken) -> None:
    from qbench.search._study import _rdb_storage

    study = optuna.load_study(study_name="q", storage=_rdb_storage(url))
    start.wait()
    taken.put([study.ask().number for _ in range(30)])


def test_two_workers_never_take_the_same_queued_trial_from_sqlite(tmp_path):
    """SQLite ignores SELECT ... FOR UPDATE; without BEGIN IMMEDIATE two processes asking at once
    shared 13-28 of 60 queued trials (and a worker died telling a trial the other had finished)."""
    url = f"sqlite:///{tmp_path}/queue.db"
    study, _ = open_study(url, "q", StudySettings(max_drop=0.01))
    for x in range(60):
        study.enqueue_trial({"x": x})
    context = multiprocessing.get_context("spawn")
    start, taken = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_take_queued, args=(url, start, taken)) for _ in range(2)]
    for w in workers:
        w.start()
    first, second = taken.get(timeout=300), taken.get(timeout=300)
    for w in workers:
        w.join(timeout=60)
    assert not set(first) & set(second)
    assert sorted(first + second) == list(range(60))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # trials asked for by hand, not by optimize
def test_a_trial_waits_while_a_lower_numbered_one_is_still_choosing(tmp_path):
    """Two trials that will choose one plan: the higher-numbered one cannot know that before the
    lower one has chosen, so it waits, then reuses the lower one's measurement."""
    import threading

    from qbench.search._study import _Objective

    study = _study(tmp_path, StudySettings(max_drop=0.01))
    plan = {name: values[0] for name, values in SPACE.parameters()}
    for _ in range(2):
        study.enqueue_trial(plan)
    lower, upper = study.ask(), study.ask()
    for name, values in SPACE.parameters():
        upper.suggest_categorical(name, values)
    found = []
    waiting = threading.Thread(target=lambda: found.append(_Objective._measured(study, upper, len(plan))))
    waiting.start()
    waiting.join(timeout=2)
    assert waiting.is_alive(), "the higher-numbered trial measured before the lower one had chosen"
    for name, values in SPACE.parameters():
        lower.suggest_categorical(name, values)
    lower.set_user_attr("plan", "{}")
    study.tell(lower, 1.0)
    waiting.join(timeout=60)
    assert found and found[0].number == lower.number


def test_two_workers_share_one_postgres_study(postgres_url):
    n_trials = 24
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(postgres_url, "shared", n_trials)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=900)
        assert w.exitcode == 0
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    assert len(finished) == n_trials
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    assert len({t.number for t in study.trials}) == len(study.trials)
    assert {t.number for t in finished} == set(range(len(study.trials))) - {
        t.number
        for t in study.trials
        if t.state == TrialState.PRUNED  # workers stopping at the budget
    }


def test_a_repeated_plan_reuses_the_earlier_measurement(tmp_path):
    settings = StudySettings(max_drop=0.005, n_trials=3, patience=None)
    study = _study(tmp_path, settings)
    for _ in range(3):
        study.enqueue_trial({**SPACE.uniform("int8"), "b": "fp32"})  # as a sampler repeat or a seeding race makes
    evaluator = FakeEvaluator()
    run_study(study, evaluator, SPACE, settings)
    first, *repeats = sorted(study.trials, key=lambda t: t.number)
    assert len(evaluator.timed_plans) == 1
    assert all(t.user_attrs["reused_from"] == first.number and t.values == first.values for t in repeats)


def test_greedy_reverts_the_most_sensitive_groups_until_the_budget_holds():
    from qbench.search import greedy_accuracy_control

    order = ["f", "b", "c", "a", "d", "e"]  # a ranking that puts the harmful layer second
    report = SensitivityReport("int8", 4.2, 2.0, 0.012, tuple(GroupSensitivity(n, (n,), 0, 0, 0) for n in order))
    plan, drop = greedy_accuracy_control(FakeEvaluator(), SPACE, report, max_drop=0.005)
    assert plan.precision("f") == "fp32" and plan.precision("b") == "fp32"  # reverted f, then b: 0.012 -> 0.002
    assert all(plan.precision(n) == "int8" for n in "acde")
    assert drop == pytest.approx(0.002)


def test_finalists_include_plans_with_a_safety_margin(tmp_path):
    from qbench.search import pareto_front
    from qbench.search._tune import MAX_FINALISTS, _finalists

    settings = StudySettings(max_drop=0.005, n_trials=30, patience=None)
    study = _study(tmp_path, settings)
    seed_study(study, SPACE, None, 0)
    run_study(study, FakeEvaluator(), SPACE, settings)
    feasible = feasible_trials(study)
    chosen = _finalists(feasible, pareto_front(study), 0.005, SPACE.plan({}, "fp32"))
    by_number = {t.number: t for t in study.trials}
    drops = [by_number[int(plan.name.removeprefix("tuned-t"))].user_attrs["drop"] for plan in chosen]
    assert chosen[0].name == f"tuned-t{feasible[0].number}"  # the fastest feasible plan comes first
    assert min(drops) <= 0.0  # and a plan that lost nothing is among the candidates
    assert len(chosen) <= MAX_FINALISTS
    assert len({plan.content_hash for plan in chosen}) == len(chosen)


def test_plan_wide_options_are_searched_beside_the_layers(tmp_path):
    space = SearchSpace(SPACE.groups, PlanOptions(), (("inference_precision", ("f32", "bf16")),))
    assert space.size == 2 * SPACE.size
    assert space.plan({}, "default").options.get("inference_precision") == "f32"  # the first value
    settings = StudySettings(max_drop=0.005, n_trials=40, patience=None)
    study = _study(tmp_path, settings)
    seed_study(study, space, None, 0)
    run_study(study, FakeEvaluator(), space, settings)
    # Any plan with a float layer is faster in bf16 and still feasible: the best one uses it.
    assert trial_plan(feasible_trials(study)[0]).options.get("inference_precision") == "bf16"


def test_each_int8_scheme_is_seeded_with_the_defaults_pinned(tmp_path):
    """Uniform int8 is seeded once per scheme: the defaults (the first values), then each other
    value of each searched option alone; no seeded option is left to the sampler's chance."""
    options = (("activation_type", ("uint8", "int8")), ("per_channel", (False, True)))
    space = SearchSpace(SPACE.groups, PlanOptions(), options)
    settings = StudySettings(max_drop=0.005, n_trials=4, patience=None)
    study = _study(tmp_path, settings)
    seed_study(study, space, None, 0)
    run_study(study, FakeEvaluator(), space, settings)
    queued = [t.params for t in sorted(study.trials, key=lambda t: t.number)]
    defaults = {"option:activation_type": "uint8", "option:per_channel": False}
    assert queued == [
        {**space.uniform("fp32"), **defaults},
        {**space.uniform("int8"), **defaults},
        {**space.uniform("int8"), **defaults, "option:activation_type": "int8"},
        {**space.uniform("int8"), **defaults, "option:per_channel": True},
    ]


def test_a_weight_budget_is_a_second_constraint(tmp_path):
    """--max-mb: plans over it are infeasible without being scored or timed; under both budgets
    the best plan keeps only the layer the accuracy budget needs in float (b), even though int8
    makes layer e slower, because float e does not fit."""
    settings = StudySettings(max_drop=0.005, n_trials=40, patience=None, max_mb=9.5)
    study = _study(tmp_path, settings)
    seed_study(study, SPACE, None, settings.ladder)
    evaluator = FakeEvaluator()
    run_study(study, evaluator, SPACE, settings)
    best = trial_plan(feasible_trials(study)[0])
    assert dict(best.layers) == {name: "int8" for name in COSTS if name != "b"}
    assert all(FakeRunner(t).artifact.size_bytes <= 9.5e6 for t in evaluator.scored_plans + evaluator.timed_plans)
    fp32 = next(t for t in study.trials if t.params == SPACE.uniform("fp32"))
    assert fp32.user_attrs["mb"] == 24.0 and fp32.constraints["weight_mb_over_budget"] > 0 and violation(fp32) > 0
    with pytest.raises(QbenchError, match="max_mb"):
        StudySettings(max_drop=0.01, max_mb=0)


def test_every_uniform_precision_is_seeded_and_the_ladder_uses_the_report_s(tmp_path):
    choices = ("fp32", "int4-weight", "int8-weight")
    space = SearchSpace(tuple(LayerGroup((name,), choices) for name in "xyz"), PlanOptions())
    report = SensitivityReport(
        "int4-weight", 1.0, 0.5, 0.1, tuple(GroupSensitivity(n, (n,), 0.0, 0.0, 0.0) for n in "yxz")
    )
    settings = StudySettings(max_drop=0.005, n_trials=4, patience=None, ladder=1)
    study = _study(tmp_path, settings)
    seed_study(study, space, report, settings.ladder, precisions=("int4-weight", "int8-weight"))
    run_study(study, FakeEvaluator(), space, settings)
    assert [t.params for t in sorted(study.trials, key=lambda t: t.number)] == [
        space.uniform("fp32"),
        space.uniform("int4-weight"),
        space.uniform("int8-weight"),
        {**space.uniform("int4-weight"), "y": "fp32"},
    ]


def test_repeated_grouping_takes_one_choice_per_block_position():
    names = ["layers.0/attn/q_proj", "layers.0/mlp/up", "layers.1/attn/q_proj", "layers.1/mlp/up", "lm_head"]
    assert repeated_groups(names) == [
        ("layers.0/attn/q_proj", "layers.1/attn/q_proj"),
        ("layers.0/mlp/up", "layers.1/mlp/up"),
        ("lm_head",),
    ]


def test_finalists_leave_out_plans_that_cannot_win():
    """Recorded trials: a plan clearly slower than fp32, and one a uniform plan beats clearly on
    speed with no more drop, never reach the final selection; one the interval cannot
    separate from the uniform plan does."""
    from qbench.search._tune import _finalists

    def trial(number, layers, speedup, ci, drop):
        plan = SPACE.plan({name: "int8" for name in layers}, f"t{number}")
        return optuna.trial.create_trial(
            value=4.2 / speedup,
            user_attrs={"plan": plan.to_json(), "speedup": speedup, "speedup_ci": ci, "drop": drop, "timed": True},
        )

    trials = [
        trial(0, "abcdef", 2.0, [1.95, 2.05], 0.004),  # the uniform plan: an anchor
        trial(1, "abcdf", 1.96, [1.90, 2.02], 0.004),  # not separable from it: kept
        trial(2, "abc", 1.5, [1.45, 1.55], 0.004),  # clearly slower, same drop: left out
        trial(3, "a", 1.2, [1.15, 1.25], 0.000),  # clearly slower but safer: kept as a fallback
        trial(4, "e", 0.9, [0.85, 0.95], 0.000),  # clearly slower than fp32: left out
    ]
    for number, t in enumerate(trials):
        t.number = number
    chosen = _finalists(trials, [], 0.005, SPACE.plan({}, "fp32"), anchors=trials[:1])
    assert sorted(plan.name for plan in chosen) == ["tuned-t0", "tuned-t1", "tuned-t3"]
    without_anchor = _finalists(trials, trials, 0.005, SPACE.plan({}, "fp32"))
    assert "tuned-t2" in {plan.name for plan in without_anchor}  # only the anchor leaves it out


def test_the_mb_objective_finds_the_smallest_plan_within_the_budget_without_timing(tmp_path):
    """``--objective mb``: sizes are exact, so nothing is timed; the smallest plan keeps only
    the layer the accuracy budget needs (b) in float: 5 x 1 MB + 4 MB."""
    settings = StudySettings(max_drop=0.005, n_trials=40, patience=None, objective="mb")
    study = _study(tmp_path, settings)
    seed_study(study, SPACE, None, settings.ladder)
    evaluator = FakeEvaluator()
    run_study(study, evaluator, SPACE, settings)
    best = feasible_trials(study)[0]
    assert best.values[0] == pytest.approx(9.0) and dict(trial_plan(best).layers) == {
        name: "int8" for name in COSTS if name != "b"
    }
    assert evaluator.timed_plans == [] and study.user_attrs["fp32_reference_ms"] == pytest.approx(24.0)
    assert best.user_attrs["speedup"] == pytest.approx(24.0 / 9.0)
    assert all(t.values[0] >= 9.0 for t in feasible_trials(study))


def test_a_pareto_front_over_size_and_accuracy_drop(tmp_path):
    settings = StudySettings(max_drop=0.005, n_trials=30, patience=None, objective="mb", pareto=True)
    study = _study(tmp_path, settings)
    seed_study(study, SPACE, None, settings.ladder)
    run_study(study, FakeEvaluator(), SPACE, settings)
    front = pareto_front(study)
    sizes, drops = [t.values[0] for t in front], [t.user_attrs["drop"] for t in front]
    assert sizes == sorted(sizes) and drops == sorted(drops, reverse=True) and len(front) >= 3
    assert sizes[0] == pytest.approx(6.0)  # every layer int8: the smallest, the largest drop


def test_a_pareto_front_over_latency_and_size_keeps_the_accuracy_budget(tmp_path):
    """``--pareto mb``: the front of latency against MB among plans within the accuracy budget;
    plans over the budget are not timed (the budget stays a constraint, unlike ``--pareto``)."""
    settings = StudySettings(max_drop=0.005, n_trials=40, patience=None, pareto="mb")
    study = _study(tmp_path, settings)
    seed_study(study, SPACE, None, settings.ladder)
    evaluator = FakeEvaluator()
    run_study(study, evaluator, SPACE, settings)
    front = pareto_front(study, "mb")
    latencies, sizes = [t.values[0] for t in front], [t.user_attrs["mb"] for t in front]
    assert front and latencies == sorted(latencies) and sizes == sorted(sizes, reverse=True)
    assert all(t.user_attrs["drop"] <= 0.005 for t in front)
    assert all(evaluator.accuracy_drop(FakeRunner(p), False) <= 0.005 for p in evaluator.timed_plans)
    # layer e is slower in int8: the fastest plan keeps it in float, the smallest does not
    assert sizes[-1] == pytest.approx(9.0) and latencies[0] == pytest.approx(best_possible(0.005))
    with pytest.raises(QbenchError, match="one figure twice"):
        Tune(objective="mb", pareto="mb")
    assert Tune(pareto="drop") == Tune(pareto=True)


def test_a_server_qps_bound_fp32_cannot_meet_is_one_line_before_any_trial(tmp_path):
    """fp32's p99 call (the fake's 4.2 ms) over the bound: no rate is served within it."""
    settings = StudySettings(max_drop=0.005, n_trials=5, patience=None, objective="server-qps:3")
    study = _study(tmp_path, settings)
    with pytest.raises(QbenchError, match="fp32's p99 call takes 4.20 ms here, over the 3 ms bound"):
        run_study(study, FakeEvaluator(), SPACE, settings)
    assert not study.trials


def test_the_final_selection_measures_every_scheme_of_the_uniform_plan_that_could_win():
    """A uniform plan in another searched scheme (here per-channel int8) goes to the final
    selection when its trial met the budget, even if a tuned trial looked faster: one short trial
    timing does not decide between two plans timed minutes apart. A scheme whose trial was
    clearly slower than fp32 does not."""
    from qbench.search._tune import final_plans

    space = SearchSpace(SPACE.groups, PlanOptions(), (("per_channel", (False, True)), ("reduce_range", (False, True))))
    study = optuna.create_study()

    def add(assignment, name, speedup, ci, drop):
        plan = space.plan(assignment, name)
        study.add_trial(
            optuna.trial.create_trial(
                value=4.2 / speedup,
                user_attrs={"plan": plan.to_json(), "speedup": speedup, "speedup_ci": ci, "drop": drop, "timed": True},
                system_attrs={"constraints": [0.0]},
            )
        )

    uniform = space.uniform("int8")
    add(uniform, "t0", 2.0, [1.9, 2.1], 0.004)
    (channel_label, per_channel), (range_label, reduce_range) = space.option_variants(uniform)
    add(per_channel, "t1", 1.7, [1.6, 1.8], 0.003)  # beaten in its trial by t3, within the budget
    add(reduce_range, "t2", 0.8, [0.7, 0.9], 0.001)  # clearly slower than fp32
    add({**uniform, "b": "fp32"}, "t3", 2.2, [2.1, 2.3], 0.002)
    harness = SimpleNamespace(resolve=lambda plan: plan)
    inputs = SimpleNamespace(backend=SimpleNamespace(option_choices=lambda: {}), model=None)
    plans, native = final_plans(study, harness, space, ["int8"], inputs, 0.005)
    names = [plan.name for plan in plans]
    assert native is None and f"uniform-int8-{channel_label}" in names
    assert f"uniform-int8-{range_label}" not in names and "uniform-int8" in names
    assert channel_label == "per_channel=True"
