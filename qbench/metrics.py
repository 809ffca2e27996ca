"""Accuracy metrics: task metrics against labels, and fidelity against the fp32 outputs.

Most metrics are "higher is better" and their drop is fp32's score minus the plan's. A metric
sees the model's first output for the whole evaluation set (samples on axis 0), the labels if
the data has them, and the fp32 baseline's first output (``reference``), measured in the same run.

The language-model metrics (``token_level``) see instead four sums per window that
``qbench.fidelity`` reduces the logits to as they come out (the logits of a large evaluation set
do not fit in memory): ``kl`` (mean KL divergence per token from fp32's distribution, lower is
better, its drop is the KL itself), ``agreement`` (share of positions whose greedy token is
fp32's) and ``perplexity`` (lower is better; its drop is the relative increase over fp32, 0.05 =
5 % higher, so one ``--max-drop`` reads the same on any text).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qbench import fidelity
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

    labels_check: Callable[[np.ndarray, np.ndarray], str | None] | None = None
    #: How the drop is read: "difference" (fp32 minus the plan: higher is better), "increase"
    #: (the plan minus fp32: lower is better, in the metric's unit) or "relative" (plan / fp32 - 1).
    drop_style: str = "difference"
    token_level: bool = False  # sees qbench.fidelity's per-window sums, not the logits

    def drop(self, baseline: float, value: float) -> float:
        """How much worse ``value`` is than fp32's ``baseline`` (negative: better)."""
        if self.drop_style == "relative":
            return value / baseline - 1.0
        if self.drop_style == "increase":
            return value - baseline
        return baseline - value

    def check_labels(self, labels: np.ndarray | None, outputs: np.ndarray, source: str) -> None:
        """Refuse labels this metric would silently misread (a wrong score with exit 0), given the
        fp32 outputs; call it once, before any plan is scored."""
        if labels is None or self.labels_check is None:
            return
        problem = self.labels_check(np.asarray(labels), np.asarray(outputs))
        if problem:
            raise QbenchError(f"{source}: 'labels' {problem} (metric {self.name})")

    def __call__(self, outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None) -> float:
        if self.needs_labels and labels is None:
            raise QbenchError(
                f"metric {self.name!r} needs labels: add a 'labels' array to the data file or use --metric cosine"
            )
        value = self.fn(outputs, labels, reference)
        try:
            if isinstance(value, str | bytes) or np.size(value) != 1:
                raise TypeError
            return float(np.asarray(value).reshape(()))
        except (TypeError, ValueError):
            shown = repr(value) if len(repr(value)) < 60 else f"a {type(value).__name__}"
            raise QbenchError(f"metric {self.name!r} must return a float, but returned {shown}") from None


def _top1(outputs: np.ndarray, labels: np.ndarray | None, _reference: np.ndarray | None) -> float:
    predictions = outputs.reshape(len(outputs), -1).argmax(axis=1)
    return float(np.mean(predictions == labels.reshape(-1)))


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), -1).astype(np.float64)


def _cosine(outputs: np.ndarray, _labels: np.ndarray | None, reference: np.ndarray) -> float:
    out, ref = _flat(outputs), _flat(reference)
    norms = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
    cos = np.sum(out * ref, axis=1) / np.maximum(norms, 1e-30)
    # Two all-zero outputs are the same output (the angle is undefined; 0 would say "unrelated").
    same_zero = (norms == 0) & np.all(out == ref, axis=1)
    return float(np.mean(np.where(same_zero, 1.0, cos)))


def _sqnr(outputs: np.ndarray, _labels: np.ndarray | None, reference: np.ndarray) -> float:
    ref = _flat(reference)
    noise = float(np.sum((ref - _flat(outputs)) ** 2))
    if noise == 0.0:
        return SQNR_CEILING_DB
    return min(SQNR_CEILING_DB, 10.0 * np.log10(float(np.sum(ref**2)) / noise))


def _top1_agreement(outputs: np.ndarray, _labels: np.ndarray | None, reference: np.ndarray) -> float:
    return float(np.mean(_flat(outputs).argmax(axis=1) == _flat(reference).argmax(axis=1)))


def _knn_top1(outputs: np.ndarray, labels: np.ndarray | None, _reference: np.ndarray | None) -> float:
    """Embeddings: share of samples whose nearest other sample (by cosine) has the same label."""
    emb = _flat(outputs)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-30)
    similarity = emb @ emb.T
    np.fill_diagonal(similarity, -np.inf)
    labels = labels.reshape(-1)
    return float(np.mean(labels[similarity.argmax(axis=1)] == labels))


def ctc_greedy_decode(logits: np.ndarray) -> list[list[int]]:
    """Best path of [samples, time, classes] CTC outputs: repeats collapsed, blanks (0) dropped."""
    best = logits.argmax(axis=-1)
    keep = np.concatenate([np.ones((len(best), 1), bool), best[:, 1:] != best[:, :-1]], axis=1) & (best != 0)
    return [row[k].tolist() for row, k in zip(best, keep, strict=True)]


def _edit_distance(a: list[int], b: list[int]) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _ctc_chars(outputs: np.ndarray, labels: np.ndarray | None, _reference: np.ndarray | None) -> float:
    """Text recognition: character accuracy, 1 - edit distance / label length, over all lines.
    Labels are class indices padded with negative values."""
    decoded = ctc_greedy_decode(outputs)
    truths = [[int(c) for c in row if c >= 0] for row in labels.reshape(len(labels), -1)]
    errors = sum(_edit_distance(d, t) for d, t in zip(decoded, truths, strict=True))
    return 1.0 - errors / max(1, sum(len(t) for t in truths))


def _mask_dice(outputs: np.ndarray, labels: np.ndarray | None, _reference: np.ndarray | None) -> float:
    """Segmentation / text detection: Dice of the probability map above 0.3 against 0/1 masks."""
    predicted = outputs.reshape(labels.shape) > 0.3
    truth = labels.astype(bool)
    overlap = np.sum(predicted & truth, axis=tuple(range(1, truth.ndim)))
    sizes = np.sum(predicted, axis=tuple(range(1, truth.ndim))) + np.sum(truth, axis=tuple(range(1, truth.ndim)))
    return float(np.mean(2.0 * overlap / np.maximum(sizes, 1)))


def _load_file(path: str):
    import importlib.util
    import pathlib

    if not pathlib.Path(path).is_file():
        raise ImportError(f"no such file: {path}")
    spec = importlib.util.spec_from_file_location(f"qbench_user_metric_{pathlib.Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _class_indices(labels: np.ndarray, classes: int, per_sample: int | None) -> str | None:
    """What is wrong with ``labels`` as integer class indices below ``classes`` (``per_sample``
    of them per sample, or any number padded with negative values when None), or None."""
    if labels.dtype.kind not in "iuf":
        return f"are {labels.dtype} values; this metric wants integer class indices"
    if labels.dtype.kind == "f" and not np.all(np.isfinite(labels) & (labels == np.round(labels))):
        return "hold non-integer values; this metric wants integer class indices"
    values = labels.reshape(len(labels), -1)
    if per_sample is not None and values.shape[1] != per_sample:
        return f"have shape {list(labels.shape)}; this metric wants one class index per sample, shape [{len(labels)}]"
    if per_sample is not None and values.min(initial=0) < 0:
        return f"hold negative values (min {values.min():g}); class indices start at 0"
    if values.max(initial=-1) >= classes:
        return f"go up to {values.max():g}, but the model's output has {classes} classes (0 to {classes - 1})"
    return None


def _top1_labels(labels: np.ndarray, outputs: np.ndarray) -> str | None:
    return _class_indices(labels, int(np.prod(outputs.shape[1:])), per_sample=1)


def _next_token_labels(labels: np.ndarray, outputs: np.ndarray) -> str | None:
    if outputs.ndim != 3 or labels.shape != outputs.shape[:2]:
        shape = list(outputs.shape)
        return f"have shape {list(labels.shape)}; perplexity wants the next token id of each position of logits {shape}"
    if labels.dtype.kind in "iu" and labels.min(initial=0) < 0:
        return f"hold negative values (min {labels.min()}); token ids start at 0"
    return _class_indices(labels, outputs.shape[-1], per_sample=None)


def _knn_labels(labels: np.ndarray, _outputs: np.ndarray) -> str | None:
    if labels.dtype.kind not in "iufUSb" or labels.reshape(len(labels), -1).shape[1] != 1:
        return f"have shape {list(labels.shape)} and type {labels.dtype}; knn-top1 wants one label per sample"
    return None


def _ctc_labels(labels: np.ndarray, outputs: np.ndarray) -> str | None:
    return _class_indices(labels, outputs.shape[-1], per_sample=None)


def _mask_labels(labels: np.ndarray, outputs: np.ndarray) -> str | None:
    if labels.size != outputs.size:
        return f"have shape {list(labels.shape)}, but the model's output is {list(outputs.shape)}; masks must match it"
    if not np.all((labels == 0) | (labels == 1)):
        return "hold values other than 0 and 1; masks are 0/1"
    return None


def _token_metric(
    name: str, figure: Callable[[np.ndarray], float], drop_style: str = "difference", needs_labels: bool = False
) -> Metric:
    """A language-model metric: ``figure`` of ``qbench.fidelity``'s per-window sums; fp32's own
    distributions are its reference unless it reads the labels alone."""
    return Metric(
        name,
        lambda stats, _labels, _reference: figure(stats),
        needs_labels=needs_labels,
        needs_reference=not needs_labels,
        labels_check=_next_token_labels,
        drop_style=drop_style,
        token_level=True,
    )


BUILTIN_METRICS = {
    "top1": Metric("top1", _top1, needs_labels=True, needs_reference=False, labels_check=_top1_labels),
    "cosine": Metric("cosine", _cosine, needs_labels=False, needs_reference=True),
    "sqnr": Metric("sqnr", _sqnr, needs_labels=False, needs_reference=True),
    "top1-agreement": Metric("top1-agreement", _top1_agreement, needs_labels=False, needs_reference=True),
    "knn-top1": Metric("knn-top1", _knn_top1, needs_labels=True, needs_reference=False, labels_check=_knn_labels),
    "ctc-chars": Metric("ctc-chars", _ctc_chars, needs_labels=True, needs_reference=False, labels_check=_ctc_labels),
    "mask-dice": Metric("mask-dice", _mask_dice, needs_labels=True, needs_reference=False, labels_check=_mask_labels),
    "kl": _token_metric("kl", fidelity.mean_kl, drop_style="increase"),
    "agreement": _token_metric("agreement", fidelity.agreement),
    "perplexity": _token_metric("perplexity", fidelity.perplexity, drop_style="relative", needs_labels=True),
}
#: Earlier names of built-in metrics.
ALIASES = {"next-token-agreement": "agreement"}


def get_metric(spec: str | None, has_labels: bool, decoder: bool = False) -> Metric:
    """A built-in metric by name, a user function, or the default: ``kl`` for a decoder LLM,
    ``top1`` when the data has labels, else ``cosine`` against fp32.

    A user function is ``path/to/file.py:function`` (that file, loaded by path) or
    ``module:function`` (imported from the installed packages and $PYTHONPATH). qbench runs as a
    console script and starts its workers with ``python -P``, so the current directory is never
    searched: the same spec finds the same code in ``bench``, ``tune`` and every nightly worker.
    Either form runs that code, like a pytest conftest."""
    if spec is None:
        return BUILTIN_METRICS["kl" if decoder else "top1" if has_labels else "cosine"]
    spec = ALIASES.get(spec, spec)
    if spec in BUILTIN_METRICS:
        return BUILTIN_METRICS[spec]
    if ":" not in spec:
        raise QbenchError(f"unknown metric {spec!r}: use one of {', '.join(BUILTIN_METRICS)} or module:function")
    module_name, _, attr = spec.partition(":")
    try:
        module = _load_file(module_name) if module_name.endswith(".py") else importlib.import_module(module_name)
        fn = getattr(module, attr)
    except (ImportError, AttributeError, OSError, SyntaxError) as exc:
        raise QbenchError(
            f"cannot load metric {spec!r}: {exc} (use path/to/file.py:function, or module:function for a module "
            "on $PYTHONPATH or installed; the current directory is not searched)"
        ) from exc
    if not callable(fn):
        raise QbenchError(f"metric {spec!r} is not callable; it must be fn(outputs, labels, reference) -> float")
    return Metric(spec, fn, needs_labels=False, needs_reference=False)
