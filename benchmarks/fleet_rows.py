"""Add the CPU at hand to the project's fleet: its bench rows of the demo and the zoo, merged into
the committed export ``results/fleet/rows.jsonl.gz``, and the cross-machine tables regenerated.

On this CPU: a tune of the demo (its winner is the "tuned" plan), then one quick bench per model
with fp32, int8 (an LLM: int8-weight and int4-weight), the runtime's own int8 and any tuned plan
given for it, each bench in one run so every speedup is paired against that run's fp32. Only
the bench rows of this machine go into the export; the rows already there stay (importing is
idempotent by row id), so the file grows by one set of rows per CPU and run.

    python benchmarks/fleet_rows.py                       # every model, ~25 min on 2 cores (--quick: ~16)
    python benchmarks/fleet_rows.py --models digits-cnn --plan smollm2-135m=tuned.json
    python benchmarks/fleet_rows.py --report-only         # the tables from the committed export
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLEET = ROOT / "results" / "fleet"
LLM_RECIPES = ("fp32", "int8-weight", "int4-weight", "native-int8")
RECIPES = ("fp32", "int8", "native-int8")
MODELS = ("digits-cnn", "mobilenet-blocks", "yolo-blocks", "minilm-l6", "ppocr-det", "ppocr-rec", "smollm2-135m")


def qbench(*args: str) -> str:
    command = [str(pathlib.Path(sys.executable).with_name("qbench")), *args]
    print("$ qbench " + " ".join(args), flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"qbench {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def tune_demo(work: pathlib.Path, trials: int) -> pathlib.Path | None:
    """The demo tuned here at a 1 % budget; its plan file (None when fp32 was kept)."""
    print(qbench("tune", "--max-drop", "1%", "--trials", str(trials), "--results-dir", str(work / "tune"), "-q"))
    found = sorted((work / "tune" / "tuned").glob("*/plan.json"))
    return found[0] if found else None


def bench(model: str, plans: list[str], results: pathlib.Path, quick: bool) -> None:
    recipes = LLM_RECIPES if model == "smollm2-135m" else RECIPES
    protocol = ["--quick"] if quick else []
    print(qbench("bench", model, "--recipe", ",".join([*recipes, *plans]), *protocol, "--results-dir", str(results)))


def merge(new_export: pathlib.Path | None, work: pathlib.Path) -> None:
    """The committed export plus ``new_export`` into one leaderboard, written back, then the tables."""
    db = f"sqlite:///{work / 'fleet.db'}"
    committed = FLEET / "rows.jsonl.gz"
    for part in (committed, new_export):
        if part is not None and part.exists():
            print(qbench("leaderboard", "--db", db, "--import", str(part)))
    print(qbench("leaderboard", "--db", db, "--export", str(committed)))
    print(qbench("report", "--db", db, "--results-dir", str(FLEET)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo models")
    parser.add_argument("--plan", action="append", default=[], metavar="MODEL=FILE", help="a tuned plan to bench too")
    parser.add_argument("--trials", type=int, default=12, help="trials of the demo's tune")
    parser.add_argument("--quick", action="store_true", help="the short protocol: wider intervals, ~2x sooner")
    parser.add_argument("--report-only", action="store_true", help="only regenerate the tables from the export")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qbench-fleet-") as tmp:
        work = pathlib.Path(tmp)
        if args.report_only:
            merge(None, work)
            return
        plans: dict[str, list[str]] = {}
        for item in args.plan:
            model, _, path = item.partition("=")
            plans.setdefault(model, []).append(str(pathlib.Path(path).resolve()))
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        if "digits-cnn" in models:
            tuned = tune_demo(work, args.trials)
            if tuned is not None:
                plans.setdefault("digits-cnn", []).append(str(tuned))
        for model in models:
            bench(model, plans.get(model, []), work / "bench", args.quick)
        new = work / "new.jsonl.gz"
        print(qbench("leaderboard", "--results-dir", str(work / "bench"), "--export", str(new), "--machine", "here"))
        merge(new, work)


if __name__ == "__main__":
    main()
