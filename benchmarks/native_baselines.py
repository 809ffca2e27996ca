"""The runtime's own one-line int8 against qbench's uniform int8 and the tuned plan, per zoo
model and CPU backend, in one table.

For each (model, backend): ``qbench bench --recipe fp32,int8,native-int8`` times the three
interleaved in one process (speedups are ratios of medians in that process); then
``qbench tune`` at the model's budget returns its plan, re-measured interleaved with fp32 and
native-int8 in its final selection on held-out data. ``int8/native`` is qbench's uniform int8
speedup over native-int8's, both from the bench run: at least 0.97 is the target.

    python benchmarks/native_baselines.py [--models digits-cnn,mobilenet-blocks] [--backends onnxruntime]
                                          [--trials 16] [--no-tune]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import pathlib
import tempfile
import time

import pandas as pd

from qbench.backends import get_backend
from qbench.cli import main
from qbench.machine import current_machine
from qbench.report.tables import markdown_table
from qbench.store import Leaderboard, default_url
from qbench.zoo import ZOO

# Accuracy budget per zoo model, as the drop of its metric the tuner may spend.
BUDGETS = {
    "digits-cnn": 0.01,
    "minilm-l6": 0.01,
    "ppocr-det": 0.02,
    "ppocr-rec": 0.02,
    "mobilenet-blocks": 0.02,
    "yolo-blocks": 0.005,
}


def _rows(results: pathlib.Path, kind: str) -> pd.DataFrame:
    board = Leaderboard(default_url(results))
    try:
        frame = board.frame()
    finally:
        board.close()
    return frame[frame.kind == kind]


def _quiet_main(args: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(args)


def measure(model: str, backend: str, trials: int, tune: bool, results: pathlib.Path) -> dict:
    row: dict = {"model": model, "backend": backend}
    start = time.perf_counter()
    code = _quiet_main(["bench", model, "--backend", backend, "-q", "--results-dir", str(results)])
    bench = _rows(results, "bench")
    bench = bench[(bench.model_name == model) & (bench.backend == backend)]
    by_plan = {r.plan_name: r for r in bench.itertuples() if r.status == "ok"}
    for plan in ("native-int8", "int8"):
        r = by_plan.get(plan)
        row[f"{plan} speedup"] = None if r is None else round(r.speedup, 3)
        row[f"{plan} drop"] = None if r is None else round(r.accuracy_drop, 4)
    if "int8" in by_plan and "native-int8" in by_plan:
        row["int8/native"] = round(by_plan["int8"].speedup / by_plan["native-int8"].speedup, 3)
    row["budget"] = BUDGETS.get(model, 0.01)
    if tune and code == 0:
        args = ["tune", model, "--backend", backend, "--max-drop", str(row["budget"]), "--trials", str(trials)]
        _quiet_main([*args, "-q", "--results-dir", str(results), "--patience", "8"])
        final = _rows(results, "tune")
        final = final[(final.model_name == model) & (final.backend == backend) & (final.status == "ok")]
        within = final[(final.plan_name != "fp32") & (final.accuracy_drop <= row["budget"])].sort_values("median_ms")
        if within.empty:
            row["tuned"] = "fp32 (nothing within budget beat it)"
        else:
            best = within.iloc[0]
            row["tuned"] = best.plan_name
            row["tuned speedup"] = round(best.speedup, 3)
            row["tuned drop (held-out)"] = round(best.accuracy_drop, 4)
    row["seconds"] = round(time.perf_counter() - start)
    return row


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(BUDGETS), help="comma-separated zoo names")
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--no-tune", dest="tune", action="store_false")
    parser.add_argument("--results-dir", type=pathlib.Path, help="keep the leaderboard here (default: a temp dir)")
    args = parser.parse_args()
    machine = current_machine()
    print(f"machine {machine.fingerprint_hash}: {machine.describe()}")
    results = args.results_dir or pathlib.Path(tempfile.mkdtemp(prefix="qbench-native-"))
    rows = []
    for model in args.models.split(","):
        if ZOO[model].missing():
            print(f"skip {model}: {ZOO[model].missing()}")
            continue
        for backend in args.backends.split(","):
            if not get_backend(backend).probe().available:
                print(f"skip {backend}: {get_backend(backend).probe().reason}")
                continue
            rows.append(measure(model, backend, args.trials, args.tune, results))
            print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    print()
    print(markdown_table(pd.DataFrame(rows)) if rows else "nothing measured")
    print(f"\nleaderboard: {results}")


if __name__ == "__main__":
    cli()
