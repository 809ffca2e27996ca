"""Sequential decisions: accuracy scored on a growing random prefix, timing stopped once a plan
clearly cannot win. The bounds are checked on recorded numbers, the harness on real sessions."""

from __future__ import annotations

import numpy as np
import pytest

from qbench.backends import get_backend
from qbench.harness import DROP_CHUNK, FIRST_LOOK, FP32, Harness
from qbench.machine import current_machine
from qbench.measure import DECIDE_BLOCKS, Samples, TimingProtocol, measure_interleaved
from qbench.metrics import get_metric
from qbench.plan import PrecisionPlan
from qbench.search._trial_timing import clearly_slower
from qbench.statistics import Speedup, drop_bounds


def test_scoring_every_sample_leaves_no_doubt():
    assert drop_bounds(np.array([0.01, 0.03, -0.02]), 0.007, 300, 300) == (0.007, 0.007)


def test_chunks_that_all_agree_still_leave_one_samples_worth_of_doubt():
    low, high = drop_bounds(np.zeros(4), 0.0, 256, 1296)
    assert low < 0 < 1 / 256 < high  # rare disagreements can all miss the first chunks


def test_the_bounds_narrow_as_more_is_scored():
    rng = np.random.default_rng(0)
    per_sample = (rng.random(2048) < 0.05).astype(float)  # a plan that gets 5 % of samples wrong
    widths = []
    for scored in (256, 512, 1024):
        chunks = per_sample[:scored].reshape(-1, DROP_CHUNK).mean(axis=1)
        low, high = drop_bounds(chunks, per_sample[:scored].mean(), scored, 2048)
        widths.append(high - low)
        assert low < 0.05 < high
    assert widths[0] > widths[1] > widths[2]


@pytest.fixture(scope="module")
def harness(demo_model, demo_calibration, demo_evaluation, tmp_path_factory):
    h = Harness(
        backend=get_backend("onnxruntime"),
        model=demo_model,
        calibration_data=demo_calibration,
        evaluation_data=demo_evaluation.take(0, 1000).shuffled(),
        metric=get_metric("top1", True),
        machine=current_machine(),
        threads=2,
        workdir=tmp_path_factory.mktemp("work"),
    )
    yield h
    h.close()


@pytest.fixture(scope="module")
def int8(harness):
    layers = [layer.name for layer in harness.model.layers if "int8" in harness.backend.precisions(layer)]
    loaded = harness.load(harness.resolve(PrecisionPlan.uniform(layers, "int8")))
    yield loaded.runner
    loaded.close()


def test_a_budget_far_above_or_below_the_drop_is_decided_on_the_first_look(harness, int8):
    within = harness.sequential_drop(int8, budget=0.5)
    assert (within.verdict, within.samples) == ("within", FIRST_LOOK)
    over = harness.sequential_drop(int8, budget=-0.5)
    assert (over.verdict, over.samples) == ("over", FIRST_LOOK)
    assert over.low > -0.5 and within.high <= 0.5


def test_an_undecided_budget_scores_every_sample_and_matches_the_whole_set(harness, int8):
    full = harness.accuracy_drop(int8, quick=False)
    estimate = harness.sequential_drop(int8, budget=full)  # the bound can never clear the drop itself
    assert (estimate.verdict, estimate.samples) == ("all", len(harness.evaluation_data))
    assert estimate.drop == pytest.approx(full)


def _samples(fp32_ms: float, candidate_ms: float, rounds: int, block: int = 5, seed: int = 0) -> Samples:
    load = np.repeat(np.random.default_rng(seed).uniform(1.0, 1.3, rounds), block)
    return Samples(
        {FP32: (fp32_ms * 1e6 * load).astype(np.int64), "c": (candidate_ms * 1e6 * load).astype(np.int64)}, block
    )


def test_timing_stops_for_a_plan_clearly_slower_than_fp32_or_the_incumbent():
    assert clearly_slower(None)(_samples(1.0, 1.2, DECIDE_BLOCKS))  # slower than fp32
    assert not clearly_slower(None)(_samples(1.0, 0.5, DECIDE_BLOCKS))
    incumbent = Speedup(2.5, 2.45, 2.55)
    assert clearly_slower(incumbent)(_samples(1.0, 0.8, DECIDE_BLOCKS))  # 1.25x: far behind 2.5x
    assert not clearly_slower(incumbent)(_samples(1.0, 0.395, DECIDE_BLOCKS))  # 2.53x: a contender


def test_measure_interleaved_asks_stop_from_the_fourth_round_and_ends_there():
    asked = []
    clock = iter(range(0, 10**12, 10**6)).__next__  # every call 1 ms later

    def stop(samples: Samples) -> bool:
        asked.append(len(samples["a"]) // samples.block)
        return True

    protocol = TimingProtocol(warmup_count=1, warmup_seconds=0, min_count=1, min_seconds=100, max_seconds=1000)
    samples = measure_interleaved({"a": lambda: None, "b": lambda: None}, protocol, clock=clock, stop=stop)
    assert asked == [DECIDE_BLOCKS]
    assert len(samples["a"]) == DECIDE_BLOCKS * samples.block


def test_the_tuners_sensitivity_measures_only_what_orders_the_groups(harness, tmp_path, monkeypatch):
    """One quick score per group (uniform int8 with that group back in fp32), no timing: the
    recovered drop decides the seed order; drop_alone and the revert cost are left NaN."""
    import math

    from qbench.plan import PlanOptions
    from qbench.search import analyze_sensitivity, build_space

    space = build_space(harness.model, harness.backend.precisions, PlanOptions(), allowed=("fp32", "int8"))
    loads = []
    real_load = harness.load
    monkeypatch.setattr(harness, "load", lambda plan: loads.append(plan) or real_load(plan))
    monkeypatch.setattr(harness, "workdir", tmp_path)  # a fresh sensitivity cache
    report = analyze_sensitivity(harness, space, "int8", full=False)
    groups = [g for g in space.groups if "int8" in g.choices]
    assert len(loads) == 1 + len(groups)  # uniform, then each group reverted
    assert all(math.isnan(g.drop_alone) and math.isnan(g.revert_cost_ms) for g in report.groups)
    recovered = [g.recovered for g in report.groups]
    assert recovered == sorted(recovered, reverse=True)

    # A budget the uniform plan clearly meets needs no ladder: nothing but the uniform plan is
    # scored; one it misses (a negative budget: any drop is over it) orders the groups as above.
    loads.clear()
    generous = analyze_sensitivity(harness, space, "int8", full=False, budget=0.99)
    assert len(loads) == 1 and generous.groups == () and generous.uniform_drop == report.uniform_drop
    loads.clear()
    missed = analyze_sensitivity(harness, space, "int8", full=False, budget=-1.0)
    assert len(loads) == 1 + len(groups) and [g.group for g in missed.groups] == report.ordered_groups()
