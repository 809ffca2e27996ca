"""Every leaderboard schema any commit of qbench ever wrote opens, migrates, and keeps its rows.

The fixtures come from the old commits themselves (tests/fixtures/make_historical_leaderboards.py):
each holds one row with a known value in every column its schema had."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest
import sqlalchemy as sa

from qbench.store import SCHEMA_VERSION, Leaderboard

FIXTURES = sorted((pathlib.Path(__file__).parents[1] / "fixtures" / "leaderboards").glob("*.db"))


def test_there_is_a_fixture_for_every_schema_version():
    versions = {int(path.name.split("-")[0].removeprefix("v")) for path in FIXTURES}
    assert versions == set(range(1, SCHEMA_VERSION + 1))


@pytest.mark.parametrize("fixture", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_an_old_leaderboard_migrates_and_keeps_every_value(fixture, tmp_path):
    db = tmp_path / "leaderboard.db"
    shutil.copyfile(fixture, db)
    written = json.loads(fixture.with_suffix(".json").read_text())
    board = Leaderboard(f"sqlite:///{db}")
    assert board.schema_version == SCHEMA_VERSION
    row = board.frame(samples=True).iloc[0]
    board.close()
    for column, value in written["row"].items():
        got = row[column]
        if isinstance(got, bytes):
            got = got.hex()
        elif hasattr(got, "isoformat"):
            got = str(got.to_pydatetime() if hasattr(got, "to_pydatetime") else got)
        assert got == value or got == pytest.approx(value), column
    # opening it again is a no-op
    Leaderboard(f"sqlite:///{db}").close()


def test_a_migration_that_fails_leaves_the_old_schema_untouched(tmp_path, monkeypatch):
    """Each migration runs in one transaction: a failure part-way leaves nothing half-applied."""
    from qbench import store

    fixture = next(p for p in FIXTURES if p.name.startswith("v1-"))
    db = tmp_path / "leaderboard.db"
    shutil.copyfile(fixture, db)

    def half_then_fail(conn):
        conn.execute(sa.text("ALTER TABLE results ADD COLUMN code_version VARCHAR(48)"))
        raise RuntimeError("the disk filled up")

    monkeypatch.setitem(store.MIGRATIONS, 1, half_then_fail)
    with pytest.raises(Exception, match="disk filled"):
        Leaderboard(f"sqlite:///{db}")
    monkeypatch.undo()
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("results")}
        version = conn.execute(sa.text("SELECT value FROM qbench_schema WHERE key = 'schema_version'")).scalar()
    engine.dispose()
    assert "code_version" not in columns and version == "1"
    board = Leaderboard(f"sqlite:///{db}")  # and the next open migrates it all
    assert board.schema_version == SCHEMA_VERSION
    board.close()


def _open_each(paths: list[str], barrier, failures) -> None:
    for path in paths:
        barrier.wait()  # all four open the same new file at once
        try:
            board = Leaderboard(f"sqlite:///{path}")
            board.record_machine({"hash": "m", "cpu_model": "x"})
            board.close()
        except Exception as exc:  # noqa: BLE001 - every failure counts
            failures.put(f"{path}: {exc}")


def test_four_processes_opening_new_leaderboards_at_once_all_succeed(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    barrier, failures = context.Barrier(4), context.Queue()
    paths = [str(tmp_path / f"round{i}.db") for i in range(20)]
    workers = [context.Process(target=_open_each, args=(paths, barrier, failures)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    errors = []
    while not failures.empty():
        errors.append(failures.get())
    assert all(w.exitcode == 0 for w in workers)
    assert errors == []
    for path in paths:
        board = Leaderboard(f"sqlite:///{path}")
        assert board.schema_version == SCHEMA_VERSION
        board.close()
