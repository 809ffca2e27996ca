"""Does the harness tell the truth? Two checks on the built-in demo, printed as numbers.

1. Harness vs bare loop: on the *same* ONNX Runtime session, alternate blocks of qbench's
   ``measure`` with blocks of a plain ``perf_counter_ns`` + ``session.run`` loop, and compare
   the medians (target: within 5 %).
2. Repeatability: run ``qbench bench --recipe fp32,int8`` as separate processes and compare
   the interleaved int8-vs-fp32 speedups they record (target: spread within 5 %).

    python benchmarks/harness_agreement.py [--invocations 5] [--blocks 6]
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

from qbench.backends import get_backend
from qbench.data import load_npz
from qbench.harness import timed_call
from qbench.machine import current_machine
from qbench.measure import TimingProtocol, measure
from qbench.model import OnnxModel
from qbench.plan import PrecisionPlan
from qbench.store import Leaderboard, default_url
from qbench.zoo import DEMO


def bare_loop(session, feeds, count: int) -> np.ndarray:
    samples = np.empty(count, dtype=np.int64)
    for i in range(count):
        t0 = time.perf_counter_ns()
        session.run(None, feeds)
        samples[i] = time.perf_counter_ns() - t0
    return samples


def harness_vs_bare(threads: int, blocks: int, per_block: int, workdir: pathlib.Path) -> list[tuple[str, float, float]]:
    backend = get_backend("onnxruntime")
    machine = current_machine()
    model = OnnxModel.load(DEMO.files().model)
    calibration = backend.calibrate(model, load_npz(DEMO.files().calibration, model), "minmax", workdir)
    feeds = {"image": load_npz(DEMO.files().evaluation, model).inputs["image"][:1]}
    protocol = TimingProtocol(warmup_count=10, warmup_seconds=0.2, min_count=per_block, min_seconds=0.0)
    rows = []
    for recipe in ("fp32", "int8"):
        plan = PrecisionPlan.uniform(model.layer_names(), recipe) if recipe == "int8" else PrecisionPlan()
        artifact = backend.build(model, backend.resolve_plan(plan, machine), calibration, workdir)
        runner = backend.load(artifact, threads, shared_process=False)
        session = runner._session  # the very session the harness times
        harness, bare = [], []
        for _ in range(blocks):  # alternate blocks so drift hits both alike
            harness.append(measure(timed_call(runner, feeds), protocol))
            bare_loop(session, feeds, 10)  # same warm-up as the harness block
            bare.append(bare_loop(session, feeds, per_block))
        runner.close()
        harness_ms, bare_ms = (float(np.median(np.concatenate(blocks_ns))) / 1e6 for blocks_ns in (harness, bare))
        rows.append((recipe, harness_ms, bare_ms))
    return rows


def repeated_speedups(invocations: int, threads: int) -> list[float]:
    speedups = []
    with tempfile.TemporaryDirectory(prefix="qbench-agree-") as tmp:
        for i in range(invocations):
            results = pathlib.Path(tmp) / f"run{i}"
            cmd = [
                sys.executable,
                "-m",
                "qbench.cli",
                "bench",
                "--recipe",
                "fp32,int8",
                "--threads",
                str(threads),
                "--results-dir",
                str(results),
                "-q",
            ]
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            board = Leaderboard(default_url(results))
            frame = board.frame()
            board.close()
            speedups.append(float(frame.loc[frame.plan_name == "int8", "speedup"].iloc[-1]))
            print(f"  invocation {i + 1}: int8 speedup {speedups[-1]:.3f}x", flush=True)
    return speedups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invocations", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--per-block", type=int, default=200)
    parser.add_argument("--threads", type=int, default=current_machine().default_threads())
    args = parser.parse_args()
    print(f"machine: {current_machine().describe()}")
    print(f"\n1. harness vs bare session.run loop, same session, {args.blocks} alternating blocks of {args.per_block}")
    with tempfile.TemporaryDirectory(prefix="qbench-agree-") as tmp:
        rows = harness_vs_bare(args.threads, args.blocks, args.per_block, pathlib.Path(tmp))
        for recipe, harness_ms, bare_ms in rows:
            print(
                f"  {recipe:<5} harness median {harness_ms:.4f} ms, bare median {bare_ms:.4f} ms, "
                f"harness/bare {harness_ms / bare_ms:.4f} ({(harness_ms / bare_ms - 1) * 100:+.2f} %)"
            )
    print(f"\n2. int8/fp32 interleaved speedup across {args.invocations} separate `qbench bench` processes")
    speedups = repeated_speedups(args.invocations, args.threads)
    spread = max(speedups) / min(speedups) - 1
    print(
        f"  speedups {', '.join(f'{s:.3f}' for s in speedups)}; mean {np.mean(speedups):.3f}x; "
        f"max/min - 1 = {spread * 100:.2f} %; max deviation from mean "
        f"{max(abs(s / np.mean(speedups) - 1) for s in speedups) * 100:.2f} %"
    )


if __name__ == "__main__":
    main()
