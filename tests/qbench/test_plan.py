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


TUNED = {
    "machine_hash": "0123456789ab",
    "cpu": "AMD EPYC (family 25 model 1)",
    "isa": "AVX2, no VNNI",
    "backend": "onnxruntime",
    "model_hash": "f353e02488890827",
    "metric": "top1",
    "max_drop": 0.01,
    "workload": "batch",
    "scenario": "latency",
    "speedup": 1.7,
    "drop": 0.004,
}


def test_where_a_plan_was_tuned_travels_in_its_file_but_not_in_its_identity():
    plain = PrecisionPlan({"conv1": "int8"}, name="tuned-t3")
    text = json.dumps({**plain.to_dict(), "tuned": TUNED})
    tuned = PrecisionPlan.from_json(text)
    assert tuned.tuned is not None and tuned.tuned.max_drop == 0.01 and tuned.tuned.budget_text() == "top1:0.01"
    assert tuned.content_hash == plain.content_hash and tuned == plain
    assert PrecisionPlan.from_json(tuned.to_json()).tuned == tuned.tuned


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_drop": 2.0}, "max_drop"),
        ({"speedup": "fast"}, "speedup"),
        ({"cpu": ""}, "cpu"),
        ({"isa": "x\u202e"}, "isa"),
        ({"extra": 1}, "exactly the keys"),
    ],
)
def test_a_bad_tuned_section_is_one_line(change, message):
    text = json.dumps({**PrecisionPlan({"conv1": "int8"}).to_dict(), "tuned": {**TUNED, **change}})
    with pytest.raises(QbenchError, match=message) as caught:
        PrecisionPlan.from_json(text, "plan.json")
    assert "\n" not in str(caught.value) and "plan.json" in str(caught.value)
