"""Does ``qbench bench --backend openvino`` report the latency OpenVINO's own ``benchmark_app`` does?

Pairs, alternated: one ``qbench bench DEMO --backend openvino --recipe fp32,int8`` process (every
plan timed in its own worker process, the figure the table shows), then ``benchmark_app`` on the
very IRs that bench timed, with the hint qbench's adapter gives OpenVINO: ``-hint latency
-infer_precision f32 -api sync`` on the same batch-1 input (benchmark_app refuses ``-nstreams``
and ``-nthreads`` beside a hint; on a machine with T cores the latency hint chooses one stream
of T threads, what qbench sets explicitly, and qbench records what the compiled model reports).
Prints both medians per pair and plan, the median of the pairs' ratios with its order-statistic
95 % interval (target: within 5 %), and the settings qbench's session reported.

    python benchmarks/openvino_vs_benchmark_app.py [--pairs 5] [--seconds 5]
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
EVALUATION_SAMPLES = 256  # bench scores every plan: a subset keeps a pair short


def benchmark_app_median(ir: pathlib.Path, threads: int, seconds: int) -> float:
    """benchmark_app's median on ``ir`` with the adapter's hint (latency; ``threads`` is what it chooses here)."""
    tool = shutil.which("benchmark_app")
    if tool is None:
        raise SystemExit("benchmark_app not found: it ships with the openvino wheel (pip install 'qbench[openvino]')")
    command = [
        tool,
        *("-m", str(ir), "-d", "CPU", "-hint", "latency"),
        *("-infer_precision", "f32", "-api", "sync", "-data_shape", "image[1,1,8,8]", "-t", str(seconds)),
    ]
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"benchmark_app failed: {(run.stderr or run.stdout).strip().splitlines()[-1:]}")
    out = run.stdout
    match = _MEDIAN.search(out)
    if match is None:
        raise SystemExit(f"no 'Median:' line in benchmark_app's output:\n{out}")
    return float(match.group(1)) / (1000.0 if match.group(2) == "us" else 1.0)


def qbench_bench(results: pathlib.Path, data: pathlib.Path, threads: int, seconds: int) -> dict[str, dict]:
    """One ``qbench bench`` process; per plan its median, artifact (IR) and session settings."""
    command = [
        *(sys.executable, "-m", "qbench.cli", "bench", DEMO.name, "--backend", "openvino"),
        *("--recipe", "fp32,int8", "--threads", str(threads), "--results-dir", str(results), "--quiet"),
        *("--data", str(data), "--calib-data", str(DEMO.files().calibration), "--min-seconds", str(seconds)),
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
    args = parser.parse_args()
    availability = get_backend("openvino").probe()
    if not availability.available:
        raise SystemExit(f"openvino unavailable: {availability.reason}")
    print(f"machine: {current_machine().describe()}\nopenvino {availability.version}, threads {args.threads}")
    with tempfile.TemporaryDirectory(prefix="qbench-ov-") as tmp:
        results, data = pathlib.Path(tmp), pathlib.Path(tmp) / "eval.npz"
        np.savez(data, **{k: v[:EVALUATION_SAMPLES] for k, v in np.load(DEMO.files().evaluation).items()})
        print(f"{'plan':5} {'pair':>5} {'qbench bench ms':>16} {'benchmark_app ms':>17} {'bench/app':>10}")
        ratios: dict[str, list[float]] = {"fp32": [], "int8": []}
        for pair in range(1, args.pairs + 1):
            ours = qbench_bench(results, data, args.threads, args.seconds)
            for name in ratios:
                theirs = benchmark_app_median(ours[name]["ir"], args.threads, args.seconds)
                ratios[name].append(ours[name]["median_ms"] / theirs)
                print(f"{name:5} {pair:5d} {ours[name]['median_ms']:16.3f} {theirs:17.3f} {ratios[name][-1]:10.3f}")
        settings = json.loads(ours["fp32"]["settings"]) if isinstance(ours["fp32"]["settings"], str) else {}
        print(f"qbench's session settings (fp32): {settings}")
        for name, values in ratios.items():
            ratio, low, high = median_with_ci(np.array(values))
            spread = f"{ratio:.3f} (95% CI {low:.3f}–{high:.3f})"
            print(f"{name}: qbench bench / benchmark_app, median of {len(values)} pairs {spread}")


if __name__ == "__main__":
    main()
