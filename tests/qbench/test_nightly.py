"""``qbench nightly`` end to end: real worker processes running ONNX Runtime, a real SQLite
leaderboard, then two suites writing to one real PostgreSQL leaderboard at once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from qbench.arguments import build_parser
from qbench.cli import EXIT_REGRESSION, main
from qbench.machine import current_machine
from qbench.previous_run import unstable
from qbench.store import Leaderboard, default_url
from qbench.zoo import DEMO
from tests.conftest import write_demo_subset

# A metric module the workers import: one metric aborts the process, one never returns.
FAULTY_METRICS = """
import os, time

def abort(outputs, labels, reference):
    os.abort()

def hang(outputs, labels, reference):
    time.sleep(3600)
"""


def _suite(folder, body: str, threshold: float = 0.10, timeout_s: int = 900) -> str:
    # The default threshold: each night's worker times the previous night's artifacts beside its
    # own, so drift between processes cancels (it took 30 % when raw medians were compared).
    # The suite's timeout leaves room for a slow or busy machine (one core, a second test run
    # beside it); only the hang test's own job has a short one.
    write_demo_subset(folder / "eval-400.npz", 400)
    header = f"""
[suite]
name = "ci"
timeout_s = {timeout_s}
regression_threshold = {threshold}
[defaults]
backends = ["onnxruntime", "tensorrt"]
recipes = ["fp32", "int8"]
protocol = "quick"
threads = 2
data = "eval-400.npz"
calib_data = "{DEMO.files().calibration}"
"""
    path = folder / "suite.toml"
    path.write_text(textwrap.dedent(header) + textwrap.dedent(body))
    return str(path)


def _rows(results):
    board = Leaderboard(default_url(results))
    try:
        return board.frame()
    finally:
        board.close()


def _recording_popen(launched: list[list[str]]):
    """subprocess.Popen that starts the real worker and keeps its argv for the test."""
    real_popen = subprocess.Popen

    def popen(command, *args, **kwargs):
        launched.append(list(command))
        return real_popen(command, *args, **kwargs)

    return popen


@pytest.fixture(scope="module")
def first_night(tmp_path_factory):
    """One night of a suite with a good job, a corrupt model, a crashing and a hanging worker."""
    folder = tmp_path_factory.mktemp("suite")
    (folder / "faulty_metrics.py").write_text(FAULTY_METRICS)
    # A module named like a dependency, and a metric module, in the directory nightly runs from:
    # neither may be imported by a worker.
    cwd = tmp_path_factory.mktemp("cwd")
    (cwd / "psutil.py").write_text(f"open({str(cwd / 'IMPORTED')!r}, 'w').close()\nraise SystemExit(9)\n")
    (cwd / "cwd_metric.py").write_text("def score(outputs, labels, reference):\n    return 1.0\n")
    (folder / "corrupt.onnx").write_bytes(DEMO.files().model.read_bytes()[:4000])
    suite = _suite(
        folder,
        f"""
        [[job]]
        model = "digits-cnn"
        [[job]]
        model = "corrupt.onnx"
        data = "{DEMO.files().evaluation}"
        backends = ["onnxruntime"]
        [[job]]
        name = "aborts"
        model = "digits-cnn"
        metric = "faulty_metrics.py:abort"
        backends = ["onnxruntime"]
        [[job]]
        name = "hangs"
        model = "digits-cnn"
        metric = "faulty_metrics.py:hang"
        backends = ["onnxruntime"]
        timeout_s = 8
        [[job]]
        name = "cwd-metric"
        model = "digits-cnn"
        metric = "cwd_metric:score"
        backends = ["onnxruntime"]
        """,
    )
    results = folder / "results"
    launched: list[list[str]] = []
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(subprocess, "Popen", _recording_popen(launched))
            code = main(["nightly", suite, "-q", "--results-dir", str(results)])
    finally:
        os.chdir(here)
    return suite, results, code, cwd, launched


def test_failed_workers_are_recorded_and_the_suite_completes(first_night, capsys):
    _, results, code, _, _ = first_night
    assert code == 1  # some jobs failed
    rows = _rows(results)
    good = rows[rows.job == "ci:digits-cnn/onnxruntime"]
    assert list(good.status) == ["ok", "ok"] and set(good.plan_name) == {"fp32", "int8"}
    errors = rows[rows.status == "failed"].set_index("job").error
    assert "is not an ONNX model" in errors["ci:corrupt/onnxruntime"]
    assert "worker crashed with SIGABRT" in errors["ci:aborts/onnxruntime"]
    assert "timed out after 8 s" in errors["ci:hangs/onnxruntime"]
    assert "ci:digits-cnn/tensorrt" not in set(rows.job)  # no GPU here: unavailable, not run
    assert (results / "report.html").is_file() and (results / "regressions.md").is_file()
    assert (results / "nightly-logs" / "ci" / "hangs__onnxruntime.log").is_file()


def test_workers_import_nothing_from_the_current_directory(first_night):
    _, results, _, cwd, launched = first_night
    assert not (cwd / "IMPORTED").exists()  # ./psutil.py was never imported
    error = _rows(results).set_index("job").error["ci:cwd-metric/onnxruntime"]
    assert "cannot load metric 'cwd_metric:score'" in error and "current directory is not searched" in error
    assert launched and all(command[1:4] == ["-P", "-m", "qbench.worker"] for command in launched)


def test_a_module_metric_in_the_current_directory_fails_the_same_in_bench(tmp_path):
    (tmp_path / "cwd_metric.py").write_text("def score(outputs, labels, reference):\n    return 1.0\n")
    qbench = os.path.join(os.path.dirname(sys.executable), "qbench")  # the console script users run
    proc = subprocess.run(
        [qbench, "bench", "--metric", "cwd_metric:score", "--results-dir", "r"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 2 and "cannot load metric 'cwd_metric:score'" in proc.stderr


def test_the_leaderboard_password_never_reaches_a_worker_command_line(tmp_path, postgres_url):
    """`ps` shows argv to every user: the URL goes to the worker on stdin."""
    with_password = postgres_url.replace("://qbench@", "://qbench:not-a-secret-xyz@")  # trust auth ignores it
    assert "not-a-secret-xyz" in with_password
    suite = _suite(tmp_path, '[[job]]\nmodel = "digits-cnn"\nbackends = ["onnxruntime"]\nrecipes = ["fp32"]\n')
    launched: list[list[str]] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess, "Popen", _recording_popen(launched))
        code = main(["nightly", suite, "-q", "--db", with_password, "--results-dir", str(tmp_path / "r")])
    assert code == 0 and launched
    assert not any("not-a-secret-xyz" in " ".join(command) for command in launched)
    log = (tmp_path / "r" / "nightly-logs" / "ci" / "digits-cnn__onnxruntime.log").read_text()
    assert "not-a-secret-xyz" not in log


def _two_threads_speedup(rounds: int = 40) -> float:
    """How much faster the demo runs on 2 threads than on 1 at this moment, timed interleaved
    in this process without spinning, as a worker times: on a machine busy with other work
    (a second test run) the second thread buys nothing and the injected slowdown is not real."""
    import time

    import onnxruntime as ort

    feeds = {k: v[:1] for k, v in np.load(DEMO.files().evaluation).items() if k != "labels"}
    sessions = []
    for threads in (1, 2):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions.append(ort.InferenceSession(str(DEMO.files().model), options, providers=["CPUExecutionProvider"]))
    times: list[list[float]] = [[], []]
    for _ in range(rounds):
        for i, session in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, feeds)
            times[i].append(time.perf_counter() - start)
    return float(np.median(times[0]) / np.median(times[1]))


@pytest.mark.skipif(current_machine().default_threads() < 2, reason="the injected slowdown needs 2 cores to drop to 1")
def test_rerun_is_skipped_unchanged_is_quiet_and_fewer_threads_regress(first_night, capsys):
    suite, results, _, _, _ = first_night
    only_good = ["--results-dir", str(results), "-q"]
    good_suite = suite.replace("suite.toml", "good.toml")
    text = open(suite).read().split("[[job]]")[0] + '[[job]]\nmodel = "digits-cnn"\n'
    with open(good_suite, "w") as handle:
        handle.write(text)
    rows_before = len(_rows(results))
    capsys.readouterr()
    assert main(["nightly", good_suite, *only_good]) == 0
    assert "skipped" in capsys.readouterr().out and len(_rows(results)) == rows_before

    shutil.rmtree(results / "cache" / "artifacts")  # the previous plans are rebuilt from the store
    assert main(["nightly", good_suite, "--force", *only_good]) == 0  # the same job again: no regression
    out = capsys.readouterr().out
    assert "change(s)" not in out or " 0 regression(s)" in out, out  # a busy machine may withhold, never flag
    tonight = _rows(results).query("job == 'ci:digits-cnn/onnxruntime'").tail(2)
    comparisons = dict(zip(tonight.plan_name, map(json.loads, tonight.comparison), strict=True))
    assert [c["method"] for c in comparisons.values()] == ["in-process A/B"] * 2
    # int8's previous artifact was rebuilt from the store; fp32's was back in the cache already,
    # built by tonight's harness before the previous run was looked up (same plan, same key).
    assert comparisons["int8"]["rebuilt"] and not comparisons["fp32"]["rebuilt"]
    # Unchanged: near 1, or on a loaded machine withheld by the A/A check (never flagged, above).
    assert all(0.8 < c["ratio"] < 1.25 or unstable(c, 0.10) for c in comparisons.values()), comparisons
    assert tonight.reference_ms.notna().all()

    # The second core can be taken for seconds at a time on a shared VM (a CI night timed the
    # 2-thread plans no faster than 1 thread: 3.65 vs 3.60 ms), and then there is no slowdown to
    # flag. So a night with one thread fewer is tried up to three times, each after checking that
    # 2 threads are faster here right now and after a 2-thread night to compare against.
    attempts = []
    for _ in range(3):
        ratio = _two_threads_speedup()
        if ratio < 1.25:  # the 10 % threshold, with room
            attempts.append(f"2 threads only {ratio:.2f}x faster than 1: not tried")
            continue
        code = main(["nightly", good_suite, "--set", "threads=1", "--force", *only_good])  # not skipped as seen
        out = capsys.readouterr().out
        if code == EXIT_REGRESSION:
            break
        rows = _rows(results).query("job == 'ci:digits-cnn/onnxruntime'").tail(2)
        said = "withheld (machine unstable)" if "withheld" in out else "not flagged"
        attempts.append(f"2 threads {ratio:.2f}x faster beforehand, {said}: {list(rows.comparison)}")
        back = ["nightly", good_suite, "--force", "--no-fail-on-regression", *only_good]  # 1 -> 2: "faster"
        assert main(back) == 0  # back to 2 threads
        capsys.readouterr()
    else:
        if all(a.endswith("not tried") or "withheld" in a for a in attempts):
            pytest.skip(f"a busy machine, no real slowdown to inject or the verdict withheld: {attempts}")
        pytest.fail("a night on 1 thread instead of 2 was never flagged: " + "; ".join(attempts))
    assert "2 → 1" in out and "latency" in out and "in-process A/B" in out
    assert "regression" in (results / "regressions.md").read_text()
    # The same regression with --no-fail-on-regression exits 0 (the flag only turns the exit off).
    assert not build_parser().parse_args(["nightly", good_suite, "--no-fail-on-regression"]).fail_on_regression


def test_two_suites_write_to_one_postgres_leaderboard(tmp_path, postgres_url):
    """Two farm machines' suites at once (two processes, one database): every row arrives."""
    suites = []
    for name in ("farm-a", "farm-b"):
        folder = tmp_path / name
        folder.mkdir()
        # Two suites share two cores here: give each job time to finish.
        suites.append(_suite(folder, '[[job]]\nmodel = "digits-cnn"\nrecipes = ["fp32"]\n', timeout_s=900))
        text = open(suites[-1]).read().replace('name = "ci"', f'name = "{name}"')
        open(suites[-1], "w").write(text)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "qbench.cli", "nightly", suite, "-q", "--db", postgres_url]
            + ["--results-dir", str(tmp_path / f"results-{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i, suite in enumerate(suites)
    ]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(outputs)
    board = Leaderboard(postgres_url)
    try:
        rows = board.frame()
    finally:
        board.close()
    mine = rows[rows.job.isin(["farm-a:digits-cnn/onnxruntime", "farm-b:digits-cnn/onnxruntime"])]
    assert len(mine) == 2 and set(mine.status) == {"ok"}  # fp32 of each suite's job
    assert mine.groupby("job").run_id.nunique().to_dict() == {
        "farm-a:digits-cnn/onnxruntime": 1,
        "farm-b:digits-cnn/onnxruntime": 1,
    }
