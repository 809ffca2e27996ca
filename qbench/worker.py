"""A nightly job's worker process: ``python -P -m qbench.worker``, the job as JSON on stdin.

``-P`` keeps the current directory off ``sys.path``, so a ``psutil.py`` or a metric module lying
there is never imported. The job arrives on stdin rather than argv because argv is visible to
every user in ``ps``, and the leaderboard URL may hold a password.

    {"bench_args": [...], "db": "postgresql://…", "job": "suite:name/backend", "job_hash": "…"}
"""

from __future__ import annotations

import json
import sys

from qbench import cli


def main() -> int:
    try:
        spec = json.loads(sys.stdin.read())
        argv = ["bench", *spec["bench_args"]]
        job = cli.JobTag(spec["job"], spec["job_hash"], spec["db"])
    except (ValueError, KeyError, TypeError) as exc:
        print(f"qbench: error: the worker expects a job as JSON on stdin ({exc}); it is started by qbench nightly")
        return cli.EXIT_USER_ERROR
    return cli.main(argv, job=job)


if __name__ == "__main__":
    sys.exit(main())
