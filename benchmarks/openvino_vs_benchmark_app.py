"""Does qbench time OpenVINO the way OpenVINO's own ``benchmark_app`` does?

For the demo's fp32 and int8 IR (built by qbench's OpenVINO adapter), alternate rounds of:

- qbench: the adapter's runner timed by qbench's ``measure`` (default protocol), alone;
- ``benchmark_app -m IR -d CPU -hint latency -load_config C`` in its own process, where C holds
  the settings qbench's runner reported (one stream, T threads, f32, pinning), with the same
  batch-1 input shape; its reported median;

and print both medians and their ratio (target: within 10 %). Rounds alternate so that drift
of the shared machine hits both alike.

    python benchmarks/openvino_vs_benchmark_app.py [--rounds 3] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import shutil
import subprocess
import tempfile

import numpy as np

from qbench.backends import get_backend
from qbench.bench import timed_call
from qbench.data import load_npz
from qbench.machine import current_machine
from qbench.measure import Protocol, measure
from qbench.model import OnnxModel
from qbench.plan import PrecisionPlan
from qbench.zoo import DEMO

_MEDIAN = re.compile(r"Median:\s+([0-9.]+) (ms|us)")  # it switches to microseconds below 1 ms


def benchmark_app_median(ir: pathlib.Path, settings: dict[str, str], seconds: int) -> float:
    """benchmark_app's median on ``ir``, compiled with the very settings qbench's runner reported."""
    tool = shutil.which("benchmark_app")
    if tool is None:
        raise SystemExit("benchmark_app not found: it ships with the openvino wheel (pip install 'qbench[openvino]')")
    # benchmark_app refuses -nthreads/-nstreams beside -hint latency; a config file sets them all.
    config = ir.with_suffix(".benchmark_app.json")
    config.write_text(json.dumps({"CPU": {k: v for k, v in settings.items() if k != "device"}}))
    command = [
        tool,
        *("-m", str(ir), "-d", "CPU", "-hint", "latency", "-load_config", str(config)),
        *("-data_shape", "image[1,1,8,8]", "-t", str(seconds)),
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = _MEDIAN.search(out)
    if match is None:
        raise SystemExit(f"no 'Median:' line in benchmark_app's output:\n{out}")
    return float(match.group(1)) / (1000.0 if match.group(2) == "us" else 1.0)


def qbench_median(backend, artifact, feeds, threads: int, seconds: int) -> tuple[float, dict[str, str]]:
    runner = backend.load(artifact, threads, shared_process=False)
    try:
        samples = measure(timed_call(runner, feeds), Protocol(min_seconds=seconds, max_seconds=seconds * 3))
        return float(np.median(samples)) / 1e6, dict(runner.settings)
    finally:
        runner.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=current_machine().default_threads())
    args = parser.parse_args()
    backend = get_backend("openvino")
    availability = backend.probe()
    if not availability.available:
        raise SystemExit(f"openvino unavailable: {availability.reason}")
    print(f"machine: {current_machine().describe()}\nopenvino {availability.version}, threads {args.threads}")
    machine = current_machine()
    model = OnnxModel.load(DEMO.files().model)
    feeds = {"image": load_npz(DEMO.files().evaluation, model).inputs["image"][:1]}
    with tempfile.TemporaryDirectory(prefix="qbench-ov-") as tmp:
        workdir = pathlib.Path(tmp)
        calibration = backend.calibrate(model, load_npz(DEMO.files().calibration, model), "minmax", workdir)
        plans = {"fp32": PrecisionPlan(), "int8": PrecisionPlan.uniform(model.layer_names(), "int8")}
        artifacts = {
            name: backend.build(model, backend.resolve_plan(plan, machine), calibration, workdir)
            for name, plan in plans.items()
        }
        print(f"{'plan':5} {'round':>5} {'qbench ms':>10} {'benchmark_app ms':>17} {'qbench/app':>10}")
        ratios: dict[str, list[float]] = {name: [] for name in plans}
        for round_ in range(1, args.rounds + 1):
            for name, artifact in artifacts.items():
                ours, settings = qbench_median(backend, artifact, feeds, args.threads, args.seconds)
                theirs = benchmark_app_median(artifact.path, settings, args.seconds)
                ratios[name].append(ours / theirs)
                print(f"{name:5} {round_:5d} {ours:10.3f} {theirs:17.3f} {ours / theirs:10.3f}")
        for name, values in ratios.items():
            worst = max(values, key=lambda r: abs(r - 1))
            print(f"{name}: qbench/benchmark_app median ratio {np.median(values):.3f} (worst round {worst:.3f})")


if __name__ == "__main__":
    main()
