"""The tuner's last word on recorded final-selection rows: the floor, fp32 and held-out misses."""

from __future__ import annotations

from dataclasses import replace

from qbench.plan import recipe_plan
from qbench.search._select import select
from qbench.search._tune import judge
from qbench.store import ResultRow
from tests.search.test_select import FP32_MS
from tests.search.test_select import _row as select_row

NATIVE = recipe_plan("native-int8", [("conv", "Conv")])
BUDGET = 0.01


def _row(name: str, speedup: float, drop: float = 0.0, width: float = 0.02, plan_hash: str | None = None):
    """A recorded row ``speedup`` times faster than fp32 (``test_select``'s rows, no drift)."""
    row = select_row(name, FP32_MS / speedup, 1.0, width)
    return replace(row, accuracy_drop=drop, plan_hash=plan_hash or name)


def _judge(*candidates: ResultRow):
    rows = [_row("fp32", 1.0, width=0.0), *candidates]
    within = [r for r in rows[1:] if r.accuracy_drop <= BUDGET]
    return judge(rows, select(within, None), NATIVE, BUDGET)


def test_the_native_quantizer_is_returned_when_no_tuned_plan_beats_it():
    native = _row("native-int8", 2.0, plan_hash=NATIVE.content_hash)
    winner, speed, notes = _judge(_row("tuned-t1", 1.5), native)
    assert winner is native and speed.ratio == 2.0
    assert any("no tuned plan was faster" in n for n in notes)


def test_a_tuned_plan_faster_than_native_wins_and_native_outside_the_budget_is_named():
    native = _row("native-int8", 2.5, drop=0.05, plan_hash=NATIVE.content_hash)
    winner, _, notes = _judge(_row("tuned-t1", 1.8), native)
    assert winner.plan_name == "tuned-t1"
    assert any(n.startswith("native-int8: 2.50× fp32, drop +0.0500, outside the budget") for n in notes)


def test_a_winner_slower_than_fp32_is_dropped_and_one_not_measurably_faster_is_said_so():
    winner, speed, notes = _judge(_row("tuned-t1", 0.8))
    assert winner is None and speed is None and any("keep fp32" in n for n in notes)
    winner, _, notes = _judge(_row("tuned-t1", 1.01, width=0.05))
    assert winner.plan_name == "tuned-t1" and any("not measurably faster" in n for n in notes)


def test_a_tuned_plan_that_missed_the_budget_on_held_out_data_is_named():
    winner, _, notes = _judge(_row("uniform-int8", 1.5), _row("tuned-t4", 2.0, drop=0.03))
    assert winner.plan_name == "uniform-int8"
    assert any("tuned-t4 met the budget while tuning but dropped +0.0300 on held-out data" in n for n in notes)


def test_for_the_mb_objective_native_is_the_floor_in_size():
    from qbench.search._select import smallest

    fp32 = replace(_row("fp32", 1.0, width=0.0), artifact_bytes=4_000_000)
    native = replace(_row("native-int8", 2.0, plan_hash=NATIVE.content_hash), artifact_bytes=1_000_000)
    tuned = replace(_row("tuned-t1", 2.5), artifact_bytes=1_300_000)
    winner, speed, notes = judge([fp32, tuned, native], smallest([tuned, native], fp32), NATIVE, BUDGET, "smaller")
    assert winner is native and speed.ratio == 4.0
    assert any("no tuned plan was smaller" in n for n in notes)


def test_a_held_out_interval_wider_than_a_quarter_of_the_budget_is_said():
    """The budget is on KL: a winner whose held-out KL interval spans more than budget / 4 gets a
    note asking for more text; a narrow one does not."""
    wide = replace(_row("tuned-t1", 1.5, drop=0.004), metric="kl", fidelity={"kl": [0.004, 0.001, 0.0075]})
    _, _, notes = _judge(wide)
    assert any("wider than a quarter of the budget (0.0025)" in n and "--data" in n for n in notes)
    narrow = replace(wide, fidelity={"kl": [0.004, 0.0035, 0.0045]})
    _, _, notes = _judge(narrow)
    assert not any("quarter of the budget" in n for n in notes)
