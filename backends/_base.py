"""The contract every runtime adapter fulfils. Timing and statistics never live here."""

from __future__ import annotations

import abc
import json
import pathlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from qbench.cache import (
    artifact_cache_limit,
    atomic_cached,
    companion_paths,
    content_key,
    intact,
    short_stem,
    touch,
    trim_least_recently_used,
)
from qbench.data import Dataset
from qbench.errors import QbenchError
from qbench.machine import Machine
from qbench.model import ONNX_DATA_SUFFIX, Layer, OnnxModel
from qbench.plan import WEIGHT_ONLY_BITS, PrecisionPlan
from qbench.profile import OpTime

#: Shared plan options the tuner may search, each with the precisions it changes (None: every
#: plan): the static int8 scheme and the weight-only block size and symmetry. Adapters add their own.
SHARED_SEARCHED_OPTIONS: dict[str, frozenset[str] | None] = {
    **dict.fromkeys(("quantizer", "activation_type", "per_channel", "reduce_range"), frozenset({"int8"})),
    **dict.fromkeys(("block_size", "weight_symmetric"), frozenset(WEIGHT_ONLY_BITS)),
}


@dataclass(frozen=True)
class NoRuntimeOptions:
    """The runtime options of a backend that has none of its own."""


def choice_check(options: Any, choices: dict[str, tuple[Any, ...]]) -> None:
    """Raise a QbenchError for the first field of the ``options`` dataclass whose value is set
    and not among ``choices[field]`` (a runtime-options ``__post_init__`` helper)."""
    for name, allowed in choices.items():
        value = getattr(options, name)
        if value is not None and value not in allowed:
            raise QbenchError(f"plan option `{name}` must be one of {allowed}, but got {value!r}")


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
    #: Files built beside ``path`` (an OpenVINO IR's weights ``.bin``, a TensorRT engine's build
    #: settings ``.json``), counted in its size.
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

    def run_for(self, feeds: Mapping[str, np.ndarray], seconds: float) -> tuple[int, int]:
        """Calls completed and nanoseconds spent running ``feeds`` back to back for about
        ``seconds``; a runner loaded for throughput keeps several requests in flight."""
        clock, calls = time.perf_counter_ns, 0
        start = clock()
        deadline = start + int(seconds * 1e9)
        while True:
            self.run(feeds)
            self.synchronize()
            calls += 1
            now = clock()
            if now >= deadline:
                return calls, now - start

    def rewind(self) -> None:  # noqa: B027 - a no-op is right for runners whose calls leave nothing behind
        """Called between timed calls, outside the timing: a runner whose calls leave state
        behind (a stateful decoder's grown cache) puts back the state its feeds describe, so every
        timed call does the same work."""

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


def samples_only(model: OnnxModel, data: Dataset, method: str, workdir: pathlib.Path) -> Calibration:
    """The calibration of a plan whose quantizer calibrates the samples itself (ONNX Runtime's
    ``quantize_static`` for native-int8, NNCF): the samples, and no ranges computed for nothing
    (on SmolLM2-135M the ranges of every tensor took about 13 s of a cold tune). Its path is never
    written: its name keys the plan's artifact to the samples."""
    path = workdir / "calibration" / f"{model.content_hash}-{data.content_hash}-{method}-samples"
    return Calibration(path, method, len(data), 0.0, {"dataset": data, "cached": True})


def check_calibration(plan: PrecisionPlan, calibration: Calibration | None) -> None:
    if calibration is None:
        raise ValueError("a plan with static int8 layers needs a calibration")
    if plan.options.calibration != calibration.method:
        raise ValueError(f"plan wants {plan.options.calibration} calibration, got {calibration.method}")


class Backend(abc.ABC):
    """A runtime adapter. Construction is cheap and imports nothing heavy; ``probe()`` says
    whether the runtime can be used, and every other method may assume it can.

    ``build`` and ``realized_precisions`` are template methods: the base class checks the plan,
    keys and caches the result (see ``qbench.cache``); an adapter implements only the hooks
    ``_build_uncached``, ``_build_key`` and ``_realize``.
    """

    name: ClassVar[str]
    #: This runtime's own plan options: a frozen dataclass whose fields default to None (the
    #: machine's default) and whose ``__post_init__`` rejects bad values. Plans carry them in
    #: ``PlanOptions.runtime``; nothing outside the adapter names them.
    Options: ClassVar[type] = NoRuntimeOptions
    #: The artifact's file suffix, and the suffixes of the files built beside it.
    artifact_suffix: ClassVar[str] = ".onnx"
    companion_suffixes: ClassVar[tuple[str, ...]] = (ONNX_DATA_SUFFIX,)

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

    def needs_ranges(self, plan: PrecisionPlan) -> bool:
        """Whether building ``plan`` reads qbench's activation ranges (else only the samples)."""
        return True

    def calibration_for(
        self, plan: PrecisionPlan, model: OnnxModel, data: Dataset, workdir: pathlib.Path
    ) -> Calibration | None:
        """What building ``plan`` needs from ``data``: nothing, the samples alone, or ranges."""
        if not plan.needs_calibration:
            return None
        if not self.needs_ranges(plan):
            return samples_only(model, data, plan.options.calibration, workdir)
        return self.calibrate(model, data, plan.options.calibration, workdir)

    def build(
        self, model: OnnxModel, plan: PrecisionPlan, calibration: Calibration | None, workdir: pathlib.Path
    ) -> Artifact:
        """Turn the model and a resolved plan into a loadable artifact, cached by content hash
        (model, plan, calibration, runtime version) under ``workdir/artifacts/<backend>``."""
        self.check_plan(plan, model)
        if plan.needs_calibration:
            check_calibration(plan, calibration)
        calibration_key = calibration.path.name if plan.needs_calibration and calibration else "-"
        family = type(self).name  # one cache for all devices of a backend: the artifact is the same
        key = content_key(model.content_hash, plan.content_hash, calibration_key, family, *self._build_key(plan))
        path = self._artifact_path(model.name, key, workdir)
        start = time.perf_counter()
        cached = atomic_cached(
            path, lambda tmp: self._build_uncached(model, plan, calibration, workdir, tmp), self.companion_suffixes
        )
        if cached:
            touch(path)
        else:  # a tune builds dozens of artifacts that nothing reads again: keep the cache bounded
            trim_least_recently_used(workdir / "artifacts", artifact_cache_limit(), keep=path)
        companions = tuple(companion_paths(path, self.companion_suffixes))
        return Artifact(path, key, 0.0 if cached else time.perf_counter() - start, cached, companions)

    def _artifact_path(self, model_name: str, key: str, workdir: pathlib.Path) -> pathlib.Path:
        return workdir / "artifacts" / type(self).name / f"{short_stem(model_name)}-{key}{self.artifact_suffix}"

    def cached_artifact(self, model_name: str, key: str, workdir: pathlib.Path) -> Artifact | None:
        """The artifact an earlier ``build`` made under ``key``, if the cache still holds it."""
        path = self._artifact_path(model_name, key, workdir)
        if not intact(path, self.companion_suffixes):  # gone, or damaged: the caller rebuilds from the plan
            return None
        companions = tuple(companion_paths(path, self.companion_suffixes))
        touch(path)
        return Artifact(path, key, 0.0, True, companions)

    @abc.abstractmethod
    def _build_key(self, plan: PrecisionPlan) -> tuple[str, ...]:
        """What besides the model, plan and calibration decides the artifact (runtime version)."""

    @abc.abstractmethod
    def _build_uncached(
        self,
        model: OnnxModel,
        plan: PrecisionPlan,
        calibration: Calibration | None,
        workdir: pathlib.Path,
        out: pathlib.Path,
    ) -> None:
        """Write the artifact of a checked plan to ``out`` (and its companions beside it)."""

    @abc.abstractmethod
    def load(self, artifact: Artifact, threads: int, shared_process: bool = True) -> Runner:
        """Open ``artifact`` with a fixed thread count. ``shared_process`` says other sessions
        live in this process, so idle worker threads must not spin."""

    def load_for_throughput(self, artifact: Artifact, threads: int, streams: int) -> Runner:
        """Open ``artifact`` to keep ``streams`` requests in flight (0: the runtime's choice), on
        ``threads`` threads in all, as a throughput deployment does (``Runner.run_for``)."""
        raise QbenchError(
            f"{self.name} cannot keep several requests in flight here; use throughput:BATCH without streams"
        )

    def realized_precisions(self, artifact: Artifact, plan: PrecisionPlan, model: OnnxModel) -> dict[str, str]:
        """What each quantizable layer actually runs in once the runtime has optimized it; cached
        beside the artifact (what runs depends on the runtime's settings too: ``_realized_tag``)."""
        report = artifact.path.with_name(f"{artifact.path.stem}.realized-{self._realized_tag()}.json")
        atomic_cached(report, lambda tmp: tmp.write_text(json.dumps(self._realize(artifact, plan, model), indent=1)))
        return json.loads(report.read_text())

    def _realized_tag(self) -> str:
        """What besides the artifact decides what runs (the device, the optimizers left on)."""
        return "default"

    @abc.abstractmethod
    def _realize(self, artifact: Artifact, plan: PrecisionPlan, model: OnnxModel) -> dict[str, str]:
        """Read from the runtime what each layer of ``model`` runs in (``removed`` if fused away)."""

    def profile(self, artifact: Artifact, threads: int, feeds: Mapping[str, np.ndarray], runs: int) -> list[OpTime]:
        """Per-node kernel time, averaged over ``runs`` warm inferences of ``feeds`` on a fresh
        session opened for profiling only (never the one being timed)."""
        raise QbenchError(f"backend {self.name!r} has no per-op profiler in qbench yet")

    def option_choices(self) -> dict[str, tuple[Any, ...]]:
        """Values this backend accepts here for plan-wide options: ``quantizer`` and its runtime
        options (only these values are honoured) and the int8 scheme (``activation_type``,
        ``per_channel``, …: the values worth trying on this backend). The tuner searches the
        ``searched_options`` with several values here, except the native quantizer."""
        return {"quantizer": ("qdq", "native")}

    def searched_options(self) -> dict[str, frozenset[str] | None]:
        """Options the tuner may search, each with the precisions whose layers read it (None:
        every plan). An adapter adds its runtime options to the shared ones."""
        return dict(SHARED_SEARCHED_OPTIONS)

    def runtime_options(self, plan: PrecisionPlan) -> Any:
        """The plan's runtime options as this backend's ``Options``; a QbenchError names an
        option this backend does not have."""
        given = dict(plan.options.runtime)
        known = [f.name for f in fields(self.Options)]
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise QbenchError(
                f"backend {self.name!r} has no plan option {', '.join(unknown)}; "
                f"its own options are {', '.join(known) or 'none'} (`qbench backends` lists them)"
            )
        return self.Options(**given)

    def check_plan(self, plan: PrecisionPlan, model: OnnxModel) -> None:
        """Raise a QbenchError naming the first layer (or option) this backend cannot run."""
        from qbench.plan import check_plan_layers

        self.runtime_options(plan)
        choices = self.option_choices()
        must_offer = ("quantizer", "weight_symmetric")
        for option in (*must_offer, *(name for name, _ in plan.options.runtime)):
            value = plan.options.get(option)
            honoured = option in must_offer or option in choices
            if value is not None and honoured and value not in choices.get(option, ()):
                offered = f"; it offers {', '.join(map(str, choices[option]))}" if choices.get(option) else ""
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
