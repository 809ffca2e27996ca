"""The job ``qbench nightly`` hands a worker process (``qbench.worker``), as a typed value: its run
spec, the suite job its rows belong to, and where they go. Every field is checked when it is
built, on both sides of the pipe, before anything is measured."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, fields
from typing import Any

from qbench.errors import QbenchError
from qbench.runspec import RunSpec

_SLUG = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
JOB_ID = re.compile(f"{_SLUG}:{_SLUG}/{_SLUG}")  # suite:job/backend
CONFIG_HASH = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class WorkerJob:
    """What ``qbench nightly`` hands a worker: the run, the suite job its rows belong to, and
    where they go (the leaderboard URL is kept out of argv)."""

    run_spec: RunSpec
    results_dir: str
    db: str  # the leaderboard URL
    job: str  # suite:job/backend
    job_hash: str  # the job's config hash as the suite computed it (the rows carry it)

    def __post_init__(self) -> None:
        if not isinstance(self.run_spec, RunSpec):
            raise QbenchError(f"`run_spec` must be a run spec, but got {type(self.run_spec).__name__}")
        for name in ("results_dir", "db"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or "\0" in value:
                raise QbenchError(f"`{name}` must be a non-empty path or URL as text, but got {value!r}")
        if not os.path.isabs(self.results_dir):
            raise QbenchError(f"`results_dir` must be an absolute path, but got {self.results_dir!r}")
        if not isinstance(self.job, str) or not JOB_ID.fullmatch(self.job):
            raise QbenchError(f"`job` must read suite:job/backend, but got {self.job!r}")
        if not isinstance(self.job_hash, str) or not CONFIG_HASH.fullmatch(self.job_hash):
            raise QbenchError(f"`job_hash` must be 16 hex digits, but got {self.job_hash!r}")

    def to_json(self) -> str:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        return json.dumps({**data, "run_spec": self.run_spec.to_dict()})

    @classmethod
    def from_json(cls, text: str) -> WorkerJob:
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QbenchError(f"the job is not valid JSON: {exc}") from None
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise QbenchError(f"the job must be an object with exactly the keys {sorted(names)}, but got {got}")
        return cls(**{**data, "run_spec": RunSpec.from_dict(data["run_spec"], "the job's run spec")})
