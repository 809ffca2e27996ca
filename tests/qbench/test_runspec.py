"""One run specification: built alike by the command line, a suite job and the Python API."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import qbench
from qbench.cli import main
from qbench.errors import QbenchError
from qbench.runspec import RunSpec, Subject, Target, Timing
from qbench.store import Leaderboard, ResultRow, default_url
from qbench.zoo import DEMO

SAMPLES = 200  # enough to score; small enough for three runs of the demo


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    data = dict(np.load(DEMO.files().evaluation))
    path = folder / "eval.npz"
    np.savez(path, **{k: v[:SAMPLES] for k, v in data.items()})
    return path


def test_a_spec_survives_json_and_rejects_what_it_does_not_know():
    spec = RunSpec(Subject("digits-cnn", shapes=(("image", (1, 1, 8, 8)),)), Target("openvino", 2), Timing("quick"))
    assert RunSpec.from_json(spec.to_json()) == spec
    with pytest.raises(QbenchError, match="not a qbench run spec"):
        RunSpec.from_dict({"subject": {"model": "x"}})
    with pytest.raises(QbenchError, match="subject must be an object with keys among"):
        RunSpec.from_dict({"qbench_run": 1, "subject": {"model": "x", "turbo": 1}})
    with pytest.raises(QbenchError, match="timing protocol 'fast'"):
        Timing("fast")
    with pytest.raises(QbenchError, match="`threads` must be a whole number"):
        Target(threads=0)


def test_the_config_hash_follows_file_contents_not_file_names(tmp_path, small_data):
    copy = tmp_path / "renamed.npz"
    copy.write_bytes(small_data.read_bytes())
    spec = RunSpec(Subject("digits-cnn", str(small_data)), Target(threads=1), recipes=("fp32",))
    moved = RunSpec(Subject("digits-cnn", str(copy)), Target(threads=1), recipes=("fp32",))
    assert spec.config_hash() == moved.config_hash()
    assert spec.config_hash() != RunSpec(spec.subject, Target(threads=2), recipes=("fp32",)).config_hash()
    copy.write_bytes(b"changed")
    assert spec.config_hash() != moved.config_hash()


def test_a_suite_job_a_cli_run_and_an_api_call_store_the_same_run_spec(tmp_path, small_data):
    results, calib = tmp_path / "results", str(DEMO.files().calibration)
    common = ["--threads", "1", "--quick", "--results-dir", str(results), "-q"]
    cli = ["bench", "digits-cnn", "--data", str(small_data), "--calib-data", calib, "--recipe", "fp32"]
    assert main(cli + common) == 0
    qbench.bench(
        "digits-cnn",
        str(small_data),
        calib_data=calib,
        recipes=("fp32",),
        threads=1,
        quick=True,
        results_dir=results,
    )
    suite = tmp_path / "suite.toml"
    suite.write_text(
        f'[[job]]\nmodel = "digits-cnn"\ndata = "{small_data}"\ncalib_data = "{calib}"\n'
        'recipes = ["fp32"]\nthreads = 1\nprotocol = "quick"\n'
    )
    assert main(["nightly", str(suite), "--results-dir", str(results), "-q", "--no-fail-on-regression"]) == 0
    board = Leaderboard(default_url(results))
    try:
        rows = board.frame()
    finally:
        board.close()
    assert rows.run_id.nunique() == 3 and set(rows.status) == {"ok"}
    specs = {json.dumps(json.loads(text), sort_keys=True) for text in rows.run_spec}
    assert len(specs) == 1, specs  # one spec, stored by all three
    assert rows.config_hash.nunique() == 1
    spec = RunSpec.from_json(specs.pop())
    assert spec.subject.workload == "batch" and spec.target.threads == 1 and spec.recipes == ("fp32",)
    assert rows.config_hash.iloc[0] == spec.config_hash()
    assert rows[rows.job.notna()].job_hash.iloc[0] == spec.config_hash()  # the suite's skip key too


def test_the_api_takes_a_model_proto_arrays_an_iterable_and_a_callable_metric(tmp_path):
    files = DEMO.files()
    data = {k: v[:SAMPLES] for k, v in np.load(files.evaluation).items()}
    calib = ({"image": image} for image in np.load(files.calibration)["image"][:64])  # per-sample dicts

    def accuracy(outputs, labels, _reference):
        return float(np.mean(outputs.argmax(-1) == labels))

    run = qbench.bench(
        onnx.load(str(files.model)),
        data,
        calib_data=calib,
        metric=accuracy,
        recipes=("int8",),
        quick=True,
        threads=1,
        results_dir=tmp_path,
    )
    assert all(isinstance(row, ResultRow) for row in run.rows) and [r.plan_name for r in run.rows] == ["fp32", "int8"]
    assert run.rows[0].accuracy > 0.9 and run.rows[0].metric.endswith("accuracy")
    stored = run.spec.subject
    assert stored.model.startswith(str(tmp_path / "inputs" / "model-")) and stored.data.endswith(".npz")
    assert len(np.load(stored.calib_data)["image"]) == 64
    assert run.frame().plan_name.tolist() == ["fp32", "int8"]


def test_api_input_errors_are_one_line(tmp_path):
    with pytest.raises(QbenchError, match="model must be a path"):
        qbench.bench(42, results_dir=tmp_path)
    items = [{"image": np.zeros((1, 8, 8))}, {"pixels": np.zeros((1, 8, 8))}]
    with pytest.raises(QbenchError, match="data item 1 has keys"):
        qbench.bench("digits-cnn", items, results_dir=tmp_path)
