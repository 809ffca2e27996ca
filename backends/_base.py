"""The contract every runtime adapter fulfils. Timing and statistics never live here."""

from __future__ import annotations

import abc
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from qbench.data import Dataset
from qbench.machine import Machine
from qbench.model import Layer, OnnxModel
from qbench.plan import PrecisionPlan
from qbench.profile import OpTime


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run here, and if not, exactly what is missing."""

    available: bool
    reason: str
    version: str | None = None
    device: str = ""


@dataclass(frozen=True)
class Artifact:
    """Something a backend built for one (model, plan) and can load; cached by ``key``."""

    path: pathlib.Path
    key: str
    build_seconds: float
    cached: bool
    #: Files that belong to ``path`` (an OpenVINO IR's weights ``.bin``), counted in its size.
    companions: tuple[pathlib.Path, ...] = ()

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path, *self.companions))


class Runner(abc.ABC):
    """A loaded artifact. Owned by the caller, who must ``close()`` it; not thread-safe."""

    #: Runtime settings that shape latency (threads, spinning, hints); stored with each result.
    settings: Mapping[str, Any]

    @abc.abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run one inference and return the outputs in graph order."""

    def synchronize(self) -> None:  # noqa: B027 - a no-op is right for synchronous runtimes
        """Wait for queued device work; CPU runtimes return at once."""

    def timing_notes(self) -> dict[str, Any]:
        """What the runtime saw of the runs so far beyond wall time (device time, host enqueue
        time); stored with the result's settings. CPU runtimes have nothing to add."""
        return {}

    @abc.abstractmethod
    def close(self) -> None:
        """Release the session; the runner is unusable afterwards."""


@dataclass
class Calibration:
    """Activation ranges for every candidate tensor, computed once and reused for any plan."""

    path: pathlib.Path
    method: str
    samples: int
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


class Backend(abc.ABC):
    """A runtime adapter. Construction is cheap and imports nothing heavy; ``probe()`` says
    whether the runtime can be used, and every other method may assume it can."""

    name: ClassVar[str]

    @abc.abstractmethod
    def probe(self) -> Availability:
        """Availability, runtime version and device; never raises."""

    @abc.abstractmethod
    def precisions(self, layer: Layer) -> tuple[str, ...]:
        """Precisions this backend can run ``layer`` in, fp32 first."""

    @abc.abstractmethod
    def resolve_plan(self, plan: PrecisionPlan, machine: Machine) -> PrecisionPlan:
        """Fill the plan's unset options with this backend's defaults for ``machine``."""

    @abc.abstractmethod
    def calibrate(self, model: OnnxModel, data: Dataset, method: str, workdir: pathlib.Path) -> Calibration:
        """Compute (or load cached) activation ranges for all candidate tensors."""

    @abc.abstractmethod
    def build(
        self, model: OnnxModel, plan: PrecisionPlan, calibration: Calibration | None, workdir: pathlib.Path
    ) -> Artifact:
        """Turn the model and a resolved plan into a loadable artifact, cached by content hash."""

    @abc.abstractmethod
    def load(self, artifact: Artifact, threads: int, shared_process: bool = True) -> Runner:
        """Open ``artifact`` with a fixed thread count. ``shared_process`` says other sessions
        live in this process, so idle worker threads must not spin."""

    @abc.abstractmethod
    def realized_precisions(self, artifact: Artifact, plan: PrecisionPlan, model: OnnxModel) -> dict[str, str]:
        """What each quantizable layer actually runs in once the runtime has optimized it."""

    def profile(self, artifact: Artifact, threads: int, feeds: Mapping[str, np.ndarray], runs: int) -> list[OpTime]:
        """Per-node kernel time, averaged over ``runs`` warm inferences of ``feeds`` on a fresh
        session opened for profiling only (never the one being timed)."""
        from qbench.errors import QbenchError

        raise QbenchError(f"backend {self.name!r} has no per-op profiler in qbench yet")

    def option_choices(self) -> dict[str, tuple[Any, ...]]:
        """Values this backend accepts here for plan-wide options: ``quantizer`` and
        ``inference_precision`` (only these values are honoured) and the int8 scheme
        (``activation_type``, ``per_channel``, …: the values worth trying on this backend).
        The tuner searches every option with several values, except the native quantizer."""
        return {"quantizer": ("qdq", "native")}

    def check_plan(self, plan: PrecisionPlan, model: OnnxModel) -> None:
        """Raise a QbenchError naming the first layer (or option) this backend cannot run."""
        from qbench.errors import QbenchError
        from qbench.plan import check_plan_layers

        choices = self.option_choices()
        for option in ("quantizer", "inference_precision", "preset"):
            value = getattr(plan.options, option)
            if value is not None and value not in choices.get(option, ()):
                offered = f"; it offers {', '.join(choices[option])}" if choices.get(option) else ""
                raise QbenchError(f"backend {self.name!r} cannot honour plan option {option}={value!r}{offered}")
        check_plan_layers(plan, model.layer_names())
        if plan.is_native and len(plan.layers_in("int8")) != len(model.layers):
            raise QbenchError(
                f"plan {plan.name!r}: quantizer=native quantizes the whole model, so every layer must be int8; "
                "use quantizer qdq for a per-layer plan"
            )
        by_name = {layer.name: layer for layer in model.layers}
        for name, precision in plan.layers.items():
            offered = self.precisions(by_name[name])
            if precision not in offered:
                raise QbenchError(
                    f"backend {self.name!r} cannot run layer {name!r} ({by_name[name].op_type}) in "
                    f"{precision}; it offers {', '.join(offered)}"
                )
