"""Where a long run's time goes: wall seconds per stage (sensitivity, search, final selection)
and per activity inside it (build, session load, accuracy, timing workers started and loaded,
timing), the rest as overhead.

The harness marks its activities with ``activity(name)``; they cost nothing unless a caller
opened a ``PhaseTimer`` with ``timer.running()``. Time is exclusive: an activity inside another
(``load`` builds first) counts once, for the innermost one.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections import defaultdict
from collections.abc import Iterator

import pandas as pd

ACTIVITIES = ("build", "load", "accuracy", "workers", "timing")
OTHER = "other"
_current: contextvars.ContextVar[PhaseTimer | None] = contextvars.ContextVar("qbench_phase_timer", default=None)


class PhaseTimer:
    def __init__(self, clock=time.perf_counter) -> None:
        self.clock = clock
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)  # trials (or plans) per stage
        self._stage = "setup"
        self._stack: list[str] = [OTHER]
        self._since = clock()

    def _flush(self) -> None:
        now = self.clock()
        self.seconds[(self._stage, self._stack[-1])] += now - self._since
        self._since = now

    @contextlib.contextmanager
    def running(self) -> Iterator[PhaseTimer]:
        token = _current.set(self)
        self._since = self.clock()
        try:
            yield self
        finally:
            self._flush()
            _current.reset(token)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._flush()
        outer, self._stage = self._stage, name
        try:
            yield
        finally:
            self._flush()
            self._stage = outer

    @contextlib.contextmanager
    def _activity(self, name: str) -> Iterator[None]:
        self._flush()
        self._stack.append(name)
        try:
            yield
        finally:
            self._flush()
            self._stack.pop()

    def count(self, what: int = 1) -> None:
        self.counts[self._stage] += what

    def table(self) -> pd.DataFrame:
        """Seconds per stage (rows, in the order they ran) and activity (columns), with totals;
        ``per trial`` divides a stage by the trials counted in it."""
        stages = list(dict.fromkeys(stage for stage, _ in self.seconds))
        rows = []
        for stage in stages:
            row = {"stage": stage, **{a: self.seconds.get((stage, a), 0.0) for a in (*ACTIVITIES, OTHER)}}
            row["total"] = sum(row[a] for a in (*ACTIVITIES, OTHER))
            row["trials"] = self.counts.get(stage, 0)
            rows.append(row)
        frame = pd.DataFrame(rows)
        if frame.empty:
            return frame
        total = frame.drop(columns="stage").sum().to_dict()
        frame = pd.concat([frame, pd.DataFrame([{"stage": "all", **total}])], ignore_index=True)
        frame["per trial"] = frame["total"] / frame["trials"].where(frame["trials"] > 0)
        return frame.round(2)

    def as_json(self) -> dict[str, dict[str, float]]:
        table = self.table()
        return {} if table.empty else {row.pop("stage"): row for row in table.fillna(0).to_dict("records")}


def activity(name: str) -> contextlib.AbstractContextManager[None]:
    """Count the time inside as ``name`` on the running timer, if any."""
    timer = _current.get()
    return timer._activity(name) if timer is not None else contextlib.nullcontext()


def current() -> PhaseTimer | None:
    return _current.get()
