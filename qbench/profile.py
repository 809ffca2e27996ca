"""Per-op profiles that explain a plan: where the time goes, by op type and precision.

A backend's ``profile()`` returns one ``OpTime`` per executed node (from ONNX Runtime's
profiler or OpenVINO's performance counters), averaged over warm runs; this module aggregates
them into tables and carries the flags that explain a slow int8 plan: float ops sandwiched
between Q/DQ pairs, layout reorders and standalone requantizations. Profiles are taken in a
separate pass on a fresh session, never while latency is being timed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import pandas as pd

PROFILE_FORMAT_VERSION = 1
PROFILE_RUNS = 50
PROFILE_WARMUP = 5  # runs before the profiled ones: first-run allocations and caches stay out
TOP_NODES = 25  # nodes kept per stored profile (the flagged ones are always kept)


@dataclass(frozen=True)
class OpTime:
    """One executed node: mean milliseconds per inference, and what makes it worth a look."""

    node: str
    op_type: str
    precision: str  # int8 | fp32 | bf16 | fp16 | q/dq | reorder
    ms: float
    kernel: str = ""
    flag: str = ""  # e.g. "float between Q/DQ", "layout reorder", "requantize"


@dataclass(frozen=True)
class Profile:
    plan_name: str
    backend: str
    runs: int
    ops: tuple[OpTime, ...]

    @property
    def total_ms(self) -> float:
        return sum(op.ms for op in self.ops)

    def by_op_type(self) -> pd.DataFrame:
        """Op type x precision: ms per inference, share of the total, node count; largest first."""
        if not self.ops:
            return pd.DataFrame(columns=["op type", "precision", "nodes", "ms", "share"])
        frame = pd.DataFrame([asdict(op) for op in self.ops])
        table = frame.groupby(["op_type", "precision"], as_index=False).agg(nodes=("node", "size"), ms=("ms", "sum"))
        table["share"] = table.ms / max(self.total_ms, 1e-12)
        table = table.sort_values("ms", ascending=False).rename(columns={"op_type": "op type"})
        return table.reset_index(drop=True)

    def flagged(self) -> list[OpTime]:
        return sorted((op for op in self.ops if op.flag), key=lambda op: -op.ms)

    def to_json(self, top: int | None = TOP_NODES) -> str:
        """JSON for the leaderboard row: the op-type table in full, the top nodes and every flagged one."""
        nodes = sorted(self.ops, key=lambda op: -op.ms)
        kept = nodes if top is None else nodes[:top] + [op for op in nodes[top:] if op.flag]
        return json.dumps(
            {
                "qbench_profile": PROFILE_FORMAT_VERSION,
                "plan_name": self.plan_name,
                "backend": self.backend,
                "runs": self.runs,
                "total_ms": self.total_ms,
                "by_op_type": self.by_op_type().to_dict(orient="records"),
                "flag_counts": _flag_counts(self.ops),
                "nodes": [asdict(op) for op in kept],
            }
        )


def profile_from_json(text: str) -> Profile:
    """A stored profile (``Profile.to_json``) back as a Profile of its kept nodes."""
    data = json.loads(text)
    if data.get("qbench_profile") != PROFILE_FORMAT_VERSION:
        raise ValueError(f"not a qbench profile (format {data.get('qbench_profile')!r})")
    ops = tuple(OpTime(**op) for op in data["nodes"])
    return Profile(data["plan_name"], data["backend"], data["runs"], ops)


def _flag_counts(ops: Iterable[OpTime]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in ops:
        if op.flag:
            counts[op.flag] = counts.get(op.flag, 0) + 1
    return counts


def compare(plan: Profile, fp32: Profile) -> pd.DataFrame:
    """Per op type: fp32 ms, plan ms (all precisions together) and the difference."""
    rows = {}
    for label, profile in (("fp32 ms", fp32), ("plan ms", plan)):
        for op in profile.ops:
            rows.setdefault(op.op_type, {"fp32 ms": 0.0, "plan ms": 0.0})[label] += op.ms
    table = pd.DataFrame([{"op type": k, **v} for k, v in rows.items()])
    table["plan - fp32 ms"] = table["plan ms"] - table["fp32 ms"]
    order = (table["plan ms"] + table["fp32 ms"]).sort_values(ascending=False).index
    return table.loc[order].reset_index(drop=True)


def display_table(by_op_type: pd.DataFrame, top: int) -> pd.DataFrame:
    """The ``top`` rows of an op-type table for people: ms rounded, share in percent."""
    table = by_op_type.head(top).copy()
    table["ms"] = table.ms.round(4)
    table["share"] = (table.share * 100).round(1).astype(str) + " %"
    return table


def flag_summary(counts: dict[str, int]) -> str:
    """``"2 × layout reorder, 13 × requantize"``, or an empty string."""
    return ", ".join(f"{n} × {flag}" for flag, n in sorted(counts.items()))


def render(profile: Profile, fp32: Profile | None = None, top: int = 12) -> str:
    """The profile as text for the terminal: totals, op-type table, flags and plan vs fp32."""
    lines = [f"{profile.plan_name} on {profile.backend}: {profile.total_ms:.3f} ms of kernel time per inference"]
    lines.append(display_table(profile.by_op_type(), top).to_string(index=False))
    counts = _flag_counts(profile.ops)
    if counts:
        lines.append("flags: " + flag_summary(counts))
        for op in profile.flagged()[:5]:
            lines.append(f"  {op.flag}: {op.node} ({op.op_type}, {op.precision}) {op.ms:.4f} ms")
    else:
        lines.append("flags: none (no float op between Q/DQ pairs, no reorder, no requantization)")
    if fp32 is not None and fp32 is not profile:
        lines.append("plan vs fp32 by op type:")
        lines.append(compare(profile, fp32).head(top).round(4).to_string(index=False))
    return "\n".join(lines)


def sandwiched(ops: Sequence[tuple[str, str, list[str], list[str]]], boundary: set[str]) -> set[str]:
    """Names of float nodes with a ``boundary`` node on both sides: ``ops`` lists (name,
    precision, parent names, child names); ``boundary`` holds the Q/DQ nodes of an ONNX graph,
    or the int8 nodes of a compiled one (where Q/DQ are fused away)."""
    return {
        name
        for name, precision, parents, children in ops
        if precision not in ("int8", "q/dq")
        and any(p in boundary for p in parents)
        and any(c in boundary for c in children)
    }
