"""Deployment scenarios and objectives: parsed and bounded in one place for every path, compared by
their own paired rules, and measured end to end on real ONNX Runtime workers."""

from __future__ import annotations

import json

import numpy as np
import pytest

import qbench
from qbench.cli import main
from qbench.errors import QbenchError
from qbench.nightly.suite import load_suite
from qbench.objectives import OBJECTIVES, objective
from qbench.runspec import RunSpec, Subject, Target, Timing, Tune
from qbench.scenario import Scenario, arrivals_ns
from qbench.statistics import percentile_ratio, rounds_of
from qbench.store import Leaderboard, default_url


@pytest.mark.parametrize(
    "text, expected",
    [
        ("latency", Scenario()),
        ("throughput", Scenario("throughput", 32)),
        ("throughput:8", Scenario("throughput", 8)),
        ("server:50", Scenario("server", qps=50.0)),
        ("server:50:15", Scenario("server", qps=50.0, bound_ms=15.0)),
        ("server:max:15", Scenario("server", bound_ms=15.0)),
        (" Server:2.5:100 ", Scenario("server", qps=2.5, bound_ms=100.0)),
    ],
)
def test_scenarios_parse_and_print_back(text, expected):
    parsed = Scenario.parse(text)
    assert parsed == expected and Scenario.parse(str(parsed)) == parsed


BAD_SCENARIOS = [
    ("fast", "unknown scenario"),
    ("latency:3", "latency takes no arguments"),
    ("throughput:0", "from 1 to 4096"),
    ("throughput:1000000000", "from 1 to 4096"),
    ("throughput:x", "not a whole number"),
    ("server:0", "from 1 to 100000"),
    ("server:1e9", "from 1 to 100000"),
    ("server:nan", "must be a number"),
    ("server:max", "needs a p99 bound"),
    ("server:50:0", "from 0.01"),
    ("server:1:2:3", "use server:QPS"),
]


@pytest.mark.parametrize("text, message", BAD_SCENARIOS)
def test_a_bad_scenario_is_one_line_from_the_cli_a_suite_and_the_api_alike(tmp_path, capsys, text, message):
    assert main(["bench", "--scenario", text, "--results-dir", str(tmp_path)]) == 2
    cli_error = capsys.readouterr().err.strip()
    assert message in cli_error and len(cli_error.splitlines()) == 1
    suite = tmp_path / "suite.toml"
    suite.write_text(f'[[job]]\nmodel = "digits-cnn"\nscenario = "{text}"\n')
    with pytest.raises(QbenchError, match="scenario") as from_suite:
        load_suite(suite)
    with pytest.raises(QbenchError, match="scenario") as from_api:
        qbench.bench(scenario=text, results_dir=tmp_path)
    assert message in str(from_suite.value) and message in str(from_api.value)
    assert not (tmp_path / "leaderboard.db").exists()  # refused before anything was measured


def test_batches_and_threads_are_bounded_in_the_spec_for_every_path(tmp_path, capsys):
    for argv in (["--batch", "0"], ["--batch", str(10**9)], ["--threads", str(10**6)]):
        assert main(["bench", *argv, "--results-dir", str(tmp_path)]) == 2
        error = capsys.readouterr().err.strip()
        assert argv[0].strip("-") in error and len(error.splitlines()) == 1
    with pytest.raises(QbenchError, match="threads"):
        qbench.bench(threads=10**6, results_dir=tmp_path)
    with pytest.raises(QbenchError, match="batch"):
        qbench.tune(batch=0, results_dir=tmp_path)
    with pytest.raises(QbenchError, match="batches of 8"):
        RunSpec(Subject("digits-cnn"), Target(batch=4), Timing(scenario="throughput:8"))
    assert RunSpec(Subject("digits-cnn"), timing=Timing(scenario="throughput:8")).target.batch == 8


def test_tune_settings_are_validated_and_stored_in_the_spec():
    for bad in (
        {"objective": "p42"},
        {"max_drop": 1.5},
        {"max_drop": float("nan")},
        {"trials": 0},
        {"holdout": 1.0},
        {"seed": -1},
        {"precisions": "int8"},
        {"precisions": ("fp32",)},
        {"grouping": "rows"},
        {"pareto": "yes"},
    ):
        with pytest.raises(QbenchError):
            Tune(**bad)
    base = RunSpec(Subject("digits-cnn"), Target(threads=2), recipes=("fp32",), tune=Tune(max_drop=0.01))
    other = RunSpec(Subject("digits-cnn"), Target(threads=2), recipes=("fp32",), tune=Tune(max_drop=0.02))
    bench = RunSpec(Subject("digits-cnn"), Target(threads=2), recipes=("fp32",))
    assert len({base.config_hash(), other.config_hash(), bench.config_hash()}) == 3
    assert RunSpec.from_json(base.to_json()) == base
    assert "tune" not in bench.to_dict() and "scenario" not in bench.to_dict()["timing"]  # old hashes hold
    with pytest.raises(QbenchError, match="unknown key"):
        RunSpec.from_dict({**base.to_dict(), "extra": 1})
    with pytest.raises(QbenchError, match="a list"):
        RunSpec(Subject("digits-cnn"), recipes="int8")


def test_a_tail_ratio_sees_stalls_that_the_median_ratio_does_not():
    """Two plans with the same median; one stalls in 5 % of its runs: p50 calls them equal, p99 does not."""
    rng = np.random.default_rng(3)
    steady = rng.normal(1e6, 2e4, 4000)
    stalling = rng.normal(1e6, 2e4, 4000)
    stalling[rng.random(4000) < 0.05] += 4e6
    block = 40
    median = OBJECTIVES["p50"].ratio(steady, stalling, block)
    tail = OBJECTIVES["p99"].ratio(steady, stalling, block)
    assert median.ci_low <= 1.0 <= median.ci_high * 1.01
    assert tail.ci_high < 0.5  # the stalling plan's p99 is ~5x worse
    same = percentile_ratio(rounds_of(steady, block), rounds_of(steady, block), 99)
    assert (same.ratio, same.ci_low, same.ci_high) == (1.0, 1.0, 1.0)
    with pytest.raises(QbenchError, match="unknown objective"):
        objective("p95")


def test_the_race_on_a_tail_objective_picks_the_steadier_plan():
    """The final selection compares on the objective: by median the stalling plan leads, by p99 it loses."""
    from qbench.harness import FP32
    from qbench.measure import Samples
    from qbench.search._select import select
    from qbench.store import ResultRow

    rng = np.random.default_rng(5)

    def batch(rows, stop=None):  # the whole batch: stopping early is tested in test_select
        n = 40 * 20
        fp32 = rng.normal(2e6, 2e4, n)
        fast_but_stalls = rng.normal(0.95e6, 1e4, n)
        fast_but_stalls[rng.random(n) < 0.04] += 5e6
        steady = rng.normal(1.0e6, 1e4, n)
        return Samples({FP32: fp32, "stalls": fast_but_stalls, "steady": steady}, block=40)

    rows = [
        ResultRow(
            run_id="r",
            kind="tune",
            machine_hash="m",
            qbench_version="0",
            model_name="m",
            model_hash="h",
            plan="{}",
            backend="fake",
            plan_name=name,
            plan_hash=name,
            status="ok",
            speedup=s,
            speedup_ci_low=s * 0.9,
            speedup_ci_high=s * 1.1,
            accuracy_drop=0.0,
        )
        for name, s in (("stalls", 2.05), ("steady", 2.0))  # close enough to be raced
    ]
    by_median = select(rows, batch, objective("p50"))
    by_tail = select(rows, batch, objective("p99"))
    assert by_median.winner.plan_name == "stalls"
    assert by_tail.winner.plan_name == "steady" and by_tail.winner_speedup.ratio > 1.5
    assert by_tail.race is not None and "stalls" in set(by_tail.race.plan)


def test_poisson_arrivals_have_the_rate_and_repeat_with_the_seed():
    arrivals = arrivals_ns(200.0, 10.0, seed=1)
    assert 1800 < len(arrivals) < 2200 and arrivals == sorted(arrivals) and arrivals[-1] < 10e9
    assert arrivals == arrivals_ns(200.0, 10.0, seed=1) and arrivals != arrivals_ns(200.0, 10.0, seed=2)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    from tests.conftest import write_mlp_model

    folder = tmp_path_factory.mktemp("mlp")
    model = write_mlp_model(folder / "mlp.onnx", hidden=64)
    data = folder / "mlp.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((64, 16, 64)).astype(np.float32))
    return model, data


def _rows(results):
    board = Leaderboard(default_url(results))
    try:
        return board.frame()
    finally:
        board.close()


def test_throughput_rows_are_timed_at_their_batch_and_kept_apart_from_latency_rows(tmp_path, mlp, capsys):
    model, data = mlp
    common = [str(model), "--data", str(data), "--quick", "--recipe", "int8", "--results-dir", str(tmp_path), "-q"]
    assert main(["bench", *common, "--scenario", "throughput:8"]) == 0
    printed = capsys.readouterr().out
    assert "samples/s" in printed and "scenario throughput:8" in printed
    assert main(["bench", *common]) == 0
    frame = _rows(tmp_path)
    assert sorted(set(frame.scenario)) == ["latency", "throughput:8"]
    assert set(frame[frame.scenario == "throughput:8"].batch_size) == {8}
    assert set(frame[frame.scenario == "latency"].batch_size) == {1}
    (tables,) = (tmp_path / frame.machine_hash.iloc[0]).glob("mlp-*.md")
    assert tables.read_text().count("scenario throughput:8") == 1  # its own table, never ranked with latency rows


def test_a_server_run_serves_the_same_arrivals_to_each_plan_and_says_whether_p99_held(tmp_path, mlp):
    model, data = mlp
    run = qbench.bench(
        str(model), str(data), recipes=["int8"], scenario="server:400:250", quick=True, results_dir=tmp_path
    )
    assert [r.scenario for r in run.rows] == ["server:400:250"] * 2
    for row in run.rows:
        settings = row.backend_settings if isinstance(row.backend_settings, dict) else json.loads(row.backend_settings)
        assert settings["qps"] == 400 and settings["bound_held"] is True  # 250 ms is far above a tiny MLP's p99
        assert settings["requests"] == row.n_samples > 100  # every arrival answered, the same count for both
    fp32 = run.rows[0]
    assert fp32.speedup_ci_low <= 1.0 <= fp32.speedup_ci_high  # fp32 against itself on the same arrivals


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_throughput_with_requests_in_flight_uses_the_runtimes_streams(tmp_path, mlp, backend):
    """ORT runs one session from two threads at once; OpenVINO compiles with the throughput hint
    and keeps its optimal number of requests in flight: each says what it chose."""
    model, data = mlp
    run = qbench.bench(
        str(model),
        str(data),
        backend=backend,
        recipes=["fp32"],
        scenario="throughput:1:2",
        quick=True,
        results_dir=tmp_path,
    )
    (row,) = run.rows
    settings = row.backend_settings if isinstance(row.backend_settings, dict) else json.loads(row.backend_settings)
    assert row.ok and row.scenario == "throughput:1:2" and row.n_samples >= 4  # rounds of calls per second
    if backend == "onnxruntime":
        assert settings["concurrent_runs"] == 2 and settings["threads"] >= 1
    else:
        assert settings["PERFORMANCE_HINT"] == "THROUGHPUT" and settings["NUM_STREAMS"] == "2"
        assert int(settings["OPTIMAL_NUMBER_OF_INFER_REQUESTS"]) >= 2


def test_a_worker_runs_for_a_time_and_serves_arrivals(tmp_path, mlp):
    """The worker's own loops: ``rate`` completes calls for the time asked; ``serve`` answers
    every arrival, no sooner than it arrived."""
    from qbench.backends import get_backend
    from qbench.model import OnnxModel
    from qbench.plan import PrecisionPlan
    from qbench.workers import Deployment, WorkerPool

    model, _ = mlp
    backend = get_backend("onnxruntime")
    artifact = backend.build(OnnxModel.load(model), PrecisionPlan(name="fp32"), None, tmp_path)
    feeds = {"x": np.zeros((1, 16, 64), np.float32)}
    pool = WorkerPool()
    try:
        worker = pool.acquire({"a": Deployment(backend, artifact, 1, feeds)})["a"]
        calls, elapsed = worker.rate(0.2)
        assert calls > 10 and 0.2e9 <= elapsed < 2e9
        arrivals = arrivals_ns(500.0, 0.2, seed=0)
        latencies = worker.serve(arrivals)
        assert len(latencies) == len(arrivals) and min(latencies) > 0
    finally:
        pool.close()


def test_the_served_rate_of_a_queue_matches_theory_and_compares_paired():
    """``server-qps``: an M/M/1 queue (exponential calls of 1 ms) keeps p99 from arrival to answer
    within 15 ms up to ln(100) / 15 ms below the call rate, 693 requests/s; a plan whose calls
    take 0.8 of fp32's in every round serves more, with an interval from whole rounds."""
    import qbench.statistics as st

    calls = np.random.default_rng(1).exponential(1e6, 100_000)
    assert st.served_rate(calls, 15e6) == pytest.approx(1000 - np.log(100) / 0.015, rel=0.08)
    assert st.served_rate(np.full(100, 20e6), 15e6) == 0.0  # an idle server misses the bound already
    rounds = [np.random.default_rng(i).lognormal(np.log(1e6), 0.3, 30) for i in range(12)]
    faster = st.served_rate_ratio(rounds, [r * 0.8 for r in rounds], 15e6, resamples=30)
    assert 1.0 < faster.ci_low <= faster.ratio <= faster.ci_high and faster.ratio > 1.2
    same = objective("server-qps:15").ratio(np.concatenate(rounds), np.concatenate(rounds), 30)
    assert same.ratio == pytest.approx(1.0)
    with pytest.raises(QbenchError, match="p99 bound must be a number"):
        objective("server-qps:0")
