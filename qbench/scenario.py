"""Deployment scenarios: which question a timing answers, as a typed value.

- ``latency``: one request at a time (MLPerf SingleStream); median, p90 and p99 per plan.
- ``throughput[:BATCH[:STREAMS]]``: samples per second with BATCH samples per call (MLPerf
  Offline). Without STREAMS, calls run one at a time and the paired ratio is the per-call one at
  that batch; with STREAMS (a number, or ``auto`` for the runtime's choice), that many requests
  are kept in flight on the runtime's own streams (OpenVINO's throughput hint and its async infer
  requests; concurrent runs of one ONNX Runtime session), and the paired ratio is of completed
  calls per second in alternating rounds.
- ``server:QPS[:BOUND_MS]``: requests arriving as a Poisson process at QPS per second, served one
  at a time by the plan's worker (queueing counts), for a fixed time with a fixed seed (MLPerf
  Server); p50/p99 include the wait, and a BOUND says whether p99 stayed under it.
  ``server:max:BOUND_MS`` finds the highest rate that keeps p99 under the bound, by bisection.

The same string is accepted by ``bench --scenario``, a suite job's ``scenario`` key and the API's
``scenario=``; ``Scenario.parse`` is the only place it is checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qbench.errors import QbenchError

KINDS = ("latency", "throughput", "server")
DEFAULT_THROUGHPUT_BATCH = 32
MAX_BATCH = 4096
MIN_QPS = 1.0  # a server run lasts seconds: slower arrivals leave too few requests to read a p99
MAX_QPS = 100_000.0
MAX_BOUND_MS = 600_000.0
FORMS = "latency, throughput[:BATCH[:STREAMS|auto]], server:QPS[:BOUND_MS] or server:max:BOUND_MS"
MAX_STREAMS = 256
AUTO_STREAMS = 0  # the runtime picks its streams and requests in flight


@dataclass(frozen=True)
class Scenario:
    kind: str = "latency"
    batch: int = 1  # samples per timed call
    qps: float | None = None  # server: the arrival rate; None with a bound: find the highest
    bound_ms: float | None = None  # server: the p99 bound
    streams: int | None = (
        None  # throughput: requests in flight (AUTO_STREAMS: the runtime's choice); None: one call at a time
    )

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise QbenchError(f"scenario {self.kind!r}: use {FORMS}")
        if not isinstance(self.batch, int) or isinstance(self.batch, bool) or not 1 <= self.batch <= MAX_BATCH:
            raise QbenchError(f"scenario batch {self.batch!r}: use a whole number from 1 to {MAX_BATCH}")
        if self.streams is not None and (
            self.kind != "throughput"
            or not isinstance(self.streams, int)
            or isinstance(self.streams, bool)
            or not 0 <= self.streams <= MAX_STREAMS
        ):
            raise QbenchError(
                f"scenario streams {self.streams!r}: use throughput:BATCH:N with N from 1 to {MAX_STREAMS}, or auto"
            )
        if self.kind != "server":
            if self.qps is not None or self.bound_ms is not None:
                raise QbenchError(f"scenario {self.kind}: a rate and a bound belong to server:QPS[:BOUND_MS]")
            return
        if self.qps is None and self.bound_ms is None:
            raise QbenchError(f"scenario server needs a rate or a bound: use {FORMS}")
        _check_number("rate (requests per second)", self.qps, MIN_QPS, MAX_QPS)
        _check_number("p99 bound in ms", self.bound_ms, 0.01, MAX_BOUND_MS)

    @classmethod
    def parse(cls, text: object) -> Scenario:
        """``latency``, ``throughput:32``, ``server:50:15``, ``server:max:15``; a one-line error otherwise."""
        if isinstance(text, Scenario):
            return text
        if not isinstance(text, str) or not text.strip():
            raise QbenchError(f"scenario {text!r}: use {FORMS}")
        kind, *parts = text.strip().lower().split(":")
        if kind not in KINDS:
            raise QbenchError(f"unknown scenario {text!r}: use {FORMS}")
        if kind == "latency":
            if parts:
                raise QbenchError(f"scenario {text!r}: latency takes no arguments (the batch is --batch)")
            return cls()
        if kind == "throughput":
            if len(parts) > 2:
                raise QbenchError(f"scenario {text!r}: use throughput, throughput:BATCH or throughput:BATCH:STREAMS")
            batch = _whole(parts[0], text) if parts else DEFAULT_THROUGHPUT_BATCH
            streams = (
                None if len(parts) < 2 else AUTO_STREAMS if parts[1] == "auto" else _whole(parts[1], text, MAX_STREAMS)
            )
            return cls("throughput", batch, streams=streams)
        if not 1 <= len(parts) <= 2:
            raise QbenchError(f"scenario {text!r}: use server:QPS[:BOUND_MS] or server:max:BOUND_MS")
        qps = None if parts[0] == "max" else _number(parts[0], text)
        bound = _number(parts[1], text) if len(parts) == 2 else None
        if qps is None and bound is None:
            raise QbenchError(f"scenario {text!r}: server:max needs a p99 bound, e.g. server:max:15")
        return cls("server", qps=qps, bound_ms=bound)

    def __str__(self) -> str:
        if self.kind == "throughput":
            streams = "" if self.streams is None else ":auto" if self.streams == AUTO_STREAMS else f":{self.streams}"
            return f"throughput:{self.batch}{streams}"
        if self.kind == "server":
            rate = "max" if self.qps is None else f"{self.qps:g}"
            return f"server:{rate}" + (f":{self.bound_ms:g}" if self.bound_ms is not None else "")
        return "latency"

    @property
    def finds_rate(self) -> bool:
        """server:max:BOUND: the answer is the highest rate under the bound."""
        return self.kind == "server" and self.qps is None


LATENCY = Scenario()


def _whole(text: str, whole: str, most: int = MAX_BATCH) -> int:
    try:
        value = int(text)
    except ValueError:
        raise QbenchError(f"scenario {whole!r}: {text!r} is not a whole number") from None
    if not 1 <= value <= most:
        what = "the batch" if most == MAX_BATCH else "the streams"
        raise QbenchError(f"scenario {whole!r}: {what} must be from 1 to {most}")
    return value


def _number(text: str, whole: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise QbenchError(f"scenario {whole!r}: {text!r} is not a number") from None


def _check_number(what: str, value: float | None, least: float, most: float) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise QbenchError(f"scenario server: the {what} must be a number, but got {value!r}")
    if not least <= value <= most:
        raise QbenchError(f"scenario server: the {what} must be from {least:g} to {most:g}, but got {value:g}")


#: A server run's rounds: each plan serves the same arrivals in every round, plans alternating,
#: so a drift in the machine hits them alike and the p99 ratio has rounds to resample.
SERVER_ROUNDS = 5
#: Requests a server run aims for (enough for a p99 to be more than the largest few), within
#: the time bounds below.
SERVER_REQUESTS = 400
SERVER_MIN_SECONDS, SERVER_MAX_SECONDS = 1.5, 120.0
#: ``server:max``: probes of the rate, each a short server run of its own.
RATE_PROBES = 7
RATE_PROBE_SECONDS = 2.0


def server_seconds(qps: float, min_seconds: float) -> float:
    """How long each plan serves in all: three times the protocol's sampling time, longer at a low
    rate to gather ``SERVER_REQUESTS`` arrivals, within ``SERVER_MIN_SECONDS``..``SERVER_MAX_SECONDS``."""
    wanted = max(3 * min_seconds, SERVER_REQUESTS / qps)
    return min(max(wanted, SERVER_MIN_SECONDS), SERVER_MAX_SECONDS)


def arrivals_ns(qps: float, seconds: float, seed: int) -> list[int]:
    """Poisson arrivals at ``qps`` per second over ``seconds``, as offsets from the start (ns);
    the same seed gives every plan the same arrivals."""
    import numpy as np

    rng = np.random.default_rng(seed)
    count = int(qps * seconds * 1.5) + 16
    times = np.cumsum(rng.exponential(1e9 / qps, size=count))
    return [int(t) for t in times[times < seconds * 1e9]] or [0]
