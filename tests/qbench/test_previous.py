"""Which previous plans a nightly worker can time beside tonight's, and why not otherwise."""

from __future__ import annotations

import types

import pandas as pd

from qbench.previous_run import PreviousPlan, find_previous_plan


def _previous(**changes) -> pd.DataFrame:
    row = {
        "id": 7,
        "run_id": "r1",
        "plan_name": "int8",
        "backend_version": "1.32.0",
        "workload": "batch",
        "batch_size": 1,
        "artifact_key": "k",
        "model_name": "m",
        "model_hash": "h",
        "plan": "{}",
        "threads": 2,
    }
    return pd.DataFrame([row | changes])


class _NoCache:
    name = "onnxruntime"
    sessions_differ = None

    def cached_artifact(self, *_):
        return None


def _harness():
    model = types.SimpleNamespace(content_hash="other")
    return types.SimpleNamespace(backend=_NoCache(), model=model, batch_size=1, workdir=None)


def test_a_plan_the_previous_run_lacked_has_no_partner():
    assert find_previous_plan(_previous(), "fp32", _harness(), "1.32.0", "batch") is None
    assert find_previous_plan(pd.DataFrame(), "int8", _harness(), "1.32.0", "batch") is None


def test_another_runtime_version_cannot_share_the_process():
    partner = find_previous_plan(_previous(), "int8", _harness(), "1.33.0", "batch")
    assert partner.why_not == "onnxruntime 1.32.0 → 1.33.0: they cannot share a process"
    assert partner.comparison() == {"previous_id": 7, "previous_run": "r1", "method": None, "why_not": partner.why_not}


def test_another_workload_or_batch_is_not_compared_in_process():
    assert (
        "workload changed"
        in find_previous_plan(_previous(workload="decode:128"), "int8", _harness(), "1.32.0", "batch").why_not
    )
    assert (
        "batch 4 → batch, batch 1"
        in find_previous_plan(_previous(batch_size=4), "int8", _harness(), "1.32.0", "batch").why_not
    )


def test_an_artifact_gone_with_its_model_file_changed_is_said():
    partner = find_previous_plan(_previous(), "int8", _harness(), "1.32.0", "batch")
    assert partner.why_not == "the previous artifact left the cache and its model file changed since"


class _Runner:
    def __init__(self, settings):
        self.settings, self.closed = settings, False

    def close(self):
        self.closed = True


def test_a_session_whose_settings_changed_is_refused():
    runner = _Runner({"threads": 2, "graph_optimization_level": "basic"})
    backend = types.SimpleNamespace(load=lambda *_args, **_kw: runner)
    stored = '{"threads": 2, "graph_optimization_level": "all", "device_ms": 1.0}'
    partner = PreviousPlan({"id": 1, "run_id": "r", "threads": 2, "backend_settings": stored}, artifact=object())
    partner.load(backend, {})
    assert partner.why_not == "session settings changed (graph_optimization_level: all → basic)"
    assert runner.closed and not partner.ready and partner.deployment is None


def test_a_session_whose_settings_held_gets_a_deployment_and_the_check_session_is_closed():
    runner = _Runner({"threads": 2, "graph_optimization_level": "all"})
    backend = types.SimpleNamespace(load=lambda *_args, **_kw: runner)
    stored = '{"threads": 2, "graph_optimization_level": "all"}'
    partner = PreviousPlan({"id": 1, "run_id": "r", "threads": 2, "backend_settings": stored}, artifact=object())
    feeds = {"x": 1}
    partner.load(backend, feeds)
    assert partner.ready and runner.closed
    assert partner.deployment.threads == 2 and partner.deployment.feeds is feeds
