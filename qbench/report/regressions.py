"""Regressions: the newest run of each job against the run before it.

A job is everything that makes two rows comparable except the backend version (a new runtime
version is exactly what a nightly run should catch): machine, model, backend, plan, threads,
batch, protocol, data, metric, kind. Rows of a suite job are compared by the job's name, plan
and machine instead: whatever changed in its configuration between nights (threads, a model
file, the data) is what the comparison is meant to catch. Latency counts as changed when the medians differ by more
than a threshold *and* a two-sided Mann–Whitney test on the raw samples says the difference is
not noise; accuracy when it moves by more than a tolerance.
"""

from __future__ import annotations

import pandas as pd

from qbench.report.tables import COMPARABLE
from qbench.statistics import mann_whitney_p
from qbench.store import samples_from_bytes

# The comparable group of the tables minus the backend version, plus the plan and the kind.
JOB = [key for key in COMPARABLE if key != "backend_version"] + ["plan_hash", "kind"]
SUITE_JOB = ["machine_hash", "job", "plan_name", "kind"]
ALPHA = 0.01


def find_changes(
    frame: pd.DataFrame, threshold: float = 0.10, accuracy_tolerance: float = 0.005, alpha: float = ALPHA
) -> pd.DataFrame:
    """One row per job whose newest run changed against the previous one: latency (both past
    ``threshold`` and significant) or accuracy (past ``accuracy_tolerance``). ``frame`` needs
    the raw samples (``Leaderboard.frame(samples=True)``). ``regression`` marks the bad ones."""
    ok = frame[frame.status == "ok"].sort_values("id")
    changes = []
    for _, runs in ok.groupby(_job_keys(ok), sort=False):
        if len(runs) < 2:
            continue
        before, after = runs.iloc[-2], runs.iloc[-1]
        base = {
            "model": after.model_name,
            "backend": f"{after.backend} {before.backend_version} → {after.backend_version}",
            "plan": after.plan_name,
            "job": after.job if pd.notna(after.job) else "",
            "threads": f"{before.threads} → {after.threads}" if before.threads != after.threads else after.threads,
            "before_run": before.run_id,
            "after_run": after.run_id,
        }
        ratio = after.median_ms / before.median_ms - 1.0
        if abs(ratio) > threshold:
            p = mann_whitney_p(samples_from_bytes(before.samples_ns), samples_from_bytes(after.samples_ns))
            if p < alpha:
                changes.append(
                    {
                        **base,
                        "what": "latency",
                        "before": f"{before.median_ms:.3f} ms",
                        "after": f"{after.median_ms:.3f} ms",
                        "change": f"{ratio:+.1%}",
                        "p": p,
                        "regression": ratio > 0,
                    }
                )
        if pd.notna(after.accuracy) and pd.notna(before.accuracy):
            moved = after.accuracy - before.accuracy
            if abs(moved) > accuracy_tolerance:
                changes.append(
                    {
                        **base,
                        "what": f"accuracy ({after.metric})",
                        "before": f"{before.accuracy:.4f}",
                        "after": f"{after.accuracy:.4f}",
                        "change": f"{moved:+.4f}",
                        "p": float("nan"),
                        "regression": moved < 0,
                    }
                )
    return pd.DataFrame(changes)


def _job_keys(frame: pd.DataFrame) -> pd.Series:
    if frame.empty:
        return pd.Series([], dtype=str)
    adhoc = frame[JOB].map(str).agg("|".join, axis=1)
    suite = frame[SUITE_JOB].map(str).agg("|".join, axis=1)
    return suite.where(frame.job.notna(), adhoc)
