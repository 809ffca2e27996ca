"""How far apart two nights of a suite are, by each comparison method, printed as numbers.

For every suite job and plan, each run against the run before it: the in-process A/B ratio the
newer worker measured (previous artifact beside tonight's, same rounds), the ratio of medians
normalized by the reference workload, and the ratio of raw medians; beside the A/B, the A/A
ratio of two sessions of the newer plan timed in the same rounds. On unchanged reruns the
spread of each column is the noise that method would have to stay below a threshold; the A/B
spread should be a few percent where raw medians drift 15-24 %.

    qbench nightly suites/nightly.toml --force      # two or more nights, nothing changed
    python benchmarks/nightly_spread.py --results-dir results [--suite nightly] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import pathlib

import pandas as pd

from qbench.store import Leaderboard, default_url


def pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (job, plan, newer run): the three ratios after / before."""
    rows = []
    for (job, plan), runs in frame.groupby(["job", "plan_name"], sort=True):
        runs = runs.sort_values("id")
        for before, after in zip(runs.iloc[:-1].itertuples(), runs.iloc[1:].itertuples(), strict=True):
            comparison = json.loads(after.comparison) if isinstance(after.comparison, str) else {}
            paired = comparison.get("previous_id") == before.id
            ab = comparison.get("ratio") if paired else None
            normalized = (after.median_ms / after.reference_ms) / (before.median_ms / before.reference_ms)
            rows.append(
                {
                    "job": job.split(":", 1)[1],
                    "plan": plan,
                    "run": after.run_id[:8],
                    "threads": f"{before.threads}→{after.threads}",
                    "ab": ab,
                    "aa": comparison.get("aa_ratio") if paired else None,
                    "normalized": normalized,
                    "raw": after.median_ms / before.median_ms,
                    "reference": after.reference_ms / before.reference_ms,
                }
            )
    return pd.DataFrame(rows)


def spread(column: pd.Series) -> str:
    deviation = (column.dropna() - 1.0).abs()
    if deviation.empty:
        return "-"
    return f"median |r-1| {deviation.median():.1%}, 95th pct {deviation.quantile(0.95):.1%}, max {deviation.max():.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=pathlib.Path, default=pathlib.Path("results"))
    parser.add_argument("--suite", default="nightly", help="suite name (the job prefix)")
    parser.add_argument("--runs", type=int, help="only the newest N runs of each job")
    args = parser.parse_args()
    board = Leaderboard(default_url(args.results_dir))
    try:
        frame = board.frame(job_prefix=f"{args.suite}:")
    finally:
        board.close()
    frame = frame[(frame.status == "ok") & frame.reference_ms.notna()]
    if args.runs:
        newest = frame.groupby("job").run_id.unique().map(lambda ids: set(ids[-(args.runs + 1) :]))
        frame = frame[[run in newest[job] for job, run in zip(frame.job, frame.run_id, strict=True)]]
    table = pairs(frame)
    if table.empty:
        raise SystemExit(f"no two runs of suite {args.suite!r} with a reference in {args.results_dir}")
    with pd.option_context("display.width", 160, "display.max_rows", 500):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print()
    for column in ("ab", "aa", "normalized", "raw", "reference"):
        print(f"{column:>10}: {spread(table[column])} over {table[column].notna().sum()} pairs")


if __name__ == "__main__":
    main()
