"""qbench tune against fp32, uniform int8 and a greedy accuracy-control baseline, at one budget.

For each model: fp32, uniform int8, the greedy NNCF-style baseline (revert the most sensitive
layers to float until the budget holds) and the plan ``qbench tune`` returns are timed
interleaved in one process and scored on test data that neither method saw:

    evaluation data = tuning (study + greedy) | selection (tune's final pick) | test (this table)

Models: the zoo's digits demo (top-1 against labels) and PP-OCRv4 text recognition (character
accuracy on lines qbench renders; needs `qbench zoo install`).

    python benchmarks/tuner_vs_baselines.py [--trials 30] [--models digits-cnn,ppocr-rec]
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import optuna
import pandas as pd

from qbench.backends import get_backend
from qbench.benchmark import BenchSettings, run_bench
from qbench.data import Dataset, load_npz
from qbench.harness import Harness
from qbench.machine import current_machine
from qbench.metrics import get_metric
from qbench.model import OnnxModel
from qbench.plan import PlanOptions, PrecisionPlan
from qbench.runspec import LoadedSubject
from qbench.search import (
    StudySettings,
    TuneInputs,
    TuneSettings,
    analyze_sensitivity,
    build_space,
    greedy_accuracy_control,
    tune,
)
from qbench.search._tune import FINAL_PROTOCOL
from qbench.store import Leaderboard
from qbench.zoo import ZOO


def split3(data: Dataset, tuning: float, selection: float) -> tuple[Dataset, Dataset, Dataset]:
    a, b = int(len(data) * tuning), int(len(data) * (tuning + selection))
    return data.take(0, a), data.take(a, b), data.take(b, len(data))


def zoo_setup(name: str, quick_samples: int):
    entry = ZOO[name]
    if entry.missing():
        raise SystemExit(f"{name} {entry.missing()}")
    files = entry.files()
    model = OnnxModel.load(files.model)
    model.name = name
    calibration, evaluation = load_npz(files.calibration, model), load_npz(files.evaluation, model)
    return model, calibration, evaluation, get_metric(entry.metric, True), quick_samples


SETUPS = {
    "digits-cnn": (lambda: zoo_setup("digits-cnn", 512), 0.01),
    "ppocr-rec": (lambda: zoo_setup("ppocr-rec", 64), 0.02),
}


def compare(name: str, trials: int, threads: int, workdir: pathlib.Path) -> None:
    setup, budget = SETUPS[name]
    model, calibration, evaluation, metric, quick = setup()
    tuning, selection, test = split3(evaluation, 0.5, 0.2)
    backend, machine = get_backend("onnxruntime"), current_machine()
    board = Leaderboard(f"sqlite:///{workdir / 'leaderboard.db'}")
    print(
        f"\n== {model.name}: {len(model.layers)} layers, budget: {metric.name} drop <= {budget:g}; "
        f"tuning {len(tuning)} / selection {len(selection)} / test {len(test)} samples",
        flush=True,
    )

    started = time.perf_counter()
    harness = Harness(
        backend=backend,
        model=model,
        calibration_data=calibration,
        evaluation_data=tuning,
        metric=metric,
        machine=machine,
        threads=threads,
        workdir=workdir / "cache",
        quick_samples=quick,
    )
    space = build_space(model, backend.precisions, PlanOptions())
    report = analyze_sensitivity(harness, space)
    sensitivity_s = time.perf_counter() - started
    started = time.perf_counter()
    greedy, greedy_drop = greedy_accuracy_control(harness, space, report, budget)
    greedy_s = time.perf_counter() - started
    harness.close()
    print(
        f"sensitivity {sensitivity_s:.0f} s (uniform int8 drop on the quick subset {report.uniform_drop:+.4f}); "
        f"greedy {greedy_s:.0f} s: {len(greedy.layers)} of {len(space.groups)} layers int8, tuning drop "
        f"{greedy_drop:+.4f}",
        flush=True,
    )

    started = time.perf_counter()
    result = tune(
        TuneInputs(model, calibration, tuning, selection, metric, backend, machine),
        TuneSettings(
            study=StudySettings(max_drop=budget, n_trials=trials, patience=None),
            threads=threads,
            storage_url=f"sqlite:///{workdir / 'tuning.db'}",
            results_dir=workdir,
            study_name=f"bench-{name}",
            quick_samples=quick,
        ),
        board,
    )
    tune_s = time.perf_counter() - started
    print(
        f"tune {tune_s:.0f} s for {result.trials} (incl. sensitivity (cached) and final selection); "
        f"notes: {result.notes or 'none'}",
        flush=True,
    )

    int8 = PrecisionPlan.uniform(model.layer_names(), "int8", "uniform-int8")
    plans = [int8, PrecisionPlan(greedy.layers, greedy.options, "greedy")]
    if result.winner is not None:
        tuned = PrecisionPlan.from_json(result.winner.plan)
        plans.append(PrecisionPlan(tuned.layers, tuned.options, "qbench-tune"))
    rows = run_bench(
        LoadedSubject(model, calibration, test, metric, synthetic=False),
        plans,
        backend=backend,
        machine=machine,
        board=board,
        workdir=workdir / "cache",
        settings=BenchSettings(threads=threads, protocol=FINAL_PROTOCOL),
    )
    board.close()
    table = pd.DataFrame(
        [
            {
                "plan": r.plan_name,
                "median ms": round(r.median_ms, 3),
                "speedup vs fp32 (95% CI)": (f"{r.speedup:.3f}× ({r.speedup_ci_low:.3f}–{r.speedup_ci_high:.3f})"),
                "test drop": round(r.accuracy_drop, 4),
                "within budget": "yes" if r.accuracy_drop <= budget else "NO",
                "int8 layers": f"{sum(p == 'int8' for p in r.realized.values())}/{len(model.layers)}",
            }
            for r in rows
            if r.status == "ok"
        ]
    )
    print(table.sort_values("median ms").to_string(index=False))
    for r in rows:
        if r.status != "ok":
            print(f"{r.plan_name} failed: {r.error}")
    if result.winner is None:
        print("qbench tune kept fp32 (no plan within the budget was measurably faster on the selection data)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--models", default="digits-cnn,ppocr-rec")
    parser.add_argument("--threads", type=int, default=current_machine().default_threads())
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one INFO line per trial otherwise
    print(f"machine: {current_machine().describe()}")
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix=f"qbench-{name}-") as tmp:
            compare(name, args.trials, args.threads, pathlib.Path(tmp))


if __name__ == "__main__":
    main()
