"""The drift workload a nightly worker times interleaved with every plan of its job (stored as
the row's ``reference_ms``).

A fixed small model (the demo ``digits-cnn`` in fp32, batch 1, on ONNX Runtime with the machine's
default thread count whatever the job's) whose latency only the machine can change. A job's
median divided by the reference median measured in the same rounds cancels drift of the whole
machine between nights (a busy neighbour, a slower fresh process), which raw medians cannot.
The caller passes the backend object: the core never imports ``backends``.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

from qbench.data import load_npz
from qbench.machine import Machine
from qbench.model import OnnxModel
from qbench.plan import PrecisionPlan
from qbench.workers import Deployment
from qbench.zoo import lookup

if TYPE_CHECKING:
    from qbench.backends import Backend

DRIFT_MODEL = "digits-cnn"
#: The key of the drift workload's samples among the interleaved calls.
DRIFT = "__drift__"


class DriftWorkload:
    """The demo's fp32 artifact, built once; ``deployment`` is what its timing worker loads."""

    def __init__(self, backend: Backend, machine: Machine, workdir: pathlib.Path) -> None:
        files = lookup(DRIFT_MODEL).files()
        model = OnnxModel.load(files.model)
        feeds = next(load_npz(files.evaluation, model).batches(1))
        plan = backend.resolve_plan(PrecisionPlan(name="fp32"), machine)
        artifact = backend.build(model, plan, None, workdir)
        self.deployment = Deployment(backend, artifact, machine.default_threads(), feeds)

    def close(self) -> None:
        """Nothing to release: the harness's worker pool holds the session."""
