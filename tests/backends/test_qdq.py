"""Plans written by exclusion: the ops between int8 layers follow them, the ops touching a float
layer stay float, and a uniform int8 plan is the runtime's own int8 graph. Real ONNX Runtime
sessions on the MobileNet- and YOLO-style fixtures."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from qbench.backends import _qdq as qdq
from qbench.backends import get_backend
from qbench.data import load_npz
from qbench.errors import QbenchError
from qbench.machine import current_machine
from qbench.model import OnnxModel
from qbench.plan import PlanOptions, PrecisionPlan, recipe_plan
from qbench.zoo import ZOO


def _zoo(name: str):
    files = ZOO[name].files()
    model = OnnxModel.load(files.model)
    return model, load_npz(files.calibration, model), load_npz(files.evaluation, model)


@pytest.fixture(scope="module")
def mobilenet(zoo_cache):
    return _zoo("mobilenet-blocks")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("work")


def _build(backend_name, model, calibration_data, plan, workdir):
    backend = get_backend(backend_name)
    plan = backend.resolve_plan(plan, current_machine())
    calibration = backend.calibrate(model, calibration_data, "minmax", workdir)
    return backend, plan, backend.build(model, plan, calibration, workdir)


def _op_counts(path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_float_neighbours_keep_ops_touching_a_float_layer_in_float(mobilenet):
    model = mobilenet[0]
    names = model.layer_names()
    excluded = qdq.float_neighbours(model.proto.graph, ["block1/dw/Conv"], names)
    # The Clip feeding only the float conv, and the one it feeds, stay float ...
    assert {"block1/expand/Clip", "block1/dw/Clip"} <= excluded
    # ... and nothing between two int8 layers does (block0's activations, the residual Add of block1
    # only after its float branch: it reads block1/project/Conv, which is int8, and block0's output).
    assert not excluded & {"block0/expand/Clip", "block0/dw/Clip", "stem/Clip", "head/Clip"}
    assert qdq.float_neighbours(model.proto.graph, [], names) == set()


def test_uniform_int8_is_the_native_int8_graph_on_onnxruntime(mobilenet, workdir):
    """No float Clip left between Q/DQ pairs: as many QuantizeLinear nodes as ORT's own
    whole-model quantization, far fewer than quantizing only the compute layers would leave."""
    model, calibration, evaluation = mobilenet
    layers = [(layer.name, layer.op_type) for layer in model.layers]
    _, _, ours = _build("onnxruntime", model, calibration, recipe_plan("int8", layers), workdir)
    _, _, native = _build("onnxruntime", model, calibration, recipe_plan("native-int8", layers), workdir)
    assert _op_counts(ours.path)["QuantizeLinear"] == _op_counts(native.path)["QuantizeLinear"]
    backend = get_backend("onnxruntime")
    profile = backend.profile(ours, 1, next(evaluation.batches(1)), runs=3)
    # Quantizing only the convs left 13 DQ -> Q requantizations where each Clip had been.
    assert [op for op in profile if op.flag] == []
    assert not [op for op in profile if op.op_type == "Clip"]  # every ReLU6 folded into its int8 conv


def test_a_float_layer_keeps_its_neighbours_float_and_the_rest_int8(mobilenet, workdir):
    model, calibration, evaluation = mobilenet
    plan = PrecisionPlan({name: "int8" for name in model.layer_names() if name != "block2/dw/Conv"})
    backend, plan, artifact = _build("onnxruntime", model, calibration, plan, workdir)
    realized = backend.realized_precisions(artifact, plan, model)
    assert realized["block2/dw/Conv"] == "fp32"
    assert {p for name, p in realized.items() if name != "block2/dw/Conv"} == {"int8"}
    feeds = next(evaluation.batches(1))
    flags = {op.flag for op in backend.profile(artifact, 1, feeds, runs=3)}
    assert "float between Q/DQ" not in flags


def test_native_int8_takes_the_whole_model_only(mobilenet, workdir):
    model = mobilenet[0]
    partial = PrecisionPlan({model.layer_names()[0]: "int8"}, PlanOptions(quantizer="native"), "half-native")
    with pytest.raises(QbenchError, match="quantizer=native quantizes the whole model"):
        get_backend("onnxruntime").check_plan(partial, model)


def test_yolo_block_int8_keeps_fidelity_on_both_cpu_backends(zoo_cache, workdir):
    model, calibration, evaluation = _zoo("yolo-blocks")
    layers = [(layer.name, layer.op_type) for layer in model.layers]
    reference = None
    for backend_name in ("onnxruntime", "openvino"):
        backend = get_backend(backend_name)
        if not backend.probe().available:
            pytest.skip(f"{backend_name}: {backend.probe().reason}")
        for recipe in ("fp32", "int8"):
            _, _, artifact = _build(backend_name, model, calibration, recipe_plan(recipe, layers), workdir)
            runner = backend.load(artifact, threads=2)
            try:
                out = np.concatenate([runner.run(feed)[0] for feed in evaluation.batches(32)]).reshape(
                    len(evaluation), -1
                )
            finally:
                runner.close()
            if reference is None:
                reference = out
            cosine = np.sum(out * reference, 1) / np.linalg.norm(out, axis=1) / np.linalg.norm(reference, axis=1)
            assert cosine.mean() > 0.98, (backend_name, recipe, cosine.mean())
