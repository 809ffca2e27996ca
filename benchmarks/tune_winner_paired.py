"""Is the plan `qbench tune` returns really the fastest within the budget? A paired re-check.

Runs `qbench tune MODEL` ``--runs`` times (each in a fresh results folder), then, for each run,
loads the returned plan and every other plan of its final table that met the budget (their
artifacts from the run's build cache) and times them all in one process, in alternating
blocks (``qbench.measure``). Prints the winner's paired speedup over each (above 1: the winner
is faster) with its 95 % interval; a row whose interval lies wholly below 1 would be a wrong
winner.

    python benchmarks/tune_winner_paired.py digits-cnn --runs 3 [--max-drop 1%] [more tune options, e.g. --trials 8]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

from qbench.backends import get_backend
from qbench.data import load_npz
from qbench.harness import timed_call
from qbench.measure import TimingProtocol, measure_interleaved
from qbench.model import OnnxModel
from qbench.plan import PrecisionPlan
from qbench.statistics import speedup
from qbench.store import Leaderboard, default_url
from qbench.workload import Workload
from qbench.zoo import ZOO


def check(name: str, results: pathlib.Path, budget: float, seconds: float) -> list[str]:
    board = Leaderboard(default_url(results))
    rows = board.frame()
    board.close()
    rows = rows[(rows.kind == "tune") & (rows.status == "ok")]
    plan_file = next((results / "tuned").iterdir()) / "plan.json"
    if not plan_file.exists():
        return ["kept fp32: no plan to check"]
    winner_hash = PrecisionPlan.from_json(plan_file.read_text()).content_hash
    within = rows[(rows.accuracy_drop <= budget) & (rows.plan_name != "fp32")]
    winner = within[within.plan_hash == winner_hash].iloc[-1]
    others = within[within.plan_hash != winner_hash]
    if others.empty:
        return [f"winner {winner.plan_name}: no other plan met the budget"]
    backend = get_backend(winner.backend)
    files = ZOO[name].files()
    model = OnnxModel.load(files.model)
    feeds = Workload.parse(winner.workload).feeds(model, load_npz(files.evaluation, model), int(winner.batch_size))
    keys = [winner, *[r for _, r in others.iterrows()]]
    runners = {}
    for r in keys:
        artifact = backend.cached_artifact(r.model_name, r.artifact_key, results / "cache")
        runners[r.plan_name] = backend.load(artifact, int(r.threads), shared_process=False)
    try:
        samples = measure_interleaved(
            {k: timed_call(v, feeds) for k, v in runners.items()}, TimingProtocol(min_seconds=seconds)
        )
    finally:
        for runner in runners.values():
            runner.close()
    lines = []
    for _, other in others.iterrows():
        s = speedup(samples[other.plan_name], samples[winner.plan_name], samples.block)
        verdict = "WRONG WINNER" if s.ci_high < 1.0 else "ok"
        lines.append(
            f"winner {winner.plan_name} vs {other.plan_name} (drop {other.accuracy_drop:+.4f}): "
            f"{s.ratio:.3f}× ({s.ci_low:.3f}–{s.ci_high:.3f}) {verdict}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(ZOO))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-drop", default="1%")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per plan in the re-check")
    args, tune_args = parser.parse_known_args()  # the rest goes to `qbench tune`
    tune_args = [a for a in tune_args if a != "--"]
    budget = float(args.max_drop.rstrip("%")) / (100 if args.max_drop.endswith("%") else 1)
    with tempfile.TemporaryDirectory(prefix="qbench-winner-") as tmp:
        for run in range(1, args.runs + 1):
            results = pathlib.Path(tmp) / f"run{run}"
            command = ["qbench", "tune", args.model, "--max-drop", args.max_drop, "--results-dir", str(results)]
            out = subprocess.run([*command, "-q", *tune_args], capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"tune failed: {out.stderr.strip().splitlines()[-1:]}")
            said = [line for line in out.stdout.splitlines() if line.startswith("winner") or "head to head" in line]
            print(f"run {run}: {json.dumps(said)}")
            for line in check(args.model, results, budget, args.seconds):
                print(f"  {line}", flush=True)


if __name__ == "__main__":
    main()
