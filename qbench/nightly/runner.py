"""``qbench nightly SUITE``: run every job of a suite, each in its own worker process.

A worker is ``qbench bench`` for one model on one backend; it records its own rows. A worker
that crashes, hangs past the suite's timeout or stops on an error records nothing, so this
process records one failed row for it with the reason, and goes on with the next job. Jobs
already measured with this exact code on this machine (same configuration hash, an ``ok`` row)
are skipped unless ``force``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from qbench import __version__
from qbench.codeversion import code_version
from qbench.errors import QbenchError
from qbench.machine import Machine
from qbench.nightly.job import WorkerJob
from qbench.nightly.suite import Suite, SuiteJob
from qbench.runspec import file_hash
from qbench.store import Leaderboard, ResultRow, safe_url
from qbench.workers import worker_environment

log = logging.getLogger(__name__)
OUTPUT_TAIL = 2000  # characters of a failed worker's output kept in its row


@dataclass
class JobOutcome:
    job: SuiteJob
    status: str  # ok | failed | skipped | unavailable
    seconds: float = 0.0
    detail: str = ""


def run_suite(
    suite: Suite,
    board: Leaderboard,
    machine: Machine,
    available: Callable[[str], str | None],
    results_dir: os.PathLike,
    force: bool = False,
    on_job: Callable[[SuiteJob, str], None] = lambda _job, _state: None,
) -> list[JobOutcome]:
    """Run the suite's jobs in order; ``available(backend)`` is None or why it is not usable."""
    board.record_machine(machine.to_dict())
    log_dir = inside(results_dir, os.path.join("nightly-logs", suite.name))
    os.makedirs(log_dir, exist_ok=True)
    outcomes = []
    for job in suite.jobs:
        threads = job.spec.target.threads or machine.default_threads()
        config = job.config_hash(threads)
        reason = available(job.backend)
        if reason:
            outcomes.append(JobOutcome(job, "unavailable", detail=reason))
        elif not force and _already_measured(board, machine, job, config):
            outcomes.append(JobOutcome(job, "skipped", detail="measured before with this code on this machine"))
        else:
            on_job(job, "running")
            log_file = inside(log_dir, f"{job.name}__{job.backend}.log")
            timeout_s = job.timeout_s or suite.timeout_s
            outcomes.append(_run_worker(job, threads, config, timeout_s, board, machine, results_dir, log_file))
        on_job(job, outcomes[-1].status)
    return outcomes


def inside(folder: os.PathLike, relative: str) -> str:
    """``folder/relative``, refusing any path that resolves outside ``folder`` (suite and job
    names are validated slugs already; this guards every path built from them)."""
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, relative))
    if os.path.commonpath([root, path]) != root:
        raise QbenchError(f"{relative!r} would be written outside the results directory {root}; rename it")
    return path


def _already_measured(board: Leaderboard, machine: Machine, job: SuiteJob, config: str) -> bool:
    """Whether this job has ok rows of this very run (its config hash) with this code here."""
    mine = {"job": job.job_id, "job_hash": config, "machine_hash": machine.fingerprint_hash}
    return board.count(**mine, code_version=code_version(), status="ok") > 0


def _run_worker(
    job: SuiteJob,
    threads: int,
    config: str,
    timeout_s: float,
    board: Leaderboard,
    machine: Machine,
    results_dir: os.PathLike,
    log_file: str,
) -> JobOutcome:
    # -P: nothing is imported from the current directory. The job, with the leaderboard URL
    # (which may hold a password), goes to stdin, never to argv where `ps` shows it.
    command = [sys.executable, "-P", "-m", "qbench.worker"]
    run_spec = job.run_spec(threads)
    work = WorkerJob(run_spec, os.path.abspath(results_dir), board.url, job.job_id, config)
    rows_before = board.count(job=job.job_id, job_hash=config)
    start = time.perf_counter()
    with open(log_file, "w+", encoding="utf-8", errors="replace") as output:
        output.write(f"$ qbench worker  # job {job.job_id}, leaderboard {safe_url(board.url)}, run spec:\n")
        output.write(f"$ {run_spec.to_json()}\n")
        output.flush()
        # Its own session, so a timeout kills the worker and anything it started.
        worker = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            text=True,
            env=worker_environment(),
        )
        try:
            worker.stdin.write(work.to_json())
            worker.stdin.close()
            code = worker.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        finally:  # a timeout, or qbench itself interrupted or terminated: the worker's group ends too
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        output.seek(0)
        tail = output.read()[-OUTPUT_TAIL:]
    seconds = time.perf_counter() - start
    recorded = board.count(job=job.job_id, job_hash=config) - rows_before
    if code == 0:
        return JobOutcome(job, "ok", seconds, f"{recorded} row(s)")
    if code is None:
        reason = f"timed out after {timeout_s:g} s (suite timeout_s); the worker was killed"
    elif code < 0:
        reason = f"worker crashed with {signal.Signals(-code).name}"
    else:
        reason = f"worker exited with status {code}"
    last_line = _last_error_line(tail)
    if recorded:  # the worker recorded its rows, failed plans among them (bench exits 1)
        return JobOutcome(job, "failed", seconds, f"{recorded} row(s); {last_line or reason}")
    error = reason + (f": {last_line}" if last_line else "") + f" (log: {log_file})"
    _record_failure(board, machine, job, threads, config, error)
    return JobOutcome(job, "failed", seconds, error)


def _last_error_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip() and not line.startswith("$ ")]
    for line in reversed(lines):
        if line.startswith("qbench:") or "Error" in line or "error" in line:
            return line.removeprefix("qbench: error: ")
    return lines[-1] if lines else ""


def _record_failure(board: Leaderboard, machine: Machine, job: SuiteJob, threads: int, config: str, error: str):
    """One failed row for a job whose worker recorded nothing, so the failure is on the board."""
    board.insert(
        ResultRow(
            run_id=uuid.uuid4().hex,
            kind="bench",
            status="failed",
            error=error,
            machine_hash=machine.fingerprint_hash,
            qbench_version=__version__,
            code_version=code_version(),
            job=job.job_id,
            job_hash=config,
            model_name=os.path.basename(job.spec.subject.model).removesuffix(".onnx"),
            model_hash=file_hash(job.spec.subject.model) or "-",
            metric=job.spec.subject.metric,
            plan_name=",".join(job.spec.recipes),
            plan_hash="-",
            plan="{}",
            backend=job.backend,
            threads=threads,
            batch_size=job.spec.target.batch,
        )
    )


def summary(outcomes: list[JobOutcome]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "job": o.job.job_id.split(":", 1)[1],
                "status": o.status,
                "seconds": round(o.seconds, 1),
                "detail": o.detail if len(o.detail) < 110 else o.detail[:107] + "…",
            }
            for o in outcomes
        ]
    )
