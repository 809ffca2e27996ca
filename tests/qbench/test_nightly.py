"""``qbench nightly`` end to end: real worker processes running ONNX Runtime, a real SQLite
leaderboard, then two suites writing to one real PostgreSQL leaderboard at once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from qbench.cli import EXIT_REGRESSION, main
from qbench.machine import current_machine
from qbench.store import Leaderboard, default_url
from qbench.zoo import DEMO

# A metric module the workers import: one metric aborts the process, one never returns.
FAULTY_METRICS = """
import os, time

def abort(outputs, labels, reference):
    os.abort()

def hang(outputs, labels, reference):
    time.sleep(3600)
"""


def _suite(folder, body: str, threshold: float = 0.3, timeout_s: int = 30) -> str:
    # Threads 2 vs 1 slows the demo ~1.6x; 30 % stays clear of the drift between processes.
    # The demo's first 400 evaluation samples keep a job well inside the hang test's timeout on
    # a slow CPU (all 2,160 took 9 s per plan on an AMD EPYC Zen 3).
    evaluation = dict(np.load(DEMO.files().evaluation))
    np.savez(folder / "eval-400.npz", **{k: v[:400] for k, v in evaluation.items()})
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


@pytest.fixture(scope="module")
def first_night(tmp_path_factory):
    """One night of a suite with a good job, a corrupt model, a crashing and a hanging worker."""
    folder = tmp_path_factory.mktemp("suite")
    (folder / "faulty_metrics.py").write_text(FAULTY_METRICS)
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
        metric = "faulty_metrics:abort"
        backends = ["onnxruntime"]
        [[job]]
        name = "hangs"
        model = "digits-cnn"
        metric = "faulty_metrics:hang"
        backends = ["onnxruntime"]
        """,
    )
    results = folder / "results"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])
    try:
        code = main(["nightly", suite, "-q", "--results-dir", str(results)])
    finally:
        os.environ["PYTHONPATH"] = os.environ["PYTHONPATH"].split(os.pathsep, 1)[1]
    return suite, results, code


def test_failed_workers_are_recorded_and_the_suite_completes(first_night, capsys):
    _, results, code = first_night
    assert code == 1  # some jobs failed
    rows = _rows(results)
    good = rows[rows.job == "ci:digits-cnn/onnxruntime"]
    assert list(good.status) == ["ok", "ok"] and set(good.plan_name) == {"fp32", "int8"}
    errors = rows[rows.status == "failed"].set_index("job").error
    assert "is not an ONNX model" in errors["ci:corrupt/onnxruntime"]
    assert "worker crashed with SIGABRT" in errors["ci:aborts/onnxruntime"]
    assert "timed out after 30 s" in errors["ci:hangs/onnxruntime"]
    assert "ci:digits-cnn/tensorrt" not in set(rows.job)  # no GPU here: unavailable, not run
    assert (results / "report.html").is_file() and (results / "regressions.md").is_file()
    assert (results / "nightly-logs" / "ci" / "hangs__onnxruntime.log").is_file()


@pytest.mark.skipif(current_machine().physical_cores < 2, reason="the injected slowdown needs 2 cores to drop to 1")
def test_rerun_is_skipped_unchanged_is_quiet_and_fewer_threads_regress(first_night, capsys):
    suite, results, _ = first_night
    only_good = ["--results-dir", str(results), "-q"]
    good_suite = suite.replace("suite.toml", "good.toml")
    text = open(suite).read().split("[[job]]")[0] + '[[job]]\nmodel = "digits-cnn"\n'
    text = text.replace("timeout_s = 30", "timeout_s = 300")  # a 1-thread run needs more than the hang test's 30 s
    with open(good_suite, "w") as handle:
        handle.write(text)
    rows_before = len(_rows(results))
    capsys.readouterr()
    assert main(["nightly", good_suite, *only_good]) == 0
    assert "skipped" in capsys.readouterr().out and len(_rows(results)) == rows_before

    assert main(["nightly", good_suite, "--force", *only_good]) == 0  # the same job again: no regression
    assert "regression" not in capsys.readouterr().out

    code = main(["nightly", good_suite, "--set", "threads=1", *only_good])
    out = capsys.readouterr().out
    assert code == EXIT_REGRESSION, out
    assert "2 → 1" in out and "latency" in out
    assert "regression" in (results / "regressions.md").read_text()
    assert main(["nightly", good_suite, "--set", "threads=1", "--force", "--no-fail-on-regression", *only_good]) == 0


def test_two_suites_write_to_one_postgres_leaderboard(tmp_path, postgres_url):
    """Two farm machines' suites at once (two processes, one database): every row arrives."""
    suites = []
    for name in ("farm-a", "farm-b"):
        folder = tmp_path / name
        folder.mkdir()
        # Two suites share two cores here: give each job time to finish.
        suites.append(_suite(folder, '[[job]]\nmodel = "digits-cnn"\n', timeout_s=300))
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
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(outputs)
    board = Leaderboard(postgres_url)
    try:
        rows = board.frame()
    finally:
        board.close()
    mine = rows[rows.job.isin(["farm-a:digits-cnn/onnxruntime", "farm-b:digits-cnn/onnxruntime"])]
    assert len(mine) == 4 and set(mine.status) == {"ok"}
    assert mine.groupby("job").run_id.nunique().to_dict() == {
        "farm-a:digits-cnn/onnxruntime": 1,
        "farm-b:digits-cnn/onnxruntime": 1,
    }
