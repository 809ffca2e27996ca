"""The re-check of a tuned plan on recorded rows: each verdict, and the notes on a mismatched run."""

from __future__ import annotations

import dataclasses

import pytest

from qbench.machine import current_machine
from qbench.plan import PrecisionPlan, TunedOn
from qbench.recheck import recheck
from qbench.store import ResultRow

HERE = current_machine()
TUNED = TunedOn("0123456789ab", "Some Xeon (family 6 model 143)", "AMX", "onnxruntime", "h", "top1", 0.01,
                "batch", "latency", 2.4, 0.004)  # fmt: skip
PLAN = PrecisionPlan({"conv": "int8"}, name="tuned-t3", tuned=TUNED)


def _row(name: str, speedup: float, low: float, high: float, drop: float = 0.0, **changes) -> ResultRow:
    values = dict(
        run_id="r", kind="bench", status="ok", machine_hash=HERE.fingerprint_hash, qbench_version="0",
        model_name="m", model_hash="h", plan_name=name, plan_hash=name, plan="{}", backend="onnxruntime",
        metric="top1", workload="batch", speedup=speedup, speedup_ci_low=low, speedup_ci_high=high,
        accuracy_drop=drop,
    )  # fmt: skip
    return ResultRow(**{**values, **changes})


def _check(plan_row: ResultRow, native: ResultRow | None = None):
    rows = [_row("fp32", 1.0, 0.98, 1.02), plan_row, *([native] if native else [])]
    [check] = recheck([PLAN], rows, HERE)
    return check


def test_a_plan_that_keeps_its_budget_and_speed_holds():
    check = _check(_row("tuned-t3", 1.8, 1.7, 1.9, 0.006), _row("native-int8", 1.5, 1.4, 1.6, 0.03))
    assert check.holds and check.budget_holds and check.faster_than_fp32 and check.faster_than_native
    assert not check.same_machine and "AMX" in check.lines("m")[0] and check.lines("m")[-1].endswith("holds here")


@pytest.mark.parametrize(
    ("plan_row", "native", "why"),
    [
        (_row("tuned-t3", 1.8, 1.7, 1.9, 0.02), None, "EXCEEDED"),  # the budget broke here
        (_row("tuned-t3", 1.0, 0.9, 1.1, 0.0), None, "undecided"),  # no faster than fp32 here
        (_row("tuned-t3", 1.4, 1.35, 1.45), _row("native-int8", 1.9, 1.85, 1.95), "SLOWER than native-int8"),
    ],
)
def test_a_plan_that_does_not_hold_says_why_and_how_to_tune_here(plan_row, native, why):
    check = _check(plan_row, native)
    text = "\n".join(check.lines("digits-cnn"))
    assert not check.holds and why in text
    assert "`qbench tune digits-cnn --max-drop top1:0.01`" in text


def test_a_run_that_differs_from_the_tune_is_noted_and_leaves_the_budget_unchecked():
    check = _check(_row("tuned-t3", 1.8, 1.7, 1.9, metric="cosine", workload="decode:128"))
    text = "\n".join(check.lines("m"))
    assert check.budget_holds is None and not check.holds
    assert "pass --metric top1" in text and "pass --workload batch" in text and "native-int8 was not measured" in text


def test_plans_without_a_tuned_section_are_not_rechecked():
    plain = dataclasses.replace(PLAN, tuned=None)
    assert recheck([plain], [_row("fp32", 1.0, 0.98, 1.02), _row("tuned-t3", 1.8, 1.7, 1.9)], HERE) == []
