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
