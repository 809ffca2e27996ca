"""A runtime option lives only in its adapter: a made-up one needs no change outside backends/."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from qbench.backends._base import choice_check
from qbench.backends._onnxruntime import OnnxRuntimeBackend, OnnxRuntimeOptions
from qbench.errors import QbenchError
from qbench.machine import current_machine
from qbench.plan import PrecisionPlan
from qbench.search._tune import searched_options


@dataclass(frozen=True)
class _WithSpin(OnnxRuntimeOptions):
    spin_policy: str | None = None  # made up: only this test knows it

    def __post_init__(self) -> None:
        super().__post_init__()
        choice_check(self, {"spin_policy": ("eager", "lazy")})


class _SpinningOnnxRuntime(OnnxRuntimeBackend):
    Options = _WithSpin

    def option_choices(self):
        return {**super().option_choices(), "spin_policy": ("lazy", "eager")}

    def searched_options(self):
        return {**super().searched_options(), "spin_policy": None}

    def resolve_plan(self, plan, machine):
        plan = super().resolve_plan(plan, machine)
        return plan if plan.options.get("spin_policy") else plan.with_options(spin_policy="lazy")


def test_a_made_up_backend_option_is_resolved_checked_searched_and_serialized(demo_model):
    backend, machine = _SpinningOnnxRuntime(), current_machine()
    plan = backend.resolve_plan(PrecisionPlan.uniform(demo_model.layer_names(), "int8"), machine)
    assert backend.runtime_options(plan).spin_policy == "lazy"
    backend.check_plan(plan, demo_model)
    eager = plan.with_options(spin_policy="eager")
    assert eager.content_hash != plan.content_hash
    assert PrecisionPlan.from_json(eager.to_json()) == eager  # the plan file carries it, flat
    searched = searched_options(backend, machine, demo_model, ("int8",))
    assert searched["spin_policy"] == ("lazy", "eager")  # this machine's default first
    with pytest.raises(QbenchError, match="spin_policy"):
        backend.check_plan(plan.with_options(spin_policy="never"), demo_model)
    with pytest.raises(QbenchError, match="has no plan option spin_policy"):
        OnnxRuntimeBackend().check_plan(eager, demo_model)  # the stock adapter does not know it


def test_runtime_options_keep_the_plan_hashes_of_plan_files_that_named_them_flat(demo_model):
    flat = '{"qbench_plan": 1, "name": "p", "layers": {}, "options": {"accuracy_level": 4, "block_size": 32}}'
    plan = PrecisionPlan.from_json(flat)
    assert plan.options.runtime == (("accuracy_level", 4),)
    assert plan.options.block_size == 32
    assert plan.content_hash == PrecisionPlan(options=plan.options).content_hash


def test_an_option_no_backend_knows_is_a_clear_error_when_checked(demo_model):
    plan = PrecisionPlan.from_json('{"qbench_plan": 1, "options": {"turbo": true}}')
    with pytest.raises(QbenchError, match="backend 'onnxruntime' has no plan option turbo; its own options are"):
        OnnxRuntimeBackend().check_plan(plan, demo_model)
