"""Does qbench time OpenVINO the way OpenVINO's own ``benchmark_app`` does?

For the demo's fp32 and int8 IR (built by qbench's OpenVINO adapter), alternate pairs of
separate processes:

- qbench: a fresh process (this script with ``--worker``) loads the IR through the adapter, as
  the solo pass of ``bench`` does, and times it with qbench's ``measure`` (default protocol);
- ``benchmark_app -m IR -d CPU -hint none -nstreams 1 -nthreads T -infer_precision f32 -api sync``
  with the same batch-1 input shape; its reported median;

and print both medians per pair, the median of the pairs' ratios and its order-statistic 95 %
interval (target: within 5 %). Pairs alternate so that drift of the shared machine hits both alike.

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
from qbench.data import load_npz
from qbench.harness import timed_call
from qbench.machine import current_machine
from qbench.measure import TimingProtocol, measure
from qbench.model import OnnxModel
from qbench.plan import PrecisionPlan
from qbench.statistics import median_with_ci
from qbench.zoo import DEMO

_MEDIAN = re.compile(r"Median:\s+([0-9.]+) (ms|us)")  # it switches to microseconds below 1 ms


def benchmark_app_median(ir: pathlib.Path, threads: int, seconds: int) -> float:
    """benchmark_app's median on ``ir``: one stream, ``threads`` threads, f32, synchronous calls."""
    tool = shutil.which("benchmark_app")
    if tool is None:
        raise SystemExit("benchmark_app not found: it ships with the openvino wheel (pip install 'qbench[openvino]')")
    command = [
        tool,
        *("-m", str(ir), "-d", "CPU", "-hint", "none", "-nstreams", "1", "-nthreads", str(threads)),
        *("-infer_precision", "f32", "-api", "sync", "-data_shape", "image[1,1,8,8]", "-t", str(seconds)),
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = _MEDIAN.search(out)
    if match is None:
        raise SystemExit(f"no 'Median:' line in benchmark_app's output:\n{out}")
    return float(match.group(1)) / (1000.0 if match.group(2) == "us" else 1.0)


def worker(ir: str, threads: int, seconds: int) -> None:
    """In a fresh process: load ``ir`` through the adapter and print qbench's median (ms)."""
    from qbench.backends import Artifact

    backend = get_backend("openvino")
    model = OnnxModel.load(DEMO.files().model)
    feeds = {"image": load_npz(DEMO.files().evaluation, model).inputs["image"][:1]}
    path = pathlib.Path(ir)
    artifact = Artifact(path, "benchmark", 0.0, True, (path.with_suffix(".bin"),))
    runner = backend.load(artifact, threads, shared_process=False)
    samples = measure(timed_call(runner, feeds), TimingProtocol(min_seconds=seconds, max_seconds=seconds * 3))
    runner.close()
    print(json.dumps({"median_ms": float(np.median(samples)) / 1e6, "settings": dict(runner.settings)}))


def qbench_median(ir: pathlib.Path, threads: int, seconds: int) -> tuple[float, dict[str, str]]:
    command = [sys.executable, __file__, "--worker", str(ir), "--threads", str(threads), "--seconds", str(seconds)]
    out = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    return out["median_ms"], out["settings"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=current_machine().default_threads())
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.threads, args.seconds)
    backend = get_backend("openvino")
    availability = backend.probe()
    if not availability.available:
        raise SystemExit(f"openvino unavailable: {availability.reason}")
    print(f"machine: {current_machine().describe()}\nopenvino {availability.version}, threads {args.threads}")
    machine = current_machine()
    model = OnnxModel.load(DEMO.files().model)
    with tempfile.TemporaryDirectory(prefix="qbench-ov-") as tmp:
        workdir = pathlib.Path(tmp)
        calibration = backend.calibrate(model, load_npz(DEMO.files().calibration, model), "minmax", workdir)
        plans = {"fp32": PrecisionPlan(), "int8": PrecisionPlan.uniform(model.layer_names(), "int8")}
        artifacts = {
            name: backend.build(model, backend.resolve_plan(plan, machine), calibration, workdir)
            for name, plan in plans.items()
        }
        print(f"{'plan':5} {'pair':>5} {'qbench ms':>10} {'benchmark_app ms':>17} {'qbench/app':>10}")
        ratios: dict[str, list[float]] = {name: [] for name in plans}
        for pair in range(1, args.pairs + 1):
            for name, artifact in artifacts.items():
                ours, settings = qbench_median(artifact.path, args.threads, args.seconds)
                theirs = benchmark_app_median(artifact.path, args.threads, args.seconds)
                ratios[name].append(ours / theirs)
                print(f"{name:5} {pair:5d} {ours:10.3f} {theirs:17.3f} {ours / theirs:10.3f}", flush=True)
        print(f"qbench's session settings: {settings}")
        for name, values in ratios.items():
            ratio, low, high = median_with_ci(np.array(values))
            spread = f"{ratio:.3f} (95% CI {low:.3f}–{high:.3f})"
            print(f"{name}: qbench/benchmark_app, median of {len(values)} pairs {spread}")


if __name__ == "__main__":
    main()
