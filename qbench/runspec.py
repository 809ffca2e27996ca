"""One run's settings as a typed value: what is measured, where, and how it is timed.

``RunSpec(subject, target, timing, recipes)`` is built by the command line, a suite job and the
Python API alike (``normalized`` fills every default the same way), travels to a nightly worker
as JSON, and is stored with each leaderboard row with its ``config_hash``, so a row says exactly
how to reproduce it:

    qbench bench MODEL --data D --backend B --threads T --recipe R …
    RunSpec.from_json(row.run_spec) == the spec that command builds

Paths are stored absolute; the hash covers the files' contents, not their names.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from qbench.errors import QbenchError
from qbench.scenario import MAX_BATCH, Scenario
from qbench.workload import Workload

RUN_SPEC_VERSION = 1
TIMING_PROTOCOLS = ("standard", "quick")


@dataclass(frozen=True)
class Subject:
    """What is measured: a model, its data and metric, and what one timed call runs."""

    model: str  # a zoo name or an .onnx path
    data: str | None = None  # an .npz, or a decoder's .txt/.jsonl/folder; None: the zoo model's, or synthetic
    calib_data: str | None = None  # an .npz; None: the zoo model's, or the first 20 % of ``data``
    metric: str | None = None  # a built-in name, file.py:function or module:function
    workload: str | None = None  # batch, prefill[:N], decode[:N]; None: the zoo model's, else batch
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()  # fixed dynamic dimensions, by input

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise QbenchError("a run needs a model: a zoo name or an .onnx path")
        for name in ("data", "calib_data", "metric", "workload"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value or "\0" in value):
                what = "text such as decode:128" if name == "workload" else "a path or name as text"
                raise QbenchError(f"`{name}` must be {what}, but got {value!r}")
        if self.workload is not None:
            Workload.parse(self.workload)  # one-line error for a bad workload
        object.__setattr__(self, "shapes", _checked_shapes(self.shapes))


def _checked_shapes(shapes: object) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Fixed dimensions by input name, as sorted pairs: names are text, dimensions whole and positive."""
    pairs = shapes.items() if isinstance(shapes, Mapping) else shapes
    try:
        pairs = [(name, tuple(dims)) for name, dims in pairs]
    except (TypeError, ValueError):
        pairs = None
    whole = all(_is_whole(d) and 1 <= d <= 2**31 - 1 for _, dims in pairs or () for d in dims)
    if pairs is None or not whole or not all(isinstance(name, str) and name for name, _ in pairs):
        raise QbenchError(f"`shapes` must map input names to lists of positive whole dimensions, but got {shapes!r}")
    if len(dict(pairs)) != len(pairs):
        raise QbenchError(f"`shapes` names an input twice: {shapes!r}")
    return tuple(sorted(pairs))


def _is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Target:
    """Where it runs: the backend, its intra-op threads and the batch size."""

    backend: str = "onnxruntime"
    threads: int | None = None  # None: the machine's physical cores (``Machine.default_threads``)
    batch: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.backend, str) or not self.backend:
            raise QbenchError(f"`backend` must be a backend name such as onnxruntime, but got {self.backend!r}")
        _whole("threads", self.threads, max_threads(), allow_none=True, why=_THREADS_WHY)
        _whole("batch", self.batch, MAX_BATCH)


_THREADS_WHY = "4x this machine's logical CPUs: a runtime asked for 100,000 threads tries to start them"


def max_threads() -> int:
    return 4 * (os.cpu_count() or 1)


def _whole(name: str, value: object, most: int, allow_none: bool = False, why: str = "") -> None:
    """A whole number from 1 to ``most`` (a bool is not one)."""
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
        because = f" ({why})" if why else ""
        raise QbenchError(f"`{name}` must be a whole number from 1 to {most}{because}, but got {value!r}")


@dataclass(frozen=True)
class Timing:
    """How it is timed: the protocol by name, an optional longer sampling time, a profile, and
    the deployment scenario the figures answer (``qbench.scenario``)."""

    protocol: str = "standard"  # standard, or quick for smoke tests
    min_seconds: float | None = None
    profile: bool = False  # store a per-op profile with every row
    scenario: str = "latency"  # latency, throughput[:BATCH], server:QPS[:BOUND_MS]

    def __post_init__(self) -> None:
        if self.protocol not in TIMING_PROTOCOLS:
            raise QbenchError(f"timing protocol {self.protocol!r}: use one of {', '.join(TIMING_PROTOCOLS)}")
        if self.min_seconds is not None and (
            not isinstance(self.min_seconds, int | float)
            or isinstance(self.min_seconds, bool)
            or not 0 < self.min_seconds <= 24 * 3600
        ):
            raise QbenchError(f"min_seconds = {self.min_seconds!r}: use a positive number of seconds up to a day")
        if not isinstance(self.profile, bool):
            raise QbenchError(f"`profile` must be true or false, but got {self.profile!r}")
        object.__setattr__(self, "scenario", str(Scenario.parse(self.scenario)))


@dataclass(frozen=True)
class Tune:
    """A tune's own settings (absent for a bench): what it optimizes, within which budgets, over
    which space, and how long it searches. Stored with the tune's rows, so two tunes that differ
    in any of them have different ``config_hash``es, and a row says how to run it again."""

    objective: str = "p50"  # qbench.objectives
    max_drop: float = 0.01  # also "1%", or on a named metric: "kl:0.02", "agreement:1%" (``parse_budget``)
    budget_metric: str | None = None  # the metric ``max_drop`` is on, when it names one
    max_mb: float | None = None
    precisions: tuple[str, ...] = ()  # (): the workload's default
    grouping: str | None = None  # None: the workload's default
    trials: int = 40
    timeout: float | None = None
    patience: int | None = 20  # None: never stop early
    pareto: bool | str = False  # True: the front of the objective and accuracy drop; "mb": of the objective and size
    sequential: bool = True
    holdout: float = 0.4
    seed: int = 0
    quick_samples: int = 256

    def __post_init__(self) -> None:
        from qbench.objectives import objective
        from qbench.plan import GROUPINGS, PRECISIONS

        object.__setattr__(self, "objective", objective(self.objective).name)  # server-qps:15.0 -> :15
        named, max_drop = parse_budget(self.max_drop)
        if named and self.budget_metric not in (None, named):
            raise QbenchError(
                f"`max_drop` {self.max_drop!r} is on {named}, but `budget_metric` is {self.budget_metric!r}"
            )
        object.__setattr__(self, "max_drop", max_drop)
        object.__setattr__(self, "budget_metric", named or _builtin_metric(self.budget_metric))
        _number("holdout", self.holdout, 0.0, 1.0, "the share of the data kept for the final selection", closed="")
        if self.max_mb is not None:
            _number("max_mb", self.max_mb, 0.0, 1e7, "the built model's size in MB")
        if self.timeout is not None:
            _number("timeout", self.timeout, 0.0, 30 * 24 * 3600.0, "seconds")
        precisions = tuple(self.precisions) if isinstance(self.precisions, list | tuple) else self.precisions
        if not isinstance(precisions, tuple) or any(p not in PRECISIONS for p in precisions):
            raise QbenchError(f"`precisions` must be a list of {', '.join(PRECISIONS)}, but got {self.precisions!r}")
        if precisions and set(precisions) == {"fp32"}:
            raise QbenchError("`precisions`: name at least one besides fp32, e.g. int8 or int4-weight")
        object.__setattr__(self, "precisions", tuple(dict.fromkeys(precisions)))
        if self.grouping is not None and self.grouping not in GROUPINGS:
            raise QbenchError(f"`grouping` must be one of {', '.join(GROUPINGS)}, but got {self.grouping!r}")
        _whole("trials", self.trials, MAX_TRIALS)
        _whole("patience", self.patience, MAX_TRIALS, allow_none=True)
        _whole("quick_samples", self.quick_samples, 10**7)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= 2**32 - 1:
            raise QbenchError(f"`seed` must be a whole number from 0 to 2**32 - 1, but got {self.seed!r}")
        if not isinstance(self.sequential, bool):
            raise QbenchError(f"`sequential` must be true or false, but got {self.sequential!r}")
        object.__setattr__(self, "pareto", _checked_pareto(self.pareto, self.objective))


MAX_TRIALS = 100_000


def parse_budget(value: object) -> tuple[str | None, float]:
    """An accuracy budget: a fraction (0.01), a percentage ("1%"), either as text, or one of them
    after a metric's name ("kl:0.02", "agreement:1%"). Returns (metric or None, fraction)."""
    metric, number = None, value
    if isinstance(value, str):
        metric, _, text = value.rpartition(":")
        metric = _builtin_metric(metric) if metric else None
        try:
            number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise QbenchError(
                f"`max_drop` {value!r}: give a fraction (0.01), a percentage (1%), or either after a metric (kl:0.02)"
            ) from None
    _number("max_drop", number, 0.0, 1.0, "0.01 is 1 %", closed="low")
    return metric, float(number)


def _builtin_metric(name: str | None) -> str | None:
    from qbench.metrics import ALIASES, BUILTIN_METRICS

    if name is None:
        return None
    canonical = ALIASES.get(name, name) if isinstance(name, str) else name
    if canonical not in BUILTIN_METRICS:
        raise QbenchError(f"a budget names a built-in metric ({', '.join(BUILTIN_METRICS)}), not {name!r}")
    return canonical


def _checked_pareto(pareto: object, objective_name: str) -> bool | str:
    """False, True (the front of the objective and accuracy drop; "drop" says the same and
    keeps the same spec and hash) or "mb" (the objective and size)."""
    if pareto == "drop":
        return True
    if not (isinstance(pareto, bool) or pareto == "mb"):
        raise QbenchError(f'`pareto` must be true, false, "drop" or "mb", but got {pareto!r}')
    if pareto == "mb" and objective_name == "mb":
        raise QbenchError("`pareto` mb with the mb objective is one figure twice: use true (size and drop)")
    return pareto


def _number(name: str, value: object, low: float, high: float, what: str, closed: str = "high") -> None:
    """A finite number between ``low`` and ``high``, including the ends ``closed`` names."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        above = low <= value if "low" in closed else low < value
        below = value <= high if "high" in closed else value < high
        ok = above and below
    if not ok:
        raise QbenchError(f"`{name}` must be a number between {low:g} and {high:g} ({what}), but got {value!r}")


@dataclass(frozen=True)
class RunSpec:
    subject: Subject
    target: Target = field(default_factory=Target)
    timing: Timing = field(default_factory=Timing)
    recipes: tuple[str, ...] = ()  # built-in recipe names or plan .json paths; () : the backend's default
    tune: Tune | None = None  # a tune's settings; None: a bench of ``recipes``

    def __post_init__(self) -> None:
        if isinstance(self.recipes, str):  # "int8" would read as the recipes i, n, t, 8
            raise QbenchError(f"`recipes` must be a list of recipe names or plan files, e.g. [{self.recipes!r}]")
        if not isinstance(self.recipes, list | tuple) or not all(isinstance(r, str) and r for r in self.recipes):
            raise QbenchError(f"`recipes` must be a list of recipe names or plan files, but got {self.recipes!r}")
        object.__setattr__(self, "recipes", tuple(self.recipes))
        scenario = self.scenario
        if scenario.kind == "throughput" and self.target.batch not in (1, scenario.batch):
            raise QbenchError(
                f"scenario {scenario} times batches of {scenario.batch}, but batch is {self.target.batch}: "
                "give one of them"
            )
        if scenario.kind == "throughput":
            object.__setattr__(self, "target", replace(self.target, batch=scenario.batch))
        budget_on = self.tune.budget_metric if self.tune is not None else None
        if budget_on is not None:
            metric = self.subject.metric
            if metric is not None and _canonical(metric) != budget_on:
                raise QbenchError(
                    f"the budget is on {budget_on} but the metric is {metric}: name one (--max-drop {budget_on}:… "
                    "sets the metric too)"
                )
            object.__setattr__(self, "subject", replace(self.subject, metric=budget_on))
        if self.tune is not None and scenario.kind == "server":
            raise QbenchError(
                "a tune optimizes latency or throughput; time a served load with `bench --scenario server:…`"
            )

    @property
    def scenario(self) -> Scenario:
        return Scenario.parse(self.timing.scenario)

    def normalized(self, *, threads: int, default_recipes: tuple[str, ...]) -> RunSpec:
        """Every default filled in (zoo workload and metric, threads, recipes) and every path
        absolute: the form that is stored, hashed and sent to workers."""
        from qbench.zoo import lookup

        s = self.subject
        entry = lookup(s.model)
        zoo_data = entry is not None and s.data is None
        subject = replace(
            s,
            model=s.model if entry else _absolute(s.model),
            data=_absolute(s.data),
            calib_data=_absolute(s.calib_data),
            metric=_absolute_metric(s.metric or (entry.metric if zoo_data else None)),
            workload=str(Workload.parse(s.workload or (entry.workload if zoo_data else "batch"))),
        )
        recipes = tuple(_absolute(r) if r.endswith(".json") else r for r in (self.recipes or default_recipes))
        return replace(
            self, subject=subject, target=replace(self.target, threads=self.target.threads or threads), recipes=recipes
        )

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready data; parts at their defaults that older specs lack (a bench's
        tune, the latency scenario) are left out, so those specs keep their ``config_hash``."""
        data = {"qbench_run": RUN_SPEC_VERSION, **asdict(self)}
        if data["tune"] is None:
            del data["tune"]
        elif data["tune"]["budget_metric"] is None:  # as tunes stored before budgets named a metric
            del data["tune"]["budget_metric"]
        if data["timing"]["scenario"] == "latency":
            del data["timing"]["scenario"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "run spec") -> RunSpec:
        if not isinstance(data, Mapping) or data.get("qbench_run") != RUN_SPEC_VERSION:
            raise QbenchError(f'{source} is not a qbench run spec: expected "qbench_run": {RUN_SPEC_VERSION}')
        parts = {}
        unknown = set(data) - {"qbench_run", "subject", "target", "timing", "recipes", "tune"}
        if unknown:
            raise QbenchError(f"{source}: unknown key {sorted(unknown)[0]!r}")
        for name, kind in (("subject", Subject), ("target", Target), ("timing", Timing), ("tune", Tune)):
            given = data.get(name, {} if name != "tune" else None)
            if given is None and name == "tune":  # a bench
                continue
            known = {f.name for f in fields(kind)}
            if not isinstance(given, Mapping) or set(given) - known:
                raise QbenchError(f"{source}: {name} must be an object with keys among {sorted(known)}")
            needed = {f.name for f in fields(kind) if f.default is MISSING and f.default_factory is MISSING}
            if needed - set(given):
                raise QbenchError(f"{source}: {name} needs the key {sorted(needed - set(given))[0]!r}")
            parts[name] = kind(**given)
        recipes = data.get("recipes", ())
        if not isinstance(recipes, list | tuple):
            raise QbenchError(f"{source}: recipes must be a list of recipe names or plan files")
        return cls(recipes=tuple(recipes), **parts)

    @classmethod
    def from_json(cls, text: str, source: str = "run spec") -> RunSpec:
        try:
            return cls.from_dict(json.loads(text), source)
        except json.JSONDecodeError as exc:
            raise QbenchError(f"{source} is not valid JSON: {exc}") from None

    def config_hash(self) -> str:
        """The spec and the contents of every file it names: an equal hash (same code, same
        machine) means an equal measurement, wherever the files lie."""
        s = self.subject
        named = (s.model, s.data, s.calib_data, *self.recipes, metric_file(s.metric))
        files = {spec: file_hash(spec) for spec in named if spec}
        payload = {**self.to_dict(), "files": {k: v for k, v in files.items() if v}}
        for part in ("model", "data", "calib_data"):  # by content, so a moved file keeps its hash
            if payload["files"].get(payload["subject"][part]):
                payload["subject"][part] = payload["files"][payload["subject"][part]]
        payload["files"] = sorted(payload["files"].values())
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()[:16]

    @property
    def workload(self) -> Workload:
        return Workload.parse(self.subject.workload or "batch")


def _canonical(metric: str) -> str:
    from qbench.metrics import ALIASES

    return ALIASES.get(metric, metric)


def _absolute(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(path)


def metric_file(metric: str | None) -> str | None:
    """The Python file of a ``path/to/file.py:function`` metric, else None."""
    module = (metric or "").partition(":")[0]
    return module if module.endswith(".py") else None


def _absolute_metric(metric: str | None) -> str | None:
    if metric_file(metric) is None:
        return metric
    module, _, function = metric.partition(":")
    return f"{os.path.abspath(module)}:{function}"


def file_hash(spec: str) -> str | None:
    """The first 16 hex digits of the file's SHA-256, or None when ``spec`` is no file (a zoo
    name or a built-in recipe, whose identity is its name); a model folder hashes its model file."""
    from qbench.model import model_file
    from qbench.text import TEXT_SUFFIXES

    folder = pathlib.Path(spec)
    text_folder = folder.is_dir() and not any(folder.glob("*.onnx"))
    if text_folder:  # text data: every file in it, by name
        files = sorted(p for p in folder.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
    else:
        files = [model_file(spec)]
    if not files or not files[0].is_file():
        return None
    digest = hashlib.sha256()
    for path in files:
        if text_folder:
            digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


@dataclass
class LoadedSubject:
    """A spec's subject made real: the model, calibration and evaluation data, and the metric."""

    model: Any  # qbench.model.OnnxModel
    calibration: Any  # qbench.data.Dataset
    evaluation: Any
    metric: Any  # qbench.metrics.Metric
    synthetic: bool  # no data was given: timed on synthetic inputs, scored by fidelity to fp32


def load_model(model: str, shapes: tuple[tuple[str, tuple[int, ...]], ...] = (), backend: str | None = None):
    """An ``.onnx`` file, or a zoo model by name (named after it; the graph made for ``backend``
    where the zoo has one), with ``shapes`` fixed."""
    from qbench.model import OnnxModel
    from qbench.zoo import lookup

    entry = lookup(model)
    loaded = OnnxModel.load(entry.files().model_for(backend) if entry else model)
    if entry:
        loaded.name = entry.name
    return loaded.with_shapes(dict(shapes)) if shapes else loaded


def load_subject(
    subject: Subject, command: str = "bench", metric: Any = None, backend: str | None = None
) -> LoadedSubject:
    """Load what ``subject`` names, for ``backend``. Only ``bench`` may run without data (synthetic
    inputs, as benchmark_app and trtexec allow); ``metric``, when given, is a ready ``Metric`` object."""
    import logging

    from qbench.data import load_data, split_for_calibration, synthetic_dataset
    from qbench.decoder import DecoderInputs
    from qbench.metrics import get_metric
    from qbench.zoo import lookup

    entry = lookup(subject.model)
    model = load_model(subject.model, subject.shapes, backend)
    data, calib_data = subject.data, subject.calib_data
    if entry is not None and data is None:  # a zoo model brings its data
        files = entry.files()
        data, calib_data = str(files.evaluation), calib_data or str(files.calibration)
    if data is None and command != "bench":
        raise QbenchError(
            f"--data is required for {command} on your own model: an .npz with one array per model input "
            "(see the docs); `qbench bench` alone can time a model on synthetic inputs"
        )
    if data is None:
        if subject.metric not in (None, "cosine") or metric is not None:
            raise QbenchError(
                f"metric {subject.metric or metric.name} needs data: without it, bench scores fidelity (cosine) to fp32"
            )
        calibration = load_data(calib_data, model) if calib_data else synthetic_dataset(model, seed=1)
        return LoadedSubject(model, calibration, synthetic_dataset(model), get_metric("cosine", False), True)
    evaluation = load_data(data, model)
    if calib_data:
        calibration = load_data(calib_data, model)
    else:
        calibration, evaluation = split_for_calibration(evaluation)
        logging.getLogger("qbench").info(
            "calibrating on the first %d samples of %s and evaluating on the other %d",
            len(calibration),
            data,
            len(evaluation),
        )
    return LoadedSubject(
        model,
        calibration,
        evaluation,
        metric or get_metric(subject.metric, evaluation.labels is not None, DecoderInputs.of(model) is not None),
        False,
    )


def timing_protocol(timing: Timing):
    """The ``qbench.measure`` protocol ``timing`` names, with its sampling time raised if asked."""
    from qbench.measure import QUICK_PROTOCOL, TimingProtocol

    protocol = QUICK_PROTOCOL if timing.protocol == "quick" else TimingProtocol()
    if timing.min_seconds is None:
        return protocol
    return replace(
        protocol, min_seconds=timing.min_seconds, max_seconds=max(protocol.max_seconds, timing.min_seconds * 4)
    )
