"""The fleet view: one model's plans on every machine that measured them, side by side.

A machine's speedups are paired against the fp32 timed in its own rounds, so they carry over
between machines as ratios; absolute times do not (another CPU, other threads), so rows of
different machines are shown together and never ranked.
"""

from __future__ import annotations

import pandas as pd

from qbench.report.tables import fmt, interval_text, tokens_per_s, workload_and_scenario

#: What must be equal for two machines' rows to sit in one table (threads and runtime version
#: are a machine's deployment: shown, not keyed).
FLEET_KEY = ["model_name", "model_hash", "backend", "batch_size", "data_hash", "metric", "workload", "scenario"]
FLEET_NOTE = (
    "Each machine's speedup is paired against fp32 timed in the same rounds on that machine (95 % "
    "interval); the drop is against that fp32. Rows of different machines are shown side by side, not "
    "ranked: their absolute times come from different CPUs and threads."
)


def across_machines(latest: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """For each model and setting (``FLEET_KEY``), the newest measured row of every plan on every
    machine: ``(title, rows)`` with rows by plan (fp32 and the runtime's own int8 first, then by name),
    then CPU: an order to find rows by, not a ranking."""
    ok = latest[latest.status == "ok"] if not latest.empty else latest
    if ok.empty:
        return []
    out = []
    for _, rows in ok.groupby(ok[FLEET_KEY].map(str).agg("|".join, axis=1), sort=True):
        rows = rows.sort_values("id").groupby(["machine_hash", "plan_name"], sort=False).tail(1)
        first = rows.plan_name.map(lambda plan: plan not in ("fp32", "native-int8"))  # the two references lead
        rows = rows.assign(_first=first).sort_values(["_first", "plan_name", "cpu_model", "machine_hash"])
        out.append((fleet_title(rows.iloc[0]), rows.drop(columns="_first")))
    return out


def fleet_title(r: pd.Series) -> str:
    return (
        f"{r.model_name} ({str(r.model_hash)[:8]}) · {r.backend} · batch {r.batch_size}"
        f"{workload_and_scenario(r)} · metric {r.metric} · data {str(r.data_hash)[:8]}"
    )


def fleet_display(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows as text for Markdown, the terminal and HTML."""
    rates = tokens_per_s(rows)
    table = pd.DataFrame(
        {
            "plan": rows.plan_name,
            "CPU": rows.cpu_model,
            "ISA": rows.isa,
            "machine": rows.machine_hash.str[:12],
            "threads": rows.threads.map(lambda t: fmt(t, ".0f")),
            "runtime": rows.backend_version,
            "speedup vs fp32": [
                f"{s:.2f}× ({interval_text(lo, hi, '.2f')})" if pd.notna(s) else ""
                for s, lo, hi in zip(rows.speedup, rows.speedup_ci_low, rows.speedup_ci_high, strict=True)
            ],
            "tokens/s": rates.map(lambda v: fmt(v, ".1f")),
            "drop": rows.accuracy_drop.map(lambda v: fmt(v, "+.4f")),
            "MB": (rows.artifact_bytes / 1e6).map(lambda v: fmt(v, ".2f")),
            "measured": pd.to_datetime(rows.created_at).dt.strftime("%Y-%m-%d"),
        }
    )
    if not table["tokens/s"].astype(bool).any():
        table = table.drop(columns="tokens/s")
    return table


def fleet_numbers(rows: pd.DataFrame, title: str) -> pd.DataFrame:
    """The rows tidy, one number per cell (CSV)."""
    return pd.DataFrame(
        {
            "model": rows.model_name,
            "plan": rows.plan_name,
            "cpu_model": rows.cpu_model,
            "isa": rows.isa,
            "machine_hash": rows.machine_hash,
            "threads": rows.threads,
            "backend": rows.backend,
            "backend_version": rows.backend_version,
            "speedup": rows.speedup,
            "speedup_ci_low": rows.speedup_ci_low,
            "speedup_ci_high": rows.speedup_ci_high,
            "tokens_per_s": tokens_per_s(rows),
            "metric": rows.metric,
            "drop": rows.accuracy_drop,
            "artifact_mb": rows.artifact_bytes / 1e6,
            "created_at": rows.created_at,
            "group": title,
        }
    )
