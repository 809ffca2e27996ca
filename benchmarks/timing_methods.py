"""Three ways to time the same plans of a zoo model, side by side, against fp32:

- alone: each plan in a fresh process of its own, one after another (the deployed truth);
- engine, all interleaved: qbench's workers, every plan and fp32 in alternating blocks (a bench);
- engine, beside fp32 only: one plan and fp32 with the tuner's trial protocol (a trial).

Each repetition does all three; the table gives the median over repetitions of each method's
speedup against fp32. It showed that two trial timings minutes apart can rank SmolLM2 plans the
other way round from every other method (docs/llms.md, "What the tune missed").

    python benchmarks/timing_methods.py smollm2-135m int4-sym.json tuned.json --workload decode:128 --reps 3
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from qbench.backends import get_backend
from qbench.data import load_npz
from qbench.doctor import alone_samples
from qbench.machine import current_machine
from qbench.measure import TimingProtocol, measure_interleaved
from qbench.model import OnnxModel
from qbench.plan import recipe_plan
from qbench.search._trial_timing import TRIAL_PROTOCOL
from qbench.workers import Deployment, WorkerPool
from qbench.workload import Workload
from qbench.zoo import ZOO

INTERLEAVED = TimingProtocol(warmup_count=5, warmup_seconds=0.3, min_count=60, min_seconds=3.0, max_seconds=10.0)


def deployments(model_name: str, plan_files: list[str], workload: str, threads: int, workdir: pathlib.Path) -> dict:
    machine, backend = current_machine(), get_backend("onnxruntime")
    files = ZOO[model_name].files()
    model = OnnxModel.load(files.model_for("onnxruntime"))
    feeds = Workload.parse(workload).feeds(model, load_npz(files.evaluation, model).take(0, 8), 1)
    layers = [(layer.name, layer.op_type, layer.constant_weight) for layer in model.layers]
    plans = {"fp32": recipe_plan("fp32", layers)}
    for path in plan_files:
        plans[pathlib.Path(path).stem if path.endswith(".json") else path] = recipe_plan(path, layers)
    out = {}
    for name, plan in plans.items():
        artifact = backend.build(model, backend.resolve_plan(plan, machine), None, workdir)
        out[name] = Deployment(backend, artifact, threads, feeds)
    return out


def one_repetition(deps: dict) -> dict[str, dict[str, float]]:
    alone = {name: float(np.median(alone_samples(d, 2.0))) for name, d in deps.items()}
    pool = WorkerPool()
    try:
        together = measure_interleaved(pool.acquire(deps), INTERLEAVED)
        pair = {}
        for name in deps:
            if name != "fp32":
                s = measure_interleaved(pool.acquire({"fp32": deps["fp32"], name: deps[name]}), TRIAL_PROTOCOL)
                pair[name] = float(np.median(s["fp32"]) / np.median(s[name]))
    finally:
        pool.close()
    return {
        name: {
            "alone": alone["fp32"] / alone[name],
            "interleaved": float(np.median(together["fp32"]) / np.median(together[name])),
            "beside fp32": pair[name],
        }
        for name in deps
        if name != "fp32"
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a zoo model")
    parser.add_argument("plans", nargs="+", help="recipes or plan .json files")
    parser.add_argument("--workload", default="batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("results/cache"))
    args = parser.parse_args()
    deps = deployments(args.model, args.plans, args.workload, args.threads, args.workdir)
    reps = []
    for rep in range(args.reps):
        reps.append(one_repetition(deps))
        print(json.dumps({"repetition": rep, **reps[-1]}), flush=True)
    machine = current_machine().cpu_model
    print(f"\n{machine}, {args.threads} threads, {args.workload}, median of {args.reps} repetitions")
    print("\n| plan | alone in a fresh process | engine, all interleaved | engine, beside fp32 only (trial) |")
    print("|---|---|---|---|")
    for name in reps[0]:
        cells = [f"{np.median([r[name][m] for r in reps]):.2f}×" for m in ("alone", "interleaved", "beside fp32")]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
