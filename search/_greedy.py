"""A greedy accuracy-control baseline in the manner of NNCF's ``quantize_with_accuracy_control``:
start from uniform int8 and return the most sensitive groups to fp32, one at a time in the
sensitivity ranking, until the accuracy drop fits the budget. It never looks at latency,
which is the difference ``qbench tune`` is measured against."""

from __future__ import annotations

from collections.abc import Callable

from qbench.harness import Evaluator
from qbench.plan import PrecisionPlan
from qbench.search._sensitivity import SensitivityReport
from qbench.search._space import SearchSpace


def greedy_accuracy_control(
    evaluator: Evaluator,
    space: SearchSpace,
    report: SensitivityReport,
    max_drop: float,
    progress: Callable[[str], None] = lambda _msg: None,
) -> tuple[PrecisionPlan, float]:
    """The first plan of the revert ladder within ``max_drop`` on the evaluator's full data,
    and its drop; the fp32 plan if none is."""
    assignment = space.uniform(report.precision)
    order = report.ordered_groups()
    for reverted in range(len(order) + 1):
        if reverted:
            assignment[order[reverted - 1]] = "fp32"
        plan = evaluator.resolve(space.plan(assignment, "greedy"))
        loaded = evaluator.load(plan)
        try:
            drop = evaluator.accuracy_drop(loaded.runner, quick=False)
        finally:
            loaded.close()
        progress(f"greedy: {reverted} group(s) in fp32, drop {drop:+.4f}")
        if drop <= max_drop:
            return plan, drop
    return evaluator.resolve(PrecisionPlan(name="greedy")), 0.0
