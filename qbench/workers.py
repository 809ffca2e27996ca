"""The timing engine: every timed plan alone in a worker process of its own, as it is deployed.

Sessions that share a process disturb each other: on an AMD EPYC Zen 4, a session timed in
blocks beside one other session of its process (ONNX Runtime's default spinning) stalled ~4 ms
on 12-16 % of its runs, and block ratios came out 5-16 % off the plans timed in separate
processes (docs/decisions.md). So each timed plan gets a ``TimingWorker``: a process holding
one session, compiled model or engine with the runtime's deployed defaults (spinning on),
which times its own runs and sends the nanoseconds back. The controller alternates blocks across
workers (``qbench.measure.measure_interleaved``) and **freezes every worker it is not talking to**
(SIGSTOP, confirmed by every thread's state in ``/proc`` or by ``waitpid``; SIGCONT before the
next request), so no thread of an idle worker, spinning or not, runs while another is timed. A
``WorkerPool`` reuses workers, so a tune does not start a process per trial: a worker that
already holds the requested deployment is reused as it is, any other free one loads the new one.

On Linux, workers are forked from a **launcher**: one process per controller, started with
``python -P -m qbench.workers --launcher`` (nothing imported from the current directory, no
``multiprocessing`` re-import of the caller's main module), which imports qbench once (~3 s
on a 2-core Zen 3; no runtime, so it forks single-threaded) and then forks a worker in ~11 ms,
handing it the two pipes the controller made (``socket.send_fds``). Elsewhere each worker is
started by itself. Workers speak pickle over their pipes and die with their parent
(``PR_SET_PDEATHSIG``) and at the end of their input. This module never imports ``backends``:
the backend object travels to the worker pickled.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from qbench.errors import QbenchError, describe

if TYPE_CHECKING:
    from qbench.backends import Artifact, Backend, Runner

#: Freezing idle workers needs POSIX job-control signals; elsewhere workers are only kept idle.
CAN_FREEZE = hasattr(signal, "SIGSTOP")
#: Forking workers from a preloaded launcher needs fork, fd passing and /proc (to see a stop).
USE_LAUNCHER = sys.platform.startswith("linux") and hasattr(socket, "send_fds")
#: How long a worker may take to stop (SIGSTOP) or to exit once its input ends.
STOP_TIMEOUT_S = 10.0
#: A server run sleeps through idle gaps but spins their last 200 µs: a sleep wakes late by up to ~100 µs.
SPIN_NS = 200_000
_PID_BYTES = 12


def worker_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment for a worker process: ``$PYTHONPATH`` without empty or ``.`` entries, which
    Python reads as the current directory (``PYTHONPATH=:/x`` imported a metric from there
    despite ``-P``)."""
    env = dict(environ)
    entries = [e for e in env.get("PYTHONPATH", "").split(os.pathsep) if e and os.path.normpath(e) != "."]
    if entries:
        env["PYTHONPATH"] = os.pathsep.join(entries)
    else:
        env.pop("PYTHONPATH", None)
    return env


def _thread_states(pid: int) -> list[str]:
    """The scheduler state of each thread of ``pid`` (R, S, T, Z, ...); [] once it is gone."""
    states = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):  # gone, or exiting (ESRCH while it is reaped)
        return []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                states.append(stat.read().rsplit(")", 1)[1].split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # the thread ended meanwhile
    return states


class _Launcher:
    """The preloaded process that forks timing workers; one per controller process."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = worker_environment()
        env["OPENBLAS_NUM_THREADS"] = "1"  # no BLAS thread pool: the launcher stays one thread, safe to fork
        self._process = subprocess.Popen(
            [sys.executable, "-P", "-m", "qbench.workers", "--launcher", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the controller, which ends its workers
        )
        theirs.close()
        self._socket = ours
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def fork(self) -> tuple[int, IO[bytes], IO[bytes]]:
        """A new worker: its pid, the pipe to write its requests to and the one to read its replies from."""
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        try:
            with self._lock:
                socket.send_fds(self._socket, [b"f"], [request_read, reply_write])
                answer = b""
                while len(answer) < _PID_BYTES:
                    chunk = self._socket.recv(_PID_BYTES - len(answer))
                    if not chunk:
                        raise WorkerError(f"the timing-worker launcher ({self._process.pid}) died")
                    answer += chunk
        except OSError as exc:
            os.close(request_write)
            os.close(reply_read)
            raise WorkerError(f"the timing-worker launcher failed: {describe(exc)}") from exc
        except WorkerError:
            os.close(request_write)
            os.close(reply_read)
            raise
        finally:
            os.close(request_read)
            os.close(reply_write)
        return int(answer), os.fdopen(request_write, "wb"), os.fdopen(reply_read, "rb")


_launcher: _Launcher | None = None
_launcher_lock = threading.Lock()


def launcher() -> _Launcher:
    """This process's launcher, started on first use (and again if it died)."""
    global _launcher
    with _launcher_lock:
        if _launcher is None or not _launcher.alive:
            _launcher = _Launcher()
        return _launcher


class WorkerError(RuntimeError):
    """A worker failed a request (its error, one line) or died."""


@dataclass(frozen=True, eq=False)
class Deployment:
    """What one worker loads and times: an artifact on a backend, with a thread count, and the
    inputs of one timed call."""

    backend: Backend
    artifact: Artifact
    threads: int
    feeds: Mapping[str, np.ndarray]
    streams: int | None = None  # requests in flight for a throughput run (0: the runtime's choice)

    def same_as(self, other: Deployment | None) -> bool:
        return (
            other is not None
            and other.backend.name == self.backend.name
            and other.artifact.key == self.artifact.key
            and other.artifact.path == self.artifact.path
            and other.threads == self.threads
            and other.feeds is self.feeds
            and other.streams == self.streams
        )


@dataclass(frozen=True)
class WorkerLoad:
    """What loading a deployment cost in its worker, and the settings of the session it holds."""

    load_s: float
    first_inference_ms: float
    rss_mb: float
    settings: dict[str, Any]


class TimingWorker:
    """A worker process (forked by the launcher, or this process's child elsewhere) holding at
    most one deployment. Every request resumes it, waits for its reply and freezes it again, so
    between requests none of its threads runs. Not thread-safe."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None  # where the worker is this process's own child
        if USE_LAUNCHER:
            self.pid, self._requests, self._replies = launcher().fork()
        else:
            self._process = subprocess.Popen(
                [sys.executable, "-P", "-m", "qbench.workers"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=worker_environment(),
                start_new_session=True,
            )
            self.pid, self._requests, self._replies = self._process.pid, self._process.stdin, self._process.stdout
        self.deployment: Deployment | None = None
        self.load_info: WorkerLoad | None = None
        self._frozen = False
        self._exited = False
        self.ready = False  # a worker started by itself imports for seconds; ``wait_ready`` waits for that

    def wait_ready(self) -> None:
        """Wait until the worker answers, leaving it frozen."""
        if not self.ready:
            self._request(("ping",))
            self.ready = True

    # -- freezing ------------------------------------------------------------------------------

    def _freeze(self) -> None:
        """SIGSTOP, and wait until every thread has stopped (or the worker is gone)."""
        if not CAN_FREEZE or not self.alive:
            return
        try:
            os.kill(self.pid, signal.SIGSTOP)
        except ProcessLookupError:
            self._exited = True
            return
        if self._process is not None:  # our child: waitpid reports the stop once every thread stopped
            _, status = os.waitpid(self.pid, os.WUNTRACED)
            if not os.WIFSTOPPED(status):  # it exited between its reply and the signal
                self._process.returncode = os.waitstatus_to_exitcode(status)
                self._exited = True
                return
        else:
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while True:
                states = _thread_states(self.pid)
                if not states or "Z" in states or "X" in states:
                    self._exited = True
                    return
                if all(state in ("T", "t") for state in states):
                    break
                if time.monotonic() > deadline:
                    raise WorkerError(f"timing worker {self.pid} did not stop within {STOP_TIMEOUT_S:g} s")
                time.sleep(0)
        self._frozen = True

    def _thaw(self) -> None:
        if self._frozen:
            os.kill(self.pid, signal.SIGCONT)
            self._frozen = False

    # -- requests ------------------------------------------------------------------------------

    def _request(self, message: tuple) -> Any:
        if not self.alive:
            raise WorkerError(f"timing worker {self.pid} has exited")
        self._thaw()
        try:
            pickle.dump(message, self._requests, protocol=pickle.HIGHEST_PROTOCOL)
            self._requests.flush()
            status, value = pickle.load(self._replies)
        except (EOFError, BrokenPipeError, pickle.UnpicklingError) as exc:
            self._exited = True
            raise WorkerError(f"timing worker {self.pid} died ({describe(exc)})") from exc
        finally:
            self._freeze()
        if status == "error":
            raise WorkerError(value)
        return value

    def load(self, deployment: Deployment) -> WorkerLoad:
        """Open ``deployment`` (closing what the worker held) and run it once, cold."""
        self.deployment = self.load_info = None
        d = deployment
        # Absolute paths: a worker's current directory is the launcher's, not this process's now.
        artifact = replace(
            d.artifact, path=d.artifact.path.resolve(), companions=tuple(p.resolve() for p in d.artifact.companions)
        )
        self.load_info = WorkerLoad(**self._request(("load", d.backend, artifact, d.threads, d.feeds, d.streams)))
        self.deployment = deployment
        return self.load_info

    def times(self, runs: int) -> list[int]:
        """Nanoseconds of ``runs`` consecutive timed calls, taken inside the worker."""
        return self._request(("time", runs))

    def rate(self, seconds: float) -> tuple[int, int]:
        """Calls completed and nanoseconds taken running for about ``seconds`` (with the
        deployment's requests in flight)."""
        return self._request(("rate", float(seconds)))

    def serve(self, arrivals_ns: Sequence[int]) -> list[int]:
        """Latency of each request, from its arrival to its answer (waiting included), when requests
        arrive at ``arrivals_ns`` after the start and the worker answers one at a time."""
        return self._request(("serve", [int(a) for a in arrivals_ns]))

    def outputs(self) -> list[np.ndarray]:
        """The outputs of one call of the held deployment's feeds (for checks)."""
        return self._request(("outputs",))

    def close(self) -> None:
        """End the process: its input ends, and it is resumed to see that; killed if it lingers."""
        for stream in (self._requests, self._replies):
            try:
                stream.close()
            except OSError:
                pass
        if self.alive:
            self._thaw()
            if not self._wait_exit(STOP_TIMEOUT_S):
                os.kill(self.pid, signal.SIGKILL)
                self._wait_exit(STOP_TIMEOUT_S)
        self._exited, self.deployment = True, None

    def _wait_exit(self, timeout_s: float) -> bool:
        if self._process is not None:
            try:
                self._process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = _thread_states(self.pid)
            if not states or "Z" in states or "X" in states:
                return True
            time.sleep(0.01)
        return False

    @property
    def alive(self) -> bool:
        if self._exited:
            return False
        if self._process is not None:
            return self._process.poll() is None
        states = _thread_states(self.pid)
        return bool(states) and "Z" not in states and "X" not in states


class WorkerPool:
    """Timing workers reused across measurements. ``acquire`` gives one worker per named
    deployment, reusing a worker that already holds it (the fp32 baseline keeps its worker for
    the pool's life) and loading the rest into free or new workers. Close the pool when done."""

    def __init__(self) -> None:
        self.workers: list[TimingWorker] = []

    def prestart(self) -> None:
        """Start the launcher now (Linux), so that it imports while the caller builds and scores;
        workers then fork from it in milliseconds. Elsewhere workers start when acquired."""
        if USE_LAUNCHER:
            launcher()

    def acquire(self, deployments: Mapping[str, Deployment]) -> dict[str, TimingWorker]:
        """One worker per deployment, loaded; every worker of the pool has started and is frozen
        when this returns (none is still importing beside a timed one)."""
        self.workers = [w for w in self.workers if w.alive]
        while len(self.workers) < len(deployments):
            self.workers.append(TimingWorker())
        for worker in self.workers:
            worker.wait_ready()
        free = list(self.workers)
        chosen: dict[str, TimingWorker] = {}
        for name, deployment in deployments.items():
            match = next((w for w in free if deployment.same_as(w.deployment)), None)
            if match is not None:
                chosen[name] = match
                free.remove(match)
        for name, deployment in deployments.items():
            if name in chosen:
                continue
            worker = free.pop(0)
            try:
                worker.load(deployment)
            except WorkerError as exc:
                raise WorkerError(f"{name}: {exc}") from exc
            chosen[name] = worker
        return {name: chosen[name] for name in deployments}

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        self.workers = []


# -- the worker process ------------------------------------------------------------------------


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies, even while it is frozen (a parent that
    died before this call counts: the process is then an orphan, and ends)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class _Held:
    """The worker's one session and its timed call."""

    def __init__(self) -> None:
        self.runner: Runner | None = None
        self.feeds: Mapping[str, np.ndarray] | None = None
        self._whole: Any = None  # a generation's loop (qbench.decoder.GenerateFeeds.run_with), found once

    def load(
        self,
        backend: Backend,
        artifact: Artifact,
        threads: int,
        feeds: Mapping[str, np.ndarray],
        streams: int | None = None,
    ) -> dict:
        self.close()
        start = time.perf_counter()
        # Deployed defaults: nothing else runs in this process, so idle threads may spin.
        if streams is None:
            self.runner = backend.load(artifact, threads, shared_process=False)
        else:
            self.runner = backend.load_for_throughput(artifact, threads, streams)
        load_s = time.perf_counter() - start
        self.feeds, self._whole = feeds, getattr(feeds, "run_with", None)
        start = time.perf_counter()
        self.call()
        first_ms = (time.perf_counter() - start) * 1e3
        settings = {**self.runner.settings, **self.runner.timing_notes()}
        return {"load_s": load_s, "first_inference_ms": first_ms, "rss_mb": _rss_mb(), "settings": settings}

    def call(self) -> Sequence[np.ndarray]:
        outputs = self._whole(self.runner.run) if self._whole else self.runner.run(self.feeds)
        self.runner.synchronize()
        return outputs

    def times(self, runs: int) -> list[int]:
        if self.runner is None:
            raise QbenchError("the timing worker holds no session")
        clock, call, rewind, samples = time.perf_counter_ns, self.call, self.runner.rewind, []
        for _ in range(runs):
            rewind()
            t0 = clock()
            call()
            samples.append(clock() - t0)
        return samples

    def serve(self, arrivals_ns: Sequence[int]) -> list[int]:
        """One request at a time, each started at its arrival or when the one before it ends."""
        if self.runner is None:
            raise QbenchError("the timing worker holds no session")
        clock, call, latencies = time.perf_counter_ns, self.call, []
        start = clock()
        for offset in arrivals_ns:
            self.runner.rewind()  # while waiting; a request arriving meanwhile waits for it
            arrival = start + offset
            wait = arrival - clock()
            if wait > SPIN_NS:  # sleep most of an idle gap, spin the end of it (sleep overshoots)
                time.sleep((wait - SPIN_NS) / 1e9)
            while clock() < arrival:
                pass
            call()
            latencies.append(clock() - arrival)
        return latencies

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
        self.runner = self.feeds = self._whole = None


def _serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    held = _Held()
    while True:
        try:
            message = pickle.load(requests)
        except EOFError:
            break
        kind, args = message[0], message[1:]
        try:
            if kind == "ping":
                value: Any = os.getpid()
            elif kind == "load":
                value = held.load(*args)
            elif kind == "time":
                value = held.times(int(args[0]))
            elif kind == "serve":
                value = held.serve(args[0])
            elif kind == "rate":
                value = held.runner.run_for(held.feeds, float(args[0]))
            elif kind == "outputs":
                value = [np.asarray(o) for o in held.call()]
            else:
                raise ValueError(f"unknown request {kind!r}")
            reply = ("ok", value)
        except Exception as exc:  # the controller records the plan as failed; this worker goes on
            reply = ("error", describe(exc))
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()
    held.close()


def _launch(fd: int) -> None:
    """The launcher: fork a worker for each request on the socket ``fd``; end when it closes."""
    # Importing qbench (this module's package) is most of a worker's start: done once, here. The
    # adapters and their runtimes import in each worker (a tenth of a second), so that no
    # runtime thread exists in this process when it forks.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped as they end
    channel = socket.socket(fileno=fd)
    while True:
        try:
            message, fds, _flags, _address = socket.recv_fds(channel, 16, 2)
        except OSError:
            break
        if not message:
            break
        pid = os.fork()
        if pid == 0:  # the worker
            channel.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            die_with_parent()
            try:
                _serve(os.fdopen(fds[0], "rb"), os.fdopen(fds[1], "wb"))
            finally:
                os._exit(0)
        for descriptor in fds:
            os.close(descriptor)
        channel.sendall(str(pid).rjust(_PID_BYTES).encode())


def main() -> None:
    die_with_parent()
    replies = os.fdopen(os.dup(1), "wb")
    # Anything a runtime prints goes to stderr: never into the reply stream, never into the
    # controller's stdout (a launcher's workers inherit this).
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if "--launcher" in sys.argv:
        replies.close()
        _launch(int(sys.argv[sys.argv.index("--launcher") + 1]))
    else:
        _serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
