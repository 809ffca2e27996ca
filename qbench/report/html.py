"""One self-contained HTML page of results: per machine and model, the latency/accuracy Pareto
chart, backends side by side, the history of each job over nights, and the regressions.

Charts are drawn with matplotlib and inlined as SVG, so the page needs nothing but itself.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import pathlib

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from qbench.profile import display_table, flag_summary
from qbench.report.machines import FLEET_NOTE
from qbench.report.regressions import METHODS_NOTE, WITHHELD
from qbench.report.tables import ACROSS_BACKENDS_NOTE, row_settings
from qbench.report.view import AcrossMachines, ModelSection, Report

PROFILE_ROWS = 8  # op-type rows of the best plan's profile shown per model
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.5rem; }
h3 { margin-top: 1.8rem; } .meta { color: #666; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; } th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
.regression { background: #fdecea; } .improvement { background: #e9f7ef; } .withheld { background: #fff8e1; }
.ok { color: #1b7f3b; } .bad { color: #b3261e; font-weight: 600; }
.charts { display: flex; flex-wrap: wrap; gap: 1rem; } .charts svg { max-width: 100%; height: auto; }
.note { color: #555; font-size: 13px; }
"""


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "qbench"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: inline SVG needs neither


def _pareto_chart(latest: pd.DataFrame, title: str) -> str:
    """Speedup against fp32 (x: the paired figure each row was ranked by, on a tune's objective)
    against accuracy drop (y) of every measured plan, one colour per backend; the line joins each
    backend's Pareto-optimal plans (nothing both faster and more accurate), a star marks the
    tuner's pick. Labels are staggered so that plans close together stay readable."""
    figure = Figure(figsize=(6.4, 4.2))
    ax = figure.subplots()
    for color, (backend, rows) in zip(PALETTE, latest.groupby("backend", sort=True), strict=False):
        rows = rows.assign(_x=pd.to_numeric(rows.speedup, errors="coerce")).dropna(subset=["_x"])
        rows = rows.sort_values("_x", ascending=False)
        drop = rows.accuracy_drop.fillna(0.0) * 100
        picked = [bool(row_settings(r).get("selected")) for _, r in rows.iterrows()]
        ax.scatter(rows._x, drop, color=color, label=backend, zorder=3)
        for i, (plan, x, d, pick) in enumerate(zip(rows.plan_name, rows._x, drop, picked, strict=True)):
            if pick:
                ax.scatter([x], [d], marker="*", s=180, color=color, edgecolor="black", zorder=4)
            ax.annotate(plan[:18], (x, d), fontsize=7, xytext=(4, 3 + 9 * (i % 3)), textcoords="offset points")
        front, best = [], float("inf")
        for x, d in zip(rows._x, drop, strict=True):
            if d < best:
                front.append((x, d))
                best = d
        if front:
            ax.step(*zip(*front, strict=True), where="post", color=color, alpha=0.5)
    ax.axhline(0, color="#999", linewidth=0.8)
    ax.set_xlabel("speedup vs fp32 (paired), higher is better")
    ax.set_ylabel("accuracy drop vs fp32 (points of %)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(figure)


def _history_chart(history: pd.DataFrame, title: str, normalized: bool = False) -> str | None:
    """Median latency of each (backend, plan) over the runs, oldest first: a change of threads
    or runtime version shows as a step in its line. ``normalized``: each median divided by the
    reference workload's median of the same run, so drift of the whole machine cancels."""
    if normalized:
        history = history[history.reference_ms.notna()] if "reference_ms" in history.columns else history.iloc[:0]
    series = history.groupby(["backend", "plan_name"], sort=True)
    if not any(len(rows) > 1 for _, rows in series):
        return None
    figure = Figure(figsize=(6.4, 4.2))
    ax = figure.subplots()
    for color, ((backend, plan), rows) in zip(PALETTE * 4, series, strict=False):
        rows = rows.sort_values("created_at")
        scale = rows.reference_ms if normalized else 1.0
        median, low, high = rows.median_ms / scale, rows.ci_low_ms / scale, rows.ci_high_ms / scale
        ax.errorbar(
            pd.to_datetime(rows.created_at),
            median,
            # clipped: rows written by other tools may carry an interval that misses the median
            yerr=[(median - low).clip(lower=0), (high - median).clip(lower=0)],
            marker="o",
            markersize=4,
            capsize=2,
            color=color,
            label=f"{backend} · {plan[:18]}",
        )
    ax.set_ylabel("median / reference median" if normalized else "median latency (ms) with 95% CI")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figure.autofmt_xdate()
    return _svg(figure)


def fleet_chart(section: AcrossMachines) -> str:
    """Speedup vs fp32 of each plan, one bar per machine with its 95 % interval."""
    rows = section.rows.assign(_s=pd.to_numeric(section.rows.speedup, errors="coerce")).dropna(subset=["_s"])
    plans = list(dict.fromkeys(rows.plan_name))
    cpus = list(dict.fromkeys(rows.cpu_model + " · " + rows.isa))
    width = 0.8 / max(len(cpus), 1)
    figure = Figure(figsize=(6.4, 0.5 + 0.45 * len(plans) * max(1, len(cpus) / 2)))
    ax = figure.subplots()
    for i, (color, cpu) in enumerate(zip(PALETTE * 4, cpus, strict=False)):
        mine = rows[(rows.cpu_model + " · " + rows.isa) == cpu]
        y = [plans.index(p) + i * width for p in mine.plan_name]
        low = (mine._s - pd.to_numeric(mine.speedup_ci_low, errors="coerce")).clip(lower=0).fillna(0)
        high = (pd.to_numeric(mine.speedup_ci_high, errors="coerce") - mine._s).clip(lower=0).fillna(0)
        ax.barh(y, mine._s, height=width, xerr=[low, high], color=color, label=cpu[:60], capsize=2)
    ax.set_yticks([i + width * (len(cpus) - 1) / 2 for i in range(len(plans))], [p[:24] for p in plans])
    ax.invert_yaxis()
    ax.axvline(1.0, color="#999", linewidth=0.8)
    ax.set_xlabel("speedup vs fp32 on each machine (paired, 95 % interval)")
    ax.set_title(section.title[:110], fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2, frameon=False)
    return _svg(figure)


def _fleet(report: Report) -> list[str]:
    """The across-machines section, once the leaderboard holds two machines or more."""
    if len(report.machines) < 2:
        return []
    parts = ["<h2>Across machines</h2>", f"<p class='note'>{html.escape(FLEET_NOTE)}</p>"]
    for section in report.fleet:
        parts.append(f"<h3>{html.escape(section.title)}</h3>")
        parts.append(f"<div class='charts'>{fleet_chart(section)}</div>" + _table(section.display))
    return parts


def _table(frame: pd.DataFrame, row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for i, (_, row) in enumerate(frame.iterrows()):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _regressions(changes: pd.DataFrame) -> str:
    if changes.empty:
        return '<p class="ok">No significant change against the previous run of any job.</p>'
    shown = changes.drop(columns=[c for c in ("before_run", "after_run") if c in changes.columns])
    classes = [
        "regression" if r else "withheld" if v.startswith(WITHHELD) else "improvement"
        for r, v in zip(changes.regression, changes.verdict, strict=True)
    ]
    regressed = int(changes.regression.sum())
    lead = f'<p class="bad">{regressed} regression(s)</p>' if regressed else '<p class="ok">No regression.</p>'
    p_text = shown.p.map(lambda p: "" if pd.isna(p) else f"{p:.1e}" if p > 0 else "< 1e-300")  # underflow: 0.0
    table = _table(shown.assign(p=p_text), classes)
    return lead + table + f"<p class='note'>{html.escape(METHODS_NOTE)}</p>"


def _best_plan_profile(ok: pd.DataFrame) -> str | None:
    """The top of the stored per-op profile of the fastest profiled low-precision plan, or None."""
    if "profile" not in ok.columns:
        return None
    profiled = ok[ok.profile.notna() & (ok.plan_name != "fp32")].sort_values("median_ms")
    if profiled.empty:
        return None
    best = profiled.iloc[0]
    data = json.loads(best.profile)
    table = display_table(pd.DataFrame(data["by_op_type"]), PROFILE_ROWS)
    flags = flag_summary(data["flag_counts"]) or "none"
    title = f"Where the time goes: {best.plan_name} on {best.backend} ({data['total_ms']:.3f} ms of kernel time)"
    return (
        f"<h4>{html.escape(title)}</h4>"
        + _table(table)
        + f"<p class='note'>Flags (float ops between Q/DQ, reorders, standalone quantizes): {html.escape(flags)}. "
        "Profiled on a fresh session after timing (<code>--profile</code>).</p>"
    )


def _model_section(model: ModelSection) -> list[str]:
    ok = model.latest[model.latest.status == "ok"]
    parts = [f"<h3>{html.escape(model.name)}</h3>"]
    charts = []
    if not ok.empty:
        metric = ok.metric.iloc[0]
        charts.append(_pareto_chart(ok, f"{model.name}: speedup vs accuracy drop ({metric}), latest runs"))
    for normalized, title in ((False, "latency over runs"), (True, "latency over runs, normalized by the reference")):
        trend = _history_chart(model.history, f"{model.name}: {title}", normalized)
        if trend:
            charts.append(trend)
    if charts:
        parts.append("<div class='charts'>" + "".join(charts) + "</div>")
    profile = _best_plan_profile(ok)
    if profile:
        parts.append(profile)
    for across in model.across:
        parts.append(f"<h4>Backends side by side · {html.escape(across.title)}</h4>")
        parts.append(_table(across.display) + f"<p class='note'>{html.escape(ACROSS_BACKENDS_NOTE)}</p>")
    for group in model.groups:
        parts.append(f"<h4>{html.escape(group.title)}</h4>")
        classes = ["" if status == "ok" else "regression" for status in group.display.status]
        parts.append(_table(group.display, classes))
    return parts


def render(report: Report) -> str:
    """The page of ``report``."""
    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>qbench report</title><style>{STYLE}</style></head><body>",
        "<h1>qbench results</h1>",
        f"<p class='meta'>Generated {now} by <code>qbench report</code> from {report.row_count} leaderboard rows.</p>",
        "<h2>Regressions</h2>",
        _regressions(report.changes),
    ]
    parts += _fleet(report)
    if not report.machines:
        parts.append("<p>The leaderboard is empty: run <code>qbench bench</code> or <code>qbench nightly</code>.</p>")
    for machine in report.machines:
        parts.append(f"<h2>Machine {html.escape(machine.machine_hash)}</h2>")
        parts.append(f"<p class='meta'>{html.escape(machine.cpu_model)}</p>")
        for model in machine.models:
            parts += _model_section(model)
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(report: Report, results_dir: pathlib.Path) -> pathlib.Path:
    path = results_dir / "report.html"
    path.write_text(render(report), encoding="utf-8")
    return path
