"""Language-model fidelity: KL, agreement and perplexity from per-window sums, their intervals,
budgets named by metric, and plain text as a decoder's data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qbench.data import Dataset
from qbench.errors import QbenchError
from qbench.fidelity import KL, TokenScorer, from_bfloat16, intervals, to_bfloat16
from qbench.metrics import BUILTIN_METRICS, get_metric
from qbench.runspec import RunSpec, Subject, Tune, parse_budget


def _log_softmax64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _scored(reference: np.ndarray, plans: list[np.ndarray], labels: np.ndarray | None):
    """fp32's sums, then each plan's, through one scorer (fp32 first, as a harness runs them)."""
    data = Dataset({"input_ids": np.zeros((len(reference), 1), np.int64)}, labels, "test")
    scorer = TokenScorer(len(reference))
    try:
        fp32 = scorer.outputs(lambda _feed: reference, data, 0, len(reference), record=True)
        return [fp32] + [scorer.outputs(lambda _feed, out=out: out, data, 0, len(out)) for out in plans]
    finally:
        scorer.close()


def test_kl_agreement_and_perplexity_match_float64_and_fp32_against_itself_is_exactly_zero():
    rng = np.random.default_rng(0)
    vocab = 3000
    fp32 = rng.standard_normal((6, 16, vocab)).astype(np.float32) * 3
    plan = fp32 + rng.standard_normal(fp32.shape).astype(np.float32) * 0.2
    labels = rng.integers(0, vocab, fp32.shape[:2])
    ref_sums, same, plan_sums = _scored(fp32, [fp32.copy(), plan], labels)
    kl, agreement, perplexity = (BUILTIN_METRICS[n] for n in ("kl", "agreement", "perplexity"))
    assert kl(same, None, ref_sums) == 0.0 and agreement(same, None, ref_sums) == 1.0
    assert perplexity(same, labels, ref_sums) == perplexity(ref_sums, labels, ref_sums)

    lp, lq = _log_softmax64(fp32), _log_softmax64(plan)
    exact_kl = float((np.exp(lp) * (lp - lq)).sum(-1).mean())
    assert kl(plan_sums, None, ref_sums) == pytest.approx(exact_kl, rel=2e-3)
    assert agreement(plan_sums, None, ref_sums) == pytest.approx(float((lp.argmax(-1) == lq.argmax(-1)).mean()))
    exact_ppl = float(np.exp(-np.take_along_axis(lq, labels[..., None], -1).mean()))
    assert perplexity(plan_sums, labels, ref_sums) == pytest.approx(exact_ppl, rel=1e-6)
    # How each drop reads: KL itself, agreement lost, perplexity's relative increase.
    assert kl.drop(0.0, 0.03) == pytest.approx(0.03)
    assert agreement.drop(1.0, 0.9) == pytest.approx(0.1)
    assert perplexity.drop(10.0, 10.5) == pytest.approx(0.05)


def test_intervals_are_zero_for_fp32_and_cover_a_plans_figures():
    rng = np.random.default_rng(1)
    fp32 = rng.standard_normal((40, 8, 500)).astype(np.float32) * 2
    plan = fp32 + rng.standard_normal(fp32.shape).astype(np.float32) * 0.3
    labels = rng.integers(0, 500, fp32.shape[:2])
    ref_sums, plan_sums = _scored(fp32, [plan], labels)
    assert intervals(ref_sums, ref_sums) == {
        "kl": [0.0, 0.0, 0.0],
        "agreement_drop": [0.0, 0.0, 0.0],
        "perplexity_change": [0.0, 0.0, 0.0],
    }
    found = intervals(plan_sums, ref_sums)
    for value, low, high in found.values():
        assert low < value < high
    assert found["kl"][0] == pytest.approx(plan_sums[:, KL].sum() / plan_sums[:, 3].sum())
    assert "perplexity_change" not in intervals(_scored(fp32, [plan], None)[1], ref_sums)  # no labels


def test_bfloat16_rounds_to_nearest():
    values = np.array([1.0, 1.00390625, 3.14159, 1e-30, 0.0], np.float32)
    back = from_bfloat16(to_bfloat16(values))
    assert back[0] == 1.0 and back[4] == 0.0
    assert np.all(np.abs(back - values) <= np.abs(values) * 2**-8)


def test_token_metrics_refuse_outputs_that_are_not_logits():
    data = Dataset({"input_ids": np.zeros((2, 1), np.int64)}, None, "test")
    with pytest.raises(QbenchError, match="logits \\[windows, tokens, vocab\\]"):
        TokenScorer(2).outputs(lambda _feed: np.zeros((2, 10), np.float32), data, 0, 2, record=True)


def test_a_decoder_defaults_to_kl_and_the_old_agreement_name_still_works():
    assert get_metric(None, has_labels=True, decoder=True).name == "kl"
    assert get_metric(None, has_labels=True).name == "top1"
    assert get_metric("next-token-agreement", False).name == "agreement"


@pytest.mark.parametrize(
    ("given", "expected"),
    [(0.01, (None, 0.01)), ("1%", (None, 0.01)), ("kl:0.02", ("kl", 0.02)), ("agreement:1%", ("agreement", 0.01))],
)
def test_a_budget_may_name_its_metric(given, expected):
    named, value = parse_budget(given)
    assert named == expected[0] and value == pytest.approx(expected[1])


@pytest.mark.parametrize("bad", ["kl:", "kl:abc", "bogus:0.1", "kl:2", "kl:-0.1", ":0.1x", True])
def test_a_bad_budget_is_one_line(bad):
    with pytest.raises(QbenchError) as caught:
        parse_budget(bad)
    assert "\n" not in str(caught.value)


def test_a_budget_on_a_metric_sets_the_metric_and_refuses_another():
    spec = RunSpec(Subject("smollm2-135m"), tune=Tune(max_drop="kl:0.05"))
    assert spec.subject.metric == "kl" and spec.tune.max_drop == 0.05
    assert RunSpec.from_dict(json.loads(spec.to_json())) == spec  # round trip: the worker sees the same
    with pytest.raises(QbenchError, match="the budget is on kl but the metric is perplexity"):
        RunSpec(Subject("smollm2-135m", metric="perplexity"), tune=Tune(max_drop="kl:0.05"))
    plain = RunSpec(Subject("m.onnx"), tune=Tune(max_drop=0.01))
    assert "budget_metric" not in plain.to_dict()["tune"]  # tunes from before keep their hash
