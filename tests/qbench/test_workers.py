"""The timing engine on a real runtime: one plan per worker process, idle workers frozen."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from qbench.backends import get_backend
from qbench.machine import current_machine
from qbench.measure import TimingProtocol, measure_interleaved
from qbench.plan import PrecisionPlan
from qbench.workers import Deployment, WorkerError, WorkerPool

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="freezing workers needs POSIX signals")
FAST = TimingProtocol(warmup_count=2, warmup_seconds=0.0, min_count=6, min_seconds=0.0, max_seconds=5.0, min_blocks=3)


@pytest.fixture(scope="module")
def demo_deployments(tmp_path_factory, demo_model, demo_calibration, demo_evaluation):
    """The demo's fp32 and int8 artifacts as workers time them (batch 1)."""
    backend, machine = get_backend("onnxruntime"), current_machine()
    workdir = tmp_path_factory.mktemp("workers")
    calibration = backend.calibrate(demo_model, demo_calibration, "minmax", workdir)
    int8 = PrecisionPlan.uniform([layer.name for layer in demo_model.layers], "int8")
    feeds = next(demo_evaluation.batches(1))
    return {
        name: Deployment(
            backend, backend.build(demo_model, backend.resolve_plan(plan, machine), calibration, workdir), 2, feeds
        )
        for name, plan in (("fp32", PrecisionPlan(name="fp32")), ("int8", int8))
    }


def _states(pid: int) -> list[str]:
    """The scheduler state of every thread of ``pid`` (/proc/PID/task/TID/stat)."""
    tasks = pathlib.Path(f"/proc/{pid}/task")
    return [(tasks / tid / "stat").read_text().rsplit(")", 1)[1].split()[0] for tid in os.listdir(tasks)]


def _stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (T)."""
    return all(state in ("T", "t") for state in _states(pid))


class _Spy:
    """A worker's ``times`` that first checks that every other worker is frozen."""

    def __init__(self, worker, others, seen):
        self.worker, self.others, self.seen = worker, others, seen

    def times(self, runs):
        self.seen.append(all(_stopped(w.pid) for w in self.others))
        return self.worker.times(runs)


def test_while_one_worker_times_every_other_is_frozen_and_all_are_frozen_after(demo_deployments):
    pool = WorkerPool()
    try:
        workers = pool.acquire({**demo_deployments, "fp32 again": demo_deployments["fp32"]})
        assert len({w.pid for w in workers.values()}) == 3  # one process per timed plan
        seen: list[bool] = []
        spies = {k: _Spy(w, [o for o in workers.values() if o is not w], seen) for k, w in workers.items()}
        samples = measure_interleaved(spies, FAST)
        assert seen and all(seen)
        assert all(_stopped(w.pid) for w in workers.values())
        assert all(len(samples[k]) >= FAST.min_count and samples[k].min() > 0 for k in workers)
        loaded = workers["fp32"].load_info
        assert loaded.settings["allow_spinning"] is True  # the runtime's deployed default: alone in its process
        assert loaded.load_s > 0 and loaded.first_inference_ms > 0 and loaded.rss_mb > 0
    finally:
        pool.close()
    assert all(not w.alive for w in workers.values())


def test_the_pool_reuses_a_worker_that_holds_the_deployment_and_reloads_others_in_place(demo_deployments):
    pool = WorkerPool()
    try:
        first = pool.acquire(demo_deployments)
        again = pool.acquire(demo_deployments)
        assert {k: w.pid for k, w in first.items()} == {k: w.pid for k, w in again.items()}
        swapped = pool.acquire({"only": demo_deployments["int8"]})
        assert swapped["only"].pid == first["int8"].pid
        assert len(pool.workers) == 2  # no process started for a reload
    finally:
        pool.close()


def test_a_worker_runs_the_same_outputs_as_this_process(demo_deployments):
    d = demo_deployments["int8"]
    runner = d.backend.load(d.artifact, 2)
    pool = WorkerPool()
    try:
        (worker,) = pool.acquire({"int8": d}).values()
        np.testing.assert_array_equal(worker.outputs()[0], runner.run(d.feeds)[0])
    finally:
        pool.close()
        runner.close()


def test_a_failed_load_is_one_line_and_the_worker_serves_the_next_request(demo_deployments, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    good = demo_deployments["fp32"]
    bad = Deployment(good.backend, type(good.artifact)(broken, "x", 0.0, False), 2, good.feeds)
    pool = WorkerPool()
    try:
        with pytest.raises(WorkerError) as caught:
            pool.acquire({"bad": bad})
        assert "\n" not in str(caught.value) and "broken.onnx" in str(caught.value)
        (worker,) = pool.acquire({"good": good}).values()
        assert len(worker.times(3)) == 3 and len(pool.workers) == 1
    finally:
        pool.close()


def test_workers_die_with_their_controller_even_while_frozen(demo_deployments, tmp_path):
    script = textwrap.dedent(
        """
        import pickle, sys, time
        from qbench.workers import WorkerPool
        deployments = pickle.load(open(sys.argv[1], "rb"))
        pool = WorkerPool()
        workers = pool.acquire(deployments)
        print(" ".join(str(w.pid) for w in workers.values()), flush=True)
        time.sleep(60)
        """
    )
    import pickle

    (tmp_path / "d.pkl").write_bytes(pickle.dumps(demo_deployments))
    controller = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "d.pkl")], stdout=subprocess.PIPE, text=True
    )
    pids = [int(p) for p in controller.stdout.readline().split()]
    assert len(pids) == 2 and all(_stopped(p) for p in pids)
    controller.kill()
    controller.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_running(p) for p in pids):
        time.sleep(0.1)
    assert not any(_running(p) for p in pids)


def _running(pid: int) -> bool:
    """Alive, and not a zombie waiting for an init process to reap it."""
    try:
        return _states(pid)[0] != "Z"
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False


def test_a_relative_artifact_path_loads_whatever_the_workers_current_directory(demo_deployments, tmp_path, monkeypatch):
    """Workers fork from a launcher started elsewhere: a path relative to this process's current
    directory (a relative --results-dir) must still name the same file there."""
    good = demo_deployments["fp32"]
    monkeypatch.chdir(good.artifact.path.parent)
    relative = type(good.artifact)(pathlib.Path(good.artifact.path.name), good.artifact.key, 0.0, True)
    pool = WorkerPool()
    try:
        (worker,) = pool.acquire({"fp32": Deployment(good.backend, relative, 2, good.feeds)}).values()
        assert len(worker.times(3)) == 3
    finally:
        pool.close()


def test_a_runner_is_rewound_before_every_timed_call_outside_the_timing():
    """A stateful decoder's call leaves its grown cache behind; the worker's loops put back the
    timed state before each call, and that time is not the call's."""
    from qbench.backends import Runner
    from qbench.workers import _Held

    class Stateful(Runner):
        settings: dict = {}

        def __init__(self) -> None:
            self.events: list[str] = []

        def run(self, feeds):
            self.events.append("run")
            return []

        def rewind(self) -> None:
            self.events.append("rewind")
            time.sleep(0.02)

        def close(self) -> None:
            pass

    held = _Held()
    held.runner, held.feeds = Stateful(), {}
    samples = held.times(3)
    assert held.runner.events == ["rewind", "run"] * 3
    assert max(samples) < 0.02e9  # the sleeping rewinds are outside every sample
    held.runner.events.clear()
    held.serve([0, 0])
    assert held.runner.events == ["rewind", "run"] * 2
