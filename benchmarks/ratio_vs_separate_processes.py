"""Does qbench's timing match deployment? Each plan alone in its own process is the ground truth;
the engine's speedup ratio must land within 2 % of it, its p50 within 3 % and its p90 within 5 %.

For each model: fp32 and one low-precision plan (uniform int8; int4-weight for a decoder LLM) are
built by qbench's ONNX Runtime adapter, for the model's own workload (``decode:128`` for
SmolLM2). Then, on the same timed call:

- **alone**: a fresh process per plan, holding it with the runtime's deployed defaults and
  nothing else, timing one long run after a warm-up.
- **engine** (how qbench times now): each plan in its own worker process, blocks alternated by
  the controller, idle workers frozen (``qbench.workers``, the default protocol).
- **in-process blocks** (how qbench timed before): both sessions in this process, the runtime's
  default spinning, blocks of runs (``qbench.measure``).

Repetitions run alone A, alone B, engine, in-process, so that each method is compared with the
truth of its own repetition (a shared machine drifts by more than the targets between minutes):
every figure is the median over repetitions of the method's value over alone's.

    python benchmarks/ratio_vs_separate_processes.py [MODEL ...] [--pairs 5] [--seconds 2] [--batch 1]

MODEL is a zoo name (default: digits-cnn mobilenet-blocks minilm-l6 ppocr-det yolo-blocks smollm2-135m).
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import numpy as np

from qbench.backends import get_backend
from qbench.data import load_npz
from qbench.doctor import alone_samples, engine_samples
from qbench.harness import timed_call
from qbench.machine import current_machine
from qbench.measure import TimingProtocol, measure_interleaved
from qbench.model import OnnxModel
from qbench.plan import PrecisionPlan, recipe_plan
from qbench.statistics import median_with_ci, speedup
from qbench.workers import Deployment
from qbench.workload import Workload
from qbench.zoo import ZOO

PERCENTILES = (50, 90, 99)
DEFAULT_MODELS = ["digits-cnn", "mobilenet-blocks", "minilm-l6", "ppocr-det", "yolo-blocks", "smollm2-135m"]


def build(name: str, workdir: pathlib.Path, batch: int, threads: int) -> tuple[list[Deployment], str, str]:
    backend, machine = get_backend("onnxruntime"), current_machine()
    entry = ZOO[name]
    files = entry.files()
    model = OnnxModel.load(files.model_for(backend.name))
    workload = Workload.parse(entry.workload)
    feeds = workload.feeds(model, load_npz(files.evaluation, model), batch)
    recipe = "int8" if workload.kind == "batch" else "int4-weight"
    low = recipe_plan(recipe, ((x.name, x.op_type, x.constant_weight) for x in model.layers))
    calibration = None
    if low.needs_calibration:
        calibration = backend.calibrate(model, load_npz(files.calibration, model), "minmax", workdir)
    plans = [backend.resolve_plan(plan, machine) for plan in (PrecisionPlan(name="fp32"), low)]
    deployments = [Deployment(backend, backend.build(model, p, calibration, workdir), threads, feeds) for p in plans]
    return deployments, recipe, str(workload)


def engine(deployments: list[Deployment], protocol: TimingProtocol):
    return engine_samples({"fp32": deployments[0], "low": deployments[1]}, protocol)


def in_process_blocks(deployments: list[Deployment], protocol: TimingProtocol):
    runners = [d.backend.load(d.artifact, d.threads, shared_process=False) for d in deployments]
    try:
        calls = {key: timed_call(r, d.feeds) for key, r, d in zip(("fp32", "low"), runners, deployments, strict=True)}
        return measure_interleaved(calls, protocol)
    finally:
        for r in runners:
            r.close()


def percentiles(samples_ns: np.ndarray) -> np.ndarray:
    """p50, p90, p99 (ms) and the stall share: runs slower than 1.8x the median (co_resident_stalls.py's measure)."""
    ms = np.asarray(samples_ns) / 1e6
    return np.append(np.percentile(ms, PERCENTILES), np.mean(ms > 1.8 * np.median(ms)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--pairs", type=int, default=5, help="alternated pairs of separate processes")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per process and per plan")
    parser.add_argument("--threads", type=int, default=current_machine().default_threads())
    parser.add_argument("--batch", type=int, default=1, help="batch size (a larger batch makes a slow model)")
    args = parser.parse_args()
    print(f"machine: {current_machine().describe()}; {args.threads} threads; batch {args.batch}")
    protocol = TimingProtocol(min_seconds=args.seconds, max_seconds=args.seconds * 5)
    print(
        "model / plan          method          ratio (vs alone)      "
        + "  ".join(f"p{p} ms (vs alone)  " for p in PERCENTILES)
        + "  runs > 1.8x median"
    )
    with tempfile.TemporaryDirectory(prefix="qbench-ratio-") as tmp:
        for name in args.models:
            deployments, recipe, workload = build(name, pathlib.Path(tmp) / name, args.batch, args.threads)
            truth, truth_pct = [], []
            found: dict[str, tuple[list, list]] = {"engine": ([], []), "in-process": ([], [])}
            for _ in range(args.pairs):
                alone_ns = [alone_samples(d, args.seconds) for d in deployments]
                truth.append(np.median(alone_ns[0]) / np.median(alone_ns[1]))
                truth_pct.append([percentiles(a) for a in alone_ns])
                for method, measure in (("engine", engine), ("in-process", in_process_blocks)):
                    samples = measure(deployments, protocol)
                    ratio = speedup(samples["fp32"], samples["low"], samples.block).ratio
                    found[method][0].append(ratio / truth[-1])
                    found[method][1].append([percentiles(samples[k]) for k in ("fp32", "low")])
            ratio, low, high = median_with_ci(np.array(truth))
            print(f"{name} ({workload}): alone {ratio:.3f}× (pairs {min(truth):.3f}–{max(truth):.3f})")
            truth_pct = np.array(truth_pct)  # repetition, plan, (p50, p90, p99, stall share)
            alone_pct = np.median(truth_pct, axis=0)
            for i, plan in enumerate(("fp32", recipe)):
                stalls = f"{alone_pct[i][-1]:6.1%}"
                print(
                    f"  {plan:<19} alone           {'':22}"
                    + "".join(f"{v:8.3f}{'':13}" for v in alone_pct[i][:-1])
                    + stalls
                )
                for method, (ratios, pcts) in found.items():
                    pcts = np.array(pcts)
                    off = np.median(pcts[:, i, :-1] / truth_pct[:, i, :-1], axis=0) - 1
                    shown = f"{np.median(ratios) * ratio:.3f}× ({np.median(ratios) - 1:+.1%})" if i == 1 else ""
                    print(
                        f"  {'':<19} {method:<15} {shown:<22}"
                        + "".join(f"{v * (1 + o):8.3f} ({o:+6.1%})  " for v, o in zip(alone_pct[i], off, strict=False))
                        + f"{np.median(pcts[:, i, -1]):6.1%}"
                    )
            print(flush=True)


if __name__ == "__main__":
    main()
