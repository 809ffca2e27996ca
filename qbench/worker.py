"""A nightly job's worker process: ``python -P -m qbench.worker``, the job as JSON on stdin.

``-P`` keeps the current directory off ``sys.path``, so a ``psutil.py`` or a metric module lying
there is never imported. The job arrives on stdin rather than argv because argv is visible to
every user in ``ps``, and the leaderboard URL may hold a password.

    {"run_spec": {...}, "results_dir": "…", "db": "postgresql://…", "job": "suite:name/backend", "job_hash": "…"}

``run_spec`` is a ``qbench.runspec.RunSpec`` as JSON: the same run ``qbench bench`` builds from
its command line.
"""

from __future__ import annotations

import json
import sys

from qbench import cli
from qbench.errors import QbenchError
from qbench.runspec import RunSpec


def main() -> int:
    try:
        job = json.loads(sys.stdin.read())
        spec = RunSpec.from_dict(job["run_spec"], "the worker's run spec")
        tag = cli.JobTag(spec, job["job"], job["job_hash"], job["db"])
        argv = ["bench", "--quiet", "--results-dir", job["results_dir"]]
    except (ValueError, KeyError, TypeError, QbenchError) as exc:
        print(f"qbench: error: the worker expects a job as JSON on stdin ({exc}); it is started by qbench nightly")
        return cli.EXIT_USER_ERROR
    return cli.main(argv, job=tag)


if __name__ == "__main__":
    sys.exit(main())
