import json

import pytest

from qbench.errors import QbenchError
from qbench.plan import PlanOptions, PrecisionPlan, check_plan_layers, recipe_plan

LAYERS = [("conv1", "Conv"), ("conv2", "Conv"), ("fc", "Gemm")]


def test_json_round_trip_keeps_content_and_hash():
    plan = PrecisionPlan({"conv1": "int8", "fc": "int8-dynamic"}, PlanOptions(per_channel=True), "mine")
    again = PrecisionPlan.from_json(plan.to_json())
    assert again == plan
    assert again.content_hash == plan.content_hash
    assert json.loads(plan.to_json())["layers"] == {"conv1": "int8", "fc": "int8-dynamic"}


def test_hash_ignores_name_and_explicit_fp32_but_not_precisions_or_options():
    a = PrecisionPlan({"conv1": "int8"}, name="a")
    assert a.content_hash == PrecisionPlan({"conv1": "int8", "conv2": "fp32"}, name="b").content_hash
    assert a.content_hash != PrecisionPlan({"conv2": "int8"}).content_hash
    assert a.content_hash != a.with_options(per_channel=True).content_hash


def test_plan_is_immutable():
    plan = PrecisionPlan({"conv1": "int8"})
    with pytest.raises(TypeError):
        plan.layers["conv1"] = "fp32"


def test_recipes():
    assert recipe_plan("fp32", LAYERS).layers == {}
    assert dict(recipe_plan("int8", LAYERS).layers) == {"conv1": "int8", "conv2": "int8", "fc": "int8"}
    assert dict(recipe_plan("int8-dynamic", LAYERS).layers) == {"fc": "int8-dynamic"}
    with pytest.raises(QbenchError, match="unknown recipe 'int4'"):
        recipe_plan("int4", LAYERS)


def test_plan_file_recipe(tmp_path):
    path = tmp_path / "half.json"
    path.write_text(PrecisionPlan({"conv1": "int8"}, name="half").to_json())
    assert recipe_plan(str(path), LAYERS).layers == {"conv1": "int8"}
    with pytest.raises(QbenchError, match="plan file not found"):
        recipe_plan(str(tmp_path / "missing.json"), LAYERS)
    path.write_text("{not json")
    with pytest.raises(QbenchError, match="not valid JSON"):
        recipe_plan(str(path), LAYERS)


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"layers": {}}, "not a qbench plan"),
        ({"qbench_plan": 1, "layers": {"conv1": "int3"}}, "unknown precision 'int3'"),
        ({"qbench_plan": 1, "options": {"activation_type": "int16"}}, "activation_type"),
        ({"qbench_plan": 1, "options": {"calibration": "magic"}}, "calibration"),
    ],
)
def test_bad_plans_are_rejected(payload, message):
    with pytest.raises(QbenchError, match=message):
        PrecisionPlan.from_dict(payload)


def test_unknown_layers_are_named():
    with pytest.raises(QbenchError, match="does not have \\(conv9\\)"):
        check_plan_layers(PrecisionPlan({"conv9": "int8"}), [name for name, _ in LAYERS])
