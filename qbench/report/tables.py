"""Tables of leaderboard rows, and the comparability key they and the regressions share.

Only comparable rows are ranked together: same machine, backend and version, threads, batch
size, protocol, data and metric. Each such group is its own section, ranked by speedup against
fp32 (each row's ratio to the fp32 timed in its own rounds); rows that differ only in backend
are also set side by side, unranked, since no reference was timed with all of them.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging

import pandas as pd

from qbench.workload import Workload

log = logging.getLogger(__name__)

COMPARABLE = [
    "machine_hash",
    "model_hash",
    "backend",
    "backend_version",
    "threads",
    "batch_size",
    "protocol",
    "data_hash",
    "metric",
    "workload",
    "scenario",
]


def latest_per_plan(frame: pd.DataFrame) -> pd.DataFrame:
    """The newest row for every plan within every comparable group."""
    if frame.empty:
        return frame
    keyed = frame.assign(_group=_group_keys(frame))
    return keyed.sort_values("id").groupby(["_group", "plan_hash"], sort=False).tail(1)


def _group_keys(frame: pd.DataFrame) -> pd.Series:
    return frame[COMPARABLE].map(str).agg("|".join, axis=1)


def tokens_per_s(rows: pd.DataFrame) -> pd.Series:
    """New tokens per second of LLM workloads (decode: 1 per call; prefill: the prompt), NaN otherwise."""
    per_call = rows.workload.map(lambda w: Workload.parse(w).tokens_per_call if isinstance(w, str) else None)
    # Failed rows hold None, so a group with only failures has object columns.
    median_ms = pd.to_numeric(rows.median_ms, errors="coerce")
    return per_call.astype(float) * pd.to_numeric(rows.batch_size, errors="coerce") * 1e3 / median_ms


def samples_per_s(rows: pd.DataFrame) -> pd.Series:
    """Samples per second of throughput rows (the batch over the median call), NaN otherwise."""
    throughput = rows.scenario.map(lambda s: isinstance(s, str) and s.startswith("throughput"))
    median_ms = pd.to_numeric(rows.median_ms, errors="coerce")
    rate = pd.to_numeric(rows.batch_size, errors="coerce") * 1e3 / median_ms
    return rate.where(throughput.astype(bool))


def _server(row: pd.Series) -> dict:
    """What a server run stored with the row (``qbench.benchmark._serve``), or {}."""
    if not (isinstance(row.get("scenario"), str) and row["scenario"].startswith("server")):
        return {}
    return row_settings(row)


def speedup_header(scenario: object) -> str:
    """What a group's speedup compares: the median unless the scenario says a tail."""
    if isinstance(scenario, str) and scenario.startswith("server") and not scenario.startswith("server:max"):
        return "p99 speedup vs fp32 (same arrivals)"
    if isinstance(scenario, str) and scenario.startswith("latency:server-qps:"):
        return f"requests/s within {scenario.rsplit(':', 1)[1]} ms p99 vs fp32"
    if isinstance(scenario, str) and scenario.startswith("latency:"):
        return f"{scenario.split(':', 1)[1]} speedup vs fp32"
    return "speedup vs fp32"


def _layer_counts(realized: str | None) -> tuple[int | None, int | None]:
    """(layers that ran in low precision, layers) from a row's realized precisions."""
    if not isinstance(realized, str) or not realized:  # failed rows have none
        return None, None
    try:
        counts = json.loads(realized)
        return sum(1 for p in counts.values() if p not in ("fp32", "removed")), len(counts)
    except (ValueError, AttributeError, TypeError):  # a row damaged outside qbench: shown blank, not fatal
        _warn_once("a row's realized precisions are not valid JSON; its layer count is left blank")
        return None, None


def _realized_summary(realized: str | None) -> str:
    low, total = _layer_counts(realized)
    return "" if total is None else f"{low}/{total}"


def row_settings(row: pd.Series) -> dict:
    """A row's stored settings (JSON in the leaderboard), or {} (also for damaged JSON)."""
    settings = row.get("backend_settings")
    try:
        settings = json.loads(settings) if isinstance(settings, str) and settings else settings
    except ValueError:
        _warn_once("a row's settings are not valid JSON; they are left out of the tables")
        return {}
    return settings if isinstance(settings, dict) else {}


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def _ordered(group: pd.DataFrame) -> pd.DataFrame:
    """Ok rows in the tuner's paired ranking where a tune recorded one (``selection_rank``: the
    head-to-head race decides, the same answer the tune printed), then by speedup against fp32
    (each row's own rounds: absolute medians of different chunks or runs drift apart and never
    rank), then failures. Rows without a speedup (their fp32 failed) follow, by median."""
    ok = group[group.status == "ok"]
    ok = ok.assign(
        _rank=[row_settings(r).get("selection_rank", float("inf")) for _, r in ok.iterrows()],
        _speedup=pd.to_numeric(ok.speedup, errors="coerce"),
    )
    ok = ok.sort_values(["_rank", "_speedup", "median_ms"], ascending=[True, False, True], na_position="last")
    return pd.concat([ok.drop(columns=["_rank", "_speedup"]), group[group.status != "ok"]])


def tidy(group: pd.DataFrame, title: str) -> pd.DataFrame:
    """One comparable group for pandas and spreadsheets: one number per cell, units in the
    column names, in the order of ``ranked`` (whose display strings the Markdown keeps)."""
    ordered = _ordered(group)
    layers = ordered.realized.map(_layer_counts)
    ok = ordered.status == "ok"
    return pd.DataFrame(
        {
            "rank": pd.array([i + 1 if good else None for i, good in enumerate(ok)], dtype="Int64"),
            "plan": ordered.plan_name,
            "kind": ordered.kind,
            "status": ordered.status,
            "error": ordered.error.map(lambda e: str(e).splitlines()[0] if isinstance(e, str) else ""),
            "median_ms": ordered.median_ms,
            "ci_low_ms": ordered.ci_low_ms,
            "ci_high_ms": ordered.ci_high_ms,
            "p90_ms": ordered.p90_ms,
            "p99_ms": ordered.p99_ms,
            "tokens_per_s": tokens_per_s(ordered),
            "samples_per_s": samples_per_s(ordered),
            "speedup": ordered.speedup,
            "speedup_ci_low": ordered.speedup_ci_low,
            "speedup_ci_high": ordered.speedup_ci_high,
            "metric": ordered.metric,
            "accuracy": ordered.accuracy,
            "drop": ordered.accuracy_drop,
            "low_precision_layers": pd.array([low for low, _ in layers], dtype="Int64"),
            "layers": pd.array([total for _, total in layers], dtype="Int64"),
            "artifact_mb": ordered.artifact_bytes / 1e6,
            "noisy": ordered.noisy.astype("boolean"),
            "group": title,
        }
    )


def fmt(value: float | None, spec: str) -> str:
    if value is None or pd.isna(value):
        return ""
    if abs(value) >= 1e6:  # a broken plan's perplexity can run to 1e150: keep the column readable
        return format(value, "+.3g" if spec.startswith("+") else ".3g")
    return format(value, spec)


def _status(r: pd.Series) -> str:
    if r.status != "ok":
        return f"failed: {str(r.error).splitlines()[0][:120]}"
    return "ok · the tuner's pick" if row_settings(r).get("selected") else "ok"


def workload_and_scenario(r: pd.Series) -> str:
    """`` · workload decode:128 · scenario throughput:32`` where either is not the default."""
    workload = f" · workload {r.workload}" if isinstance(r.workload, str) and r.workload != "batch" else ""
    scenario = r.get("scenario")
    return workload + (f" · scenario {scenario}" if isinstance(scenario, str) and scenario != "latency" else "")


def interval_text(low: float | None, high: float | None, spec: str) -> str:
    """``low–high``; blank where a row holds no interval (rows of the first schema, NULLs)."""
    return f"{fmt(low, spec)}–{fmt(high, spec)}" if pd.notna(low) and pd.notna(high) else ""


def ranked(group: pd.DataFrame) -> pd.DataFrame:
    """One comparable group as a display table: ok rows by speedup (``_ordered``), then failures.
    A throughput group shows samples/s, a server group the rate and its p99 bound."""
    ordered = _ordered(group)
    rates, samples = tokens_per_s(ordered).to_numpy(), samples_per_s(ordered).to_numpy()
    header = speedup_header(ordered.scenario.iloc[0] if "scenario" in ordered and len(ordered) else None)
    rows = []
    for rank, (_, r) in enumerate(ordered.iterrows(), start=1):
        ok = r.status == "ok"
        server = _server(r) if ok else {}
        rows.append(
            {
                "rank": rank if ok else "",
                "plan": r.plan_name,
                "kind": r.kind,
                "median ms": fmt(r.median_ms, ".3f"),
                "95% CI ms": interval_text(r.ci_low_ms, r.ci_high_ms, ".3f") if ok else "",
                "p90 ms": fmt(r.p90_ms, ".3f"),
                "p99 ms": fmt(r.p99_ms, ".3f"),
                "tokens/s": fmt(rates[rank - 1] if ok else None, ".1f"),
                "samples/s": fmt(samples[rank - 1] if ok else None, ",.1f"),
                "p99 within bound": {True: "yes", False: "NO"}.get(server.get("bound_held"), ""),
                "highest requests/s within bound": fmt(server.get("max_qps"), ",.1f"),
                header: (
                    f"{r.speedup:.2f}× ({interval_text(r.speedup_ci_low, r.speedup_ci_high, '.2f')})"
                    if ok and pd.notna(r.speedup)
                    else ""
                ),
                r.metric if isinstance(r.metric, str) else "accuracy": fmt(r.accuracy, ".4f"),
                "drop": fmt(r.accuracy_drop, "+.4f"),
                "low-precision layers": _realized_summary(r.realized),
                "MB": fmt(r.artifact_bytes / 1e6 if pd.notna(r.artifact_bytes) else None, ".2f"),
                "unsteady": "yes" if ok and r.noisy else "",
                "status": _status(r),
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    empty = [column for column in table.columns[7:11] if not table[column].astype(bool).any()]
    return table.drop(columns=empty)


# Rows of different backends compare when everything else that shapes the numbers is equal.
ACROSS_BACKENDS = [key for key in COMPARABLE if key not in ("backend", "backend_version")]
ACROSS_BACKENDS_NOTE = (
    "Each backend's rows come from its own run: absolute times drift 5–25 % between processes on a "
    "shared machine, so the rows are not ranked and `median ms` is approximate across backends; "
    "speedups vs fp32 are timed interleaved within each run."
)


def across_backends(latest: pd.DataFrame) -> list[tuple[pd.Series, pd.DataFrame]]:
    """For each set of rows that differ only in backend (two backends or more), the measured
    plans of all backends, by backend then speedup (not ranked across backends: no reference
    was timed with all of them): ``(first row, display table)`` pairs."""
    ok = latest[latest.status == "ok"]
    if ok.empty:
        return []
    out = []
    for _, rows in ok.groupby(ok[ACROSS_BACKENDS].map(str).agg("|".join, axis=1), sort=False):
        if rows.backend.nunique() < 2:
            continue
        rows = rows.sort_values(["backend", "speedup"], ascending=[True, False])
        table = pd.DataFrame(
            {
                "backend": rows.backend + " " + rows.backend_version.astype(str),
                "plan": rows.plan_name,
                "median ms": rows.median_ms.map(lambda v: f"{v:.3f}"),
                "speedup vs own fp32": rows.speedup.map(lambda v: fmt(v, ".2f") + "×" if pd.notna(v) else ""),
                rows.metric.iloc[0] or "accuracy": rows.accuracy.map(lambda v: fmt(v, ".4f")),
                "low-precision layers": rows.realized.map(_realized_summary),
            }
        )
        out.append((rows.iloc[0], table))
    return out


def across_title(r: pd.Series) -> str:
    workload = workload_and_scenario(r)
    return (
        f"across backends · {r.threads} threads · batch {r.batch_size}{workload} · metric {r.metric} · "
        f"data {str(r.data_hash)[:8]}"
    )


def markdown_text(value: object) -> str:
    """A value as literal Markdown table text: HTML escaped (names come from users' files, and
    Markdown renderers pass raw HTML through), pipes and newlines kept from breaking the row."""
    text = html.escape(str(value), quote=False)
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(map(markdown_text, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(markdown_text(row[c]) for c in cols) + " |")
    return "\n".join(lines)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with text cells that a spreadsheet would run as a formula (starting with = + - @,
    tab or CR) prefixed with a single quote, as OWASP advises against CSV injection. Numeric
    columns stay numeric: a negative drop is a number, not text."""
    out = frame.copy()
    for column in out.columns:
        if not (pd.api.types.is_numeric_dtype(out[column]) or pd.api.types.is_datetime64_any_dtype(out[column])):
            out[column] = out[column].map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v
            )
    return out


def group_title(r: pd.Series) -> str:
    protocol = hashlib.sha256(str(r.protocol).encode()).hexdigest()[:8]
    workload = workload_and_scenario(r)
    return (
        f"{r.backend} {r.backend_version} · {r.threads} threads · batch {r.batch_size}{workload} · "
        f"metric {r.metric} · data {str(r.data_hash)[:8]} · protocol {protocol}"
    )
