"""Does qbench's in-process speedup match deployment? Each plan alone in its own process is the
ground truth; the in-process ratio must land within 2 % of it.

For each model: fp32 and uniform int8 are built by qbench's ONNX Runtime adapter. Ground truth:
pairs of separate processes, alternated A B A B, each a plain default ``InferenceSession`` on
one artifact timing the same batch-1 call for ``--seconds``; the speedup is the median of the
pairs' ratios (fp32 / int8). Then both in this process, two ways: as qbench timed before block
interleaving (sessions with spinning off, one run of each at a time), and as it times now
(sessions with the runtime's default threading, in blocks: ``qbench.measure``'s default protocol).

    python benchmarks/ratio_vs_separate_processes.py [MODEL ...] [--pairs 5] [--seconds 2] [--batch 1]

MODEL is a zoo name (default: digits-cnn mobilenet-blocks minilm-l6 ppocr-det).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

from qbench.backends import get_backend
from qbench.data import load_npz
from qbench.harness import timed_call
from qbench.machine import current_machine
from qbench.measure import ROUND_ROBIN, TimingProtocol, measure_interleaved
from qbench.model import OnnxModel
from qbench.plan import PrecisionPlan
from qbench.statistics import median_with_ci, speedup
from qbench.workload import Workload
from qbench.zoo import ZOO

ALONE = """
import sys, time
import numpy as np, onnxruntime as ort
feeds = dict(np.load(sys.argv[2]))
options = ort.SessionOptions()
options.intra_op_num_threads = int(sys.argv[4])
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
start = time.perf_counter()
while time.perf_counter() - start < 0.5:
    session.run(None, feeds)
samples, start = [], time.perf_counter()
while len(samples) < 20 or time.perf_counter() - start < float(sys.argv[3]):
    t0 = time.perf_counter_ns(); session.run(None, feeds); samples.append(time.perf_counter_ns() - t0)
print(float(np.median(samples)) / 1e6)
"""


def alone_ms(artifact: pathlib.Path, feeds: pathlib.Path, seconds: float, threads: int) -> float:
    cmd = [sys.executable, "-c", ALONE, str(artifact), str(feeds), str(seconds), str(threads)]
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip())


def build(name: str, workdir: pathlib.Path, batch: int = 1):
    backend, machine = get_backend("onnxruntime"), current_machine()
    files = ZOO[name].files()
    model = OnnxModel.load(files.model)
    calibration = backend.calibrate(model, load_npz(files.calibration, model), "minmax", workdir)
    feeds = Workload.parse(ZOO[name].workload).feeds(model, load_npz(files.evaluation, model), batch)
    int8 = PrecisionPlan.uniform([layer.name for layer in model.layers if "int8" in backend.precisions(layer)], "int8")
    artifacts = [
        backend.build(model, backend.resolve_plan(plan, machine), calibration, workdir)
        for plan in (PrecisionPlan(name="fp32"), int8)
    ]
    return backend, artifacts, feeds


def in_process(backend, artifacts, feeds, threads: int, protocol: TimingProtocol, shared: bool = False):
    runners = [backend.load(a, threads, shared_process=shared) for a in artifacts]
    try:
        samples = measure_interleaved({str(i): timed_call(r, feeds) for i, r in enumerate(runners)}, protocol)
    finally:
        for r in runners:
            r.close()
    return speedup(samples["0"], samples["1"], samples.block), samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["digits-cnn", "mobilenet-blocks", "minilm-l6", "ppocr-det"])
    parser.add_argument("--pairs", type=int, default=5, help="alternated pairs of separate processes")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per process")
    parser.add_argument("--threads", type=int, default=current_machine().default_threads())
    parser.add_argument("--batch", type=int, default=1, help="batch size (a larger batch makes a slow model)")
    args = parser.parse_args()
    print(f"machine: {current_machine().describe()}; {args.threads} threads; batch {args.batch}")
    blocks = TimingProtocol(min_seconds=args.seconds, max_seconds=args.seconds * 5)
    rounds = dataclasses.replace(blocks, **ROUND_ROBIN)
    lines = []
    with tempfile.TemporaryDirectory(prefix="qbench-ratio-") as tmp:
        for name in args.models:
            workdir = pathlib.Path(tmp) / name
            backend, artifacts, feeds = build(name, workdir, args.batch)
            np.savez(workdir / "feeds.npz", **feeds)
            ratios, fp32_ms = [], []
            for _ in range(args.pairs):
                a, b = (alone_ms(x.path, workdir / "feeds.npz", args.seconds, args.threads) for x in artifacts)
                ratios.append(a / b)
                fp32_ms.append(a)
            truth = median_with_ci(np.array(ratios))
            old, _ = in_process(backend, artifacts, feeds, args.threads, rounds, shared=True)
            new, samples = in_process(backend, artifacts, feeds, args.threads, blocks)
            line = (
                f"{name:<17} fp32 {np.median(fp32_ms):7.3f} ms | separate processes {truth[0]:.3f}× "
                f"(pairs {min(ratios):.3f}–{max(ratios):.3f}) | one at a time {old.ratio:.3f}× "
                f"({old.ratio / truth[0] - 1:+.1%}) | blocks of {samples.block} kept {new.ratio:.3f}× "
                f"({new.ci_low:.3f}–{new.ci_high:.3f}, {new.ratio / truth[0] - 1:+.1%})"
            )
            print(line, flush=True)
            lines.append(line)


if __name__ == "__main__":
    main()
