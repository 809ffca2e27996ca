"""The Python API: ``qbench.bench`` and ``qbench.tune`` for notebooks and training scripts.

    import qbench
    result = qbench.tune("model.onnx", data={"image": x, "labels": y}, metric="top1", max_drop=0.01)
    result.winner.plan_name, result.winner_speedup.ratio

Both take a model path, a zoo name or an ``onnx.ModelProto``; data as a dict of arrays, an
``.npz`` path, or any iterable of per-sample input dicts (mapped by ``transform`` first, as
``nncf.Dataset(source, transform_fn)`` does); a metric as a name or a callable
``fn(outputs, labels, reference) -> float``. In-memory models and data are written once, by
content, under ``results_dir/inputs``, so the stored ``RunSpec`` of every row names files that
reproduce it. They build the same ``RunSpec`` as the command line and a suite job, and record in
the same leaderboard.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from qbench.errors import QbenchError
from qbench.runspec import RunSpec, Subject, Target, Timing, Tune, load_subject

if TYPE_CHECKING:
    import pandas as pd

    from qbench.recheck import Recheck
    from qbench.search import TuneResult
    from qbench.store import Leaderboard, ResultRow

log = logging.getLogger("qbench")
Progress = Callable[[str], None]


def default_recipes(backend) -> tuple[str, ...]:
    """fp32, int8 and, where the backend has one, the runtime's own one-line int8: the floor."""
    return ("fp32", "int8", "native-int8") if _has_native(backend) else ("fp32", "int8")


def _has_native(backend) -> bool:
    return "native" in backend.option_choices().get("quantizer", ())


def normalized(spec: RunSpec) -> RunSpec:
    """``spec`` with every default filled in for this machine and backend (what is stored)."""
    from qbench.backends import get_backend
    from qbench.machine import current_machine

    backend = get_backend(spec.target.backend)
    spec = spec.normalized(threads=current_machine().default_threads(), default_recipes=default_recipes(backend))
    if "native-int8" in spec.recipes and not _has_native(backend):
        log.warning("%s has no native one-line int8 quantizer; skipping recipe native-int8", backend.name)
        spec = RunSpec(spec.subject, spec.target, spec.timing, tuple(r for r in spec.recipes if r != "native-int8"))
    if not spec.recipes:
        raise QbenchError("no recipe to run; pass e.g. recipes fp32,int8")
    return spec


@dataclass
class BenchRun:
    """What one bench run measured: its spec and one leaderboard row per plan (fp32 first)."""

    spec: RunSpec
    rows: list[ResultRow]
    model_name: str
    metric: str
    samples: int
    synthetic: bool  # timed on synthetic inputs: accuracy is fidelity to fp32 on them
    #: A decoder's key/value cache growth per token at batch 1 (None for other models).
    kv_bytes_per_token: int | None = None
    #: Plans that carry where they were tuned, re-checked on this machine (``qbench.recheck``).
    rechecks: list[Recheck] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame([row.__dict__ for row in self.rows])

    @property
    def failed(self) -> bool:
        """Nothing to compare against (fp32 failed), or no other plan measured."""
        bad = [not r.ok for r in self.rows]
        return bad[0] or (len(bad) > 1 and all(bad[1:]))


def execute_bench(
    spec: RunSpec,
    *,
    board: Leaderboard,
    results_dir: pathlib.Path,
    progress: Progress = lambda _msg: None,
    job: str | None = None,
    job_hash: str | None = None,
    metric: Any = None,
) -> BenchRun:
    """Run a normalized ``spec``; ``job`` names the suite job it belongs to (the nightly worker),
    which also times the reference workload and the previous night's plans beside it."""
    from qbench.backends import get_backend
    from qbench.benchmark import BenchSettings, run_bench
    from qbench.decoder import DecoderInputs
    from qbench.machine import current_machine
    from qbench.plan import recipe_plan
    from qbench.recheck import NATIVE, recheck

    backend = get_backend(spec.target.backend)
    loaded = load_subject(spec.subject, "bench", metric, spec.target.backend)
    layers = [(layer.name, layer.op_type, layer.constant_weight) for layer in loaded.model.layers]
    plans = [recipe_plan(r, layers) for r in spec.recipes]
    tuned = [plan for plan in plans if plan.tuned is not None]
    if tuned and NATIVE not in {p.name for p in plans} and _has_native(backend):
        progress(f"{tuned[0].name} was tuned elsewhere or earlier: adding {NATIVE} to re-check it against")
        plans.append(recipe_plan(NATIVE, layers))
    machine = current_machine()
    settings = BenchSettings.from_spec(spec, job=job, job_hash=job_hash)
    drift = _drift_workload(machine, results_dir / "cache") if job is not None else None
    try:
        rows = run_bench(
            loaded,
            plans,
            backend=backend,
            machine=machine,
            settings=settings,
            board=board,
            workdir=results_dir / "cache",
            progress=progress,
            drift=drift,
        )
    finally:
        if drift is not None:
            drift.close()
    decoder = DecoderInputs.of(loaded.model)
    kv = decoder.kv_bytes_per_token() if decoder else None
    checks = recheck(plans, rows, machine)
    return BenchRun(
        spec, rows, loaded.model.name, loaded.metric.name, len(loaded.evaluation), loaded.synthetic, kv, checks
    )


def _drift_workload(machine, workdir: pathlib.Path):
    """The nightly drift workload (ONNX Runtime, the demo in fp32), or None, with a warning,
    where it cannot run: the job is then compared by its raw medians."""
    from qbench.backends import get_backend
    from qbench.drift import DriftWorkload
    from qbench.errors import describe

    try:
        return DriftWorkload(get_backend("onnxruntime"), machine, workdir)
    except Exception as exc:
        log.warning("no drift workload (%s); this job's latency will not be normalized", describe(exc))
        return None


# -- the Python API --------------------------------------------------------------------------


def bench(
    model: Any = None,
    data: Any = None,
    *,
    calib_data: Any = None,
    transform: Callable[[Any], Mapping[str, np.ndarray]] | None = None,
    metric: str | Callable | None = None,
    backend: str = "onnxruntime",
    recipes: Sequence[str] = (),
    threads: int | None = None,
    batch: int = 1,
    workload: str | None = None,
    scenario: str = "latency",
    quick: bool = False,
    min_seconds: float | None = None,
    profile: bool = False,
    results_dir: str | pathlib.Path = "results",
    db: str | None = None,
    progress: Progress | None = None,
) -> BenchRun:
    """Measure ``recipes`` (default: fp32, int8 and the runtime's own int8) of ``model`` (default:
    the built-in demo) and record them; returns the rows. See the module docstring for inputs."""
    results = _checked_call(results_dir, db, quick, transform=transform, progress=progress)
    subject, metric_fn = _subject(model, data, calib_data, transform, metric, workload, results)
    spec = normalized(
        RunSpec(
            subject,
            Target(backend, threads, batch),
            Timing("quick" if quick else "standard", min_seconds, profile, scenario),
            recipes,
        )
    )
    with _board(results, db) as board:
        return execute_bench(spec, board=board, results_dir=results, progress=progress or log.info, metric=metric_fn)


def tune(
    model: Any = None,
    data: Any = None,
    *,
    calib_data: Any = None,
    transform: Callable[[Any], Mapping[str, np.ndarray]] | None = None,
    metric: str | Callable | None = None,
    max_drop: float | str = 0.01,
    objective: str = "p50",
    backend: str = "onnxruntime",
    threads: int | None = None,
    batch: int = 1,
    workload: str | None = None,
    trials: int = 40,
    timeout: float | None = None,
    patience: int | None = 20,
    precisions: Sequence[str] | None = None,
    max_mb: float | None = None,
    pareto: bool | str = False,
    holdout: float = 0.4,
    seed: int = 0,
    quick: bool = False,
    results_dir: str | pathlib.Path = "results",
    db: str | None = None,
    progress: Progress | None = None,
) -> TuneResult:
    """Search per-layer precisions of ``model`` for the best ``objective`` (p50, p90, p99 latency,
    throughput at ``batch``, or mb: the built model's size) within ``max_drop`` of fp32's metric
    (a fraction: 0.01 is 1 %);
    returns the typed result, ``winner`` a leaderboard row (None: keep fp32). ``pareto``: True for
    the front of the objective and accuracy drop, "mb" for the objective and size (``front``).
    ``quick`` shortens the final selection's timing (smoke tests)."""
    results = _checked_call(results_dir, db, quick, transform=transform, progress=progress)
    settings = Tune(
        objective=objective,
        max_drop=max_drop,
        max_mb=max_mb,
        precisions=precisions or (),
        trials=trials,
        timeout=timeout,
        patience=patience,
        pareto=pareto,
        holdout=holdout,
        seed=seed,
    )
    subject, metric_fn = _subject(model, data, calib_data, transform, metric, workload, results)
    timing = Timing("quick" if quick else "standard")
    spec = normalized(RunSpec(subject, Target(backend, threads, batch), timing, ("fp32",), settings))
    with _board(results, db) as board:
        return run_tune(spec, board=board, results_dir=results, progress=progress or log.info, metric=metric_fn)


def _checked_call(results_dir: Any, db: Any, quick: Any, **functions: Any) -> pathlib.Path:
    """The API's own arguments (the run's are checked by ``RunSpec``): the results folder as a
    path, and the rest of the right type, before anything is built or measured."""
    if not isinstance(results_dir, str | os.PathLike) or not os.fspath(results_dir):
        raise QbenchError(f"`results_dir` must be a folder path, but got {results_dir!r}")
    if db is not None and (not isinstance(db, str) or not db):
        raise QbenchError("`db` must be a database URL such as postgresql://host/qbench, or None")
    if not isinstance(quick, bool):
        raise QbenchError(f"`quick` must be True or False, but got {quick!r}")
    for name, function in functions.items():
        if function is not None and not callable(function):
            raise QbenchError(f"`{name}` must be a function or None, but got {type(function).__name__}")
    return pathlib.Path(results_dir)


def run_tune(
    spec: RunSpec,
    *,
    board: Leaderboard,
    results_dir: pathlib.Path,
    storage: str | None = None,
    study_name: str | None = None,
    progress: Progress = lambda _msg: None,
    on_trial: Callable | None = None,
    metric: Any = None,
) -> TuneResult:
    """Tune a normalized ``spec`` with its ``tune`` part (objective, budgets, space, trials; quick
    timing shortens the final selection): what ``qbench tune`` and ``qbench.tune`` run."""
    from qbench.backends import get_backend
    from qbench.machine import current_machine
    from qbench.measure import QUICK_PROTOCOL
    from qbench.search import FINAL_PROTOCOL, StudySettings, TuneInputs, TuneSettings, split_holdout
    from qbench.search import tune as search

    if spec.tune is None:
        raise QbenchError("run_tune needs a run spec with a tune part (RunSpec(..., tune=Tune(...)))")
    loaded = load_subject(spec.subject, "tune", metric, spec.target.backend)
    tuning, held_out = split_holdout(loaded.evaluation, spec.tune.holdout)
    inputs = TuneInputs(
        loaded.model,
        loaded.calibration,
        tuning,
        held_out,
        loaded.metric,
        get_backend(spec.target.backend),
        current_machine(),
    )
    results_dir.mkdir(parents=True, exist_ok=True)
    settings = TuneSettings(
        study=StudySettings.from_tune(spec.tune),
        threads=spec.target.threads,
        storage_url=storage or f"sqlite:///{(results_dir / 'tuning.db').resolve()}",
        results_dir=results_dir,
        study_name=study_name,
        workload=spec.workload,
        precisions=spec.tune.precisions or None,
        grouping=spec.tune.grouping,
        quick_samples=spec.tune.quick_samples,
        final_protocol=QUICK_PROTOCOL if spec.timing.protocol == "quick" else FINAL_PROTOCOL,
        profile=spec.timing.profile,
        run_spec=spec,
        batch_size=spec.target.batch,
    )
    return search(inputs, settings, board, progress, on_trial)


class _board:
    """The leaderboard of ``results_dir`` (or ``db``), checked writable, closed on exit."""

    def __init__(self, results_dir: pathlib.Path, db: str | None) -> None:
        from qbench.store import open_leaderboard

        results_dir.mkdir(parents=True, exist_ok=True)
        self.board = open_leaderboard(results_dir, db)

    def __enter__(self) -> Leaderboard:
        return self.board

    def __exit__(self, *_exc) -> None:
        self.board.close()


def _subject(model, data, calib_data, transform, metric, workload, results_dir: pathlib.Path):
    """The ``Subject`` for in-memory or on-disk inputs, and a metric object for a callable."""
    from qbench.metrics import Metric

    metric_fn = None
    if callable(metric):
        name = getattr(metric, "__qualname__", type(metric).__name__)
        module = getattr(metric, "__module__", None)
        metric_fn = Metric(f"{module}:{name}" if module else name, metric, needs_labels=False, needs_reference=False)
        metric = metric_fn.name
    inputs = results_dir / "inputs"
    model_path = _model_path(model, inputs)
    return (
        Subject(
            model=model_path,
            data=_data_path(data, transform, inputs, "data", model_path),
            calib_data=_data_path(calib_data, transform, inputs, "calib", model_path),
            metric=metric,
            workload=workload,
        ),
        metric_fn,
    )


def _model_path(model: Any, inputs: pathlib.Path) -> str:
    from qbench.zoo import DEMO

    if model is None:
        return DEMO.name
    if isinstance(model, str | pathlib.Path):
        return str(model)
    if hasattr(model, "SerializeToString"):  # an onnx.ModelProto
        from qbench.model import is_large

        if is_large(model):
            raise QbenchError(
                "model is an onnx.ModelProto over 2 GiB, more than one protobuf message holds; save it with "
                "onnx.save(model, path, save_as_external_data=True) and pass the path"
            )
        blob = model.SerializeToString()
        return str(_by_content(inputs, "model", ".onnx", blob))
    raise QbenchError(f"model must be a path, a zoo name or an onnx.ModelProto, not {type(model).__name__}")


def _data_path(data: Any, transform, inputs: pathlib.Path, what: str, model: str) -> str | None:
    if data is None or isinstance(data, str | pathlib.Path):
        if transform is not None and data is not None:
            raise QbenchError(f"transform applies to in-memory {what}, not to the file {data}")
        return None if data is None else str(data)
    if isinstance(data, Mapping) and transform is None:
        arrays = {str(k): np.asarray(v) for k, v in data.items()}
    elif isinstance(data, Iterable):
        arrays = _stacked(data, transform, what, _input_ranks(model))
    else:
        raise QbenchError(f"{what} must be a dict of arrays, an .npz path or an iterable of input dicts")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return str(_by_content(inputs, what, ".npz", buffer.getvalue()))


def _input_ranks(model: str) -> dict[str, int]:
    """Each model input's rank, read from the graph alone (no weights)."""
    import onnx

    from qbench.zoo import lookup

    entry = lookup(model)
    graph = onnx.load(str(entry.files().model if entry else model), load_external_data=False).graph
    return {i.name: len(i.type.tensor_type.shape.dim) for i in graph.input}


def _stacked(items: Iterable, transform, what: str, ranks: Mapping[str, int]) -> dict[str, np.ndarray]:
    """One array per key from per-sample dicts (``transform`` maps each item to one first).
    An item is a model feed with a batch axis (an input's rank, as ``nncf.Dataset`` items are),
    concatenated, or one sample without it, stacked; ``labels`` follow the inputs."""
    columns: dict[str, list[np.ndarray]] = {}
    for number, item in enumerate(items):
        sample = transform(item) if transform is not None else item
        if not isinstance(sample, Mapping):
            raise QbenchError(f"{what} item {number} is a {type(sample).__name__}; each must be a dict of arrays")
        if columns and set(sample) != set(columns):
            raise QbenchError(f"{what} item {number} has keys {sorted(sample)}, not {sorted(columns)} as before")
        for key, value in sample.items():
            columns.setdefault(str(key), []).append(np.asarray(value))
    if not columns:
        raise QbenchError(f"{what} is empty: give at least one sample")
    feeds = any(key in ranks and values[0].ndim == ranks[key] for key, values in columns.items())
    join = np.concatenate if feeds else np.stack
    try:
        return {key: join([np.atleast_1d(v) for v in values] if feeds else values) for key, values in columns.items()}
    except ValueError as exc:
        raise QbenchError(f"{what}: samples differ in shape ({exc}); pad them or fix the shapes") from None


def _by_content(folder: pathlib.Path, stem: str, suffix: str, blob: bytes) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{hashlib.sha256(blob).hexdigest()[:16]}{suffix}"
    if not path.is_file():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        tmp.replace(path)
    return path
