"""The one view model every renderer walks: machine → model → comparable group.

Grouping, ranking and the regression search happen here once; the Markdown/CSV files, the HTML
page and the terminal only lay out what this module decided.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from qbench.cache import short_stem
from qbench.report.machines import across_machines, fleet_display, fleet_numbers
from qbench.report.regressions import find_changes
from qbench.report.tables import across_backends, across_title, group_title, latest_per_plan, ranked, tidy


@dataclass(frozen=True)
class Group:
    """Rows ranked together: same machine, backend and version, threads, batch, protocol, data, metric."""

    title: str
    rows: pd.DataFrame  # latest row per plan, leaderboard columns
    display: pd.DataFrame  # ranked, pretty strings (Markdown, terminal, HTML)
    numbers: pd.DataFrame  # the same rows tidy: one number per cell (CSV)


@dataclass(frozen=True)
class AcrossBackends:
    """Rows that differ only in backend, side by side (not ranked)."""

    title: str
    display: pd.DataFrame


@dataclass(frozen=True)
class AcrossMachines:
    """One model's plans on every machine that measured them with the same settings (not ranked)."""

    title: str
    rows: pd.DataFrame  # the newest row per machine and plan, leaderboard columns
    display: pd.DataFrame
    numbers: pd.DataFrame  # tidy, for CSV

    @property
    def machine_count(self) -> int:
        return self.rows.machine_hash.nunique()


@dataclass(frozen=True)
class ModelSection:
    name: str
    model_hash: str
    latest: pd.DataFrame  # latest row per plan of every group
    history: pd.DataFrame  # every measured row of this model on this machine, for trends
    across: list[AcrossBackends]
    groups: list[Group]

    @property
    def stem(self) -> str:
        """File name (without suffix) of this model's tables."""
        return f"{short_stem(self.name)}-{self.model_hash[:8]}"


@dataclass(frozen=True)
class MachineSection:
    machine_hash: str
    cpu_model: str
    models: list[ModelSection]


@dataclass(frozen=True)
class Report:
    machines: list[MachineSection]
    changes: pd.DataFrame = field(default_factory=pd.DataFrame)  # from find_changes; empty if not asked
    row_count: int = 0
    fleet: list[AcrossMachines] = field(default_factory=list)


def build_report(
    frame: pd.DataFrame,
    threshold: float | None = None,
    accuracy_tolerance: float = 0.005,
    runs: set[str] | None = None,
) -> Report:
    """The view of leaderboard rows ``frame``. With a ``threshold`` (``frame`` then needs the raw
    samples), also the changes against each job's previous run, kept to newer runs in ``runs``."""
    changes = pd.DataFrame()
    if threshold is not None:
        changes = find_changes(frame, threshold, accuracy_tolerance)
        if runs is not None and not changes.empty:
            changes = changes[changes.after_run.isin(runs)]
    frame = frame.drop(columns=[c for c in ("samples_ns",) if c in frame.columns])
    latest = latest_per_plan(frame)
    measured = frame[frame.status == "ok"] if not frame.empty else frame
    machines = []
    for machine_hash, per_machine in latest.groupby("machine_hash", sort=True):
        models = []
        for (model_name, model_hash), per_model in per_machine.groupby(["model_name", "model_hash"], sort=True):
            groups = []
            for _, rows in per_model.groupby("_group", sort=False):
                title = group_title(rows.iloc[0])
                groups.append(Group(title, rows, ranked(rows), tidy(rows, title)))
            history = measured[(measured.machine_hash == machine_hash) & (measured.model_name == model_name)]
            across = [AcrossBackends(across_title(first), table) for first, table in across_backends(per_model)]
            models.append(ModelSection(str(model_name), str(model_hash), per_model, history, across, groups))
        machines.append(MachineSection(str(machine_hash), str(per_machine.cpu_model.iloc[0]), models))
    fleet = [
        AcrossMachines(t, rows, fleet_display(rows), fleet_numbers(rows, t)) for t, rows in across_machines(latest)
    ]
    return Report(machines, changes, len(frame), fleet)
