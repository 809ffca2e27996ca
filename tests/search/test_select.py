"""The final selection and ranking rule, on fake rows and fake timings whose chunks drift."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from qbench.harness import FP32, FP32_AGAIN, Harness
from qbench.measure import Samples
from qbench.report.tables import ranked
from qbench.search._select import by_speedup, row_speedup, select
from qbench.statistics import Speedup, relative
from qbench.store import ResultRow

FP32_MS = 2.0
TRUE_MS = {"uniform-int8": 1.00, "tuned-t3": 0.80, "native-int8": 0.90}  # tuned-t3 is the fastest
#: The machine ran 30 % slower while the second chunk was timed.
CHUNK_DRIFT = {"uniform-int8": 1.0, "native-int8": 1.0, "tuned-t3": 1.3}


def _row(name: str, ms: float, drift: float, width: float = 0.02) -> ResultRow:
    ratio = FP32_MS / ms  # fp32 in the same chunk drifted alike, so the speedup is right
    return ResultRow(
        run_id="r",
        kind="tune",
        status="ok",
        machine_hash="m",
        qbench_version="0",
        model_name="m",
        model_hash="h",
        plan_name=name,
        plan_hash=name,
        plan="{}",
        backend="onnxruntime",
        median_ms=ms * drift,  # the absolute median carries its chunk's drift
        speedup=ratio,
        speedup_ci_low=ratio * (1 - width),
        speedup_ci_high=ratio * (1 + width),
        accuracy_drop=0.0,
    )


def _rows(width: float = 0.02) -> list[ResultRow]:
    return [_row(name, ms, CHUNK_DRIFT[name], width) for name, ms in TRUE_MS.items()]


def fake_race(
    true_ms: dict[str, float],
    block: int = 10,
    rounds: int = 12,
    seed: int = 0,
    noise: float = 0.01,
    again: float | None = None,
):
    """A timing callable: samples in block rounds, each round on a differently loaded machine;
    with ``again``, fp32's second worker (the A/A check) runs ``again`` times fp32's time."""
    rng = np.random.default_rng(seed)
    calls = []

    def time_batch(contenders, stop=None):
        calls.append([r.plan_name for r in contenders])
        load = np.repeat(rng.uniform(1.0, 1.3, rounds), block)
        keys = {FP32: FP32_MS, **{r.plan_hash: true_ms[r.plan_name] for r in contenders}}
        if again is not None:
            keys[FP32_AGAIN] = FP32_MS * again
        values = {k: (ms * 1e6 * load * rng.normal(1, noise, load.size)).astype(np.int64) for k, ms in keys.items()}
        for done in range(1, rounds + 1):  # as measure_interleaved asks ``stop`` after each round
            so_far = Samples({k: v[: done * block] for k, v in values.items()}, block)
            if stop is not None and stop(so_far):
                rounds_taken.append(done)
                return so_far
        rounds_taken.append(rounds)
        return Samples(values, block)

    rounds_taken: list[int] = []
    time_batch.rounds = rounds_taken
    return time_batch, calls


def test_absolute_medians_of_drifting_chunks_pick_the_wrong_plan():
    """What the tuner did before: the lowest median within the budget, mixing chunks."""
    assert min(_rows(), key=lambda r: r.median_ms).plan_name == "native-int8"  # not tuned-t3


def test_the_true_fastest_plan_wins_and_ranks_first_despite_30_percent_chunk_drift():
    time_batch, calls = fake_race(TRUE_MS)
    selection = select(_rows(), time_batch)
    assert selection.winner.plan_name == "tuned-t3"
    assert [r.plan_name for r in selection.ranked] == ["tuned-t3", "native-int8", "uniform-int8"]
    assert calls == []  # the intervals decided: nothing to race
    assert any("tuned-t3 vs native-int8: 1.125×" in n and "own rounds" in n for n in selection.notes)


def test_a_steady_a_a_check_leaves_the_race_decided():
    close = {"uniform-int8": 1.00, "tuned-t3": 0.80, "native-int8": 0.83}
    rows = [_row(name, ms, CHUNK_DRIFT[name], width=0.05) for name, ms in close.items()]
    selection = select(rows, fake_race(close, again=1.0)[0])
    assert selection.winner.plan_name == "tuned-t3"
    assert not any(n.startswith("undecided") for n in selection.notes)


def test_a_race_batch_ends_once_its_rounds_settle_the_leader_but_never_before_settle_rounds():
    from qbench.search._select import SETTLE_ROUNDS

    close = {"uniform-int8": 1.00, "tuned-t3": 0.80, "native-int8": 0.83}
    rows = [_row(name, ms, CHUNK_DRIFT[name], width=0.05) for name, ms in close.items()]
    time_batch, _ = fake_race(close, rounds=60, again=1.0)
    selection = select(rows, time_batch)
    assert selection.winner.plan_name == "tuned-t3"
    assert time_batch.rounds == [SETTLE_ROUNDS]  # 20 % apart: settled at the first look it may take
    time_batch, _ = fake_race({**close, "native-int8": 0.805}, rounds=60, again=1.0)  # within the tie band
    select(rows, time_batch)
    assert all(SETTLE_ROUNDS <= r for r in time_batch.rounds)


def test_an_unsteady_a_a_check_widens_the_race_and_the_tuner_says_undecided():
    """fp32 against itself 8 % apart: a 4 % difference between two plans is noise, not a pick."""
    close = {"uniform-int8": 1.00, "tuned-t3": 0.80, "native-int8": 0.83}
    rows = [_row(name, ms, CHUNK_DRIFT[name], width=0.05) for name, ms in close.items()]
    selection = select(rows, fake_race(close, again=1.08)[0])
    verdicts = dict(zip(selection.race.plan, selection.race.verdict, strict=True))
    assert "slower" not in verdicts.values()
    assert any(n.startswith("undecided: the machine was unsteady") for n in selection.notes)
    steady = select(rows, fake_race(close)[0]).winner_speedup
    assert selection.winner_speedup.ci_high / selection.winner_speedup.ci_low > steady.ci_high / steady.ci_low


def test_an_unsteady_race_stops_once_more_batches_could_not_separate_the_plans():
    """fp32 against itself 8 % apart and two plans under 4 % apart: a second batch cannot settle
    them (the band widens every interval past 1), so the race stops after one, undecided; plans
    further apart than the band are still raced until settled."""
    close = {"uniform-int8": 1.00, "tuned-t3": 0.80, "native-int8": 0.83}
    rows = [_row(name, ms, CHUNK_DRIFT[name], width=0.05) for name, ms in close.items()]
    time_batch, calls = fake_race(close, again=1.08)
    selection = select(rows, time_batch)
    assert len(calls) == 1
    assert any(n.startswith("undecided: the machine was unsteady") for n in selection.notes)
    steady_noisy, calls = fake_race(close, noise=0.3)  # no A/A band: more rounds may still settle it
    select(rows, steady_noisy)
    assert len(calls) == 3


def test_ranked_tables_order_by_speedup_not_by_absolute_median():
    import pandas as pd

    frame = pd.DataFrame([r.__dict__ for r in _rows()]).assign(
        realized=None,
        ci_low_ms=0.0,
        ci_high_ms=0.0,
        p90_ms=0.0,
        solo_median_ms=None,
        metric="top1",
        accuracy=0.9,
        artifact_bytes=1e6,
        noisy=False,
        workload="batch",
        batch_size=1,
        error=None,
    )
    assert list(ranked(frame).plan) == ["tuned-t3", "native-int8", "uniform-int8"]


def test_close_contenders_are_raced_and_the_paired_data_decides():
    close = {"uniform-int8": 1.00, "tuned-t3": 0.80, "native-int8": 0.83}
    rows = [_row(name, ms, CHUNK_DRIFT[name], width=0.05) for name, ms in close.items()]
    time_batch, calls = fake_race(close)
    selection = select(rows, time_batch)
    assert calls and set(calls[0]) >= {"tuned-t3", "native-int8"}
    assert selection.winner.plan_name == "tuned-t3"
    verdicts = dict(zip(selection.race.plan, selection.race.verdict, strict=True))
    assert verdicts["tuned-t3"] == "winner" and verdicts["native-int8"] == "slower"
    assert selection.winner_speedup.ratio == pytest.approx(FP32_MS / 0.80, rel=0.02)


def test_a_tie_is_settled_in_one_batch_when_the_interval_is_within_two_percent():
    tie = {"uniform-int8": 1.00, "tuned-t3": 0.85, "native-int8": 0.85}
    rows = [_row(name, ms, CHUNK_DRIFT[name], width=0.05) for name, ms in tie.items()]
    time_batch, calls = fake_race(tie)
    selection = select(rows, time_batch)
    assert len(calls) == 1
    verdicts = dict(zip(selection.race.plan, selection.race.verdict, strict=True))
    assert sorted(verdicts) == ["native-int8", "tuned-t3"]
    assert sorted(verdicts.values()) == ["tied (paired CI within 2% of 1)", "winner"]


def test_a_noisy_tie_is_raced_to_the_cap_and_called_indistinguishable():
    tie = {"uniform-int8": 1.00, "tuned-t3": 0.85, "native-int8": 0.85}
    rows = [_row(name, ms, CHUNK_DRIFT[name], width=0.05) for name, ms in tie.items()]
    time_batch, calls = fake_race(tie, noise=0.3)
    selection = select(rows, time_batch)
    assert len(calls) == 3  # MAX_BATCHES: the paired interval neither excluded 1 nor fit within 2 %
    loser = [v for p, v in zip(selection.race.plan, selection.race.verdict, strict=True) if v != "winner"]
    assert any(v.startswith("indistinguishable") for v in loser)
    assert any("indistinguishable" in n for n in selection.notes)


def test_the_leader_by_speedup_loses_to_a_rival_that_beats_it_head_to_head():
    """Chunk speedups put uniform-int8 first, but head to head tuned-t3 is faster: it wins."""
    rows = [_row("uniform-int8", 0.78, 1.0, 0.05), _row("tuned-t3", 0.80, 1.0, 0.05)]
    time_batch, _ = fake_race({"uniform-int8": 0.90, "tuned-t3": 0.80})
    assert select(rows, time_batch).winner.plan_name == "tuned-t3"


def test_relative_speedup_carries_both_intervals():
    a, b = Speedup(2.0, 1.9, 2.1), Speedup(1.6, 1.55, 1.65)
    r = relative(a, b)
    assert r.ratio == pytest.approx(1.25)
    assert r.ci_low < 1.25 * 1.9 / 2.0 * 1.0 + 1e-9 and r.ci_high > 1.25 * 2.1 / 2.0
    assert by_speedup([_row("x", 1.0, 1.0), _row("y", 0.5, 2.0)])[0].plan_name == "y"
    assert row_speedup(_row("x", 1.0, 1.0)).ratio == pytest.approx(2.0)


def test_the_head_to_head_times_the_contenders_with_fp32_in_blocks_on_real_sessions(
    tmp_path, demo_model, demo_calibration, demo_evaluation
):
    """The race's timing callable on ONNX Runtime: one set of rounds for fp32 and every
    contender, in blocks, each contender loaded once for all batches."""
    from qbench.backends import get_backend
    from qbench.machine import current_machine
    from qbench.measure import QUICK_PROTOCOL
    from qbench.metrics import get_metric
    from qbench.plan import PrecisionPlan
    from qbench.search._tune import _HeadToHead

    backend, machine = get_backend("onnxruntime"), current_machine()
    layers = demo_model.layer_names()
    plans = [
        backend.resolve_plan(PrecisionPlan.uniform(layers, "int8", name="uniform-int8"), machine),
        backend.resolve_plan(PrecisionPlan.uniform(layers[1:], "int8", name="tuned-t1"), machine),
    ]
    rows = [replace(_row(p.name, 1.0, 1.0), plan=p.to_json(), plan_hash=p.content_hash) for p in plans]
    harness_args = dict(
        backend=backend,
        model=demo_model,
        calibration_data=demo_calibration,
        evaluation_data=demo_evaluation.take(0, 64),
        metric=get_metric("top1", True),
        machine=machine,
        threads=machine.default_threads(),
        workdir=tmp_path,
    )
    make_harness = lambda: Harness(**harness_args, score=False)  # noqa: E731
    with _HeadToHead(make_harness, QUICK_PROTOCOL, lambda _msg: None) as race:
        first, second = race.time(rows), race.time(rows)
        assert len(race.loaded) == 2  # loaded once, timed twice
    for samples in (first, second):
        # each contender, fp32 and fp32's second worker (the race's A/A check), in one set of rounds
        assert set(samples) == {FP32, FP32_AGAIN, *(p.content_hash for p in plans)} and samples.block > 1
        assert len({len(v) for v in samples.values()}) == 1 and len(samples[FP32]) % samples.block == 0
    assert race.harness.baseline is None  # closed on exit


def test_of_tied_plans_the_one_that_drops_less_accuracy_is_chosen():
    import dataclasses

    tie = {"uniform-int8": 0.85, "tuned-t3": 0.85, "tuned-t5": 1.00}
    rows = [_row(name, ms, 1.0, width=0.05) for name, ms in tie.items()]
    rows = [dataclasses.replace(r, accuracy_drop=0.002 if r.plan_name == "tuned-t3" else 0.009) for r in rows]
    for seed in range(5):  # whichever of the two leads by a hair, the steadier one is returned
        time_batch, _ = fake_race(tie, seed=seed)
        selection = select(rows, time_batch)
        assert selection.winner.plan_name == "tuned-t3"
        assert any("drops less accuracy" in n for n in selection.notes) or selection.race.plan.iloc[0] == "tuned-t3"


def test_a_tied_plan_that_drops_less_is_not_chosen_when_native_int8_is_measurably_faster():
    """A case seen on the demo: tuned-t3 tied with the leader (uniform-int8) and dropped less,
    but native-int8 was measurably faster than it by the paired data. Here:
    per-round times where uniform leads against fp32, ties both others head to head, and
    native beats tuned-t3 in every round; the floor must win over the steadier plan."""
    import dataclasses

    uniform = [0.79] * 5 + [0.815] * 4
    times = {FP32: [2.0] * 9, "uniform-int8": uniform, "native-int8": [0.800] * 9, "tuned-t3": [0.803] * 9}

    def time_batch(contenders, stop=None):
        return Samples({k: (np.array(v) * 1e6).astype(np.int64) for k, v in times.items()}, 1)

    rows = [
        _row(name, ms, 1.0, width=0.05) for name, ms in (("uniform-int8", 0.8), ("native-int8", 0.8), ("tuned-t3", 0.8))
    ]
    rows = [dataclasses.replace(r, accuracy_drop=0.004 if r.plan_name == "tuned-t3" else 0.009) for r in rows]
    selection = select(rows, time_batch)
    assert len(selection.race) == 3
    assert selection.winner.plan_name != "tuned-t3"


def test_the_mb_objective_picks_the_smallest_row_and_the_lower_drop_of_one_size():
    from qbench.search._select import smallest

    fp32 = replace(_row("fp32", FP32_MS, 1.0), artifact_bytes=4_000_000)
    rows = [
        replace(_row("uniform-int8", 1.0, 1.0), artifact_bytes=1_000_000, accuracy_drop=0.004),
        replace(_row("tuned-t3", 0.8, 1.0), artifact_bytes=1_000_000, accuracy_drop=0.001),
        replace(_row("native-int8", 0.9, 1.0), artifact_bytes=1_200_000),
    ]
    selection = smallest(rows, fp32)
    assert selection.winner.plan_name == "tuned-t3"
    assert [r.plan_name for r in selection.ranked] == ["tuned-t3", "uniform-int8", "native-int8"]
    assert selection.winner_speedup == Speedup(4.0, 4.0, 4.0) and "4.00× smaller" in selection.notes[0]
    assert smallest([], fp32).winner is None


def test_a_plan_whose_screen_ran_slow_is_raced_when_its_trial_timing_could_still_win():
    """A plan's worker can run slow for its whole life: a screen that put the truly fastest plan
    clearly behind does not drop it while its trial timing, another process, says it could win."""
    true = {"uniform-int8": 1.00, "tuned-t3": 0.80, "native-int8": 1.10}
    rows = [_row("uniform-int8", 1.00, 1.0), _row("tuned-t3", 1.25, 1.0), _row("native-int8", 1.10, 1.0)]
    assert relative(row_speedup(rows[0]), row_speedup(rows[1])).ci_low > 1.0  # the screen alone drops it
    trials = {"uniform-int8": Speedup(2.0, 1.9, 2.1), "tuned-t3": Speedup(2.4, 2.2, 2.6)}
    time_batch, calls = fake_race(true)
    selection = select(rows, time_batch, earlier=trials)
    assert "tuned-t3" in calls[0] and selection.winner.plan_name == "tuned-t3"
    # Where the trials agree with the screen, it is left out.
    agreeing = {"uniform-int8": Speedup(2.0, 1.9, 2.1), "tuned-t3": Speedup(1.6, 1.5, 1.7)}
    time_batch, calls = fake_race(true)
    assert select(rows, time_batch, earlier=agreeing).winner.plan_name != "tuned-t3"
    assert all("tuned-t3" not in c for c in calls)
