"""Hostile or careless input (issue 12): each case once gave a traceback, a hang or a wrong
answer with exit 0. Each must now give one line naming the problem, exit 2, and leave the
leaderboard as it was. Real ONNX Runtime sessions and a real SQLite leaderboard throughout."""

from __future__ import annotations

import os
import sqlite3

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

from qbench.cli import main
from qbench.store import Leaderboard, default_url
from qbench.zoo import DEMO

SAMPLES = 300


@pytest.fixture(scope="module")
def board_dir(tmp_path_factory, files):
    """A results dir with one recorded fp32 row, which no bad input may change."""
    results = tmp_path_factory.mktemp("results")
    argv = ["bench", "--data", str(files["small"]), "--quick", "--recipe", "fp32"]
    assert main([*argv, "--results-dir", str(results), "-q"]) == 0
    return results


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    evaluation = {k: v[:SAMPLES] for k, v in np.load(DEMO.files().evaluation).items()}  # the demo takes ~5 ms a sample
    labels, name = evaluation.pop("labels"), next(iter(evaluation))
    image = evaluation[name]
    with_nan = image.copy()
    with_nan[3, 0, 0, 0] = np.nan
    arrays = {
        "labels_out_of_range": {name: image, "labels": labels + 10},
        "labels_negative": {name: image, "labels": -labels - 1},
        "labels_fractional": {name: image, "labels": labels + 0.5},
        "labels_strings": {name: image, "labels": labels.astype(str)},
        "labels_2d": {name: image, "labels": np.stack([labels, labels], axis=1)},
        "nan_data": {name: with_nan, "labels": labels},
        "small": {name: image, "labels": labels},
    }
    paths = {}
    for key, data in arrays.items():
        paths[key] = folder / f"{key}.npz"
        np.savez(paths[key], **data)
    texts = {
        "options_null": '{"qbench_plan": 1, "options": null}',
        "deep": "[" * 200_000 + "]" * 200_000,
        "long_name": '{"qbench_plan": 1, "name": "' + "x" * 100_000 + '"}',
    }
    for key, text in texts.items():
        paths[key] = folder / f"{key}.json"
        paths[key].write_text(text)
    paths["latin1"] = folder / "latin1.json"
    paths["latin1"].write_bytes(b'{"qbench_plan": 1, "name": "caf\xe9"}')
    paths["a_file"] = folder / "a_file"
    paths["a_file"].write_text("not a folder")
    return paths


def _rows(results) -> pd.DataFrame:
    board = Leaderboard(default_url(results))
    try:
        return board.frame()
    finally:
        board.close()


# argv (with {file} placeholders) and what the one-line error must say
CASES = {
    "labels out of range": (["--data", "{labels_out_of_range}"], "the model's output has 10 classes"),
    "negative labels": (["--data", "{labels_negative}"], "hold negative values"),
    "non-integer labels": (["--data", "{labels_fractional}"], "hold non-integer values"),
    "string labels": (["--data", "{labels_strings}"], "wants integer class indices"),
    "2-D labels": (["--data", "{labels_2d}"], "one class index per sample"),
    "NaN in the data": (["--data", "{nan_data}"], "NaN or infinite"),
    "batch above the sample count": (["--batch", "1000", "--data", "{small}"], "larger than the 240 evaluation"),
    "batch above the bound": (["--batch", "100000"], "`batch` must be a whole number from 1 to 4096"),
    "plan options null": (["--recipe", "{options_null}"], '"options" must be a JSON object'),
    "plan nested 200,000 levels": (["--recipe", "{deep}"], "nested too deeply"),
    "non-UTF-8 plan": (["--recipe", "{latin1}"], "is not UTF-8"),
    "plan name of 100,000 characters": (["--recipe", "{long_name}"], '"name" must be 1 to 200 printable characters'),
    "negative shape": (["--shape", "image=-1,16"], "positive dimensions"),
    "min-seconds inf": (["--min-seconds", "inf"], "at most 86400"),
    "100,000 threads": (["--threads", "100000"], "4x this machine's logical CPUs"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_bench_input_is_one_line_exit_2(case, board_dir, files, capsys):
    argv, message = CASES[case]
    argv = ["bench", *(a.format(**files) for a in argv), "--quick", "--results-dir", str(board_dir)]
    if "--recipe" not in argv:
        argv += ["--recipe", "fp32"]
    before = _rows(board_dir)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err.splitlines()[-1] and "Traceback" not in err
    assert "error:" in err.splitlines()[-1]
    pd.testing.assert_frame_equal(_rows(board_dir), before)


def test_tune_refuses_a_file_as_results_dir_and_negative_patience(files, capsys):
    assert main(["tune", "--results-dir", str(files["a_file"])]) == 2
    assert "is a file; pass a folder" in capsys.readouterr().err
    assert main(["tune", "--patience", "-1", "--results-dir", str(files["a_file"].parent)]) == 2
    assert "--patience" in capsys.readouterr().err


def test_tune_never_prints_the_storage_password(tmp_path, capsys):
    url = "postgresql://bob:pa55word@127.0.0.1:1/qbench"
    assert main(["tune", "--storage", url, "--results-dir", str(tmp_path), "-q", "--quick-samples", "64"]) == 2
    out, err = capsys.readouterr()
    assert "pa55word" not in out + err and "cannot open study storage" in err and "bob:***@" in err


@pytest.mark.parametrize(
    "damage, message",
    [
        ("UPDATE qbench_schema SET value = 'garbage'", "its schema version is 'garbage'"),
        ("ALTER TABLE results DROP COLUMN accuracy", "lacks column(s) accuracy"),
    ],
)
def test_a_damaged_leaderboard_is_named_not_a_traceback(damage, message, tmp_path, board_dir, capsys):
    copy = tmp_path / "results"
    copy.mkdir()
    (copy / "leaderboard.db").write_bytes((board_dir / "leaderboard.db").read_bytes())
    with sqlite3.connect(copy / "leaderboard.db") as conn:
        conn.execute(damage)
    assert main(["leaderboard", "--results-dir", str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qbench: error:") and message in err and len(err.splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_a_read_only_leaderboard_is_refused_before_measuring(tmp_path, board_dir, capsys):
    copy = tmp_path / "results"
    copy.mkdir()
    (copy / "leaderboard.db").write_bytes((board_dir / "leaderboard.db").read_bytes())
    (copy / "leaderboard.db").chmod(0o444)
    assert main(["bench", "--quick", "--recipe", "fp32", "--results-dir", str(copy)]) == 2
    assert "is read-only" in capsys.readouterr().err


def test_rows_survive_a_leaderboard_deleted_mid_run(tmp_path, files, monkeypatch, capsys):
    """The file vanishes after the rows are measured: they go to a fallback file, exit 2 says where."""
    import qbench.benchmark

    real_record = qbench.benchmark._record

    def delete_then_record(*args, **kwargs):
        (tmp_path / "leaderboard.db").unlink()
        return real_record(*args, **kwargs)

    monkeypatch.setattr(qbench.benchmark, "_record", delete_then_record)
    argv = ["bench", "--data", str(files["small"]), "--quick", "--recipe", "fp32,int8"]
    assert main([*argv, "--results-dir", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    fallback = tmp_path / "unrecorded-rows.jsonl"
    assert "2 row(s) could not be written" in err and str(fallback) in err
    kept = pd.read_json(fallback, lines=True)
    assert list(kept.plan_name) == ["fp32", "int8"] and set(kept.status) == {"ok"} and kept.median_ms.gt(0).all()


def test_an_op_the_runtime_cannot_run_gives_failed_rows(tmp_path, capsys):
    """Calibration runs the model; an unknown op used to end bench there with a traceback."""
    weight = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("NoSuchOp", ["c"], ["y"], name="bad", domain="com.example"),
        ],
        "badop",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, tmp_path / "badop.onnx")
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(0).normal(size=(40, 1, 8, 8)).astype(np.float32))
    argv = ["bench", str(tmp_path / "badop.onnx"), "--data", str(tmp_path / "data.npz"), "--quick"]
    assert main([*argv, "--results-dir", str(tmp_path / "r"), "-q"]) == 1
    rows = _rows(tmp_path / "r")
    assert set(rows.status) == {"failed"} and len(rows) == 3  # fp32, int8, native-int8
    assert rows.set_index("plan_name").error["int8"].startswith("RuntimeError: calibration (minmax) failed")
    assert "Traceback" not in capsys.readouterr().err
