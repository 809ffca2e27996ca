"""The search space: one categorical choice per group of layers that must switch together."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qbench.model import Layer, OnnxModel
from qbench.plan import GROUPINGS, PlanOptions, PrecisionPlan


@dataclass(frozen=True)
class LayerGroup:
    """Layers that take one precision together; the choice is named after the first layer."""

    layers: tuple[str, ...]
    choices: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.layers[0]


# Optuna parameters for plan-wide options are named "option:<field>", apart from layer names.
OPTION_PREFIX = "option:"


@dataclass(frozen=True)
class SearchSpace:
    groups: tuple[LayerGroup, ...]
    options: PlanOptions
    #: Plan-wide options searched too, as ``(field, values)``; the first value is the default.
    option_choices: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def plan(self, assignment: Mapping[str, str], name: str) -> PrecisionPlan:
        """The plan for ``{group name: precision}``; unnamed groups stay fp32, unnamed options
        take their first value."""
        layers = {layer: assignment.get(g.name, "fp32") for g in self.groups for layer in g.layers}
        chosen = {field: assignment.get(OPTION_PREFIX + field, values[0]) for field, values in self.option_choices}
        return PrecisionPlan(layers, self.options.updated(**chosen), name)

    def parameters(self) -> list[tuple[str, tuple[Any, ...]]]:
        """Every choice the search makes, as ``(Optuna parameter name, values)``."""
        options = [(OPTION_PREFIX + field, values) for field, values in self.option_choices]
        return [(g.name, g.choices) for g in self.groups] + options

    def uniform(self, precision: str) -> dict[str, str]:
        """Every group that offers ``precision`` takes it; the others stay fp32."""
        return {g.name: precision if precision in g.choices else "fp32" for g in self.groups}

    def option_variants(self, assignment: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """``assignment`` with one searched option at another value than its default, for every
        (option, value): ``("weight_symmetric=True", assignment)`` pairs."""
        return [
            (f"{field}={value}", {**assignment, OPTION_PREFIX + field: value})
            for field, values in self.option_choices
            for value in values[1:]
        ]

    def assignment_of(self, plan: PrecisionPlan) -> dict[str, str]:
        return {g.name: plan.precision(g.name) for g in self.groups}

    @property
    def size(self) -> int:
        total = 1
        for _, values in self.parameters():
            total *= len(values)
        return total


def repeated_groups(layers: Sequence[str]) -> list[tuple[str, ...]]:
    """Group layers whose names differ only in their numbers (``layers.3/attn/q_proj`` with
    ``layers.17/attn/q_proj``): the same position in every repeated block."""
    grouped: dict[str, list[str]] = {}
    for layer in layers:
        grouped.setdefault(re.sub(r"\d+", "#", layer), []).append(layer)
    return [tuple(members) for members in grouped.values()]


def build_space(
    model: OnnxModel,
    precisions_of: Callable[[Layer], Sequence[str]],
    options: PlanOptions,
    allowed: Iterable[str] = ("fp32", "int8"),
    option_choices: Mapping[str, Sequence[Any]] | None = None,
    grouping: str = "layer",
) -> SearchSpace:
    """One choice per layer (or per repeated position, see ``GROUPINGS``), limited to ``allowed``
    precisions the backend offers for every member, plus one per plan-wide option in
    ``option_choices`` that ``options`` leaves unset; a choice with a single value is left out."""
    allowed = tuple(allowed)
    by_name = {layer.name: layer for layer in model.layers}
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}, not {grouping!r}")
    partition = repeated_groups(list(by_name)) if grouping == "repeated" else [(n,) for n in by_name]
    groups = []
    for members in partition:
        offered = [p for p in allowed if all(p in precisions_of(by_name[m]) for m in members)]
        if len(offered) > 1:
            groups.append(LayerGroup(members, tuple(offered)))
    searched = tuple(
        (field, tuple(values))
        for field, values in (option_choices or {}).items()
        if len(values) > 1 and options.get(field) is None
    )
    return SearchSpace(tuple(groups), options, searched)
