"""Property tests of every parser of user input (issue 38): run specs, plans, suites, worker
jobs, scenarios, workloads and ``--set`` overrides. Whatever a parser is given, it returns a
valid object or raises a ``QbenchError`` of one line; any other exception is a defect.

Inputs are valid documents with a field replaced, removed or added (most defects hide one field
away from a valid file), and raw text. ``-s`` prints how many inputs each parser was given."""

from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qbench.errors import QbenchError
from qbench.nightly.job import WorkerJob
from qbench.nightly.suite import load_suite, parse_override
from qbench.plan import PrecisionPlan
from qbench.runspec import RunSpec
from qbench.scenario import Scenario
from qbench.workload import Workload, parse_workloads

EXAMPLES = int(os.environ.get("QBENCH_FUZZ_EXAMPLES", "500"))  # 3,000 each found nothing more
COUNTS: Counter[str] = Counter()
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Values of every JSON/TOML type, extremes included: what a careless or hostile file holds.
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 10**6, 4096, 4097]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", "int8", "fp32", "latency", "p99", "decode:16", "../x.onnx", "a\x00b", "\u202e", "nan"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)

VALID_SPEC = RunSpec.from_json(
    json.dumps(
        {
            "qbench_run": 1,
            "subject": {"model": "/m.onnx", "data": "/d.npz", "workload": "batch", "shapes": [["x", [1, 16]]]},
            "target": {"backend": "onnxruntime", "threads": 2, "batch": 1},
            "timing": {"protocol": "quick", "scenario": "throughput:8"},
            "recipes": ["fp32", "int8"],
            "tune": {"objective": "p99", "max_drop": 0.01, "trials": 10, "precisions": ["int8"]},
        }
    )
).to_dict()
VALID_PLAN = {"qbench_plan": 1, "name": "p", "layers": {"mm1": "int8", "mm2": "fp32"}, "options": {"per_channel": True}}
VALID_SUITE = {
    "suite": {"name": "s", "timeout_s": 600, "regression_threshold": 0.1, "accuracy_tolerance": 0.005},
    "defaults": {"recipes": ["fp32", "int8"], "protocol": "quick", "threads": 2},
    "job": [{"model": "digits-cnn", "name": "d", "scenario": "latency", "shape": {"x": [1, 16]}, "batch": 1}],
}


def _paths(value, prefix=()):
    """Every place in a nested document a value can be replaced, removed or added."""
    yield prefix
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from _paths(inner, (*prefix, index))


@st.composite
def mutated(draw, document):
    """``document`` with one field replaced by any value, removed, or a new key added beside it."""
    doc = json.loads(json.dumps(document))
    path = draw(st.sampled_from(list(_paths(doc))))
    if not path:
        return draw(VALUES) if draw(st.booleans()) else doc
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
    if action == "replace":
        parent[path[-1]] = draw(VALUES)
    elif action == "remove":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=12))] = draw(VALUES)
    else:
        parent.append(draw(VALUES))
    return doc


def _holds(name: str, parse, given_input) -> None:
    """``parse(given_input)`` returns, or raises a one-line QbenchError."""
    COUNTS[name] += 1
    try:
        parse(given_input)
    except QbenchError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message, message


@FUZZ
@given(st.one_of(mutated(VALID_SPEC), VALUES))
def test_run_spec(document):
    _holds("run spec", lambda d: RunSpec.from_json(json.dumps(d)), document)


@FUZZ
@given(st.one_of(mutated(VALID_PLAN), VALUES, st.text(max_size=200)))
def test_plan(document):
    text = document if isinstance(document, str) else json.dumps(document)
    _holds("plan", lambda t: PrecisionPlan.from_json(t, "plan.json"), text)


@FUZZ
@given(mutated({"run_spec": VALID_SPEC, "results_dir": "/r", "db": "sqlite://", "job": "s:j/b", "job_hash": "0" * 16}))
def test_worker_job(document):
    _holds("worker job", lambda d: WorkerJob.from_json(json.dumps(d)), document)


def _toml(value) -> str:
    """A TOML value: strings as JSON strings (valid TOML basic strings), floats by name."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items() if v is not None) + "}"
    return json.dumps(value)


def _suite_text(document) -> str:
    if not isinstance(document, dict):
        return f"x = {_toml(document)}\n" if document is not None else ""
    lines = []
    for table, body in document.items():
        if table == "job" and isinstance(body, list) and all(isinstance(job, dict) for job in body):
            for job in body:
                lines.append("[[job]]")
                lines += [f"{json.dumps(k)} = {_toml(v)}" for k, v in job.items() if v is not None]
        elif isinstance(body, dict):
            lines.append(f"[{json.dumps(table)}]")
            lines += [f"{json.dumps(k)} = {_toml(v)}" for k, v in body.items() if v is not None]
        elif body is not None:
            lines.insert(0, f"{json.dumps(table)} = {_toml(body)}")
    return "\n".join(lines) + "\n"


@FUZZ
@given(st.one_of(mutated(VALID_SUITE).map(_suite_text), st.text(max_size=200)))
def test_suite(text):
    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "suite.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        _holds("suite", load_suite, path)


TEXTS = st.one_of(
    st.text(max_size=40),
    st.lists(
        st.sampled_from(["latency", "throughput", "server", "max", "batch", "prefill", "decode", "auto", "1", "0"])
        | st.sampled_from(["-1", "1e9", "nan", "inf", "4097", "0.001", "2.5", "", " ", "99999999999999999999", "1_0"]),
        max_size=5,
    ).map(":".join),
)


@FUZZ
@given(TEXTS)
def test_scenario_workload_and_override_text(text):
    _holds("scenario", Scenario.parse, text)
    _holds("workload", Workload.parse, text)
    _holds("workload list", parse_workloads, text.replace(":", ",", 1))
    _holds("--set", parse_override, "threads=" + text)
    _holds("--set", parse_override, text)


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    print("\nfuzzed inputs per parser: " + ", ".join(f"{name} {count}" for name, count in sorted(COUNTS.items())))
