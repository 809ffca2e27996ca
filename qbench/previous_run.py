"""Tonight's plans against the previous run of their suite job, timed in one process.

Raw medians of two nights differ by far more than a regression threshold on a shared machine
with nothing changed (a fresh process lands differently), while two sessions alternated in one
process agree to a few percent (docs/decisions.md).
So a nightly worker loads, beside each of tonight's plans, the artifact the previous run of the
job measured (from the build cache by its key, or rebuilt from the stored plan when the cache
lost it) with the previous run's thread count, and times the two alone, in alternating blocks:
the change is a paired ratio under identical conditions. A second session of tonight's
artifact is timed in the same rounds, and the A/B interval
is widened by how far that A/A ratio strays from 1 (``widened``); when the machine's noise leaves
a change past the threshold possible, the verdict is withheld, neither flagged nor passed
(``unstable``). Where the pair cannot reproduce the
previous run (another runtime version, workload, batch or session settings; the artifact and
its model file both gone) the row says why, and the report falls back to medians normalized by
the reference workload (``qbench.drift``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from qbench.errors import describe
from qbench.plan import PrecisionPlan
from qbench.statistics import Change, aa_band, aa_check, latency_change
from qbench.workers import Deployment

if TYPE_CHECKING:
    from qbench.backends import Artifact, Backend
    from qbench.harness import Harness

IN_PROCESS = "in-process A/B"
NORMALIZED = "normalized by reference"
RAW = "raw medians"
#: The previous artifact's key in the pair's interleaved calls.
PREVIOUS = "previous"
#: A second session of tonight's artifact, timed in the same rounds (the A/A check).
AGAIN = "again"


@dataclass
class PreviousPlan:
    """The previous run's row of one plan, and its artifact loaded beside tonight's."""

    row: Mapping[str, Any]
    artifact: Artifact | None = None
    rebuilt: bool = False
    deployment: Deployment | None = None
    why_not: str | None = None  # why this plan gets no in-process comparison

    def load(self, backend: Backend, feeds: Mapping[str, np.ndarray]) -> None:
        """Check that the previous artifact opens as the previous run had it (its thread count, a
        session of its own); a session whose settings differ from the stored ones would not
        reproduce it, so it is refused. Its timing worker loads it (``deployment``). Nothing to
        open when ``why_not`` already says why there is no artifact."""
        if self.artifact is None:
            return
        threads = int(self.row["threads"])
        try:
            runner = backend.load(self.artifact, threads, shared_process=False)
        except Exception as exc:
            self.why_not = f"the previous artifact does not load: {describe(exc)}"
            return
        try:
            now = json.loads(json.dumps(dict(runner.settings)))
        finally:
            runner.close()
        stored = _json(self.row.get("backend_settings"))
        changed = [f"{k}: {stored[k]} → {v}" for k, v in now.items() if k in stored and stored[k] != v]
        if changed:
            self.why_not = "session settings changed (" + "; ".join(changed) + ")"
            return
        self.deployment = Deployment(backend, self.artifact, threads, feeds)

    def comparison(
        self,
        before_ns: np.ndarray | None = None,
        after_ns: np.ndarray | None = None,
        block: int = 1,
        again_ns: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """What the row stores: the in-process change when both were timed, else why not; with
        ``again_ns`` (tonight's plan timed again in the same rounds) the A/A change beside it."""
        record: dict[str, Any] = {"previous_id": int(self.row["id"]), "previous_run": str(self.row["run_id"])}
        if self.why_not is not None or before_ns is None or after_ns is None:
            return {**record, "method": None, "why_not": self.why_not or "not timed"}
        change = latency_change(before_ns, after_ns, paired=True, block=block)
        return {
            **record,
            "method": IN_PROCESS,
            "before_ms": float(np.median(before_ns)) / 1e6,
            "after_ms": float(np.median(after_ns)) / 1e6,
            "ratio": change.ratio,
            "ci_low": change.ci_low,
            "ci_high": change.ci_high,
            "p": change.p,
            "rebuilt": self.rebuilt,
            **(aa_check(after_ns, again_ns, block) if again_ns is not None else {}),
        }

    @property
    def ready(self) -> bool:
        return self.deployment is not None and self.why_not is None

    def close(self) -> None:
        self.deployment = None


def find_previous_plan(
    previous: pd.DataFrame, plan_name: str, harness: Harness, backend_version: str | None, workload: str
) -> PreviousPlan | None:
    """The previous run's row of ``plan_name`` with its artifact found or rebuilt (not loaded),
    or None when the previous run has no such plan."""
    if previous.empty:
        return None
    rows = previous[previous.plan_name == plan_name]
    if rows.empty:
        return None
    row = rows.iloc[-1].to_dict()
    partner = PreviousPlan(row)
    backend, model = harness.backend, harness.model
    if row["backend_version"] != backend_version:
        partner.why_not = f"{backend.name} {row['backend_version']} → {backend_version}: they cannot share a process"
    elif (row["workload"] or "batch") != workload or int(row["batch_size"]) != harness.batch_size:
        before, after = f"{row['workload']}, batch {row['batch_size']}", f"{workload}, batch {harness.batch_size}"
        partner.why_not = f"the workload changed ({before} → {after})"
    else:
        key = row.get("artifact_key")
        partner.artifact = backend.cached_artifact(row["model_name"], key, harness.workdir) if key else None
        if partner.artifact is None and row["model_hash"] == model.content_hash:
            try:  # the cache lost it: the stored plan, built again from the same model
                partner.artifact = harness.build(PrecisionPlan.from_json(row["plan"], "the previous run's plan"))
                partner.rebuilt = True
            except Exception as exc:
                partner.why_not = f"rebuilding the previous plan failed: {describe(exc)}"
        elif partner.artifact is None:
            partner.why_not = "the previous artifact left the cache and its model file changed since"
    return partner


def widened(comparison: Mapping[str, Any]) -> Change:
    """The A/B change with its interval widened by the A/A band: two sessions of one artifact
    differ by that much tonight, so the A/B (two sessions too) is known no better."""
    band = 1.0 + aa_band(comparison)
    low, high = comparison["ci_low"] / band, comparison["ci_high"] * band
    return Change(comparison["ratio"], low, high, comparison["p"])


def unstable(comparison: Mapping[str, Any], threshold: float) -> str | None:
    """Why this A/B, not flagged, still cannot rule out a change past ``threshold``, when the
    machine is the reason (the A/A band is over a quarter of the threshold, or the A/B interval
    alone is wider than it); None when it can. On a loaded machine a plan against itself can
    look far slower by its raw samples."""
    change, band = widened(comparison), aa_band(comparison)
    if not (change.ci_high > 1.0 + threshold or change.ci_low < 1.0 - threshold):
        return None  # within the threshold even at the widened ends: no change
    raw_width = comparison["ci_high"] / comparison["ci_low"] - 1.0
    if band > threshold / 4:
        return f"two sessions of tonight's plan differed by up to {band:.1%} (A/A)"
    if raw_width > threshold:
        return f"A/B interval {comparison['ci_low']:.3f}–{comparison['ci_high']:.3f} is wider than {threshold:.0%}"
    return None


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    return json.loads(value) if isinstance(value, str) and value else {}
