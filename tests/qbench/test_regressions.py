"""Regression detection on a real SQLite leaderboard: a measured run, then reruns of the same
job derived from it (slower, unchanged, less accurate), judged by `qbench report`."""

from __future__ import annotations

import numpy as np
import pytest

from qbench.cli import main
from qbench.report.regressions import ALPHA, find_changes
from qbench.statistics import mann_whitney_p
from qbench.store import RESULT_COLUMNS, Leaderboard, default_url, samples_from_bytes, samples_to_bytes


def test_mann_whitney_flags_a_shift_and_not_noise_with_ties():
    rng = np.random.default_rng(0)
    a = np.round(rng.normal(1.0, 0.1, 300), 2)  # rounding makes ties, as timer resolution does
    same = np.round(rng.normal(1.0, 0.1, 200), 2)
    shifted = np.round(rng.normal(1.3, 0.1, 200), 2)
    assert mann_whitney_p(a, same) > ALPHA
    assert mann_whitney_p(a, shifted) < 1e-6
    assert mann_whitney_p(np.ones(5), np.ones(7)) == 1.0  # all tied: no evidence


@pytest.fixture
def measured(tmp_path):
    """A results dir with one real quick bench of the demo (fp32 + int8)."""
    assert main(["bench", "--quick", "-q", "--results-dir", str(tmp_path)]) == 0
    return tmp_path


def _rerun(results, scale: float = 1.0, accuracy_shift: float = 0.0, run_id: str = "rerun") -> None:
    """Record the int8 row again as a later run of the same job, its samples scaled."""
    board = Leaderboard(default_url(results))
    try:
        row = board.frame(samples=True).query("plan_name == 'int8'").iloc[-1]
        values = {c: row[c] for c in RESULT_COLUMNS if c in row.index and c not in ("id", "created_at")}
        samples = (samples_from_bytes(row.samples_ns) * scale).astype(np.int64)
        values.update(
            run_id=run_id,
            samples_ns=samples_to_bytes(samples),
            median_ms=float(np.median(samples)) / 1e6,
            accuracy=row.accuracy + accuracy_shift,
        )
        board.insert({k: (v.item() if isinstance(v, np.generic) else v) for k, v in values.items()})
    finally:
        board.close()


def _changes(results):
    board = Leaderboard(default_url(results))
    try:
        return find_changes(board.frame(samples=True))
    finally:
        board.close()


def test_a_slower_rerun_is_a_regression_and_fails_the_report(measured, capsys):
    _rerun(measured, scale=1.25)
    changes = _changes(measured)
    # A quick protocol's ~20 samples on a busy single core overlap a 25 % shift more than on an
    # idle machine (p was 1e-7 idle, above 1e-6 under taskset -c 0 beside a second test run).
    assert list(changes.what) == ["latency"] and changes.regression.all() and changes.p.iloc[0] < ALPHA
    assert main(["report", "--results-dir", str(measured), "--fail-on-regression"]) == 3
    assert "regression" in capsys.readouterr().out
    assert "latency" in (measured / "regressions.md").read_text()


def test_an_unchanged_rerun_and_a_small_slowdown_are_not_flagged(measured):
    _rerun(measured, scale=1.0, run_id="same")
    _rerun(measured, scale=1.05, run_id="five-percent")  # below the 10 % threshold
    assert _changes(measured).empty
    assert main(["report", "--results-dir", str(measured), "--fail-on-regression", "-q"]) == 0


def test_an_accuracy_drop_beyond_the_tolerance_is_a_regression(measured):
    _rerun(measured, accuracy_shift=-0.01)
    changes = _changes(measured)
    assert list(changes.what) == ["accuracy (top1)"] and changes.regression.all()
