"""Hardening, round three (issue 38): fields validated once, at the edge, for every path. The
probes of the issue that are fixed so far, each with the input that once gave a traceback, a
silent success or a lost plan."""

from __future__ import annotations

import numpy as np
import pytest

import qbench
from qbench.cli import main
from qbench.errors import QbenchError
from qbench.machine import current_machine
from qbench.nightly.suite import load_suite
from qbench.plan import PrecisionPlan
from qbench.store import Leaderboard, default_url, samples_to_bytes

PLAN = '{"qbench_plan": 1, "name": "p", "layers": {"mm1": "int8"}}'


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"qbench_plan": 1, "layers": {"mm1": "int8", "mm1": "fp32"}}', 'key "mm1" appears twice'),  # row 6
        ('{"qbench_plan": 1, "name": "a", "name": "b", "layers": {}}', 'key "name" appears twice'),
        ('{"qbench_plan": 1, "layers": {}, "layer": {"mm1": "int8"}}', 'unknown key "layer"'),
        ('{"qbench_plan": 1, "name": "int8\\u202efp32", "layers": {}}', "printable characters"),  # row 7
        ('{"qbench_plan": 1, "name": "a\\u0000b", "layers": {}}', "printable characters"),
    ],
)
def test_a_plan_file_with_repeated_unknown_or_unprintable_fields_is_refused(text, message):
    with pytest.raises(QbenchError, match=message):
        PrecisionPlan.from_json(text, "plan.json")
    assert PrecisionPlan.from_json(PLAN).layers == {"mm1": "int8"}


@pytest.mark.parametrize(
    "job, header, message",
    [
        ("recipes = [1]", "", "recipes must be a non-empty list"),  # row 8
        ('shape = {x = ["a", 16]}', "", "positive whole dimensions"),
        ("shape = {x = 5}", "", "positive whole dimensions"),
        ("threads = 100000", "", "`threads` must be a whole number from 1 to"),  # row 3
        ("", "regression_threshold = -1.0", "regression_threshold"),  # row 9
        ("", "accuracy_tolerance = nan", "accuracy_tolerance"),
    ],
)
def test_a_suite_with_a_wrong_type_or_bound_is_one_line_exit_2(tmp_path, capsys, job, header, message):
    suite = tmp_path / "suite.toml"
    suite.write_text(f'[suite]\n{header}\n[[job]]\nmodel = "digits-cnn"\n{job}\n')
    with pytest.raises(QbenchError, match=message):
        load_suite(suite)
    assert main(["nightly", str(suite), "--results-dir", str(tmp_path / "results")]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1 and "Traceback" not in error


def test_the_api_bounds_threads_and_refuses_a_string_of_recipes(tmp_path):
    with pytest.raises(QbenchError, match="`threads` must be a whole number"):  # row 4
        qbench.bench(threads=10**6, results_dir=tmp_path)
    with pytest.raises(QbenchError, match=r"a list of recipe names.*\['int8'\]"):  # row 13
        qbench.bench(recipes="int8", results_dir=tmp_path)


def test_a_metric_that_returns_no_number_is_one_line_and_nan_fails_fp32_too(tmp_path):
    """Rows 11 and 12: a NaN metric fails fp32 as it fails any plan; a string or an array is refused."""
    from tests.conftest import write_mlp_model

    model = write_mlp_model(tmp_path / "mlp.onnx", hidden=32)
    data = {"x": np.random.default_rng(0).standard_normal((40, 16, 32)).astype(np.float32)}
    for value in ("good", np.zeros(3)):
        with pytest.raises(QbenchError, match="must return a float"):
            qbench.bench(
                str(model),
                data,
                recipes=["fp32"],
                quick=True,
                results_dir=tmp_path,
                metric=lambda o, lab, r, v=value: v,
            )
    run = qbench.bench(
        str(model), data, recipes=["fp32"], quick=True, results_dir=tmp_path, metric=lambda o, lab, r: float("nan")
    )
    (fp32,) = run.rows
    assert fp32.status == "failed" and "nan on fp32's outputs" in fp32.error


def test_damaged_rows_and_null_statistics_are_shown_blank_not_a_traceback(tmp_path, capsys):
    """Rows 15 and 16: a row whose JSON columns were damaged outside qbench, and a row of the first
    schema without statistics, still let `leaderboard` and `report` print."""
    board = Leaderboard(default_url(tmp_path))
    board.record_machine(current_machine().to_dict())
    common = dict(
        run_id="r",
        kind="bench",
        status="ok",
        machine_hash=current_machine().fingerprint_hash,
        qbench_version="0",
        model_name="m",
        model_hash="h",
        plan="{}",
        backend="onnxruntime",
        protocol={"min_count": 5},
        samples_ns=samples_to_bytes(np.array([1, 2, 3])),
    )
    board.insert(
        {
            **common,
            "plan_name": "damaged",
            "plan_hash": "a",
            "median_ms": 1.0,
            "ci_low_ms": 0.9,
            "ci_high_ms": 1.1,
            "realized": "{not json",
            "backend_settings": "[oops",
        }
    )
    board.insert({**common, "plan_name": "old", "plan_hash": "b", "median_ms": 2.0, "realized": {"mm1": "int8"}})
    board.close()
    assert main(["leaderboard", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "damaged" in out and "old" in out
    assert main(["report", "--results-dir", str(tmp_path)]) == 0


@pytest.mark.parametrize("filename", ["../dec.onnx", "/etc/passwd", 5, ""])
def test_a_model_folder_naming_a_decoder_outside_itself_or_no_name_is_refused(tmp_path, filename):
    """Rows 1 and 2: genai_config.json's decoder filename must stay inside the folder and be a name."""
    import json

    from qbench.model import model_file

    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "dec.onnx").write_bytes(b"not read")
    config = {"model": {"decoder": {"filename": filename}}}
    (folder / "genai_config.json").write_text(json.dumps(config))
    with pytest.raises(QbenchError, match="must name a file inside the model folder"):
        model_file(folder)
    config["model"]["decoder"]["filename"] = "model.onnx"
    (folder / "genai_config.json").write_text(json.dumps(config))
    assert model_file(folder) == folder / "model.onnx"


def test_a_workload_list_is_capped_and_never_repeats_one(capsys):
    """Row 5: `--workload decode:16,decode:16` and a list of thousands end in one line, exit 2."""
    for listed, message in (("decode:16,decode:16", "listed twice"), ("decode:1," * 5000, "at most 16")):
        assert main(["bench", "smollm2-135m", "--workload", listed]) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and len(error.splitlines()) == 1


def _worker_job(tmp_path, **changes) -> dict:
    from qbench.runspec import RunSpec, Subject, Target

    spec = RunSpec(Subject(str(tmp_path / "m.onnx")), Target(threads=1), recipes=("fp32",))
    job = {
        "run_spec": spec.to_dict(),
        "results_dir": str(tmp_path / "results"),
        "db": f"sqlite:///{tmp_path / 'results' / 'leaderboard.db'}",
        "job": "ci:m/onnxruntime",
        "job_hash": "0123456789abcdef",
    }
    for key, value in changes.items():
        if key == "data":
            job["run_spec"]["subject"]["data"] = value
        else:
            job[key] = value
    return job


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"results_dir": 5}, "`results_dir` must be a non-empty path"),
        ({"results_dir": "relative/results"}, "must be an absolute path"),
        ({"db": 7}, "`db` must be a non-empty path or URL"),
        ({"job_hash": [1]}, "`job_hash` must be 16 hex digits"),
        ({"job": "no-suite"}, "`job` must read suite:job/backend"),
        ({"data": 5}, "`data` must be a path or name as text"),
        ({"extra": 1}, "exactly the keys"),
    ],
)
def test_a_worker_job_of_the_wrong_type_is_refused_before_anything_is_measured(tmp_path, changes, message):
    """Row 10: the worker's JSON is a typed job, checked field by field before the run starts."""
    import json
    import subprocess
    import sys
    import time

    from qbench.nightly.job import WorkerJob

    with pytest.raises(QbenchError, match=message):
        WorkerJob.from_json(json.dumps(_worker_job(tmp_path, **changes)))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "qbench.worker"],
        input=json.dumps(_worker_job(tmp_path, **changes)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (proc.stdout, proc.stderr)
    assert not (tmp_path / "results").exists(), "nothing may be measured or recorded"
    print(f"refused in {time.perf_counter() - start:.2f} s (interpreter start included)")


def test_a_worker_job_survives_the_trip_through_json(tmp_path):
    from qbench.nightly.job import WorkerJob
    from qbench.runspec import RunSpec

    job = WorkerJob(RunSpec.from_dict(_worker_job(tmp_path)["run_spec"]), str(tmp_path), "sqlite://", "s:j/b", "f" * 16)
    assert WorkerJob.from_json(job.to_json()) == job


def test_a_row_the_database_refuses_is_kept_in_the_unrecorded_rows_file(tmp_path):
    """Row 10's lost row: a value the database cannot store keeps the whole row in the fallback file."""
    from qbench.store import ResultRow

    board = Leaderboard(default_url(tmp_path), fallback=tmp_path / "unrecorded-rows.jsonl")
    row = ResultRow(
        run_id="r",
        kind="bench",
        status="ok",
        machine_hash="m",
        qbench_version="0",
        model_name="m",
        model_hash="h",
        plan_name="p",
        plan_hash="a",
        plan="{}",
        backend="onnxruntime",
        job_hash=[1],
    )
    assert board.insert(row) == -1
    assert board.unrecorded == 1 and '"plan_name": "p"' in (tmp_path / "unrecorded-rows.jsonl").read_text()


def test_a_model_with_a_long_legal_file_name_is_measured(tmp_path):
    """Row 14: derived file names (artifacts, models, tables) are shortened with a hash."""
    from qbench.cache import short_stem
    from tests.conftest import write_mlp_model

    model = write_mlp_model(tmp_path / ("m" * 245 + ".onnx"), hidden=32)
    run = qbench.bench(str(model), recipes=["fp32", "int8"], quick=True, results_dir=tmp_path / "r")
    assert [r.status for r in run.rows] == ["ok", "ok"], [r.error for r in run.rows]
    assert max(len(p.name.encode()) for p in (tmp_path / "r").rglob("*")) < 160
    assert short_stem("a" * 100) != short_stem("a" * 99 + "b") and len(short_stem("é" * 100).encode()) <= 64


def test_machine_measurements_go_where_qbench_cache_says_and_it_must_be_absolute(tmp_path, monkeypatch):
    """Row 17: the once-per-machine MatMulNBits measurement lives under $QBENCH_CACHE, which
    docs/security.md lists with every other place qbench writes."""
    import pathlib

    from qbench.backends import _nbits
    from qbench.cache import cache_root

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("QBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_nbits, "measure_levels", lambda threads: {"4": {"0": 1.0, "4": 1.5}})
    assert _nbits.level_speedups(current_machine(), cache_root()) == {"4": {"0": 1.0, "4": 1.5}}
    assert [p.name[:12] for p in (tmp_path / "cache").glob("nbits-levels-*.json")] == ["nbits-levels"]
    assert not (tmp_path / "home").exists()
    monkeypatch.setenv("QBENCH_CACHE", "relative/cache")
    with pytest.raises(QbenchError, match="not an absolute path"):
        cache_root()
    documented = (pathlib.Path(__file__).parents[2] / "docs" / "security.md").read_text()
    assert "nbits-levels-" in documented and "$QBENCH_CACHE" in documented


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_ending_qbench_nightly_ends_its_worker_and_everything_the_worker_started(tmp_path, sig):
    """Row 18: `timeout 120 qbench nightly` once left the worker running, orphaned, with its
    threads. SIGTERM unwinds qbench (exit 143), which kills the worker's process group; SIGKILL
    leaves no chance to unwind, so the worker dies with its parent (PR_SET_PDEATHSIG)."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    (tmp_path / "slow.py").write_text("import time\n\ndef hang(outputs, labels, reference):\n    time.sleep(3600)\n")
    suite = tmp_path / "suite.toml"
    suite.write_text('[suite]\nname = "s"\n[[job]]\nmodel = "digits-cnn"\nmetric = "slow.py:hang"\nthreads = 1\n')
    qbench_cli = subprocess.Popen(
        [sys.executable, "-m", "qbench.cli", "nightly", str(suite), "--results-dir", str(tmp_path / "r")],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        workers = []
        while not workers and time.monotonic() < deadline and qbench_cli.poll() is None:
            time.sleep(0.5)
            children = psutil.Process(qbench_cli.pid).children(recursive=True)
            workers = [p for p in children if "qbench.worker" in " ".join(p.cmdline())]
        assert workers, "the nightly worker never started"
        time.sleep(3)  # into the job: its runtime threads and timing processes are up
        started = [workers[0], *workers[0].children(recursive=True)]
        qbench_cli.send_signal(getattr(signal, sig))
        code = qbench_cli.wait(timeout=60)
        gone, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, f"still running after qbench ended: {[p.pid for p in alive]}"
        if sig == "SIGTERM":
            assert code == 143 and "stopped by SIGTERM" in qbench_cli.stderr.read()
    finally:
        if qbench_cli.poll() is None:
            qbench_cli.kill()


@pytest.mark.parametrize(
    "argument, message",
    [
        ({"results_dir": 5}, "`results_dir` must be a folder path"),
        ({"db": 5}, "`db` must be a database URL"),
        ({"quick": "yes"}, "`quick` must be True or False"),
        ({"transform": 5}, "`transform` must be a function"),
        ({"progress": 5}, "`progress` must be a function"),
        ({"workload": 5}, "`workload` must be text such as decode:128"),
    ],
)
def test_the_api_refuses_arguments_of_the_wrong_type_before_any_work(tmp_path, argument, message):
    """The API's own arguments, beside the run spec's: found by probing each with an int."""
    for call in (qbench.bench, qbench.tune):
        with pytest.raises(QbenchError, match=message):
            call(**{"results_dir": tmp_path / "r", **argument})
    assert not (tmp_path / "r").exists()


def test_a_signal_already_ignored_stays_ignored(tmp_path, monkeypatch):
    """`nohup qbench nightly`: SIGHUP is ignored before qbench starts, and must stay so while
    it runs (qbench turns SIGTERM and SIGHUP into an orderly stop only where they would kill)."""
    import signal

    from qbench import cli

    seen = {}

    def command(_args) -> int:
        seen.update({sig: signal.getsignal(sig) for sig in (signal.SIGHUP, signal.SIGTERM)})
        return 0

    monkeypatch.setitem(cli.COMMANDS, "leaderboard", command)
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert main(["leaderboard", "--results-dir", str(tmp_path)]) == 0
    finally:
        signal.signal(signal.SIGHUP, before)
    assert seen[signal.SIGHUP] is signal.SIG_IGN and seen[signal.SIGTERM] is cli._terminate
