"""Per-layer sensitivity: what each group costs in accuracy and saves in latency.

For every group of the search space we measure, on the quick evaluation subset:
- ``drop_alone``: the accuracy drop when only this group runs in low precision;
- ``recovered``: how much of uniform low precision's drop comes back when only this group
  returns to fp32 (the ranking NNCF's accuracy control uses);
and, timed interleaved with fp32, ``revert_cost_ms``: the latency added by that return.
Results are cached per (model, data, metric, backend and version, machine, options).

The tuner only needs the order of the groups for its seeds, which ``recovered`` decides: it asks
for that alone (``full=False``: no ``drop_alone``, no timing, NaN in those columns), a third of
the work. On a 51-layer OCR model the full analysis took 433 s of a 583 s tune.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from qbench.cache import atomic_cached, content_key
from qbench.harness import TIMING_CHUNK, Harness, chunks
from qbench.measure import TimingProtocol
from qbench.plan import PrecisionPlan
from qbench.search._space import SearchSpace
from qbench.search._trial_timing import time_against_baseline

#: Revert costs only break ties in the order of the search's seeds: half the trial protocol's
#: blocks and seconds, shorter blocks.
SENSITIVITY_PROTOCOL = TimingProtocol(
    warmup_count=5, warmup_seconds=0.1, min_count=20, min_seconds=0.2, min_blocks=4, block_seconds=0.02
)


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


def _cache_path(harness: Harness, space: SearchSpace, precision: str, full: bool, budget: float | None) -> pathlib.Path:
    availability = harness.backend.probe()
    key = json.dumps(
        [
            harness.model.content_hash,
            harness.calibration_data.content_hash,
            harness.quick_data.content_hash,
            harness.metric.name,
            harness.backend.name,
            availability.version,
            harness.machine.fingerprint_hash,
            harness.threads,
            # Resolved, so a space that names the backend's default options keys like one that leaves them unset.
            harness.resolve(space.plan({}, "-")).content_hash,
            [g.layers for g in space.groups],
            precision,
            *([] if full else ["order only"]),
            *([] if budget is None else [f"unless within {budget!r}"]),
        ]
    )
    return harness.workdir / "sensitivity" / f"{content_key(key)}.json"


def _or_zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def _quick_drop(harness: Harness, plan: PrecisionPlan) -> float:
    loaded = harness.load(harness.resolve(plan))
    try:
        return harness.accuracy_drop(loaded.runner, quick=True)
    finally:
        loaded.close()


def _uniform_drop(harness: Harness, plan: PrecisionPlan, budget: float | None) -> tuple[float, bool]:
    """The uniform plan's drop on the quick set, and whether it is clearly within ``budget``
    (``Harness.sequential_drop``'s bounds on the same samples; never without a budget)."""
    if budget is None:
        return _quick_drop(harness, plan), False
    quick = len(harness.quick_data)
    loaded = harness.load(harness.resolve(plan))
    try:
        estimate = harness.sequential_drop(loaded.runner, budget, first=quick, most=quick)
    finally:
        loaded.close()
    return estimate.drop, estimate.verdict == "within"


def analyze_sensitivity(
    harness: Harness,
    space: SearchSpace,
    precision: str = "int8",
    progress: Callable[[str], None] = lambda _msg: None,
    full: bool = True,
    budget: float | None = None,
) -> SensitivityReport:
    """The sensitivity report of ``space`` in ``precision``, measured once and cached; with
    ``full`` off, only what orders the groups (``recovered``), and with a ``budget`` the uniform
    plan clearly meets on the quick set, no group at all: the order serves the tuner's ladder,
    which walks from the uniform plan back toward fp32 to meet a budget the uniform plan misses."""
    budget = None if full else budget
    path = _cache_path(harness, space, precision, full, budget)

    def produce(tmp: pathlib.Path) -> None:  # on a cache miss only
        tmp.write_text(_measure(harness, space, precision, progress, full, budget).to_json())

    atomic_cached(path, produce)
    return SensitivityReport.from_json(path.read_text())


def _measure(
    harness: Harness,
    space: SearchSpace,
    precision: str,
    progress: Callable[[str], None],
    full: bool,
    budget: float | None,
) -> SensitivityReport:
    groups = [g for g in space.groups if precision in g.choices]
    uniform = space.uniform(precision)
    reverted = {g.name: space.plan({**uniform, g.name: "fp32"}, "without") for g in groups}
    progress(f"sensitivity: {precision} everywhere")
    uniform_plan = harness.resolve(space.plan(uniform, precision))
    uniform_drop, within = _uniform_drop(harness, uniform_plan, budget)
    if within:
        progress(f"sensitivity: {precision} everywhere is clearly within the budget; no group order is needed")
        return SensitivityReport(precision, math.nan, math.nan, uniform_drop, groups=())
    drops_alone, drops_without = dict.fromkeys(reverted, math.nan), {}
    for i, group in enumerate(groups, start=1):
        progress(f"sensitivity: group {i}/{len(groups)} {group.name}")
        if full:
            drops_alone[group.name] = _quick_drop(harness, space.plan({group.name: precision}, "alone"))
        drops_without[group.name] = _quick_drop(harness, reverted[group.name])
    # Uniform low precision is in every chunk, so each revert cost compares plans timed side by
    # side. The order alone needs no timing.
    fp32_ms = harness.measure_baseline_ms(SENSITIVITY_PROTOCOL) if full else math.nan
    revert_cost, uniform_ms = dict.fromkeys(reverted, math.nan), []
    names = [g.name for g in groups] if full else []
    for chunk in chunks(names, TIMING_CHUNK - 1):
        progress(f"sensitivity: timing {len(chunk)} groups interleaved with fp32")
        plans = {"uniform": uniform_plan, **{name: harness.resolve(reverted[name]) for name in chunk}}
        loaded = {}
        try:
            for key, plan in plans.items():
                loaded[key] = harness.load(plan)
            timings = time_against_baseline(harness, loaded, fp32_ms, SENSITIVITY_PROTOCOL)
        finally:
            for entry in loaded.values():
                entry.close()
        uniform_ms.append(timings["uniform"].latency_ms)
        for name in chunk:
            revert_cost[name] = timings[name].latency_ms - timings["uniform"].latency_ms
    return SensitivityReport(
        precision=precision,
        fp32_ms=fp32_ms,
        uniform_ms=float(np.median(uniform_ms)) if uniform_ms else math.nan,
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
                key=lambda s: (-s.recovered, -_or_zero(s.drop_alone), _or_zero(s.revert_cost_ms)),
            )
        ),
    )
