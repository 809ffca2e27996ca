"""Latency measurement: warm-up, sampling and block interleaving (the statistics are in ``statistics``).

Absolute times drift between processes on shared machines, while ratios of candidates
alternated in the same rounds hold to a few percent; so speedups always come from
``measure_interleaved``. Each candidate is a worker process holding one plan that times its own
blocks (``qbench.workers``: sessions sharing a process stall each other). Candidates alternate
in *blocks*, not one run at a time: a run that
follows another model's run finds its weights evicted from the cache, which biases small
models' ratios away from each plan alone in its own process (docs/decisions.md). The first
runs of every block are dropped as its
warm-up, and each block pair gives one paired ratio (``statistics.speedup(block=...)``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from qbench.errors import QbenchError
from qbench.statistics import NOISY_CV

RunFn = Callable[[], object]


@runtime_checkable
class BlockTimer(Protocol):
    """Something that times ``runs`` consecutive calls itself and returns their nanoseconds: a
    worker process holding one plan (``qbench.workers.TimingWorker``), timed where it runs."""

    def times(self, runs: int) -> Sequence[int]: ...


class _InProcess:
    """A plain call timed in this process (tests, and the in-process methods kept to show their bias)."""

    def __init__(self, fn: RunFn, clock: Callable[[], int]) -> None:
        self.fn, self.clock = fn, clock

    def times(self, runs: int) -> list[int]:
        return [_timed(self.fn, self.clock) for _ in range(runs)]


@dataclass(frozen=True)
class TimingProtocol:
    """How long to warm up and sample. Both the count and the duration minimum must be met.

    Sampling alternates blocks of runs of each candidate: every block has the same number of
    runs for all candidates. Its first runs are dropped as warm-up: at least one, the fraction
    ``block_warmup`` of the kept ones, and enough for the fastest candidate to run
    ``block_warmup_seconds`` (after another plan's block its caches are cold, and a resumed
    worker's threads settle on the cores).
    Then at least ``block_runs`` runs are kept, and enough for the fastest to run
    ``block_seconds``. ``min_blocks`` block rounds give the paired ratio its interval.
    ``ROUND_ROBIN`` is the old method, one run of each at a time, nothing dropped."""

    warmup_count: int = 10
    warmup_seconds: float = 0.5
    min_count: int = 50
    min_seconds: float = 2.0
    max_seconds: float = 60.0
    noisy_cv: float = NOISY_CV
    block_runs: int = 3
    block_seconds: float = 0.05
    block_warmup: float = 0.2
    block_warmup_seconds: float = 0.02
    min_blocks: int = 8
    max_block_runs: int = 1000

    def __post_init__(self) -> None:
        if self.warmup_count < 0 or self.min_count < 1:
            raise QbenchError(f"protocol needs warmup_count >= 0 and min_count >= 1, but got {self}")
        if not (0 <= self.warmup_seconds and 0 <= self.min_seconds <= self.max_seconds):
            raise QbenchError(f"protocol needs 0 <= warmup_seconds and 0 <= min_seconds <= max_seconds, but got {self}")
        if not (1 <= self.block_runs < self.max_block_runs and 0 <= self.block_seconds):
            raise QbenchError(f"protocol needs 1 <= block_runs < max_block_runs and block_seconds >= 0, but got {self}")
        if not (0 <= self.block_warmup and 0 <= self.block_warmup_seconds):
            raise QbenchError(f"protocol needs block_warmup >= 0 and block_warmup_seconds >= 0, but got {self}")
        if self.min_blocks < 1:
            raise QbenchError(f"protocol needs min_blocks >= 1, but got {self}")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def key(self) -> str:
        """Rows measured under different protocols are never ranked together."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.as_dict().items()))

    def block_shape(self, fastest_ns: float) -> tuple[int, int]:
        """(runs per block, runs kept per block) when the fastest candidate takes ``fastest_ns``."""
        fastest_ns = max(fastest_ns, 1.0)
        kept = max(self.block_runs, math.ceil(self.block_seconds * 1e9 / fastest_ns))
        dropped = 0
        if self.block_warmup > 0 or self.block_warmup_seconds > 0:
            by_time = math.ceil(self.block_warmup_seconds * 1e9 / fastest_ns)
            dropped = max(1, math.ceil(kept * self.block_warmup), by_time)
        if kept + dropped > self.max_block_runs:  # shrink both alike
            scale = self.max_block_runs / (kept + dropped)
            kept, dropped = max(1, int(kept * scale)), max(1 if dropped else 0, int(dropped * scale))
        return kept + dropped, kept


QUICK_PROTOCOL = TimingProtocol(
    warmup_count=3, warmup_seconds=0.1, min_count=20, min_seconds=0.5, max_seconds=10.0, min_blocks=8
)
#: Block rounds before an early ``stop`` is asked: with 4 ratios the order-statistic interval of
#: their median is their range (87.5 % coverage), which a clear difference still leaves.
DECIDE_BLOCKS = 4
#: One run of each candidate at a time: the old, cache-cold method, kept to show its bias.
ROUND_ROBIN = dict(block_runs=1, block_seconds=0.0, block_warmup=0.0, block_warmup_seconds=0.0)


class Samples(dict):
    """Raw samples per candidate (nanoseconds, the kept runs in measured order), aligned across
    candidates: entries ``[i * block, (i + 1) * block)`` of each come from block round ``i``."""

    def __init__(self, values: Mapping[str, np.ndarray], block: int) -> None:
        super().__init__(values)
        self.block = block
        self.loads: dict = {}  # per candidate timed in a worker, what it loaded (``qbench.workers.WorkerLoad``)


def measure(run: RunFn, protocol: TimingProtocol, on_sample: Callable[[], None] | None = None) -> np.ndarray:
    """Warm up, then time ``run`` until the protocol's count and duration minimums are both met."""
    return measure_interleaved({"_": run}, protocol, on_sample)["_"]


def _timed(fn: RunFn, clock: Callable[[], int]) -> int:
    t0 = clock()
    fn()
    return clock() - t0


def measure_interleaved(
    runs: Mapping[str, RunFn | BlockTimer],
    protocol: TimingProtocol,
    on_round: Callable[[], None] | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
    stop: Callable[[Samples], bool] | None = None,
) -> Samples:
    """Time several candidates in alternating blocks (A B C, B C A, C A B, ...). A candidate is a
    ``BlockTimer`` (a worker process that times its own block: how plans are timed) or a plain
    call timed here with ``clock``.

    Warm-up runs each candidate ``warmup_count`` times in turn (and for ``warmup_seconds``), and
    sizes the blocks from the fastest one's warm-up (``TimingProtocol.block_shape``). Sampling stops
    once every candidate has ``min_count`` kept samples and ``min_seconds`` of its own run time
    over at least ``min_blocks`` block rounds, or when ``max_seconds`` of wall time have passed.
    ``stop``, asked after each round from ``DECIDE_BLOCKS`` rounds on, ends sampling early when
    the samples so far already answer the caller's question. ``clock`` (nanoseconds) is for tests.
    """
    names = list(runs)
    if not names:
        raise ValueError("nothing to measure")
    timers = {name: run if isinstance(run, BlockTimer) else _InProcess(run, clock) for name, run in runs.items()}
    start = clock()
    warm: dict[str, list[int]] = {name: [] for name in names}
    per_turn = max(1, protocol.warmup_count)
    while min(map(len, warm.values())) < per_turn or clock() - start < protocol.warmup_seconds * 1e9:
        for name in names:
            warm[name].extend(timers[name].times(per_turn))
    fastest = min(float(np.median(values)) for values in warm.values())
    per_block, kept = protocol.block_shape(fastest)
    samples: dict[str, list[int]] = {name: [] for name in names}
    spent = dict.fromkeys(names, 0)
    need_ns = protocol.min_seconds * 1e9
    deadline = clock() + protocol.max_seconds * 1e9
    rounds = 0
    while True:
        offset = rounds % len(names)
        for name in names[offset:] + names[:offset]:
            block = list(timers[name].times(per_block))
            samples[name].extend(block[per_block - kept :])
            spent[name] += sum(block[per_block - kept :])
        rounds += 1
        if on_round is not None:
            on_round()
        enough = (
            rounds >= protocol.min_blocks and rounds * kept >= protocol.min_count and min(spent.values()) >= need_ns
        )
        if enough or clock() >= deadline:
            break
        if stop is not None and rounds >= DECIDE_BLOCKS and stop(_samples(samples, kept)):
            break
    return _samples(samples, kept)


def _samples(samples: Mapping[str, list[int]], kept: int) -> Samples:
    return Samples({name: np.asarray(values, dtype=np.int64) for name, values in samples.items()}, kept)


#: A throughput round: each worker runs this long with its requests in flight (after a short
#: untimed run to fill its queue and wake its threads), the workers taking turns.
RATE_ROUND_SECONDS = 0.25
RATE_WARMUP_SECONDS = 0.05


def measure_rates(workers: Mapping[str, Any], protocol: TimingProtocol) -> Samples:
    """Throughput with requests in flight, in alternating rounds: each worker (``rate(seconds)``:
    calls completed, ns taken) runs ``RATE_ROUND_SECONDS`` per round; a round's sample is its
    nanoseconds per completed call, so the rows' medians read as ms per call and the paired
    ratio of two plans is per round (block 1). Rounds continue until every worker has run
    ``min_seconds`` and ``min_blocks`` rounds, or ``max_seconds`` have passed."""
    names = list(workers)
    if not names:
        raise ValueError("nothing to measure")
    samples: dict[str, list[int]] = {name: [] for name in names}
    rounds = 0
    start = time.perf_counter()
    need = max(protocol.min_blocks, math.ceil(protocol.min_seconds / RATE_ROUND_SECONDS))
    while rounds < need and time.perf_counter() - start < protocol.max_seconds:
        offset = rounds % len(names)
        for name in names[offset:] + names[:offset]:
            workers[name].rate(RATE_WARMUP_SECONDS)
            calls, elapsed = workers[name].rate(RATE_ROUND_SECONDS)
            samples[name].append(elapsed // max(calls, 1))
        rounds += 1
    return _samples(samples, 1)
