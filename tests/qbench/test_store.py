import numpy as np
import pytest
import sqlalchemy as sa

from qbench.errors import QbenchError
from qbench.machine import current_machine
from qbench.store import SCHEMA_VERSION, Leaderboard, samples_from_bytes, samples_to_bytes, schema_info


def _row(machine_hash: str, **changes):
    row = {
        "run_id": "r1",
        "kind": "bench",
        "status": "ok",
        "machine_hash": machine_hash,
        "qbench_version": "0",
        "model_name": "m",
        "model_hash": "h",
        "plan_name": "fp32",
        "plan_hash": "p",
        "plan": "{}",
        "backend": "onnxruntime",
        "median_ms": 1.5,
        "samples_ns": samples_to_bytes(np.array([1, 2, 3])),
        "protocol": {"min_count": 5},
        "realized": {"conv": "int8"},
    }
    row.update(changes)
    return row


@pytest.fixture
def board(tmp_path):
    b = Leaderboard(f"sqlite:///{tmp_path}/lb.db")
    b.record_machine(current_machine().to_dict())
    yield b
    b.close()


def test_insert_and_read_back(board):
    machine_hash = current_machine().fingerprint_hash
    board.insert(_row(machine_hash))
    board.insert(_row(machine_hash, status="failed", error="boom", median_ms=None, samples_ns=None))
    frame = board.frame(samples=True)
    assert list(frame.status) == ["ok", "failed"]
    assert list(samples_from_bytes(frame.samples_ns[0])) == [1, 2, 3]
    assert frame.cpu_model[0] == current_machine().cpu_model
    assert board.schema_version == SCHEMA_VERSION
    assert "samples_ns" not in board.frame().columns  # tables never load the raw samples


def test_unknown_columns_are_refused(board):
    with pytest.raises(ValueError, match="unknown result columns"):
        board.insert({"bogus": 1})


def test_reopening_keeps_rows(tmp_path, board):
    board.insert(_row(current_machine().fingerprint_hash))
    again = Leaderboard(board.url)
    assert again.count() == 1


def test_newer_schema_is_refused_not_misread(tmp_path, board):
    with board.engine.begin() as conn:
        conn.execute(schema_info.update().values(value=str(SCHEMA_VERSION + 1)))
    with pytest.raises(QbenchError, match="newer than this qbench"):
        Leaderboard(board.url)


@pytest.mark.parametrize(
    "url, message",
    [
        ("not a url", "is not a database URL"),
        ("postgresql://qbench@127.0.0.1:1/qbench", "cannot open leaderboard database"),
        ("sqlite:////proc/qbench-cannot-write-here/lb.db", "cannot (create|open) the leaderboard database|cannot open"),
    ],
)
def test_unusable_urls_are_one_clear_error(url, message):
    with pytest.raises(QbenchError, match=message):
        Leaderboard(url)


def test_a_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "lb.db"
    path.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(QbenchError, match="cannot open leaderboard database"):
        Leaderboard(f"sqlite:///{path}")
    assert path.read_bytes() == b"definitely not sqlite" * 100


def test_foreign_database_is_not_taken_over(tmp_path):
    url = f"sqlite:///{tmp_path}/other.db"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE results (x INTEGER)"))
    with pytest.raises(QbenchError, match="not a qbench leaderboard"):
        Leaderboard(url)


def test_version_1_leaderboard_is_migrated_in_place(tmp_path):
    """A v1 database (before suite jobs, profiles, solo medians, workloads, comparisons,
    scenarios and fidelity) gains those columns; its rows survive, read as the latency scenario."""
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'old.db'}"
    board = Leaderboard(url)
    with board.engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_results_job"))
        conn.execute(sa.text("DROP INDEX ix_results_row_uid"))
        dropped = ("code_version", "job", "job_hash", "profile", "solo_median_ms", "workload")
        for column in (
            *dropped,
            "artifact_key",
            "reference_ms",
            "comparison",
            "run_spec",
            "config_hash",
            "scenario",
            "fidelity",
            "row_uid",
        ):
            conn.execute(sa.text(f"ALTER TABLE results DROP COLUMN {column}"))
        conn.execute(schema_info.update().values(value="1"))
        conn.execute(sa.text("INSERT INTO machines VALUES ('m1', '{}', '2026-01-01')"))
        conn.execute(
            sa.text(
                "INSERT INTO results (run_id, created_at, kind, status, machine_hash, qbench_version, model_name,"
                " model_hash, plan_name, plan_hash, plan, backend) VALUES ('r', '2026-01-01', 'bench', 'ok', 'm1',"
                " '0.1.0', 'old', 'h', 'fp32', 'p', '{}', 'onnxruntime')"
            )
        )
    board.close()
    migrated = Leaderboard(url)
    try:
        assert migrated.schema_version == SCHEMA_VERSION == 10
        frame = migrated.frame()
        assert list(frame.model_name) == ["old"] and frame.job.isna().all() and frame.profile.isna().all()
        assert frame.solo_median_ms.isna().all() and list(frame.workload) == ["batch"]
        assert frame.reference_ms.isna().all() and frame.comparison.isna().all()
        assert list(frame.scenario) == ["latency"] and frame.fidelity.isna().all()
        assert frame.row_uid.str.fullmatch("[0-9a-f]{32}").all()  # old rows get an identity from their content
    finally:
        migrated.close()


def test_the_typed_row_is_the_results_table():
    from dataclasses import fields

    from qbench.store import RESULT_COLUMNS, ResultRow

    assert {f.name for f in fields(ResultRow)} - {"id"} == set(RESULT_COLUMNS)


def test_a_typed_row_round_trips_with_its_statistics(board):
    from qbench.store import ResultRow

    row = ResultRow.from_mapping({**_row(current_machine().fingerprint_hash), "accuracy": 0.9})
    row = row.with_samples(np.array([3, 1, 2, 4, 5]) * 1_000_000, noisy_cv=0.1)
    row = row.with_speedup(
        np.array([6, 2, 4, 8, 10]) * 1_000_000, np.array([3, 1, 2, 4, 5]) * 1_000_000, 0.95 - row.accuracy
    )
    assert row.median_ms == 3.0 and row.n_samples == 5 and row.speedup == 2.0
    assert row.accuracy_drop == pytest.approx(0.05)
    assert board.insert(row) == row.id > 0
    stored = board.frame(samples=True).iloc[-1]
    assert stored.median_ms == 3.0 and list(samples_from_bytes(stored.samples_ns)) == [3e6, 1e6, 2e6, 4e6, 5e6]
    assert board.count(status="ok", model_name="m") == 1 and board.count(status="failed") == 0
