"""The tuner's final selection: which plan within the budget is fastest, decided by paired data.

Two plans are compared one way only (the rule every ranking and note follows):

- timed in the same block rounds: the median of their per-block ratios (``statistics.speedup``);
- otherwise each one's speedup against fp32 timed in its own rounds, divided, with both
  intervals carried (``relative``). Never by absolute medians of different chunks: chunks of
  one run drift apart on a busy machine, and ranking by them once returned a plan its own
  table showed slower than another within the budget (docs/decisions.md).

The plans that could still win (their interval against the leader's includes 1, in the screen
or in their earlier timing in other worker processes, the tuner's trials) are raced head
to head in one set of rounds with fp32: batches of the protocol until the leader's paired ratio
against each rival excludes 1 or lies within ``TIE`` of 1 (either pick is then as fast as the
other, within what the ratio check against separate processes resolves), or ``MAX_BATCHES``,
or until more batches could not settle it (fp32 against itself strays further than the plans differ).
Of plans tied with the leader, the one that drops the least accuracy is chosen.
"Indistinguishable" is said only where the paired interval includes 1. Timing is a callable, so
the logic is tested with fake timings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from qbench.harness import FP32, FP32_AGAIN
from qbench.measure import Samples
from qbench.objectives import MEDIAN, Objective
from qbench.recheck import NATIVE
from qbench.statistics import UNSTEADY_BAND, Speedup, aa_band, aa_check, relative
from qbench.store import ResultRow

#: Most plans raced at once (the fp32 session comes on top): memory stays bounded as in bench.
MAX_RACED = 4
MAX_BATCHES = 3
TIE = 0.02
#: A batch of the race may end before its protocol's minimum time once this many block rounds
#: settle the leader (the trial protocol's ``min_blocks``): an LLM's race took 35 s of a tune.
SETTLE_ROUNDS = 8

#: Times the contenders and fp32 in one batch of rounds; the callable it is given may end the
#: batch early (``measure_interleaved``'s ``stop``).
TimeBatch = Callable[[Sequence[ResultRow], Callable[[Samples], bool]], Mapping[str, np.ndarray]]


def row_speedup(row: ResultRow) -> Speedup:
    return Speedup(row.speedup, row.speedup_ci_low, row.speedup_ci_high)


def by_speedup(rows: Sequence[ResultRow]) -> list[ResultRow]:
    """Best first by speedup against fp32 (each row's own rounds), never by absolute medians."""
    return sorted(rows, key=lambda r: -(r.speedup if r.speedup is not None else -math.inf))


@dataclass
class Race:
    """Batches of samples of the raced plans and fp32, each batch timed in one set of rounds,
    with fp32's second worker (``FP32_AGAIN``, the A/A check) where the timing had one."""

    batches: list[Mapping[str, np.ndarray]] = field(default_factory=list)
    objective: Objective = MEDIAN  # the figure plans are compared on

    @property
    def aa_band(self) -> float:
        """How far fp32 against itself strayed from 1 in the worst batch (0 without an A/A check)."""
        checks = [aa_check(b[FP32], b[FP32_AGAIN], getattr(b, "block", 1)) for b in self.batches if FP32_AGAIN in b]
        return max((aa_band(c) for c in checks), default=0.0)

    @property
    def unsteady(self) -> bool:
        return self.aa_band > UNSTEADY_BAND

    def faster(self, fast: str, slow: str) -> Speedup:
        """How much faster ``fast`` is than ``slow`` on the objective's figure, every block round
        of every batch a paired observation, the interval widened by the A/A band (two workers of
        one plan differed that much)."""
        pooled = self.objective.pooled([(b[slow], b[fast], getattr(b, "block", 1)) for b in self.batches])
        band = 1.0 + self.aa_band
        return Speedup(pooled.ratio, pooled.ci_low / band, pooled.ci_high * band)

    def vs_fp32(self, key: str) -> Speedup:
        return self.faster(key, FP32)


@dataclass
class Selection:
    winner: ResultRow | None
    ranked: list[ResultRow]  # within the budget, best first by the paired data
    winner_speedup: Speedup | None = None  # against fp32, from the race when there was one
    race: pd.DataFrame | None = None  # the head-to-head table
    notes: list[str] = field(default_factory=list)


def _fmt(s: Speedup) -> str:
    return f"{s.ratio:.3f}× ({s.ci_low:.3f}–{s.ci_high:.3f})"


def select(
    within: Sequence[ResultRow],
    time_batch: TimeBatch | None,
    objective: Objective = MEDIAN,
    earlier: Mapping[str, Speedup] | None = None,
) -> Selection:
    """The best plan of ``within`` (rows that met every budget on held-out data, their speedups
    on the ``objective``'s figure). Plans that could still beat the leader are raced by
    ``time_batch`` (samples per plan hash and ``FP32``), compared on the same figure.
    ``earlier``: speedups per plan hash timed in other worker processes (the tuner's trials)."""
    ranked = by_speedup([r for r in within if r.speedup is not None])
    if not ranked:
        return Selection(None, [])
    contenders = _contenders(ranked, earlier or {})
    if len(contenders) < 2 or time_batch is None:
        leader = ranked[0]
        return Selection(leader, ranked, row_speedup(leader), notes=_notes(leader, ranked, None))
    race = Race(objective=objective)
    order = _race(race, contenders, time_batch)
    order, tie_notes = _prefer_steadier(race, order)
    leader = order[0]
    raced = {r.plan_hash for r in order}
    ranked = order + [r for r in ranked if r.plan_hash not in raced]
    notes = [
        f"raced head to head in one set of rounds ({len(race.batches)} batch(es), paired by block): "
        + ", ".join(r.plan_name for r in order),
        *tie_notes,
    ]
    if race.unsteady and not all(race.faster(leader.plan_hash, r.plan_hash).ci_low > 1.0 for r in order[1:]):
        notes.append(
            f"undecided: the machine was unsteady (fp32 against a second worker of itself differed by up to "
            f"{race.aa_band:.1%}), so the order of the plans the race could not separate is noise; "
            f"{leader.plan_name} is kept as the pick, rerun on a quieter machine to decide"
        )
    return Selection(
        leader, ranked, race.vs_fp32(leader.plan_hash), _race_table(race, order), notes + _notes(leader, ranked, race)
    )


def smallest(within: Sequence[ResultRow], fp32: ResultRow) -> Selection:
    """The ``mb`` objective's pick: the smallest built model of ``within``, the lower accuracy
    drop among plans of one size. A size is exact, so there is no interval and no race; the
    "speedup" is how many times smaller than fp32."""
    ranked = sorted((r for r in within if r.artifact_bytes), key=lambda r: (r.artifact_bytes, r.accuracy_drop))
    if not ranked or not fp32.artifact_bytes:
        return Selection(None, ranked)
    leader = ranked[0]
    smaller = fp32.artifact_bytes / leader.artifact_bytes
    notes = [f"{leader.plan_name}: {leader.artifact_bytes / 1e6:.2f} MB, {smaller:.2f}× smaller than fp32"]
    return Selection(leader, ranked, Speedup(smaller, smaller, smaller), notes=notes)


def _contenders(ranked: Sequence[ResultRow], earlier: Mapping[str, Speedup]) -> list[ResultRow]:
    """The leader, the plans that could still beat it (at most ``MAX_RACED``), and native-int8
    (the floor is decided by paired data too) when there is a race at all."""
    leader = ranked[0]
    contenders = [leader] + [r for r in ranked[1:] if _could_win(leader, r, earlier)]
    contenders = contenders[:MAX_RACED]
    native = next((r for r in ranked if r.plan_name == NATIVE), None)
    if native is not None and native not in contenders and len(contenders) > 1:
        contenders.append(native)
    return contenders


def _could_win(leader: ResultRow, rival: ResultRow, earlier: Mapping[str, Speedup]) -> bool:
    """The rival's interval against the leader includes 1 in the screen, or in their earlier
    timings. A plan's worker process can run slow for its whole life, which no pairing within its
    rounds cancels (symmetric int4 on SmolLM2, Zen 4: screened at 2.76× fp32, 2.35–3.29, then
    3.51× in a bench right after; docs/llms.md): a plan is left out only when two processes agree."""
    if relative(row_speedup(leader), row_speedup(rival)).ci_low <= 1.0:
        return True
    before = earlier.get(leader.plan_hash), earlier.get(rival.plan_hash)
    return before[0] is not None and before[1] is not None and relative(*before).ci_low <= 1.0


def _race(race: Race, contenders: list[ResultRow], time_batch: TimeBatch) -> list[ResultRow]:
    """Batches of head-to-head timing until the leader is settled against every rival (or
    ``MAX_BATCHES``); a batch ends early once the rounds so far settle it (after
    ``SETTLE_ROUNDS``). Returns the contenders, the leader first."""

    def settled_now(samples: Samples) -> bool:
        rounds = len(samples[FP32]) // max(1, samples.block)
        return rounds >= SETTLE_ROUNDS and _standing(Race([*race.batches, samples], race.objective), contenders)[1]

    order = contenders
    for _ in range(MAX_BATCHES):
        race.batches.append(time_batch(contenders, settled_now))
        order, settled = _standing(race, contenders)
        if settled or _futile(race, order):
            break
    return order


def _futile(race: Race, order: list[ResultRow]) -> bool:
    """More batches cannot settle the race: fp32 against itself strayed further than ``TIE``
    (so no tie can be declared) and further than every unsettled rival is from the leader (the
    band that widens each interval covers their whole difference). The A/A band is the worst
    batch's, so it never narrows: with a profiler beside it, an LLM's race ran all ``MAX_BATCHES`` (135 s)
    to end undecided at a 5 % band."""
    band = race.aa_band
    if band <= TIE:
        return False
    leader = order[0].plan_hash
    gaps = [race.faster(leader, r.plan_hash) for r in order[1:]]
    return all(_settled(s) or abs(math.log(s.ratio)) <= math.log1p(band) for s in gaps)


def _standing(race: Race, contenders: list[ResultRow]) -> tuple[list[ResultRow], bool]:
    """The contenders, the leader first, and whether the leader is settled against every rival:
    the leader by speedup vs fp32, unless a rival beats it head to head."""
    order = sorted(contenders, key=lambda r: -race.vs_fp32(r.plan_hash).ratio)
    leader = order[0]
    for rival in order[1:]:
        if race.faster(leader.plan_hash, rival.plan_hash).ci_high < 1.0:
            leader = rival
    order = [leader] + [r for r in order if r is not leader]
    return order, all(_settled(race.faster(leader.plan_hash, r.plan_hash)) for r in order[1:])


def _prefer_steadier(race: Race, order: list[ResultRow]) -> tuple[list[ResultRow], list[str]]:
    """Of the plans tied with the leader and measurably slower than no raced plan (native-int8,
    the floor, included), the one that drops the least accuracy leads: speed the data can see is
    never traded for accuracy."""
    leader = order[0]
    tied = [
        r
        for r in order[1:]
        if _tied(race.faster(leader.plan_hash, r.plan_hash))
        and all(race.faster(r.plan_hash, q.plan_hash).ci_high >= 1.0 for q in order if q is not r)
    ]
    steadier = min([leader, *tied], key=lambda r: r.accuracy_drop)  # the leader, unless a tie drops less
    if steadier is leader:
        return order, []
    note = (
        f"{steadier.plan_name} is tied with {leader.plan_name} on speed (paired CI within {TIE:.0%}) "
        f"and drops less accuracy ({steadier.accuracy_drop:+.4f} vs {leader.accuracy_drop:+.4f}): chosen"
    )
    return [steadier] + [r for r in order if r is not steadier], [note]


def _race_table(race: Race, order: list[ResultRow]) -> pd.DataFrame:
    leader = order[0]
    return pd.DataFrame(
        [
            {
                "plan": r.plan_name,
                "speedup vs fp32 (95% CI)": _fmt(race.vs_fp32(r.plan_hash)),
                "winner faster by (95% CI)": "" if r is leader else _fmt(race.faster(leader.plan_hash, r.plan_hash)),
                "verdict": "winner" if r is leader else _verdict(race.faster(leader.plan_hash, r.plan_hash)),
            }
            for r in order
        ]
    )


def _tied(s: Speedup) -> bool:
    """The whole paired interval within ``TIE`` of 1: either plan is as good as the other."""
    return 1.0 / (1.0 + TIE) <= s.ci_low and s.ci_high <= 1.0 + TIE


def _settled(s: Speedup) -> bool:
    """The leader is clearly faster than this rival, or the two are tied: more rounds won't change the pick."""
    return s.ci_low > 1.0 or _tied(s)


def _verdict(s: Speedup) -> str:
    """How the leader compares with a rival (the interval is already widened by the A/A band)."""
    if s.ci_low > 1.0:
        return "slower"
    if s.ci_high < 1.0:  # the leader by its speedup vs fp32, yet slower head to head: say so
        return "faster than the winner"
    if _tied(s):
        return f"tied (paired CI within {TIE:.0%} of 1)"
    return "indistinguishable (paired CI includes 1)"


def _notes(winner: ResultRow, ranked: list[ResultRow], race: Race | None) -> list[str]:
    """The winner against the best uniform plan and native int8, by the one comparison rule."""
    notes = []
    for other in (
        next((r for r in ranked if r.plan_name.startswith("uniform-")), None),
        next((r for r in ranked if r.plan_name == NATIVE), None),
    ):
        if other is None or other is winner:
            continue
        raced = race is not None and all(b.get(other.plan_hash) is not None for b in race.batches)
        if raced:
            s, how = race.faster(winner.plan_hash, other.plan_hash), "paired, same rounds"
        else:
            s, how = relative(row_speedup(winner), row_speedup(other)), "each against fp32 in its own rounds"
        word = "" if s.ci_low > 1.0 else "; indistinguishable" if s.ci_high >= 1.0 else "; SLOWER"
        notes.append(f"{winner.plan_name} vs {other.plan_name}: {_fmt(s)} ({how}{word})")
    return notes
