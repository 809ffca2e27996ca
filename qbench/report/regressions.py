"""Regressions: the newest run of each job against the run before it.

A job is everything that makes two rows comparable except the backend version (a new runtime
version is exactly what a nightly run should catch): machine, model, backend, plan, threads,
batch, protocol, data, metric, kind. Rows of a suite job are compared by the job's name, plan
and machine instead: whatever changed in its configuration between nights (threads, a model
file, the data) is what the comparison is meant to catch.

Latency is compared by the best method the rows allow, and the change says which decided:

1. ``in-process A/B``: the newer run's worker timed the older run's artifact and its own,
   interleaved (``qbench.previous_run``); a paired ratio, a few percent of noise.
2. ``normalized by reference``: both runs timed the reference workload (``qbench.drift``)
   with their plans; each median is divided by it, so drift of the whole machine cancels.
3. ``raw medians``: rows from before either existed, or ad-hoc runs.

An in-process A/B also times a second session of tonight's plan against the first (A/A): the
A/B interval is widened by how far that strayed from 1. A change is flagged only if it holds at
the widened ends; when the widened interval still reaches past the threshold and the machine's
noise is why (A/A band over a quarter of the threshold, or an A/B interval wider than the
threshold), the job gets a row whose verdict is "withheld: machine unstable": neither flagged
nor silently passed.

A latency change counts when the ratio (after / before) is beyond the threshold, its 95 %
bootstrap interval excludes 1 (no change), and a two-sided Mann–Whitney test on the samples
(scaled by the reference for method 2) has p < ``ALPHA``. Accuracy counts when it moves by more
than a tolerance: the data are the same, so any such move is real.
"""

from __future__ import annotations

import json

import pandas as pd

from qbench.previous_run import IN_PROCESS, NORMALIZED, RAW, unstable, widened
from qbench.report.tables import COMPARABLE
from qbench.statistics import Change, latency_change
from qbench.store import samples_from_bytes

# The comparable group of the tables minus the backend version, plus the plan and the kind.
JOB = [key for key in COMPARABLE if key != "backend_version"] + ["plan_hash", "kind"]
SUITE_JOB = ["machine_hash", "job", "plan_name", "kind"]
ALPHA = 0.01
WITHHELD = "withheld: machine unstable"
METHODS_NOTE = (
    "Latency is compared by in-process A/B (tonight's worker timed the previous run's artifact and its own, "
    "interleaved) where it can be, else by medians normalized by the reference workload timed with "
    "each run, else by raw medians; a change counts past the threshold when its 95% CI excludes 1 and "
    f"Mann–Whitney p < {ALPHA}. Before/after of an A/B are both measured in the newer run."
)


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
        method, change, before_ms, after_ms, note, shaky = _latency_change(before, after, threshold)
        slower = change.ratio - 1.0 > threshold and change.ci_low > 1.0
        faster = 1.0 - change.ratio > threshold and change.ci_high < 1.0
        decided = (slower or faster) and change.p < alpha
        shaky = None if decided else shaky
        if decided or shaky:
            changes.append(
                {
                    **base,
                    "what": "latency",
                    "before": f"{before_ms:.3f} ms",
                    "after": f"{after_ms:.3f} ms",
                    "change": f"{change.ratio - 1.0:+.1%}",
                    "ratio (95% CI)": f"{change.ratio:.3f} ({change.ci_low:.3f}–{change.ci_high:.3f})",
                    "p": change.p,
                    "method": method,
                    "verdict": f"{WITHHELD}: {shaky}" if shaky else "regression" if slower else "improvement",
                    "note": note,
                    "regression": bool(slower and decided),
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
                        "ratio (95% CI)": "",
                        "p": float("nan"),
                        "method": "same data",
                        "verdict": "regression" if moved < 0 else "improvement",
                        "note": "",
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


def _latency_change(
    before: pd.Series, after: pd.Series, threshold: float
) -> tuple[str, Change, float, float, str, str | None]:
    """(method, change, before ms, after ms, note, why the machine was too unstable to decide
    or None) by the best method the two rows allow; no interval is computed for a ratio within
    ``threshold`` of 1."""
    comparison = json.loads(after.comparison) if isinstance(after.get("comparison"), str) else {}
    if comparison.get("method") == IN_PROCESS and comparison.get("previous_id") == before.id:
        change = widened(comparison)
        note = "both timed tonight" + (", the older plan rebuilt from the store" if comparison.get("rebuilt") else "")
        if "aa_ratio" in comparison:
            note += f", A/A {comparison['aa_ratio']:.3f} ({comparison['aa_ci_low']:.3f}–{comparison['aa_ci_high']:.3f})"
        shaky = unstable(comparison, threshold)
        return IN_PROCESS, change, comparison["before_ms"], comparison["after_ms"], note, shaky
    why = comparison.get("why_not", "")
    before_ns, after_ns = samples_from_bytes(before.samples_ns), samples_from_bytes(after.samples_ns)
    if pd.notna(before.get("reference_ms")) and pd.notna(after.get("reference_ms")):
        scale = before.reference_ms / after.reference_ms
        reference = f"reference {before.reference_ms:.3f} → {after.reference_ms:.3f} ms"
        change = latency_change(before_ns, after_ns, paired=False, scale=scale, min_change=threshold)
        return NORMALIZED, change, before.median_ms, after.median_ms, "; ".join(filter(None, [why, reference])), None
    change = latency_change(before_ns, after_ns, paired=False, min_change=threshold)
    return RAW, change, before.median_ms, after.median_ms, why, None
