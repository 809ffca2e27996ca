"""Benchmark suites: a TOML file naming models, data, metrics, backends, recipes, threads and
the protocol, expanded into one job per (entry, backend).

    [suite]                 # optional: name (default: the file's stem), timeout_s,
                            # regression_threshold, accuracy_tolerance
    [defaults]              # any job key, applied to every [[job]]
    backends = ["onnxruntime", "openvino", "tensorrt"]
    recipes = ["fp32", "int8"]

    [[job]]
    model = "digits-cnn"    # a zoo name or an .onnx path (relative to the suite file)

Job keys: model, name, data, calib_data, metric, backends, recipes, threads, batch, workload, scenario
(latency, throughput[:BATCH], server:QPS[:BOUND_MS]: ``qbench.scenario``), protocol ("standard" or
"quick"), min_seconds, shape (input name -> dims), timeout_s. Each job's run spec is built as the
suite loads, so a suite refuses exactly what ``qbench bench`` and ``qbench.bench`` refuse. Paths are relative
to the suite file. Suite and job names are slugs (letters, digits, ``.``, ``_``, ``-``): they
name files under the results directory, so they can never point outside it.
"""

from __future__ import annotations

import pathlib
import re
import tomllib
from dataclasses import dataclass, field, replace
from typing import Any

from qbench.cache import short_stem
from qbench.errors import QbenchError
from qbench.runspec import RunSpec, Subject, Target, Timing, metric_file

SUITE_KEYS = {"name": str, "timeout_s": (int, float), "regression_threshold": float, "accuracy_tolerance": float}
JOB_KEYS: dict[str, type | tuple[type, ...]] = {
    "model": str,
    "name": str,
    "data": str,
    "calib_data": str,
    "metric": str,
    "backends": list,
    "recipes": list,
    "threads": int,
    "batch": int,
    "workload": str,
    "scenario": str,
    "protocol": str,
    "min_seconds": (int, float),
    "shape": dict,
    "timeout_s": (int, float),
}
PATH_KEYS = ("data", "calib_data")
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_SECONDS = 24 * 3600.0  # no timeout or sampling time sensibly exceeds a day (inf would never end)


def checked_slug(name: str, what: str) -> str:
    """``name`` if it is a safe file-name component, else a one-line error saying what to use."""
    if not SLUG.fullmatch(name) or ".." in name:
        raise QbenchError(
            f"{what} {name[:80]!r} is not a valid name: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (it names files under the results directory)"
        )
    return name


def _default_name(model: str) -> str:
    """A job's name when the suite gives none: its model file's name, shortened to fit a slug."""
    return short_stem(pathlib.Path(model).stem, limit=64)


@dataclass(frozen=True)
class SuiteJob:
    """One worker run: a name, a time limit, and the ``RunSpec`` its worker runs, the same run
    ``qbench bench`` or ``qbench.bench`` builds from the same settings (threads may be left to
    the machine: ``run_spec`` fills them in where the job runs)."""

    suite: str
    name: str
    spec: RunSpec
    timeout_s: float | None = None  # this job's worker limit (default: the suite's timeout_s)

    @property
    def backend(self) -> str:
        return self.spec.target.backend

    @property
    def job_id(self) -> str:
        """How the leaderboard names this job across nights: ``suite:name/backend``."""
        return f"{self.suite}:{self.name}/{self.backend}"

    def run_spec(self, threads: int) -> RunSpec:
        """The spec as it runs on a machine whose default is ``threads`` (when the job names none)."""
        target = replace(self.spec.target, threads=self.spec.target.threads or threads)
        return replace(self.spec, target=target).normalized(threads=threads, default_recipes=self.spec.recipes)

    def config_hash(self, threads: int) -> str:
        """Everything that defines the measurement, files included by content: a rerun with an
        identical hash (same code, same machine) measures nothing new."""
        return self.run_spec(threads).config_hash()


@dataclass(frozen=True)
class Suite:
    name: str
    path: pathlib.Path
    jobs: tuple[SuiteJob, ...]
    timeout_s: float = 1800.0
    regression_threshold: float = 0.10
    accuracy_tolerance: float = 0.005
    overrides: dict[str, Any] = field(default_factory=dict)


def parse_override(text: str) -> tuple[str, Any]:
    """``--set threads=1``: a job key and a TOML value (bare words are strings)."""
    key, sep, raw = text.partition("=")
    if not sep or key.strip() not in JOB_KEYS:
        raise QbenchError(f"--set wants KEY=VALUE with KEY one of {', '.join(JOB_KEYS)}, but got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def load_suite(path: str | pathlib.Path, overrides: dict[str, Any] | None = None) -> Suite:
    path = pathlib.Path(path)
    if not path.is_file():
        raise QbenchError(f"suite file not found: {path} (pass a .toml file such as suites/nightly.toml)")
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise QbenchError(f"{path} is not valid TOML: {exc}") from exc
    unknown = set(document) - {"suite", "defaults", "job"}
    if unknown:
        raise QbenchError(f"{path}: unknown table(s) {sorted(unknown)}; a suite has [suite], [defaults] and [[job]]")
    header = _checked(document.get("suite", {}), SUITE_KEYS, f"{path} [suite]")
    defaults = _checked(document.get("defaults", {}), JOB_KEYS, f"{path} [defaults]")
    entries = document.get("job", [])
    if not isinstance(entries, list) or not entries:
        raise QbenchError(f"{path} lists no jobs: add at least one [[job]] with a model")
    name = checked_slug(header.get("name", path.stem), f"{path} [suite] name")
    timeout_s = float(header.get("timeout_s", 1800.0))
    if not 0 < timeout_s <= MAX_SECONDS:
        raise QbenchError(f"{path} [suite]: timeout_s = {timeout_s:g}; use a number of seconds up to a day")
    jobs = []
    for number, entry in enumerate(entries, start=1):
        where = f"{path} job {number}"
        settings = {**defaults, **_checked(entry, JOB_KEYS, where), **(overrides or {})}
        _checked(settings, JOB_KEYS, f"{where} (with --set)")
        jobs += _expand(name, settings, path.parent, where)
    ids = [job.job_id for job in jobs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise QbenchError(f"{path}: job names repeat ({', '.join(duplicates)}); give each [[job]] a distinct name")
    return Suite(
        name=name,
        path=path,
        jobs=tuple(jobs),
        timeout_s=timeout_s,
        regression_threshold=_fraction(header, "regression_threshold", 0.10, f"{path} [suite]"),
        accuracy_tolerance=_fraction(header, "accuracy_tolerance", 0.005, f"{path} [suite]"),
        overrides=dict(overrides or {}),
    )


def _fraction(header: dict[str, Any], key: str, default: float, where: str) -> float:
    """A threshold between 0 and 1 (0.1 is 10 %); NaN, negatives and 1 or more are refused."""
    value = float(header.get(key, default))
    if not 0 <= value < 1:  # NaN fails this too
        raise QbenchError(f"{where}: {key} = {value!r}; use a fraction from 0 to below 1, e.g. 0.1 for 10 %")
    return value


def missing_inputs(suite: Suite, most: int = 10) -> str | None:
    """Every job whose model, data, recipe plan or metric file is missing, in one message (the
    first ``most`` named), or None: checked before the first worker starts, so a suite of
    thousands of jobs does not fail them one by one minutes apart."""
    from qbench.zoo import lookup

    bad: list[str] = []
    for job in suite.jobs:
        s = job.spec.subject
        entry = lookup(s.model)
        problems = [f"zoo model {s.model} {entry.missing()}"] if entry is not None and entry.missing() else []
        files = [("model", None if entry else s.model), ("data", s.data), ("calib_data", s.calib_data)]
        files += [("recipe", r) for r in job.spec.recipes if r.endswith(".json")]
        files += [("metric", metric_file(s.metric))]
        problems += [f"{what} {path} not found" for what, path in files if path and not pathlib.Path(path).is_file()]
        if problems:
            bad.append(f"{job.job_id} ({'; '.join(problems)})")
    if not bad:
        return None
    more = f"; and {len(bad) - most} more" if len(bad) > most else ""
    return f"{suite.path}: {len(bad)} of {len(suite.jobs)} jobs cannot start: {', '.join(bad[:most])}{more}"


def _checked(table: Any, keys: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise QbenchError(f"{where} must be a table of keys, not {type(table).__name__}")
    for key, value in table.items():
        if key not in keys:
            raise QbenchError(f"{where}: unknown key {key!r}; known keys: {', '.join(keys)}")
        if not isinstance(value, keys[key]) or isinstance(value, bool):
            raise QbenchError(f"{where}: {key} = {value!r} has the wrong type")
    return dict(table)


def _expand(suite: str, settings: dict[str, Any], base: pathlib.Path, where: str) -> list[SuiteJob]:
    from qbench.zoo import lookup

    if "model" not in settings:
        raise QbenchError(f"{where} has no model: set model = a zoo name or an .onnx path")
    model = settings["model"]
    entry = lookup(model)
    if entry is None:
        model = str(base / model)
    if "timeout_s" in settings and not 0 < settings["timeout_s"] <= MAX_SECONDS:  # the rest: the run spec's checks
        raise QbenchError(
            f"{where}: timeout_s = {settings['timeout_s']:g}; use a positive number of seconds up to a day"
        )
    recipes = settings.get("recipes", ["fp32", "int8"])
    if not recipes or not all(isinstance(r, str) and r for r in recipes):
        raise QbenchError(
            f'{where}: recipes must be a non-empty list of recipe names or plan files, e.g. ["fp32", "int8"]'
        )
    recipes = tuple(_relative(r, base) if r.endswith(".json") else r for r in recipes)
    backends = settings.get("backends", ["onnxruntime"])
    if not backends or not all(isinstance(b, str) for b in backends):
        raise QbenchError(f"{where}: backends must be a non-empty list of backend names")
    name = checked_slug(settings.get("name", _default_name(settings["model"])), f"{where}: job name")
    paths = {key: _relative(settings[key], base) for key in PATH_KEYS if key in settings}
    try:  # the run spec's own checks: a suite refuses what `qbench bench` and `qbench.bench` refuse
        subject = Subject(
            model,
            paths.get("data"),
            paths.get("calib_data"),
            _metric_relative(settings.get("metric"), base),
            settings.get("workload", entry.workload if entry else "batch"),
            settings.get("shape", {}),
        )
        timing = Timing(
            settings.get("protocol", "standard"),
            settings.get("min_seconds"),
            False,
            settings.get("scenario", "latency"),
        )
        specs = [
            RunSpec(subject, Target(backend, settings.get("threads"), settings.get("batch", 1)), timing, recipes)
            for backend in backends
        ]
    except QbenchError as exc:
        raise QbenchError(f"{where}: {exc}") from None
    return [SuiteJob(suite, name, spec, settings.get("timeout_s")) for spec in specs]


def _metric_relative(metric: str | None, base: pathlib.Path) -> str | None:
    """A ``file.py:function`` metric is a path relative to the suite file; a ``module:function``
    one is imported from the installed packages and $PYTHONPATH, never the current directory."""
    if metric_file(metric) is None:
        return metric
    module, _, function = metric.partition(":")
    return f"{_relative(module, base)}:{function}"


def _relative(spec: str, base: pathlib.Path) -> str:
    return str(base / spec)
