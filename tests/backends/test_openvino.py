"""What only the OpenVINO adapter does: NNCF as a second quantizer, the inference-precision
option, devices, unreadable graphs, and rows beside ONNX Runtime's. Real OpenVINO throughout."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from qbench.backends import get_backend
from qbench.cli import main
from qbench.errors import QbenchError
from qbench.machine import current_machine
from qbench.model import OnnxModel
from qbench.plan import PlanOptions, PrecisionPlan
from qbench.store import Leaderboard, default_url

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino not installed: pip install 'qbench[openvino]'"
)


@pytest.fixture
def openvino():
    return get_backend("openvino")


def _top1(backend, artifact, data) -> float:
    runner = backend.load(artifact, threads=2)
    try:
        logits = np.concatenate([runner.run(feed)[0] for feed in data.batches(64)])
    finally:
        runner.close()
    return float(np.mean(logits.argmax(1) == data.labels))


@pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="nncf not installed")
def test_nncf_quantizer_keeps_exactly_the_planned_fp32_layers(
    openvino, demo_model, demo_calibration, demo_evaluation, tmp_path
):
    names = demo_model.layer_names()
    half = PrecisionPlan({n: "int8" for n in names[::2]}, PlanOptions(quantizer="nncf"), name="half-nncf")
    plan = openvino.resolve_plan(half, current_machine())
    calibration = openvino.calibrate(demo_model, demo_calibration, "minmax", tmp_path)
    artifact = openvino.build(demo_model, plan, calibration, tmp_path)
    realized = openvino.realized_precisions(artifact, plan, demo_model)
    # The ignored scope was mapped from ONNX node names to OpenVINO operation names.
    assert {n for n, p in realized.items() if p == "fp32"} == set(names[1::2])
    assert {n for n, p in realized.items() if p == "int8"} == set(names[::2])
    assert _top1(openvino, artifact, demo_evaluation) > 0.9


def test_bf16_inference_precision_runs_float_layers_in_bf16(openvino, demo_model, tmp_path):
    if "bf16" not in openvino.option_choices()["inference_precision"]:
        with pytest.raises(QbenchError, match="inference_precision='bf16'"):
            openvino.build(
                demo_model, PrecisionPlan(options=PlanOptions(runtime={"inference_precision": "bf16"})), None, tmp_path
            )
        return
    machine = current_machine()
    fp32 = openvino.resolve_plan(PrecisionPlan(), machine)
    bf16 = openvino.resolve_plan(PrecisionPlan(options=PlanOptions(runtime={"inference_precision": "bf16"})), machine)
    assert fp32.options.get("inference_precision") == "f32"  # not OpenVINO's own bf16 default
    float_artifact = openvino.build(demo_model, fp32, None, tmp_path)
    assert set(openvino.realized_precisions(float_artifact, fp32, demo_model).values()) == {"fp32"}
    artifact = openvino.build(demo_model, bf16, None, tmp_path)
    assert set(openvino.realized_precisions(artifact, bf16, demo_model).values()) == {"bf16"}
    assert openvino.load(artifact, threads=1).settings["INFERENCE_PRECISION_HINT"] == "bf16"


def test_onnx_runtime_refuses_openvino_only_options(demo_model, tmp_path):
    with pytest.raises(QbenchError, match="cannot honour plan option quantizer='nncf'; it offers qdq"):
        nncf_plan = PrecisionPlan(options=PlanOptions(quantizer="nncf"))
        get_backend("onnxruntime").build(demo_model, nncf_plan, None, tmp_path)


def test_a_device_that_does_not_exist_is_named_in_one_line(capsys):
    availability = get_backend("openvino:NPU7").probe()
    assert not availability.available and "no device 'NPU7'" in availability.reason
    assert main(["bench", "--backend", "openvino:NPU7", "--quick", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "NPU7" in err and "openvino:CPU" in err
    with pytest.raises(QbenchError, match="has no devices"):
        get_backend("onnxruntime:GPU")


def _model_with_an_op_openvino_cannot_read(path):
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Frobnicate", ["h"], ["y"], name="custom", domain="com.example"),
    ]
    graph = helper.make_graph(
        nodes,
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [onnx.numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(path))
    return path


def test_an_op_openvino_cannot_read_is_a_clear_error_and_a_recorded_failure(openvino, tmp_path):
    path = _model_with_an_op_openvino_cannot_read(tmp_path / "custom.onnx")
    with pytest.raises(QbenchError, match="OpenVINO cannot read .*Frobnicate"):
        openvino.build(OnnxModel.load(path), PrecisionPlan(), None, tmp_path)
    np.savez(tmp_path / "data.npz", x=np.ones((4, 8), np.float32))
    results = tmp_path / "results"
    args = ["bench", str(path), "--data", str(tmp_path / "data.npz"), "--backend", "openvino", "--quick", "-q"]
    assert main([*args, "--results-dir", str(results), "--recipe", "fp32"]) == 1  # recorded, and not a success
    board = Leaderboard(default_url(results))
    rows = board.frame()
    board.close()
    assert list(rows.status) == ["failed"] and "Frobnicate" in rows.error.iloc[0]
