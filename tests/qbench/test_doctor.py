"""``qbench doctor``: the engine against each plan alone in its own process, on this machine."""

from __future__ import annotations

import json

import pytest

from qbench.backends import get_backend
from qbench.doctor import TARGETS, doctor_note, doctor_path, run_doctor
from qbench.errors import QbenchError
from qbench.machine import current_machine


def test_doctor_measures_both_ways_stores_the_verdict_and_bench_reads_it(tmp_path):
    machine = current_machine()
    assert "no passing `qbench doctor` check (it has none)" in doctor_note(tmp_path, machine)
    report = run_doctor(get_backend("onnxruntime"), machine, tmp_path, repeats=2, seconds=0.3, models=("digits-cnn",))
    (check,) = report.checks
    assert set(check.bias) == {"ratio", "fp32 p50", "fp32 p90", "int8 p50", "int8 p90"}
    assert check.alone_ratio > 0 and check.engine_ratio > 0 and check.alone_spread >= 0
    # The verdict follows from the figures (which one it is depends on this machine and its load).
    expected = "unsteady" if not check.steady else "pass" if check.within else "fail"
    assert report.verdict == expected
    assert check.within == all(abs(v) <= TARGETS[k.rpartition(" ")[2]] for k, v in check.bias.items())
    stored = json.loads(doctor_path(tmp_path, machine).read_text())
    assert stored["verdict"] == report.verdict and stored["machine_hash"] == machine.fingerprint_hash
    assert (doctor_note(tmp_path, machine) is None) == (report.verdict == "pass")
    assert report.lines()[0].startswith("CPU: ") and report.lines()[-1].startswith(f"verdict: {report.verdict}")


@pytest.mark.parametrize("verdict, note", [("pass", None), ("fail", "'fail'"), ("unsteady", "'unsteady'")])
def test_bench_and_tune_say_when_the_machine_has_no_passing_check(tmp_path, verdict, note):
    machine = current_machine()
    path = doctor_path(tmp_path, machine)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"verdict": verdict}))
    said = doctor_note(tmp_path, machine)
    assert said is None if note is None else note in said


def test_a_corrupt_doctor_file_counts_as_no_check(tmp_path):
    machine = current_machine()
    path = doctor_path(tmp_path, machine)
    path.parent.mkdir(parents=True)
    path.write_text("[not json")
    assert "it has none" in doctor_note(tmp_path, machine)


@pytest.mark.parametrize("repeats, seconds", [(1, 1.0), (51, 1.0), (3, 0.1), (3, 61.0)])
def test_doctor_bounds(tmp_path, repeats, seconds):
    with pytest.raises(QbenchError, match="doctor needs 2 <= repeats <= 50 and 0.2 <= seconds <= 60"):
        run_doctor(get_backend("onnxruntime"), current_machine(), tmp_path, repeats=repeats, seconds=seconds)
