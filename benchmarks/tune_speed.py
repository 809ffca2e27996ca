"""How long does `qbench tune` take, and does deciding sequentially change its answer?

For each model, runs `qbench tune` twice in fresh results folders and separate processes, one
after the other, with the same seed: as it runs by default (accuracy and latency decided
sequentially, finalists screened and the contenders raced) and with ``--exhaustive`` (every
trial scored on all the tuning data and timed in full, the finalists timed with the full
protocol), or with ``--before PYTHON``: the qbench that interpreter runs (an older checkout,
how the tuner ran before). Prints one row per run: wall time, trials and their
pace, where the time went, the winner with its paired speedup and held-out drop. Then both
winners are loaded from their build caches and timed head to head with fp32 in one process
(alternating blocks): the default's winner over the other's, with its 95 % interval.

    python benchmarks/tune_speed.py [MODEL[:BUDGET[:WORKLOAD]] ...] [--seed 0] [--before PYTHON] [-- tune options]

Default: digits-cnn mobilenet-blocks yolo-blocks ppocr-rec:2% smollm2-135m:5%:decode:128.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import optuna

from qbench.backends import Artifact, get_backend
from qbench.data import load_npz
from qbench.harness import timed_call
from qbench.machine import current_machine
from qbench.measure import TimingProtocol, measure_interleaved
from qbench.model import OnnxModel
from qbench.plan import PrecisionPlan
from qbench.statistics import speedup
from qbench.store import Leaderboard, default_url
from qbench.workload import Workload
from qbench.zoo import ZOO

DEFAULT = ["digits-cnn", "mobilenet-blocks", "yolo-blocks", "ppocr-rec:2%", "smollm2-135m:5%:decode:128"]
WINNER = re.compile(r"^winner (\S+): ([\d.]+)× vs fp32 \(95% CI ([\d.]+)–([\d.]+)\).* drop ([-+][\d.]+);")


def run_tune(
    python: str, name: str, budget: str, workload: str | None, seed: int, results: pathlib.Path, extra: list[str]
) -> dict:
    command = [
        python,
        "-m",
        "qbench.cli",
        "tune",
        name,
        "--max-drop",
        budget,
        "--seed",
        str(seed),
        "--results-dir",
        str(results),
    ]
    command += ["--workload", workload] if workload else []
    started = time.perf_counter()
    # Run outside any checkout: with -m, the current folder comes first on sys.path.
    out = subprocess.run([*command, "-q", *extra], capture_output=True, text=True, cwd=results.parent)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"{' '.join(command)} failed: {out.stderr.strip().splitlines()[-1:]}")
    winner = next((m for line in out.stdout.splitlines() if (m := WINNER.match(line))), None)
    storage = optuna.storages.RDBStorage(f"sqlite:///{results / 'tuning.db'}")
    study = optuna.load_study(study_name=None, storage=storage) if len(storage.get_all_studies()) == 1 else None
    phases = study.user_attrs.get("phases", [{}])[-1] if study is not None else {}  # older qbench: none
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
    trials = len(study.get_trials(deepcopy=False, states=states)) if study is not None else 0
    search_s = phases.get("search", {}).get("total", float("nan"))
    return {
        "wall": wall,
        "trials": trials,
        "pace": 60 * trials / search_s if trials else float("nan"),
        "phases": {stage: round(row["total"], 1) for stage, row in phases.items() if stage != "all"},
        "winner": winner.group(1) if winner else "fp32 (kept)",
        "speedup": f"{winner.group(2)}× ({winner.group(3)}–{winner.group(4)})" if winner else "1×",
        "drop": winner.group(5) if winner else "+0",
        "results": results,
    }


def winner_artifact(results: pathlib.Path):
    """The returned plan's row and artifact, from the run's leaderboard and build cache."""
    plan_file = next((results / "tuned").iterdir()) / "plan.json"
    if not plan_file.exists():
        return None
    board = Leaderboard(default_url(results))
    rows = board.frame()
    board.close()
    plan_hash = PrecisionPlan.from_json(plan_file.read_text()).content_hash
    row = rows[(rows.plan_hash == plan_hash) & (rows.status == "ok")].iloc[-1]
    fp32 = rows[(rows.plan_name == "fp32") & (rows.status == "ok")].iloc[-1]
    backend = get_backend(row.backend)
    cache = results / "cache"
    return row, _cached(backend, row, cache), _cached(backend, fp32, cache)


def _cached(backend, row, cache: pathlib.Path) -> Artifact:
    """The row's artifact from the run's cache; an older qbench wrote no content hashes, so its
    entries are taken as they are (the run that built them just ended)."""
    found = backend.cached_artifact(row.model_name, row.artifact_key, cache)
    if found is not None:
        return found
    path = backend._artifact_path(row.model_name, row.artifact_key, cache)
    return Artifact(path, row.artifact_key, 0.0, True, tuple(path.with_suffix(s) for s in backend.companion_suffixes))


def head_to_head(name: str, default: pathlib.Path, compared: pathlib.Path, seconds: float, other: str) -> str:
    a, b = winner_artifact(default), winner_artifact(compared)
    if a is None or b is None:
        return "one of the runs kept fp32: nothing to pair"
    row, backend = a[0], get_backend(a[0].backend)
    files = ZOO[name].files()
    model = OnnxModel.load(files.model)
    feeds = Workload.parse(row.workload).feeds(model, load_npz(files.evaluation, model), int(row.batch_size))
    runners = {
        key: backend.load(artifact, int(row.threads), shared_process=False)
        for key, artifact in (("fp32", a[2]), ("default", a[1]), ("other", b[1]))
    }
    try:
        samples = measure_interleaved(
            {k: timed_call(r, feeds) for k, r in runners.items()}, TimingProtocol(min_seconds=seconds)
        )
    finally:
        for runner in runners.values():
            runner.close()
    s = speedup(samples["other"], samples["default"], samples.block)
    d, e = (speedup(samples["fp32"], samples[k], samples.block) for k in ("default", "other"))
    return (
        f"same rounds: default's winner {d.ratio:.3f}× fp32, {other}'s {e.ratio:.3f}×; "
        f"default over {other} {s.ratio:.3f}× ({s.ci_low:.3f}–{s.ci_high:.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=DEFAULT, help="MODEL[:BUDGET[:WORKLOAD]]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per plan in the head-to-head")
    parser.add_argument(
        "--before",
        metavar="PYTHON",
        help="compare with the qbench that PYTHON runs (an older checkout) instead of --exhaustive",
    )
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    print(f"machine: {current_machine().describe()}")
    with tempfile.TemporaryDirectory(prefix="qbench-tune-speed-") as tmp:
        for spec in args.models:
            name, budget, workload = [*spec.split(":", 2), None, None][:3]
            budget = budget or "1%"
            if name not in ZOO:
                sys.exit(f"unknown zoo model {name!r}; choose from {', '.join(sorted(ZOO))}")
            runs = {}
            other = ("before", args.before, []) if args.before else ("exhaustive", sys.executable, ["--exhaustive"])
            for mode, python, flags in (("default", sys.executable, []), other):
                results = pathlib.Path(tmp) / f"{name}-{mode}"
                runs[mode] = r = run_tune(python, name, budget, workload, args.seed, results, [*flags, *extra])
                print(
                    f"{name:<16} {budget:>3} {mode:<10} {r['wall']:6.0f} s  {r['trials']:3d} trials "
                    f"{r['pace']:5.1f}/min  winner {r['winner']} {r['speedup']} drop {r['drop']}  "
                    f"stages {json.dumps(r['phases'])}",
                    flush=True,
                )
            paired = head_to_head(name, runs["default"]["results"], runs[other[0]]["results"], args.seconds, other[0])
            print(f"{'':<21} {paired}", flush=True)


if __name__ == "__main__":
    main()
