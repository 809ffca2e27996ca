"""A nightly job's worker process: ``python -P -m qbench.worker``, the job as JSON on stdin.

``-P`` keeps the current directory off ``sys.path``, so a ``psutil.py`` or a metric module lying
there is never imported. The job arrives on stdin rather than argv because argv is visible to
every user in ``ps``, and the leaderboard URL may hold a password.

    {"run_spec": {...}, "results_dir": "…", "db": "postgresql://…", "job": "suite:name/backend", "job_hash": "…"}

``run_spec`` is a ``qbench.runspec.RunSpec`` as JSON: the same run ``qbench bench`` builds from
its command line. The whole job is a ``WorkerJob``, checked field by field before anything is
measured; the worker runs the spec itself (``cli.run_job``), with no argv.
"""

from __future__ import annotations

import sys

from qbench.errors import QbenchError, one_line
from qbench.nightly.job import WorkerJob
from qbench.workers import die_with_parent


def main() -> int:
    from qbench import cli

    die_with_parent()  # `qbench nightly` killed outright: its job ends too
    try:
        job = WorkerJob.from_json(sys.stdin.read())
    except QbenchError as exc:
        started = "a worker is started by qbench nightly, with its job as JSON on stdin"
        print(f"qbench: error: {one_line(str(exc))} ({started})")
        return cli.EXIT_USER_ERROR
    return cli.run_job(job)


if __name__ == "__main__":
    sys.exit(main())
