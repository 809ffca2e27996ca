import numpy as np
import pytest

from qbench.errors import QbenchError
from qbench.metrics import SQNR_CEILING_DB, get_metric

LOGITS = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 0.0]])


def test_top1():
    assert get_metric("top1", True)(LOGITS, np.array([0, 1, 2, 1]), None) == pytest.approx(0.75)


def test_fidelity_metrics_against_reference():
    noisy = LOGITS + np.array([[0, 0, 3.0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    assert get_metric("top1-agreement", False)(noisy, None, LOGITS) == pytest.approx(0.75)
    assert get_metric("cosine", False)(LOGITS, None, LOGITS) == pytest.approx(1.0)
    assert get_metric("cosine", False)(noisy, None, LOGITS) < 1.0
    assert get_metric("sqnr", False)(LOGITS, None, LOGITS) == SQNR_CEILING_DB
    signal = np.sum(LOGITS**2)
    assert get_metric("sqnr", False)(noisy, None, LOGITS) == pytest.approx(10 * np.log10(signal / 9.0))


def test_defaults_follow_labels():
    assert get_metric(None, True).name == "top1"
    assert get_metric(None, False).name == "cosine"


def test_user_metric_and_errors():
    metric = get_metric("numpy:mean", False)
    assert metric(np.array([1.0, 3.0]), None, None) == 2.0
    with pytest.raises(QbenchError, match="unknown metric 'f1'"):
        get_metric("f1", True)
    with pytest.raises(QbenchError, match="cannot load metric"):
        get_metric("no_such_module_xyz:fn", True)
    with pytest.raises(QbenchError, match="needs labels"):
        get_metric("top1", False)(LOGITS, None, None)
