"""A tuned plan re-checked where it now runs: does its budget hold here, is it still faster than
fp32 and the runtime's own int8 here?

A tune writes where and for what it tuned into the plan file (``PrecisionPlan.tuned``); a bench
of that file measures it beside fp32 (always) and the runtime's own int8 (added for the check)
in the same run. Speeds are compared the one way qbench compares plans: each against fp32 in its
own rounds, the uncertainty of both carried (``statistics.relative``); "undecided" where the
interval includes 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from qbench.machine import Machine, isa_summary
from qbench.metrics import BUILTIN_METRICS
from qbench.plan import PrecisionPlan, TunedOn
from qbench.statistics import Speedup, relative
from qbench.store import ResultRow

NATIVE = "native-int8"


@dataclass(frozen=True)
class Recheck:
    plan: str
    tuned: TunedOn
    machine: str  # where it ran now: CPU · ISA (hash)
    same_machine: bool
    drop: float | None
    budget_holds: bool | None  # None: measured on another metric, or not measured
    speedup: Speedup | None  # against fp32 here
    versus_native: Speedup | None  # against the runtime's own int8 here (each against fp32)
    notes: tuple[str, ...] = field(default=())

    @property
    def faster_than_fp32(self) -> bool | None:
        return _decided(self.speedup)

    @property
    def faster_than_native(self) -> bool | None:
        return _decided(self.versus_native)

    @property
    def holds(self) -> bool:
        """The budget holds, it is faster than fp32, and not slower than the runtime's own int8."""
        return bool(self.budget_holds) and bool(self.faster_than_fp32) and self.faster_than_native is not False

    def lines(self, model: str) -> list[str]:
        t = self.tuned
        where = "this machine" if self.same_machine else f"{t.cpu} · {t.isa} ({t.machine_hash})"
        lines = [
            f"re-check of {self.plan}: tuned on {where} for {t.budget_text()} at {t.workload} "
            f"({t.speedup:.2f}× fp32 there, drop {t.drop:.4g}); here: {self.machine}",
            f"  budget {t.budget_text()}: {_budget_text(self)}",
            f"  against fp32 here: {_speed_text(self.speedup, 'fp32')}",
            f"  against {NATIVE} here: {_speed_text(self.versus_native, NATIVE)}",
            *(f"  note: {note}" for note in self.notes),
        ]
        if self.holds:
            lines.append("  → the plan holds here")
        else:
            workload = f" --workload {t.workload}" if t.workload != "batch" else ""
            budget = t.budget_text() if t.metric in BUILTIN_METRICS else f"{t.max_drop:g} --metric {t.metric}"
            lines.append(
                f"  → the plan does not hold here: tune on this machine, "
                f"`qbench tune {model} --max-drop {budget}{workload}`"
            )
        return lines


def recheck(plans: Sequence[PrecisionPlan], rows: Sequence[ResultRow], machine: Machine) -> list[Recheck]:
    """One Recheck per plan of ``plans`` that carries where it was tuned, from a bench's ``rows``."""
    by_name = {row.plan_name: row for row in rows}
    native = by_name.get(NATIVE)
    here = f"{machine.cpu_model} · {isa_summary(machine.isa)} ({machine.fingerprint_hash})"
    checks = []
    for plan in plans:
        row = by_name.get(plan.name)
        if plan.tuned is None or row is None:
            continue
        t, notes = plan.tuned, []
        speed = _speedup(row)
        native_speed = _speedup(native) if native is not None else None
        if native is None:
            notes.append(f"{NATIVE} was not measured (the backend has none, or it failed): no comparison with it")
        if row.workload and row.workload != t.workload:
            notes.append(f"tuned for {t.workload}, measured here at {row.workload}: pass --workload {t.workload}")
        if row.model_hash != t.model_hash:
            notes.append(f"the model differs from the one tuned on ({row.model_hash[:8]} vs {t.model_hash[:8]})")
        if row.backend != t.backend:
            notes.append(f"tuned on {t.backend}, measured here on {row.backend}")
        on_metric = row.metric == t.metric and row.accuracy_drop is not None
        if row.metric != t.metric:
            notes.append(f"the budget is on {t.metric}, this run measured {row.metric}: pass --metric {t.metric}")
        checks.append(
            Recheck(
                plan=plan.name,
                tuned=t,
                machine=here,
                same_machine=t.machine_hash == machine.fingerprint_hash,
                drop=row.accuracy_drop,
                budget_holds=(row.accuracy_drop <= t.max_drop) if on_metric else None,
                speedup=speed,
                versus_native=relative(speed, native_speed) if speed and native_speed else None,
                notes=tuple(notes),
            )
        )
    return checks


def _speedup(row: ResultRow) -> Speedup | None:
    if not row.ok or row.speedup is None or row.speedup_ci_low is None:
        return None
    return Speedup(row.speedup, row.speedup_ci_low, row.speedup_ci_high)


def _decided(speed: Speedup | None) -> bool | None:
    if speed is None:
        return None
    if speed.ci_low > 1.0:
        return True
    return False if speed.ci_high < 1.0 else None


def _speed_text(speed: Speedup | None, other: str) -> str:
    if speed is None:
        return "not measured"
    verdict = {True: "faster", False: f"SLOWER than {other}", None: "undecided (the interval includes 1)"}
    return f"{speed.ratio:.2f}× ({speed.ci_low:.2f}–{speed.ci_high:.2f}): {verdict[_decided(speed)]}"


def _budget_text(check: Recheck) -> str:
    if check.budget_holds is None:
        return "not checked (see the notes)"
    verdict = "holds" if check.budget_holds else "EXCEEDED"
    return f"drop {check.drop:.4g} against {check.tuned.max_drop:g}: {verdict}"
