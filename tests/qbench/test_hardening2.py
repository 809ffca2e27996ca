"""Hardening, round two (issue 26): each probe that once gave a wrong number, lost work, leaked a
secret, or a traceback. Real ONNX Runtime sessions, real SQLite files, a small MatMul model."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from qbench.cache import atomic_cached, hash_file
from qbench.cli import main
from qbench.data import check_fits_in_memory, dataset_from_arrays
from qbench.errors import QbenchError
from qbench.metrics import get_metric
from qbench.model import OnnxModel
from qbench.nightly.runner import worker_environment
from qbench.report.tables import csv_safe, markdown_table
from qbench.store import Leaderboard, default_url
from tests.conftest import write_mlp_model


def _rows(results: pathlib.Path):
    board = Leaderboard(default_url(results))
    frame = board.frame()
    board.close()
    return frame


def _bench(model, data, results, recipe="fp32,int8") -> int:
    return main(
        ["bench", str(model), "--data", str(data), "--recipe", recipe, "--quick", "-q", "--results-dir", str(results)]
    )


# 1. caches verify what they serve -------------------------------------------------------------


def test_a_cache_entry_that_does_not_match_its_hash_is_rebuilt(tmp_path, caplog):
    entry, built = tmp_path / "entry.json", []

    def produce(tmp):
        built.append(tmp)
        tmp.write_text('{"ok": 1}')

    assert atomic_cached(entry, produce) is False
    assert atomic_cached(entry, produce) is True and len(built) == 1
    entry.write_text("garbage")  # damaged, or replaced by another file
    assert atomic_cached(entry, produce) is False and len(built) == 2
    assert json.loads(entry.read_text()) == {"ok": 1}
    assert "does not match the content hash" in caplog.text
    hash_file(entry).unlink()  # an entry from before hashes: unverifiable, so rebuilt once
    assert atomic_cached(entry, produce) is False and len(built) == 3


def test_a_folder_entry_is_verified_file_by_file(tmp_path):
    entry = tmp_path / "export"

    def produce(tmp):
        tmp.mkdir()
        (tmp / "model.onnx").write_bytes(b"model")
        (tmp / "eval.npz").write_bytes(b"data")

    atomic_cached(entry, produce)
    (entry / "eval.npz").write_bytes(b"corrupt")
    assert atomic_cached(entry, produce) is False
    assert (entry / "eval.npz").read_bytes() == b"data"


def test_an_artifact_copied_over_another_is_never_recorded(tmp_path, mlp_files):
    model, data = mlp_files
    results = tmp_path / "results"
    assert _bench(model, data, results) == 0
    first = _rows(results).set_index("plan_name")
    folder = results / "cache" / "artifacts" / "onnxruntime"
    by_key = {row.artifact_key: row.plan_name for row in first.reset_index().itertuples()}
    paths = {by_key[p.stem.rsplit("-", 1)[1]]: p for p in folder.glob("*.onnx") if p.stem.rsplit("-", 1)[1] in by_key}
    shutil.copyfile(paths["fp32"], paths["int8"])  # the fp32 model posing as the int8 one
    calibration = next((results / "cache").rglob("*calib*.json"), None)
    if calibration is not None:
        calibration.write_text("{not json")
    assert _bench(model, data, results) == 0
    again = _rows(results).groupby("plan_name").last()
    assert (
        again.loc["int8", "artifact_bytes"] == first.loc["int8", "artifact_bytes"] < first.loc["fp32", "artifact_bytes"]
    )
    assert again.loc["int8", "accuracy"] == pytest.approx(first.loc["int8", "accuracy"])


# 2. many processes on one new leaderboard ------------------------------------------------------


def test_four_benches_on_a_new_results_folder_record_every_row(tmp_path, mlp_files):
    model, data = mlp_files
    results = tmp_path / "shared"
    command = [sys.executable, "-m", "qbench.cli", "bench", str(model), "--data", str(data), "--recipe", "fp32"]
    command += ["--quick", "-q", "--results-dir", str(results)]
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [run.communicate(timeout=900)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0, 0], errors
    assert len(_rows(results)) == 4


# 4. external data ------------------------------------------------------------------------------


def _with_external_data(source: pathlib.Path, target: pathlib.Path, location: str) -> pathlib.Path:
    proto = onnx.load(str(source))
    onnx.save_model(
        proto,
        str(target),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    return target


def test_a_model_with_external_data_is_benchmarked(tmp_path, mlp_files):
    model, data = mlp_files
    folder = tmp_path / "ext"
    folder.mkdir()
    external = _with_external_data(model, folder / "tiny_ext.onnx", "tiny_ext.data")
    assert (folder / "tiny_ext.data").stat().st_size > 1_000_000
    assert _bench(external, data, tmp_path / "results") == 0
    rows = _rows(tmp_path / "results")
    assert set(rows.status) == {"ok"} and len(rows) >= 2
    assert OnnxModel.load(external).content_hash != OnnxModel.load(model).content_hash  # the side file counts


@pytest.mark.parametrize("location", ["/etc/passwd", "../outside.data"])
def test_external_data_outside_the_models_folder_is_refused(tmp_path, mlp_files, location, capsys):
    model, data = mlp_files
    folder = tmp_path / "inner"
    folder.mkdir()
    external = _with_external_data(model, folder / "m.onnx", "m.data")
    proto = onnx.load(str(external), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(proto, str(external))
    assert (
        main(["bench", str(external), "--data", str(data), "--quick", "-q", "--results-dir", str(tmp_path / "r")]) == 2
    )
    assert "outside the model's folder" in capsys.readouterr().err


# 5-8. secrets and injection --------------------------------------------------------------------


def test_a_bad_database_url_never_prints_its_password(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("QBENCH_DB", "postgresql+nodriver://u:Secret@127.0.0.1:1/db")
    assert main(["leaderboard", "--results-dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert "Secret" not in out + err and "u:***@" in err


def test_csv_cells_that_start_a_formula_are_quoted_and_numbers_stay_numbers():
    import pandas as pd

    frame = pd.DataFrame({"plan": ["=HYPERLINK(1)", "+x", "-y", "@z", "fine"], "drop": [-0.1, 0.2, 0.0, -1.0, 3.0]})
    safe = csv_safe(frame)
    assert list(safe.plan) == ["'=HYPERLINK(1)", "'+x", "'-y", "'@z", "fine"]
    assert safe["drop"].dtype.kind == "f" and safe["drop"].iloc[0] == -0.1


def test_names_reach_csv_and_markdown_harmless(tmp_path, mlp_files, capsys):
    model, data = mlp_files
    hostile = tmp_path / "=HYPERLINK(1)<img src=x onerror=alert(1)>.onnx"
    shutil.copyfile(model, hostile)
    results = tmp_path / "results"
    assert _bench(hostile, data, results, recipe="fp32") == 0
    capsys.readouterr()
    assert main(["leaderboard", "--csv", "--results-dir", str(results)]) == 0
    csv = capsys.readouterr().out
    assert "'=HYPERLINK(1)" in csv and ",=HYPERLINK" not in csv
    assert main(["report", "--results-dir", str(results)]) == 0
    markdown = "".join(p.read_text() for p in results.rglob("*.md"))
    assert "<img" not in markdown and "&lt;img src=x onerror=alert(1)&gt;" in markdown
    assert "<b>" not in markdown_table(__import__("pandas").DataFrame({"a": ["<b>x|y</b>"]}))


def test_a_worker_never_imports_from_the_current_folder():
    env = worker_environment({"PYTHONPATH": ":/x:.:./:/y", "HOME": "/h"})
    assert env["PYTHONPATH"] == "/x:/y" and env["HOME"] == "/h"
    assert "PYTHONPATH" not in worker_environment({"PYTHONPATH": ":."})


# 9-12. one-line errors instead of tracebacks ---------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e400"])
def test_an_unusable_artifact_cache_size_is_one_line(monkeypatch, value):
    from qbench.cache import artifact_cache_limit

    monkeypatch.setenv("QBENCH_ARTIFACT_CACHE_GB", value)
    with pytest.raises(QbenchError, match="finite positive number of GB"):
        artifact_cache_limit()


@pytest.mark.parametrize("seed", ["-1", "1180591620717411303424", "x"])
def test_a_seed_outside_what_the_sampler_takes_is_refused(seed, capsys):
    assert main(["tune", "--seed", seed]) == 2
    assert "--seed" in capsys.readouterr().err


def test_synthetic_data_that_cannot_fit_in_memory_is_refused_up_front(tmp_path, capsys):
    model = tmp_path / "dyn.onnx"
    proto = onnx.load(str(write_mlp_model(tmp_path / "mlp.onnx")))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[1].Clear()
    dims[1].dim_param = "tokens"
    onnx.save_model(proto, str(model))
    argv = ["bench", str(model), "--shape", "x=1,100000000,256", "--quick", "-q", "--results-dir", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "GiB" in capsys.readouterr().err
    with pytest.raises(QbenchError, match="more than half"):
        check_fits_in_memory(2**60, "a test array")


def test_an_llm_workload_too_big_for_memory_is_refused_before_it_runs():
    from qbench.decoder import DecoderInputs
    from qbench.model import InputSpec
    from qbench.workload import Workload

    caches = [InputSpec(f"past.{i}", "float32", ("batch", 3, "past", 64)) for i in range(60)]  # SmolLM2-135M's
    decoder = DecoderInputs(InputSpec("input_ids", "int64", ("batch", "seq")), tuple(caches))
    assert decoder.kv_bytes_per_token() == 60 * 3 * 64 * 4
    assert Workload.parse("prefill:32768").memory_bytes(decoder, 1) > 24 * 2**30
    assert Workload.parse("decode:128").memory_bytes(decoder, 1) < 2**30


# 13-15. silently odd -----------------------------------------------------------------------------


def test_integer_data_for_a_float_input_is_an_error(tmp_path):
    model = OnnxModel.load(write_mlp_model(tmp_path / "m.onnx"))
    with pytest.raises(QbenchError, match="is int64, but the model input is"):
        dataset_from_arrays({"x": np.zeros((4, 16, 256), np.int64)}, model, "d.npz")
    assert (
        dataset_from_arrays({"x": np.zeros((4, 16, 256), np.float64)}, model, "d.npz").inputs["x"].dtype == np.float32
    )


def test_two_zero_outputs_are_identical_to_cosine():
    zeros = np.zeros((3, 5), np.float32)
    assert get_metric("cosine", False)(zeros, None, zeros) == 1.0


def test_rows_the_leaderboard_refuses_are_kept_whole_and_named(tmp_path, monkeypatch):
    from qbench.store import ResultRow

    db = tmp_path / "results" / "leaderboard.db"
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    board = Leaderboard(f"sqlite:///{db}", fallback=pathlib.Path("/dev/full"))  # every write: no space left
    db.unlink()  # the database is gone mid-run
    row = ResultRow("r", "bench", "ok", "m", "0", "model", "h", "fp32", "p", "{}", "onnxruntime")
    board.insert(row)
    board.insert(row)
    assert board.unrecorded == 2
    (kept,) = board.kept_in
    assert kept.parent == tmp_path / "tmp" and board.kept_in[kept] == 2
    assert [json.loads(line)["plan_name"] for line in kept.read_text().splitlines()] == ["fp32", "fp32"]


def test_a_suite_with_missing_files_reports_every_bad_job_before_running_any(tmp_path, capsys):
    jobs = "".join(f'[[job]]\nname = "j{i}"\nmodel = "missing{i}.onnx"\n\n' for i in range(3))
    suite = tmp_path / "s.toml"
    suite.write_text(f'[suite]\nname = "s"\n\n{jobs}')
    assert main(["nightly", str(suite), "--results-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "3 of 3 jobs cannot start" in err and all(f"missing{i}.onnx" in err for i in range(3))
    assert not (tmp_path / "r" / "nightly-logs").exists()
