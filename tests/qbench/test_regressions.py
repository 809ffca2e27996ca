"""Regression detection on a real SQLite leaderboard: a measured run, then reruns of the same
job derived from it (slower, unchanged, less accurate), judged by `qbench report`."""

from __future__ import annotations

import importlib
import shutil

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


@pytest.fixture(scope="module")
def benched_once(tmp_path_factory, demo_400):
    results = tmp_path_factory.mktemp("benched")
    assert main(["bench", *demo_400, "--quick", "-q", "--results-dir", str(results)]) == 0
    return results


@pytest.fixture
def measured(benched_once, tmp_path):
    """A results dir of its own with one real quick bench of the demo (fp32 + int8)."""
    shutil.copy(benched_once / "leaderboard.db", tmp_path / "leaderboard.db")
    return tmp_path


def _rerun(
    results,
    scale: float = 1.0,
    accuracy_shift: float = 0.0,
    run_id: str = "rerun",
    reference_ms: float | None = None,
    comparison: dict | None = None,
    steady: bool = False,
) -> int:
    """Record the int8 row again as a later run of the same job, its samples scaled; return its
    id. ``steady``: samples drawn tightly around the row's median instead (timed in blocks on a
    loaded machine, real samples cluster by block, and raw-median tests of them are weak)."""
    board = Leaderboard(default_url(results))
    try:
        row = board.frame(samples=True).query("plan_name == 'int8'").iloc[-1]
        values = {c: row[c] for c in RESULT_COLUMNS if c in row.index and c not in ("id", "created_at", "row_uid")}
        samples = samples_from_bytes(row.samples_ns)
        if steady:
            samples = np.median(samples) * np.random.default_rng(0).lognormal(0.0, 0.03, 300)
        samples = (samples * scale).astype(np.int64)
        values.update(
            run_id=run_id,
            samples_ns=samples_to_bytes(samples),
            median_ms=float(np.median(samples)) / 1e6,
            accuracy=row.accuracy + accuracy_shift,
            reference_ms=reference_ms,
            comparison=None if comparison is None else {"previous_id": int(row.id), **comparison},
        )
        values = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in values.items()}
        return board.insert({k: (None if _missing(v) else v) for k, v in values.items()})
    finally:
        board.close()


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _ab(ratio: float, low: float, high: float, p: float = 1e-9) -> dict:
    """A stored in-process comparison with the given ratio, interval and p."""
    return {"method": "in-process A/B", "before_ms": 1.0, "after_ms": ratio, "ratio": ratio} | {
        "ci_low": low,
        "ci_high": high,
        "p": p,
        "previous_run": "x",
        "rebuilt": False,
    }


def _changes(results):
    board = Leaderboard(default_url(results))
    try:
        return find_changes(board.frame(samples=True))
    finally:
        board.close()


def test_a_slower_rerun_is_a_regression_and_fails_the_report(measured, capsys):
    _rerun(measured, run_id="steady", steady=True)
    _rerun(measured, scale=1.4)
    changes = _changes(measured)
    # Raw medians (no A/B): steady samples, since blocks timed on a busy machine cluster by block.
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


def test_drift_of_the_whole_machine_cancels_in_normalized_medians(measured):
    _rerun(measured, run_id="night-1", reference_ms=1.0)
    _rerun(measured, scale=1.25, run_id="night-2", reference_ms=1.25)  # everything 25 % slower, reference too
    assert _changes(measured).empty


def test_a_slowdown_the_reference_did_not_see_is_flagged_as_normalized(measured):
    _rerun(measured, run_id="night-1", reference_ms=1.0, steady=True)
    _rerun(measured, scale=1.25, run_id="night-2", reference_ms=1.0, comparison={"why_not": "onnxruntime a → b"})
    changes = _changes(measured)
    assert list(changes.method) == ["normalized by reference"] and changes.regression.all()
    assert "onnxruntime a → b" in changes.note.iloc[0] and "reference 1.000 → 1.000 ms" in changes.note.iloc[0]


def test_the_in_process_ab_decides_over_raw_medians(measured):
    _rerun(measured, scale=1.25, run_id="raw-slower-ab-same", comparison=_ab(1.01, 0.99, 1.03))
    assert _changes(measured).empty  # the process was slower, not the plan
    _rerun(measured, scale=1.0, run_id="raw-same-ab-slower", comparison=_ab(1.12, 1.10, 1.14))
    changes = _changes(measured)
    assert list(changes.method) == ["in-process A/B"] and changes.regression.all()
    assert changes["ratio (95% CI)"].iloc[0] == "1.120 (1.100–1.140)" and changes.change.iloc[0] == "+12.0%"


@pytest.mark.parametrize(
    ("ratio", "low", "high", "p", "verdict"),
    [
        (1.12, 1.10, 1.14, 1e-9, "regression"),
        (1.12, 0.97, 1.30, 1e-9, "withheld"),  # an interval wider than the threshold cannot decide it
        (1.12, 1.10, 1.14, 0.2, None),  # the test sees noise
        (1.08, 1.06, 1.10, 1e-9, None),  # real, but inside the 10 % threshold
        (0.85, 0.83, 0.87, 1e-9, "improvement"),  # faster
    ],
)
def test_the_decision_rule(measured, ratio, low, high, p, verdict):
    _rerun(measured, run_id="after", comparison=_ab(ratio, low, high, p))
    changes = _changes(measured)
    assert len(changes) == int(verdict is not None)
    if verdict is not None:
        assert changes.verdict.iloc[0].startswith(verdict)
        assert bool(changes.regression.iloc[0]) == (verdict == "regression")


@pytest.mark.parametrize(
    ("aa", "ab", "verdict"),
    [
        ((1.01, 0.995, 1.02), (1.00, 0.99, 1.01), None),  # a quiet unchanged night
        ((1.01, 0.995, 1.02), (1.14, 1.12, 1.16), "regression"),
        ((0.95, 0.945, 0.951), (1.00, 0.99, 1.01), None),  # sessions differ by 5 %: still clearly under 10 %
        ((0.95, 0.945, 0.951), (1.058, 1.055, 1.063), "withheld"),  # +5.8 % could be +12 % at the widened end
        ((1.04, 0.93, 1.09), (1.14, 1.06, 1.22), "withheld"),  # a slowdown under load: withheld, not passed
        ((1.04, 0.93, 1.09), (1.14, 1.12, 1.16), "regression"),  # ...unless it holds even widened by the A/A
        ((1.04, 0.97, 1.05), (1.25, 1.23, 1.27), "regression"),  # past the threshold even widened by the A/A
    ],
)
def test_the_a_a_check_widens_the_verdict_and_withholds_what_the_machine_cannot_decide(measured, aa, ab, verdict):
    comparison = _ab(*ab) | dict(zip(("aa_ratio", "aa_ci_low", "aa_ci_high"), aa, strict=True))
    _rerun(measured, run_id="after", comparison=comparison)
    changes = _changes(measured)
    assert len(changes) == int(verdict is not None)
    if verdict is not None:
        assert changes.verdict.iloc[0].startswith(verdict) and "A/A" in changes.note.iloc[0]
        assert bool(changes.regression.iloc[0]) == (verdict == "regression")


@pytest.mark.parametrize("name", ["TimingProtocol", "QUICK_PROTOCOL"])
def test_every_protocol_times_enough_blocks_to_reach_significance(name):
    """A Wilcoxon test over n block ratios cannot go below p = 2 / 2**n: with too few blocks a
    protocol could never flag a regression, however large."""
    from qbench.statistics import latency_change

    protocol = getattr(importlib.import_module("qbench.measure"), name)
    protocol = protocol() if isinstance(protocol, type) else protocol
    block = 4
    before = np.full(protocol.min_blocks * block, 1e6)
    after = before * np.repeat(1.5 + 0.01 * np.arange(protocol.min_blocks), block)
    assert latency_change(before, after, paired=True, block=block).p < ALPHA
