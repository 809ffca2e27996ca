"""How closely a language model's next-token distributions follow fp32's, scored window by window.

A decoder's logits ``[windows, tokens, vocab]`` are too large to keep for a whole evaluation set
(32,768 tokens of a 49,152-word vocabulary are 6.4 GB in float32), so each batch is reduced as it
comes out of the runtime to four sums per window (``STATS``): the KL divergence of the plan's
distribution from fp32's (fp32 ‖ plan, in nats), the positions whose greedy token is fp32's, the
negative log-likelihood of the labels, and the token count.

fp32's distributions are kept once, on disk, as bfloat16 probabilities ``p`` (the upper half of
each float32, rounded: 2 bytes per token per vocabulary entry, and unlike float16 converted with
integer shifts, 5x faster in numpy); the baseline's pass writes them, with ``sum(p * log p)``
per position. A plan's pass reads them back for the same windows: per position,
``KL = sum(p log p) - sum(p log q)``, and ``sum(p log q)`` is one dot product of ``p`` with the
plan's logits less its log-normalizer times ``sum(p)``: no vocabulary-sized log-probabilities are
written. fp32 against itself runs the same arithmetic on the same numbers and is exactly zero
(its own pass records its KL as 0 and every greedy token as agreeing, without scoring again);
rounding ``p`` to bfloat16 (8 significant bits) moves a KL by a relative 1e-3 or less (tested).

Metrics then work on the ``[windows, 4]`` sums like any other output (``qbench.metrics``):
``kl`` (mean per token), ``agreement`` (share of positions) and ``perplexity``, and
``intervals`` gives each one's drop from fp32 with a 95 % bootstrap interval over windows
(paired: the same resampled windows for the plan and fp32).
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Callable, Mapping

import numpy as np

from qbench.errors import QbenchError

STATS = ("kl", "agree", "nll", "tokens")
KL, AGREE, NLL, TOKENS = range(len(STATS))
#: Windows per runtime call: a batch of 128-token windows' logits is ~25 MB per window in float32.
TOKEN_BATCH = 8
BOOTSTRAP_RESAMPLES = 2000


def to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 -> the upper 16 bits, rounded to nearest (as uint16); finite inputs only."""
    bits = values.view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bfloat16(halves: np.ndarray) -> np.ndarray:
    return (halves.astype(np.uint32) << 16).view(np.float32)


def _log_normalizer(logits: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """log sum exp over the vocabulary of ``logits`` ``[tokens, vocab]`` (float64 ``[tokens]``);
    ``scratch`` is a float32 buffer of the same shape."""
    peak = logits.max(axis=-1)
    np.subtract(logits, peak[:, None], out=scratch)
    np.exp(scratch, out=scratch)
    return peak + np.log(scratch.sum(axis=-1, dtype=np.float64))


def _cross(probs: np.ndarray, logits: np.ndarray, log_normalizer: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """``sum(p * log q)`` per position, where ``log q = logits - log_normalizer``."""
    dots = np.matmul(probs[:, None, :], logits[:, :, None])[:, 0, 0]
    return dots.astype(np.float64) - log_normalizer * mass


def _nll(log_normalizer: np.ndarray, logits: np.ndarray, labels: np.ndarray | None) -> float:
    """The window's negative log-likelihood of ``labels`` (NaN without labels)."""
    if labels is None:
        return np.nan
    return float(np.sum(log_normalizer - logits[np.arange(len(labels)), labels]))


class Reference:
    """fp32's distributions over one evaluation set: bfloat16 probabilities in a file under the
    temporary directory (removed by ``close``), and per position ``sum(p log p)``, ``sum(p)`` and
    the greedy token."""

    def __init__(self, windows: int, tokens: int, vocab: int) -> None:
        need = windows * tokens * vocab * 2
        folder = tempfile.gettempdir()
        free = _free_bytes(folder)
        if free is not None and need > free:
            raise QbenchError(
                f"fp32's distributions over {windows} windows x {tokens} tokens x {vocab} vocabulary need "
                f"{need / 2**30:.1f} GiB in {folder}, which has {free / 2**30:.1f} GiB free: set TMPDIR to a "
                "larger disk or evaluate fewer windows"
            )
        handle, name = tempfile.mkstemp(prefix="qbench-fp32-probs-", suffix=".bf16")
        os.close(handle)
        self.path = pathlib.Path(name)
        self.probs = np.memmap(self.path, np.uint16, mode="w+", shape=(windows, tokens, vocab))  # bfloat16
        self.self_cross = np.zeros((windows, tokens))
        self.mass = np.zeros((windows, tokens))
        self.greedy = np.zeros((windows, tokens), np.int64)

    def record(self, window: int, logits: np.ndarray, labels: np.ndarray | None, scratch: np.ndarray) -> list:
        """Store fp32's window ``logits`` ``[tokens, vocab]``; its four sums (KL 0, all agreeing)."""
        normalizer = _log_normalizer(logits, scratch)
        np.subtract(logits, normalizer.astype(np.float32)[:, None], out=scratch)
        np.exp(scratch, out=scratch)
        self.probs[window] = to_bfloat16(scratch)
        probs = from_bfloat16(self.probs[window])
        self.mass[window] = probs.sum(axis=-1, dtype=np.float64)
        self.self_cross[window] = _cross(probs, logits, normalizer, self.mass[window])
        self.greedy[window] = logits.argmax(axis=-1)
        return [0.0, float(len(logits)), _nll(normalizer, logits, labels), float(len(logits))]

    def window_stats(self, window: int, logits: np.ndarray, labels: np.ndarray | None, scratch: np.ndarray) -> list:
        """The four sums of one window of the plan's ``logits`` ``[tokens, vocab]``."""
        normalizer = _log_normalizer(logits, scratch)
        probs = from_bfloat16(self.probs[window])
        kl = self.self_cross[window] - _cross(probs, logits, normalizer, self.mass[window])
        agree = np.sum(logits.argmax(axis=-1) == self.greedy[window])
        return [float(kl.sum()), float(agree), _nll(normalizer, logits, labels), float(len(logits))]

    def close(self) -> None:
        del self.probs
        self.path.unlink(missing_ok=True)


def _free_bytes(folder: str) -> int | None:
    try:
        stat = os.statvfs(folder)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


class TokenScorer:
    """Runs an evaluation set of ``windows`` windows through a decoder batch by batch and keeps
    only ``STATS`` per window. fp32's calls (``record=True``) record its distributions for the
    next windows in order, as far as they are needed (a sequential check scores a prefix); a
    plan's call scores windows ``[start, start + len(data))`` against them."""

    def __init__(self, windows: int, check_labels: Callable[[np.ndarray, np.ndarray], None] | None = None) -> None:
        self.windows = windows
        self.reference: Reference | None = None
        self.recorded = 0  # fp32's distributions are on disk for windows [0, recorded)
        self._check_labels = check_labels

    def outputs(
        self, run: Callable[[Mapping[str, np.ndarray]], np.ndarray], data, start: int, batch: int, record: bool = False
    ):
        if record and start != self.recorded:
            raise AssertionError(f"fp32 records windows in order: {self.recorded} next, not {start}")
        if not record and start + len(data) > self.recorded:
            raise AssertionError(f"windows up to {start + len(data)} scored, fp32's recorded up to {self.recorded}")
        rows, offset = [], start
        for feed in data.batches(batch):
            logits = np.asarray(run(feed), np.float32)
            if logits.ndim != 3:
                raise QbenchError(
                    f"token metrics want logits [windows, tokens, vocab], but the model's first output has shape "
                    f"{list(logits.shape)}; use --metric cosine for other models"
                )
            n = len(logits)
            labels = None if data.labels is None else data.labels[offset - start : offset - start + n]
            if labels is not None and self._check_labels is not None:
                self._check_labels(labels, logits)
            if self.reference is None:
                self.reference = Reference(self.windows, logits.shape[1], logits.shape[2])
            if self.reference.probs.shape[1:] != logits.shape[1:]:
                have, want = list(logits.shape[1:]), list(self.reference.probs.shape[1:])
                raise QbenchError(f"logits of shape {have} per window, but fp32's were {want}")
            scratch = np.empty(logits.shape[1:], np.float32)
            for i in range(n):
                window_labels = None if labels is None else labels[i].astype(np.int64)
                score = self.reference.record if record else self.reference.window_stats
                rows.append(score(offset + i, logits[i], window_labels, scratch))
            offset += n
        if record and self.reference is not None:
            self.reference.probs.flush()
            self.recorded = offset
        return np.array(rows, np.float64).reshape(-1, len(STATS))

    def close(self) -> None:
        if self.reference is not None:
            self.reference.close()
            self.reference = None


# -- metrics on the per-window sums ---------------------------------------------------------------


def mean_kl(stats: np.ndarray) -> float:
    return float(stats[:, KL].sum() / stats[:, TOKENS].sum())


def agreement(stats: np.ndarray) -> float:
    return float(stats[:, AGREE].sum() / stats[:, TOKENS].sum())


def perplexity(stats: np.ndarray) -> float:
    return float(np.exp(stats[:, NLL].sum() / stats[:, TOKENS].sum()))


#: The fidelity figure a budget on each token metric is judged on.
BUDGET_FIGURES = {"kl": "kl", "agreement": "agreement_drop", "perplexity": "perplexity_change"}


def budget_interval(fidelity: Mapping[str, list[float]] | None, metric: str | None) -> tuple[float, float] | None:
    """The 95 % interval of the figure a budget on ``metric`` is judged on, from a row's fidelity."""
    figure = BUDGET_FIGURES.get(metric or "")
    if not fidelity or figure not in fidelity:
        return None
    _, low, high = fidelity[figure]
    return low, high


def intervals(plan: np.ndarray, fp32: np.ndarray, seed: int = 0) -> dict[str, list[float]]:
    """Each fidelity figure's change from fp32, ``[value, low, high]`` with a 95 % percentile
    bootstrap over windows (the same resampled windows for both, so the pairing is kept):
    ``kl`` (nats per token), ``agreement_drop`` (1 - agreement), ``perplexity_change``
    (relative; absent without labels)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(plan), size=(BOOTSTRAP_RESAMPLES, len(plan)))
    tokens = plan[picks, TOKENS].sum(axis=1)
    draws = {
        "kl": plan[picks, KL].sum(axis=1) / tokens,
        "agreement_drop": 1.0 - plan[picks, AGREE].sum(axis=1) / tokens,
    }
    found = {"kl": mean_kl(plan), "agreement_drop": 1.0 - agreement(plan)}
    if np.isfinite(plan[:, NLL]).all():
        draws["perplexity_change"] = np.exp((plan[picks, NLL].sum(axis=1) - fp32[picks, NLL].sum(axis=1)) / tokens) - 1
        found["perplexity_change"] = perplexity(plan) / perplexity(fp32) - 1.0
    return {
        name: [found[name], float(np.percentile(draw, 2.5)), float(np.percentile(draw, 97.5))]
        for name, draw in draws.items()
    }
