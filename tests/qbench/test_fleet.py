"""A fleet without a shared database: rows exported from one leaderboard and imported into
another (twice: nothing doubles), damaged or foreign files refused whole, and the view that puts
two machines' rows side by side. The second machine is this one under another fingerprint."""

from __future__ import annotations

import dataclasses
import gzip
import json

import pytest

from qbench import machine as machine_module
from qbench.cli import main
from qbench.errors import QbenchError
from qbench.fleet import import_rows, read_export
from qbench.store import JSON_COLUMNS, Leaderboard, default_url

SECOND_CPU = "Second CPU for the fleet test (family 99 model 9)"


@pytest.fixture(scope="module")
def two_machines(tmp_path_factory, demo_400):
    """Quick benches of the demo into two leaderboards: this machine's, and one from a machine
    with another fingerprint."""
    here, there = tmp_path_factory.mktemp("here"), tmp_path_factory.mktemp("there")
    quick = ["bench", *demo_400, "--quick", "-q", "--min-seconds", "0.2", "--recipe", "fp32,int8,native-int8"]
    assert main([*quick, "--results-dir", str(here)]) == 0
    real = machine_module.current_machine()
    other = dataclasses.replace(real, cpu_model=SECOND_CPU, isa=tuple(f for f in real.isa if f != "avx512_vnni"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(machine_module, "current_machine", lambda: other)
        assert main([*quick, "--results-dir", str(there)]) == 0
    return here, there, other.fingerprint_hash


def _rows(results) -> list[dict]:
    board = Leaderboard(default_url(results))
    try:
        frame = board.frame(samples=True)
    finally:
        board.close()
    return frame.drop(columns=["id"]).to_dict("records")


def _key(row: dict) -> str:
    """A row's values as text; JSON columns compared as what they hold (an import re-serializes them)."""

    def value(column, v):
        if isinstance(v, bytes):
            return v.hex()
        return json.loads(v) if column in JSON_COLUMNS and isinstance(v, str) else str(v)

    return json.dumps({k: value(k, v) for k, v in row.items()}, sort_keys=True)


def test_export_and_import_twice_adds_each_row_once(two_machines, tmp_path, capsys):
    here, there, _ = two_machines
    exported = tmp_path / "there.jsonl.gz"
    assert main(["leaderboard", "--results-dir", str(there), "--export", str(exported)]) == 0
    assert "exported 3 row(s)" in capsys.readouterr().out
    before = len(_rows(here))
    for expected in ("imported 3 row(s), 0 already present", "imported 0 row(s), 3 already present"):
        assert main(["leaderboard", "--results-dir", str(here), "--import", str(exported)]) == 0
        assert expected in capsys.readouterr().out
    merged = _rows(here)
    assert len(merged) == before + 3
    assert len({row["row_uid"] for row in merged}) == len(merged)
    # The imported rows are the exported ones, value for value (samples included).
    assert {_key(r) for r in _rows(there)} <= {_key(r) for r in merged}


def test_only_one_machine_is_exported_when_asked(two_machines, tmp_path, capsys):
    here, _, _ = two_machines
    out = tmp_path / "mine.jsonl"
    assert main(["leaderboard", "--results-dir", str(here), "--export", str(out), "--machine", "here"]) == 0
    fingerprints, rows = read_export(out)
    assert [f["hash"] for f, _ in fingerprints] == [machine_module.current_machine().fingerprint_hash]
    assert rows and {r["machine_hash"] for r in rows} == {fingerprints[0][0]["hash"]}
    assert main(["leaderboard", "--results-dir", str(here), "--export", str(out), "--machine", "nope"]) == 2
    assert "no rows of machine 'nope'" in capsys.readouterr().err


def _damaged(good: bytes) -> dict[str, bytes]:
    lines = good.decode().splitlines(keepends=True)
    row = json.loads(lines[-1])
    row["row"]["median_ms"] = "fast"
    return {
        "cut short": "".join(lines[:-1]).encode(),
        "truncated gzip": gzip.compress(good)[:-20],
        "not JSON": good[:-40],
        "foreign": b"rank,plan,median_ms\n1,int8,3.2\n",
        "empty": b"",
        "newer schema": good.replace(b'"schema_version": 10', b'"schema_version": 99', 1),
        "a bad value": "".join([*lines[:-1], json.dumps(row) + "\n"]).encode(),
    }


@pytest.mark.parametrize(
    "damage", ["cut short", "truncated gzip", "not JSON", "foreign", "empty", "newer schema", "a bad value"]
)
def test_a_damaged_or_foreign_file_is_refused_whole(two_machines, tmp_path, capsys, damage):
    here, there, _ = two_machines
    good = tmp_path / "good.jsonl"
    assert main(["leaderboard", "--results-dir", str(there), "--export", str(good)]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(_damaged(good.read_bytes())[damage])
    target = tmp_path / "target"
    assert main(["leaderboard", "--results-dir", str(target), "--import", str(good)]) == 0  # 3 rows
    capsys.readouterr()
    assert main(["leaderboard", "--results-dir", str(target), "--import", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err, err
    assert len(_rows(target)) == 3  # nothing added, nothing lost


def test_a_partly_bad_file_adds_nothing(two_machines, tmp_path):
    """The rows before a damaged line are not imported either: all of a file or none of it."""
    _, there, _ = two_machines
    good = tmp_path / "good.jsonl"
    assert main(["leaderboard", "--results-dir", str(there), "--export", str(good)]) == 0
    lines = good.read_text().splitlines(keepends=True)
    good.write_text("".join(lines[:-1]) + '{"row": {"median_ms": 1}}\n')
    board = Leaderboard(f"sqlite:///{tmp_path / 'lb.db'}")
    try:
        with pytest.raises(QbenchError, match="lacks"):
            import_rows(board, good)
        assert board.count() == 0
    finally:
        board.close()


def test_the_view_sets_machines_side_by_side(two_machines, tmp_path, capsys):
    here, there, other_hash = two_machines
    exported = tmp_path / "there.jsonl"
    main(["leaderboard", "--results-dir", str(there), "--export", str(exported)])
    fleet = tmp_path / "fleet"
    for source in (here, there):
        main(["leaderboard", "--results-dir", str(source), "--export", str(tmp_path / "x.jsonl")])
        assert main(["leaderboard", "--results-dir", str(fleet), "--import", str(tmp_path / "x.jsonl")]) == 0
    capsys.readouterr()
    assert main(["report", "-q", "--results-dir", str(fleet)]) == 0
    table = (fleet / "across-machines.md").read_text()
    assert SECOND_CPU in table and machine_module.current_machine().cpu_model in table
    for plan in ("fp32", "int8", "native-int8"):  # each plan on each machine: two rows
        assert len([line for line in table.splitlines() if line.startswith(f"| {plan} |")]) == 2
    assert "not ranked" in table and "rank" not in table.split("\n## ")[1].splitlines()[2]
    assert "(across-machines-1.svg)" in table and (fleet / "across-machines-1.svg").read_text().startswith("<svg")
    page = (fleet / "report.html").read_text()
    assert "Across machines" in page and page.count("<svg") >= 2  # the fleet chart and a Pareto chart
    assert "across-machines.md" in (fleet / "index.md").read_text()
    assert main(["leaderboard", "--results-dir", str(fleet)]) == 0
    assert "across machines" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        ["--machine", "here"],
        ["--import", "x.jsonl", "--machine", "here"],
        ["--export", "x.jsonl", "--model", "demo"],
        ["--export", "x.jsonl", "--csv"],
    ],
)
def test_flags_that_do_not_go_together_are_one_line(tmp_path, capsys, args):
    assert main(["leaderboard", "--results-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--" in err
