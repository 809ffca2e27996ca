"""Does ``qbench bench --backend openvino`` report the latency OpenVINO's own ``benchmark_app`` does?

Pairs, alternated: one ``qbench bench DEMO --backend openvino --recipe fp32,int8`` process (every
plan timed in its own worker process, the figure the table shows), then ``benchmark_app`` on the
very IRs that bench timed, with the hint qbench's adapter gives OpenVINO: ``-hint latency
-infer_precision f32 -api sync`` on the same batch-1 input (benchmark_app refuses ``-nstreams``
and ``-nthreads`` beside a hint; on a machine with T cores the latency hint chooses one stream
of T threads, what qbench sets explicitly, and qbench records what the compiled model reports).
Prints both medians per pair and plan, the median of the pairs' ratios with its order-statistic
95 % interval (target: within 5 %), and the settings qbench's session reported.

``--throughput``: the same for samples per second with requests in flight: ``qbench bench
--scenario throughput:1:auto`` (the throughput hint, its streams and its optimal number of infer
requests, kept busy through an AsyncInferQueue) against ``benchmark_app -hint throughput -api
async`` (which chooses its streams and requests by the same hint).

    python benchmarks/openvino_vs_benchmark_app.py [--pairs 5] [--seconds 5] [--throughput]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from qbench.backends import get_backend
from qbench.machine import current_machine
from qbench.statistics import median_with_ci
from qbench.store import open_leaderboard
from qbench.zoo import DEMO

_MEDIAN = re.compile(r"Median:\s+([0-9.]+) (ms|us)")  # it switches to microseconds below 1 ms
_THROUGHPUT = re.compile(r"Throughput:\s+([0-9.]+) FPS")
EVALUATION_SAMPLES = 256  # bench scores every plan: a subset keeps a pair short


def benchmark_app_figure(ir: pathlib.Path, seconds: int, throughput: bool) -> float:
    """benchmark_app on ``ir`` with the adapter's hint: its median latency in ms, or with
    ``throughput`` its samples per second (``-hint throughput -api async``)."""
    tool = shutil.which("benchmark_app")
    if tool is None:
        raise SystemExit("benchmark_app not found: it ships with the openvino wheel (pip install 'qbench[openvino]')")
    hint = ("-hint", "throughput", "-api", "async") if throughput else ("-hint", "latency", "-api", "sync")
    command = [
        tool,
        *("-m", str(ir), "-d", "CPU", *hint),
        *("-infer_precision", "f32", "-data_shape", "image[1,1,8,8]", "-t", str(seconds)),
    ]
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"benchmark_app failed: {(run.stderr or run.stdout).strip().splitlines()[-1:]}")
    out = run.stdout
    match = (_THROUGHPUT if throughput else _MEDIAN).search(out)
    if match is None:
        raise SystemExit(f"no {'Throughput' if throughput else 'Median'} line in benchmark_app's output:\n{out}")
    if throughput:
        return float(match.group(1))
    return float(match.group(1)) / (1000.0 if match.group(2) == "us" else 1.0)


def qbench_bench(
    results: pathlib.Path, data: pathlib.Path, threads: int, seconds: int, throughput: bool
) -> dict[str, dict]:
    """One ``qbench bench`` process; per plan its median (ms per call), artifact (IR) and session
    settings; with ``throughput``, requests in flight on the hint's streams."""
    command = [
        *(sys.executable, "-m", "qbench.cli", "bench", DEMO.name, "--backend", "openvino"),
        *("--recipe", "fp32,int8", "--threads", str(threads), "--results-dir", str(results), "--quiet"),
        *("--data", str(data), "--calib-data", str(DEMO.files().calibration), "--min-seconds", str(seconds)),
        *(("--scenario", "throughput:1:auto") if throughput else ()),
    ]
    subprocess.run(command, check=True, capture_output=True, text=True)
    board = open_leaderboard(results, writes=False)
    try:
        frame = board.frame()
    finally:
        board.close()
    latest = frame[frame.run_id == frame.run_id.iloc[-1]]
    irs = {p.stem.split("-")[-1]: p for p in (results / "cache" / "artifacts" / "openvino").glob("*.xml")}
    return {
        r.plan_name: {"median_ms": r.median_ms, "ir": irs[r.artifact_key], "settings": r.backend_settings}
        for r in latest.itertuples()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=current_machine().default_threads())
    parser.add_argument("--throughput", action="store_true", help="samples/s with requests in flight")
    args = parser.parse_args()
    unit = "samples/s" if args.throughput else "ms"
    availability = get_backend("openvino").probe()
    if not availability.available:
        raise SystemExit(f"openvino unavailable: {availability.reason}")
    print(f"machine: {current_machine().describe()}\nopenvino {availability.version}, threads {args.threads}")
    with tempfile.TemporaryDirectory(prefix="qbench-ov-") as tmp:
        results, data = pathlib.Path(tmp), pathlib.Path(tmp) / "eval.npz"
        np.savez(data, **{k: v[:EVALUATION_SAMPLES] for k, v in np.load(DEMO.files().evaluation).items()})
        print(f"{'plan':5} {'pair':>5} {'qbench bench ' + unit:>22} {'benchmark_app ' + unit:>23} {'bench/app':>10}")
        ratios: dict[str, list[float]] = {"fp32": [], "int8": []}
        for pair in range(1, args.pairs + 1):
            ours = qbench_bench(results, data, args.threads, args.seconds, args.throughput)
            for name in ratios:
                theirs = benchmark_app_figure(ours[name]["ir"], args.seconds, args.throughput)
                mine = 1e3 / ours[name]["median_ms"] if args.throughput else ours[name]["median_ms"]
                ratios[name].append(mine / theirs)
                print(f"{name:5} {pair:5d} {mine:22.3f} {theirs:23.3f} {ratios[name][-1]:10.3f}")
        settings = json.loads(ours["fp32"]["settings"]) if isinstance(ours["fp32"]["settings"], str) else {}
        print(f"qbench's session settings (fp32): {settings}")
        for name, values in ratios.items():
            ratio, low, high = median_with_ci(np.array(values))
            spread = f"{ratio:.3f} (95% CI {low:.3f}–{high:.3f})"
            print(f"{name}: qbench bench / benchmark_app, median of {len(values)} pairs {spread}")


if __name__ == "__main__":
    main()
