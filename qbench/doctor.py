"""``qbench doctor``: does qbench's timing match deployment on this machine?

The truth is each plan alone in a fresh process of its own. For the demo and a second small
zoo model, fp32 and uniform int8 are timed both ways, in repetitions of ``alone fp32, alone
int8, engine`` (``qbench.workers``), and each repetition's engine figures are divided by that
repetition's alone figures: a shared machine drifts between minutes by more than the targets, so
only figures taken side by side are compared. The check passes when the medians of those
quotients are within ``TARGETS`` (the speedup ratio, p50 and p90) and the alone ratios agree
among themselves within ``STEADY_SPREAD`` (else the machine is unsteady: no verdict). The result
is stored per machine fingerprint under the results directory; ``bench`` and ``tune`` say when
the machine has no passing check. The caller passes the backend object (ONNX Runtime): the core
never imports ``backends``.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from qbench.data import load_npz
from qbench.errors import QbenchError
from qbench.machine import Machine
from qbench.measure import TimingProtocol, measure_interleaved
from qbench.model import OnnxModel
from qbench.plan import PrecisionPlan, recipe_plan
from qbench.statistics import speedup
from qbench.workers import Deployment, TimingWorker, WorkerPool
from qbench.workload import Workload
from qbench.zoo import lookup

if TYPE_CHECKING:
    from qbench.backends import Backend

DOCTOR_MODELS = ("digits-cnn", "mobilenet-blocks")
#: Largest |engine / alone - 1| that passes: the speedup ratio, p50 and p90 (the issue's targets).
TARGETS = {"ratio": 0.02, "p50": 0.03, "p90": 0.05}
#: Alone ratios of the repetitions further apart than this (max / min - 1): the machine is unsteady.
STEADY_SPREAD = 0.10


def alone_samples(deployment: Deployment, seconds: float) -> np.ndarray:
    """``deployment`` alone in a fresh process: 0.5 s of warm-up, then one run of ~``seconds``."""
    worker = TimingWorker()
    try:
        worker.load(deployment)
        first = float(np.median(worker.times(5)))
        warm = worker.times(max(5, int(0.5e9 / first)))
        return np.asarray(worker.times(max(50, int(seconds * 1e9 / float(np.median(warm))))), dtype=np.int64)
    finally:
        worker.close()


def engine_samples(deployments: dict[str, Deployment], protocol: TimingProtocol):
    """The deployments timed by qbench's engine (a worker each, blocks alternated, idle ones frozen)."""
    pool = WorkerPool()
    try:
        return measure_interleaved(pool.acquire(deployments), protocol)
    finally:
        pool.close()


@dataclass(frozen=True)
class ModelCheck:
    """One model's engine-vs-alone biases (median over repetitions of engine / alone - 1)."""

    model: str
    alone_ratio: float
    engine_ratio: float
    alone_spread: float  # max / min - 1 of the repetitions' alone ratios
    bias: dict[str, float]  # ratio, and p50/p90 of each plan (fp32, int8)

    @property
    def steady(self) -> bool:
        return self.alone_spread <= STEADY_SPREAD

    @property
    def within(self) -> bool:
        return all(abs(v) <= TARGETS[key.rpartition(" ")[2]] for key, v in self.bias.items())


def check_model(
    name: str, backend: Backend, machine: Machine, workdir: pathlib.Path, repeats: int, seconds: float
) -> ModelCheck:
    files = lookup(name).files()
    model = OnnxModel.load(files.model_for(backend.name))
    feeds = Workload().feeds(model, load_npz(files.evaluation, model), 1)
    int8 = recipe_plan("int8", ((x.name, x.op_type) for x in model.layers))
    calibration = backend.calibrate(model, load_npz(files.calibration, model), "minmax", workdir)
    threads = machine.default_threads()
    plans = {
        key: backend.resolve_plan(plan, machine) for key, plan in (("fp32", PrecisionPlan(name="fp32")), ("int8", int8))
    }
    deployments = {
        key: Deployment(backend, backend.build(model, plan, calibration, workdir), threads, feeds)
        for key, plan in plans.items()
    }
    protocol = TimingProtocol(min_seconds=seconds, max_seconds=seconds * 5)
    alone_ratios, quotients = [], []
    for _ in range(repeats):
        alone = {key: alone_samples(d, seconds) for key, d in deployments.items()}
        engine = engine_samples(deployments, protocol)
        alone_ratios.append(np.median(alone["fp32"]) / np.median(alone["int8"]))
        row = {"ratio": speedup(engine["fp32"], engine["int8"], engine.block).ratio / alone_ratios[-1]}
        for key in deployments:
            for p in (50, 90):
                row[f"{key} p{p}"] = np.percentile(engine[key], p) / np.percentile(alone[key], p)
        quotients.append(row)
    bias = {key: float(np.median([q[key] for q in quotients])) - 1.0 for key in quotients[0]}
    alone_ratio = float(np.median(alone_ratios))
    return ModelCheck(
        name, alone_ratio, alone_ratio * (1 + bias["ratio"]), max(alone_ratios) / min(alone_ratios) - 1.0, bias
    )


@dataclass(frozen=True)
class DoctorReport:
    machine_hash: str
    cpu: str
    when: float
    checks: tuple[ModelCheck, ...]

    @property
    def verdict(self) -> str:
        """``pass``, ``fail`` (the engine is off on a steady machine) or ``unsteady`` (no verdict)."""
        if not all(c.steady for c in self.checks):
            return "unsteady"
        return "pass" if all(c.within for c in self.checks) else "fail"

    def lines(self) -> list[str]:
        out = [f"CPU: {self.cpu}"]
        for c in self.checks:
            biases = ", ".join(f"{k} {v:+.1%}" for k, v in c.bias.items())
            state = "steady" if c.steady else f"unsteady (alone ratios spread {c.alone_spread:.1%})"
            out.append(
                f"{c.model}: int8 {c.alone_ratio:.3f}× alone, {c.engine_ratio:.3f}× by the engine; "
                f"engine vs alone: {biases}; machine {state}"
            )
        targets = ", ".join(f"{k} within {v:.0%}" for k, v in TARGETS.items())
        out.append(f"verdict: {self.verdict} (targets: {targets}; steady: alone ratios within {STEADY_SPREAD:.0%})")
        return out


def doctor_path(results_dir: pathlib.Path, machine: Machine) -> pathlib.Path:
    return results_dir / "doctor" / f"{machine.fingerprint_hash}.json"


def run_doctor(
    backend: Backend,
    machine: Machine,
    results_dir: pathlib.Path,
    repeats: int = 3,
    seconds: float = 1.0,
    models: tuple[str, ...] = DOCTOR_MODELS,
    progress: Callable[[str], None] = lambda _msg: None,
) -> DoctorReport:
    """Check the engine against each plan alone in its process on this machine; store the result."""
    if not 2 <= repeats <= 50 or not 0.2 <= seconds <= 60:
        raise QbenchError(
            f"doctor needs 2 <= repeats <= 50 and 0.2 <= seconds <= 60, but got {repeats} and {seconds:g}"
        )
    checks = []
    for name in models:
        progress(f"doctor: {name}, fp32 and int8, {repeats} repetitions of alone / engine")
        checks.append(check_model(name, backend, machine, results_dir / "cache", repeats, seconds))
    report = DoctorReport(machine.fingerprint_hash, machine.describe(), time.time(), tuple(checks))
    path = doctor_path(results_dir, machine)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**asdict(report), "verdict": report.verdict}, indent=1))
    return report


def doctor_note(results_dir: pathlib.Path, machine: Machine) -> str | None:
    """What ``bench``/``tune`` say when this machine has no passing ``qbench doctor`` check; None when it has."""
    path = doctor_path(results_dir, machine)
    try:
        verdict = json.loads(path.read_text()).get("verdict")
    except (OSError, ValueError, AttributeError):
        verdict = None
    if verdict == "pass":
        return None
    said = f"its last check said {verdict!r}" if verdict else "it has none"
    return (
        f"this machine has no passing `qbench doctor` check ({said}): run `qbench doctor` to see whether "
        "timings here match each plan alone in its own process"
    )
