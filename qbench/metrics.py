"""Accuracy metrics: task metrics against labels, and fidelity against the fp32 outputs.

Every metric is "higher is better". A metric sees the model's first output for the whole
evaluation set (samples on axis 0), the labels if the data has them, and the fp32 baseline's
first output (``reference``), measured in the same run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qbench.errors import QbenchError

# Bit-identical outputs have infinite SQNR; we store this ceiling instead so tables and SQL
# stay finite. float32 rounding noise sits near 140 dB, so nothing real reaches it.
SQNR_CEILING_DB = 200.0

MetricFn = Callable[[np.ndarray, "np.ndarray | None", "np.ndarray | None"], float]


@dataclass(frozen=True)
class Metric:
    name: str
    fn: MetricFn
    needs_labels: bool
    needs_reference: bool

    def __call__(self, outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None) -> float:
        if self.needs_labels and labels is None:
            raise QbenchError(
                f"metric {self.name!r} needs labels: add a 'labels' array to the data file or use --metric cosine"
            )
        return float(self.fn(outputs, labels, reference))


def _top1(outputs: np.ndarray, labels: np.ndarray | None, _reference: np.ndarray | None) -> float:
    predictions = outputs.reshape(len(outputs), -1).argmax(axis=1)
    return float(np.mean(predictions == labels.reshape(-1)))


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), -1).astype(np.float64)


def _cosine(outputs: np.ndarray, _labels: np.ndarray | None, reference: np.ndarray) -> float:
    out, ref = _flat(outputs), _flat(reference)
    norms = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
    cos = np.sum(out * ref, axis=1) / np.maximum(norms, 1e-30)
    return float(np.mean(cos))


def _sqnr(outputs: np.ndarray, _labels: np.ndarray | None, reference: np.ndarray) -> float:
    ref = _flat(reference)
    noise = float(np.sum((ref - _flat(outputs)) ** 2))
    if noise == 0.0:
        return SQNR_CEILING_DB
    return min(SQNR_CEILING_DB, 10.0 * np.log10(float(np.sum(ref**2)) / noise))


def _top1_agreement(outputs: np.ndarray, _labels: np.ndarray | None, reference: np.ndarray) -> float:
    return float(np.mean(_flat(outputs).argmax(axis=1) == _flat(reference).argmax(axis=1)))


BUILTIN_METRICS = {
    "top1": Metric("top1", _top1, needs_labels=True, needs_reference=False),
    "cosine": Metric("cosine", _cosine, needs_labels=False, needs_reference=True),
    "sqnr": Metric("sqnr", _sqnr, needs_labels=False, needs_reference=True),
    "top1-agreement": Metric("top1-agreement", _top1_agreement, needs_labels=False, needs_reference=True),
}


def get_metric(spec: str | None, has_labels: bool) -> Metric:
    """A built-in metric by name, a user function ``module:function``, or the default:
    ``top1`` when the data has labels, else ``cosine`` against fp32."""
    if spec is None:
        return BUILTIN_METRICS["top1" if has_labels else "cosine"]
    if spec in BUILTIN_METRICS:
        return BUILTIN_METRICS[spec]
    if ":" not in spec:
        raise QbenchError(f"unknown metric {spec!r}: use one of {', '.join(BUILTIN_METRICS)} or module:function")
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise QbenchError(f"cannot load metric {spec!r}: {exc}") from exc
    if not callable(fn):
        raise QbenchError(f"metric {spec!r} is not callable; it must be fn(outputs, labels, reference) -> float")
    return Metric(spec, fn, needs_labels=False, needs_reference=False)
