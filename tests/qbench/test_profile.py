"""Per-op profiles: the aggregation, ``qbench profile`` on both CPU runtimes, and profiles stored
with leaderboard rows by ``bench --profile`` and shown in the HTML report."""

from __future__ import annotations

import json

import pytest

from qbench.backends import get_backend
from qbench.cli import main
from qbench.profile import OpTime, Profile, compare, profile_from_json, sandwiched
from qbench.store import Leaderboard, default_url

pytestmark = pytest.mark.usefixtures("zoo_cache")  # the block fixtures export into a scratch cache


def _profile(name: str, *ops: OpTime) -> Profile:
    return Profile(name, "test", 10, ops)


def test_aggregation_by_op_type_and_precision():
    profile = _profile(
        "int8",
        OpTime("a", "QLinearConv", "int8", 3.0),
        OpTime("b", "QLinearConv", "int8", 1.0),
        OpTime("c", "Clip", "fp32", 1.0, flag="float between Q/DQ"),
    )
    table = profile.by_op_type()
    assert list(table["op type"]) == ["QLinearConv", "Clip"]
    assert list(table.nodes) == [2, 1] and table.share.iloc[0] == pytest.approx(0.8)
    restored = profile_from_json(profile.to_json())
    assert restored.total_ms == pytest.approx(5.0) and [op.node for op in restored.flagged()] == ["c"]
    fp32 = _profile("fp32", OpTime("a", "Conv", "fp32", 6.0))
    diff = compare(profile, fp32).set_index("op type")
    assert diff.loc["Conv", "plan - fp32 ms"] == pytest.approx(-6.0)


def test_sandwich_needs_a_boundary_on_both_sides():
    ops = [
        ("dq", "q/dq", [], ["clip"]),
        ("clip", "fp32", ["dq"], ["q"]),
        ("q", "q/dq", ["clip"], []),
        ("tail", "fp32", ["q"], []),
    ]
    assert sandwiched(ops, {"dq", "q"}) == {"clip"}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_profile_command_prints_where_the_time_goes(backend, tmp_path, capsys):
    if not get_backend(backend).probe().available:
        pytest.skip(f"{backend} unavailable here: {get_backend(backend).probe().reason}")
    code = main(
        ["profile", "mobilenet-blocks", "--backend", backend, "--recipe", "int8", "-q", "--results-dir", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "fp32 on" in out and "int8 on" in out and "plan vs fp32 by op type" in out
    stored = json.loads((tmp_path / "profiles" / f"mobilenet-blocks-{backend}-int8.json").read_text())
    precisions = {row["precision"] for row in stored["by_op_type"]}
    assert "int8" in precisions and stored["total_ms"] > 0
    assert "float between" not in json.dumps(stored["flag_counts"])


def test_bench_profile_is_stored_with_the_row_and_shown_in_the_report(tmp_path):
    args = ["bench", "mobilenet-blocks", "--recipe", "fp32,int8", "--quick", "-q", "--profile"]
    assert main([*args, "--results-dir", str(tmp_path)]) == 0
    board = Leaderboard(default_url(tmp_path))
    rows = board.frame()
    board.close()
    assert rows.profile.notna().all()
    int8 = json.loads(rows[rows.plan_name == "int8"].profile.iloc[0])
    # Which op type leads depends on the CPU and its load (fp32 ops led on a busy AMD EPYC).
    assert int8["plan_name"] == "int8" and "int8" in {row["precision"] for row in int8["by_op_type"]}
    assert main(["report", "--results-dir", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "Where the time goes: int8 on onnxruntime" in page
