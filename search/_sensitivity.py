"""Per-layer sensitivity: what each group costs in accuracy and saves in latency.

For every group of the search space we measure, on the quick evaluation subset:
- ``drop_alone``: the accuracy drop when only this group runs in low precision;
- ``recovered``: how much of uniform low precision's drop comes back when only this group
  returns to fp32 (the ranking NNCF's accuracy control uses);
and, timed interleaved with fp32, ``revert_cost_ms``: the latency added by that return.
Results are cached per (model, data, metric, backend and version, machine, options).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from qbench.plan import PrecisionPlan
from qbench.search._evaluator import PlanEvaluator
from qbench.search._space import SearchSpace

TIMING_CHUNK = 8


@dataclass(frozen=True)
class GroupSensitivity:
    group: str
    layers: tuple[str, ...]
    drop_alone: float
    recovered: float
    revert_cost_ms: float


@dataclass(frozen=True)
class SensitivityReport:
    precision: str
    fp32_ms: float
    uniform_ms: float
    uniform_drop: float
    groups: tuple[GroupSensitivity, ...]  # most sensitive first

    def ordered_groups(self) -> list[str]:
        return [g.group for g in self.groups]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> SensitivityReport:
        data = json.loads(text)
        groups = tuple(GroupSensitivity(**{**g, "layers": tuple(g["layers"])}) for g in data.pop("groups"))
        return cls(groups=groups, **data)


def _cache_path(evaluator: PlanEvaluator, space: SearchSpace, precision: str) -> pathlib.Path:
    availability = evaluator.backend.probe()
    key = json.dumps(
        [
            evaluator.model.content_hash,
            evaluator.calibration_data.content_hash,
            evaluator.quick_data.content_hash,
            evaluator.metric.name,
            evaluator.backend.name,
            availability.version,
            evaluator.machine.fingerprint_hash,
            evaluator.threads,
            # Resolved, so a space that names the backend's default options keys like one that leaves them unset.
            evaluator.resolve(space.plan({}, "-")).content_hash,
            [g.layers for g in space.groups],
            precision,
        ]
    )
    return evaluator.workdir / "sensitivity" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def _quick_drop(evaluator: PlanEvaluator, plan: PrecisionPlan) -> float:
    runner = evaluator.load(evaluator.resolve(plan))
    try:
        return evaluator.accuracy_drop(runner, quick=True)
    finally:
        runner.close()


def analyze_sensitivity(
    evaluator: PlanEvaluator,
    space: SearchSpace,
    precision: str = "int8",
    progress: Callable[[str], None] = lambda _msg: None,
) -> SensitivityReport:
    path = _cache_path(evaluator, space, precision)
    if path.exists():
        return SensitivityReport.from_json(path.read_text())
    groups = [g for g in space.groups if precision in g.choices]
    uniform = space.uniform(precision)
    reverted = {g.name: space.plan({**uniform, g.name: "fp32"}, "without") for g in groups}
    progress(f"sensitivity: {precision} everywhere")
    uniform_plan = space.plan(uniform, precision)
    uniform_drop = _quick_drop(evaluator, uniform_plan)
    drops_alone, drops_without = {}, {}
    for i, group in enumerate(groups, start=1):
        progress(f"sensitivity: group {i}/{len(groups)} {group.name}")
        drops_alone[group.name] = _quick_drop(evaluator, space.plan({group.name: precision}, "alone"))
        drops_without[group.name] = _quick_drop(evaluator, reverted[group.name])
    fp32_ms = evaluator.measure_baseline_ms()
    revert_cost, uniform_ms = {}, []
    # Timed in chunks of freshly loaded sessions so memory stays bounded on models with many
    # layers (52 sessions of a 51-layer OCR model at once ran out of 24 GiB). Uniform low
    # precision is in every chunk, so each revert cost compares plans timed side by side.
    names = [g.name for g in groups]
    for start in range(0, len(names), TIMING_CHUNK):
        chunk = names[start : start + TIMING_CHUNK]
        progress(f"sensitivity: timing groups {start + 1}-{start + len(chunk)} of {len(names)} interleaved with fp32")
        plans = {"uniform": uniform_plan, **{name: reverted[name] for name in chunk}}
        runners = {}
        try:
            for key, plan in plans.items():
                runners[key] = evaluator.load(evaluator.resolve(plan))
            timings = evaluator.time_against_baseline(runners, fp32_ms)
        finally:
            for runner in runners.values():
                runner.close()
        uniform_ms.append(timings["uniform"].latency_ms)
        for name in chunk:
            revert_cost[name] = timings[name].latency_ms - timings["uniform"].latency_ms
    report = SensitivityReport(
        precision=precision,
        fp32_ms=fp32_ms,
        uniform_ms=float(np.median(uniform_ms)),
        uniform_drop=uniform_drop,
        groups=tuple(
            sorted(
                (
                    GroupSensitivity(
                        group=g.name,
                        layers=g.layers,
                        drop_alone=drops_alone[g.name],
                        recovered=uniform_drop - drops_without[g.name],
                        revert_cost_ms=revert_cost[g.name],
                    )
                    for g in groups
                ),
                key=lambda s: (-s.recovered, -s.drop_alone, s.revert_cost_ms),
            )
        ),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.to_json())
    return report
