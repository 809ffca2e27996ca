"""Every statistic qbench reports, on scipy where scipy has it.

- The median's confidence interval is distribution-free: two order statistics whose ranks come
  from Binomial(n, 1/2), the count of samples below the true median.
- A speedup of candidates timed in alternating blocks (``qbench.measure``) is the median of the
  per-block-pair ratios of medians, with the distribution-free interval of that median: one
  ratio per block pair, so drift that hit both candidates in the same block round cancels, and
  a block hit by a burst of other work moves one ratio, not the estimate. Samples from
  round-robin timing (``block=1``, older rows) keep the ratio of medians with a percentile
  bootstrap over paired rounds.
- A latency change between two runs is a ratio of medians (after / before) with a bootstrap
  interval, paired when both were timed in the same interleaved rounds, plus a two-sided
  Mann–Whitney U test on the raw samples (asymptotic, tie-corrected: samples number in the hundreds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: A run whose coefficient of variation exceeds this is flagged noisy (rows without an A/A check).
NOISY_CV = 0.10
#: A run whose A/A check (fp32 against a second worker of itself, same rounds) strays further
#: from 1 than this is unsteady: the machine could not resolve differences of that size.
UNSTEADY_BAND = 0.03


def median_ci_indices(n: int, confidence: float = 0.95) -> tuple[int, int]:
    """0-based order-statistic indices (lo, hi) with P(x_lo <= median <= x_hi) >= confidence."""
    if n < 1:
        raise ValueError("need at least one sample")
    # k = how many of the lowest order statistics lie below the median with probability at
    # most (1 - confidence) / 2; the interval starts at the k-th (1-based) one.
    k = int(stats.binom.ppf((1.0 - confidence) / 2, n, 0.5))
    lo = max(0, k - 1)
    return lo, n - 1 - lo


@dataclass(frozen=True)
class LatencyStats:
    """Summary of raw latency samples, in milliseconds."""

    n: int
    median_ms: float
    ci_low_ms: float
    ci_high_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    cv: float
    noisy: bool

    @classmethod
    def from_samples(cls, samples_ns: np.ndarray, noisy_cv: float = NOISY_CV) -> LatencyStats:
        ms = np.sort(np.asarray(samples_ns, dtype=np.float64)) / 1e6
        if ms.size == 0:
            raise ValueError("no latency samples")
        lo, hi = median_ci_indices(ms.size)
        mean = float(ms.mean())
        std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
        cv = std / mean if mean > 0 else 0.0
        return cls(
            n=int(ms.size),
            median_ms=float(np.median(ms)),
            ci_low_ms=float(ms[lo]),
            ci_high_ms=float(ms[hi]),
            p90_ms=float(np.percentile(ms, 90)),
            p99_ms=float(np.percentile(ms, 99)),
            mean_ms=mean,
            std_ms=std,
            cv=cv,
            noisy=cv > noisy_cv,
        )


@dataclass(frozen=True)
class Speedup:
    """``baseline median / candidate median`` (above 1 means the candidate is faster)."""

    ratio: float
    ci_low: float
    ci_high: float


def _half_width(s: Speedup) -> float:
    """The wider side of a speedup's interval, in log space."""
    if not (s.ci_low > 0 and s.ratio > 0):
        return math.inf
    return max(math.log(s.ci_high / s.ratio), math.log(s.ratio / s.ci_low))


def relative(a: Speedup, b: Speedup) -> Speedup:
    """How much faster plan a is than plan b (above 1: a is faster) from each one's speedup
    against a reference timed in its own rounds; the two log-interval widths add in quadrature."""
    ratio = a.ratio / b.ratio
    width = math.hypot(_half_width(a), _half_width(b))
    if math.isinf(width):
        return Speedup(ratio, 0.0, math.inf)
    return Speedup(ratio, ratio * math.exp(-width), ratio * math.exp(width))


def _ratio_of_medians(baseline: np.ndarray, candidate: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(baseline, axis=axis) / np.median(candidate, axis=axis)


def block_ratios(numerator_ns: np.ndarray, denominator_ns: np.ndarray, block: int) -> np.ndarray:
    """``median(numerator) / median(denominator)`` within each block round (``block`` aligned
    samples per round; a trailing partial round is left out)."""
    rounds = min(len(numerator_ns), len(denominator_ns)) // block
    if rounds < 1:
        raise ValueError(f"fewer samples than one block of {block}")
    shape = (rounds, block)
    num = np.asarray(numerator_ns[: rounds * block], dtype=np.float64).reshape(shape)
    den = np.asarray(denominator_ns[: rounds * block], dtype=np.float64).reshape(shape)
    return np.median(num, axis=1) / np.median(den, axis=1)


def median_with_ci(values: np.ndarray) -> tuple[float, float, float]:
    """(median, 95 % CI low, high) of ``values`` by order statistics (distribution-free)."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    lo, hi = median_ci_indices(ordered.size)
    return float(np.median(ordered)), float(ordered[lo]), float(ordered[hi])


def speedup(
    baseline_ns: np.ndarray, candidate_ns: np.ndarray, block: int = 1, rounds: int = 2000, seed: int = 0
) -> Speedup:
    """``baseline / candidate`` of samples timed interleaved, with a 95 % paired interval: per
    block round when ``block`` > 1 (see the module docstring), else per round by bootstrap."""
    if block > 1 and min(len(baseline_ns), len(candidate_ns)) >= 2 * block:
        return Speedup(*median_with_ci(block_ratios(baseline_ns, candidate_ns, block)))
    n = min(len(baseline_ns), len(candidate_ns))
    base = np.asarray(baseline_ns[:n], dtype=np.float64)
    cand = np.asarray(candidate_ns[:n], dtype=np.float64)
    ratio = float(_ratio_of_medians(base, cand))
    if n < 2 or (np.ptp(base) == 0 and np.ptp(cand) == 0):  # nothing to resample
        return Speedup(ratio, ratio, ratio)
    interval = stats.bootstrap(
        (base, cand),
        _ratio_of_medians,
        paired=True,
        vectorized=True,
        n_resamples=rounds,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return Speedup(ratio, float(interval.low), float(interval.high))


def mann_whitney_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of the Mann–Whitney U test (normal approximation, tie-corrected)."""
    if np.ptp(np.concatenate([a, b])) == 0:  # all equal: no evidence of a difference
        return 1.0
    return float(stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic").pvalue)


@dataclass(frozen=True)
class Change:
    """``after median / before median`` (above 1: slower) with its 95 % bootstrap interval, and
    the Mann–Whitney p-value of the two sets of samples."""

    ratio: float
    ci_low: float
    ci_high: float
    p: float


def latency_change(
    before_ns: np.ndarray,
    after_ns: np.ndarray,
    paired: bool,
    scale: float = 1.0,
    seed: int = 0,
    min_change: float = 0.0,
    block: int = 1,
) -> Change:
    """How ``after`` compares with ``before``. ``paired``: both were timed in the same interleaved
    rounds (sample i of each from round i), so the bootstrap resamples rounds and drift within
    the run cancels. ``scale`` multiplies ``after`` first: the ratio of the two runs' reference
    medians (before / after), which normalizes away drift of the whole machine between runs.
    A ratio within ``min_change`` of 1 cannot count as a change: its interval and test are not
    computed (the bootstrap costs ~0.1 s a pair) and it comes back as its own interval, p = 1.
    Paired samples timed in blocks (``block`` > 1) give one ratio per block round: the change is
    their median with its order-statistic interval, and p is a Wilcoxon signed-rank test of
    their logarithms against 0 (Mann–Whitney on raw samples treats autocorrelated runs of one
    block as independent: an A/A pair under load gave p = 5e-8)."""
    if paired and block > 1 and min(len(before_ns), len(after_ns)) >= 2 * block:
        ratios = block_ratios(after_ns, before_ns, block) * scale
        ratio, low, high = median_with_ci(ratios)
        if abs(ratio - 1.0) <= min_change:
            return Change(ratio, ratio, ratio, 1.0)
        logs = np.log(ratios)
        p = 1.0 if np.all(logs == 0) else float(stats.wilcoxon(logs).pvalue)
        return Change(ratio, low, high, p)
    before = np.asarray(before_ns, dtype=np.float64)
    after = np.asarray(after_ns, dtype=np.float64) * scale
    if paired:
        n = min(len(before), len(after))
        before, after = before[:n], after[:n]
    ratio = float(_ratio_of_medians(after, before))
    if abs(ratio - 1.0) <= min_change:
        return Change(ratio, ratio, ratio, 1.0)
    p = mann_whitney_p(before, after)
    if min(len(before), len(after)) < 2 or (np.ptp(before) == 0 and np.ptp(after) == 0):
        return Change(ratio, ratio, ratio, p)
    interval = stats.bootstrap(
        (after, before),
        _ratio_of_medians,
        paired=paired,
        vectorized=True,
        n_resamples=2000,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return Change(ratio, float(interval.low), float(interval.high), p)


#: One-sided error of each look of a sequential accuracy decision.
SEQUENTIAL_ALPHA = 0.005


def drop_bounds(
    chunk_drops: np.ndarray, drop: float, scored: int, total: int, floor: bool = True
) -> tuple[float, float]:
    """A (low, high) bound on the accuracy drop over all ``total`` samples, when the first
    ``scored`` of a random order give ``drop`` and the per-chunk drops ``chunk_drops``.

    Student's t over the chunks (each a mean of many samples), one-sided ``SEQUENTIAL_ALPHA``
    per look, with the finite-population correction: once every sample is scored the bounds
    are the drop itself. With ``floor`` the standard error is never taken below ``1 / scored``
    (one sample's worth of a proportion), since rare disagreements can all miss the first chunks."""
    k = len(chunk_drops)
    left = max(total - scored, 0) / max(total - 1, 1)
    if k < 2 or left == 0:
        return (drop, drop) if left == 0 else (-np.inf, np.inf)
    se = max(float(np.std(chunk_drops, ddof=1)) / np.sqrt(k), 1.0 / scored if floor else 0.0) * np.sqrt(left)
    width = float(stats.t.ppf(1 - SEQUENTIAL_ALPHA, k - 1)) * se
    return drop - width, drop + width


def aa_check(first_ns: np.ndarray, again_ns: np.ndarray, block: int) -> dict[str, float]:
    """The A/A check: one plan against a second worker of itself in the same rounds (paired)."""
    change = latency_change(first_ns, again_ns, paired=True, block=block)
    return {"aa_ratio": change.ratio, "aa_ci_low": change.ci_low, "aa_ci_high": change.ci_high}


def aa_band(aa: dict[str, float] | None) -> float:
    """How far an A/A check strayed from 1 (either end of its interval); 0 without one."""
    if not aa or "aa_ratio" not in aa:
        return 0.0
    return max(0.0, 1.0 - aa["aa_ci_low"], aa["aa_ci_high"] - 1.0)


def _paired_rounds(
    baseline_rounds: Sequence[np.ndarray], candidate_rounds: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Round ``i`` of both plans as float arrays, rounds where either has no sample left out."""
    pairs = [
        (np.asarray(b, np.float64), np.asarray(c, np.float64))
        for b, c in zip(baseline_rounds, candidate_rounds, strict=True)
    ]
    pairs = [(b, c) for b, c in pairs if b.size and c.size]
    if not pairs:
        raise ValueError("no paired rounds")
    return pairs


def percentile_ratio(
    baseline_rounds: Sequence[np.ndarray], candidate_rounds: Sequence[np.ndarray], q: float, resamples: int = 1000
) -> Speedup:
    """``percentile(baseline, q) / percentile(candidate, q)`` over all samples of paired rounds
    (round ``i`` of both timed together), with a 95 % percentile-bootstrap interval that resamples
    whole rounds: a tail is a property of the pooled samples, so unlike the median it has no
    per-round ratio, and rounds keep the pairing and the drift within them."""
    pairs = _paired_rounds(baseline_rounds, candidate_rounds)
    ratio = float(np.percentile(np.concatenate([b for b, _ in pairs]), q)) / float(
        np.percentile(np.concatenate([c for _, c in pairs]), q)
    )
    if len(pairs) < 2:
        return Speedup(ratio, ratio, ratio)
    picks = np.random.default_rng(0).integers(0, len(pairs), size=(resamples, len(pairs)))
    if len({b.size for b, _ in pairs} | {c.size for _, c in pairs}) == 1:  # block rounds: one array op
        b, c = (np.stack([pair[side] for pair in pairs]) for side in (0, 1))
        draws = np.percentile(b[picks].reshape(resamples, -1), q, axis=1) / np.percentile(
            c[picks].reshape(resamples, -1), q, axis=1
        )
    else:  # server rounds: as many requests as arrived
        draws = [
            np.percentile(np.concatenate([pairs[i][0] for i in row]), q)
            / np.percentile(np.concatenate([pairs[i][1] for i in row]), q)
            for row in picks
        ]
    low, high = np.percentile(draws, [2.5, 97.5])
    return Speedup(ratio, float(low), float(high))


def rounds_of(samples_ns: np.ndarray, block: int) -> list[np.ndarray]:
    """Samples timed in alternating blocks, split into their block rounds (a partial one left out)."""
    samples_ns = np.asarray(samples_ns)
    count = len(samples_ns) // max(block, 1)
    return [samples_ns[i * block : (i + 1) * block] for i in range(count)]


#: Arrivals replayed per served-rate estimate, and bisection steps on the rate.
SERVED_ARRIVALS = 10_000  # the rate ratio of two plans varies ~1 % from seed to seed (0.5 % at 20,000)
SERVED_STEPS = 16


def served_rate(service_ns: np.ndarray, bound_ns: float, seed: int = 0) -> float:
    """The highest Poisson arrival rate (requests/s) at which a server answering one request at a
    time, each taking a call time drawn from ``service_ns``, keeps the p99 of arrival-to-answer
    time within ``bound_ns`` (0 when even an idle server misses it).

    An M/G/1 queue replayed by Lindley's recursion in closed form (the wait of request n is
    ``U_n - min_k<=n U_k``, ``U`` the running sum of service minus gap), with fixed random
    numbers: two plans' samples of one round get the same arrivals and draw the same positions
    (common random numbers), so their rates compare paired, as ``server:QPS`` times them."""
    service_ns = np.asarray(service_ns, np.float64)
    rng = np.random.default_rng(seed)
    unit_gaps = rng.exponential(1.0, SERVED_ARRIVALS)
    service = service_ns[(rng.random(SERVED_ARRIVALS) * len(service_ns)).astype(int)]
    if np.percentile(service, 99) > bound_ns:
        return 0.0

    def within(rate: float) -> bool:
        drift = np.concatenate([[0.0], np.cumsum(service[:-1] - unit_gaps[1:] * (1e9 / rate))])
        wait = drift - np.minimum.accumulate(drift)
        return float(np.percentile(wait + service, 99)) <= bound_ns

    low, high = 0.0, 1e9 / service.mean()  # a queue is stable only below the mean call rate
    for _ in range(SERVED_STEPS):
        middle = (low + high) / 2
        low, high = (middle, high) if within(middle) else (low, middle)
    return low


def served_rate_ratio(
    baseline_rounds: Sequence[np.ndarray], candidate_rounds: Sequence[np.ndarray], bound_ns: float, resamples: int = 100
) -> Speedup:
    """``served_rate(candidate) / served_rate(baseline)`` over paired rounds, with a 95 %
    percentile-bootstrap interval that resamples whole rounds (as ``percentile_ratio``)."""
    pairs = _paired_rounds(baseline_rounds, candidate_rounds)

    def ratio_of(rows: Sequence[int]) -> float:
        base = served_rate(np.concatenate([pairs[i][0] for i in rows]), bound_ns)
        cand = served_rate(np.concatenate([pairs[i][1] for i in rows]), bound_ns)
        return cand / base if base > 0 else (math.inf if cand > 0 else math.nan)

    ratio = ratio_of(range(len(pairs)))
    if len(pairs) < 2 or not math.isfinite(ratio):
        return Speedup(ratio, ratio, ratio)
    picks = np.random.default_rng(0).integers(0, len(pairs), size=(resamples, len(pairs)))
    draws = np.array([ratio_of(row) for row in picks])
    low, high = np.nanpercentile(np.where(np.isinf(draws), np.nan, draws), [2.5, 97.5])
    return Speedup(ratio, float(low), float(high))
