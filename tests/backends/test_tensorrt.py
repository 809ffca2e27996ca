"""The TensorRT adapter: its graphs checked on the CPU with ONNX Runtime, its engines built with
whichever TensorRT builder is installed (TensorRT-RTX builds without a GPU), and its runtime
path where an NVIDIA GPU exists."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from qbench.backends import get_backend
from qbench.backends._tensorrt import tensorrt_module
from qbench.backends._tensorrt_casts import write_cast_regions
from qbench.data import load_npz
from qbench.errors import QbenchError
from qbench.machine import current_machine
from qbench.model import OnnxModel
from qbench.plan import PrecisionPlan


@pytest.fixture(scope="module")
def tensorrt():
    return get_backend("tensorrt")


@pytest.fixture(params=["demo", "transformer"])
def case(request, demo_model, demo_calibration, demo_evaluation, transformer_files):
    """(model, calibration data, evaluation data) for a CNN and a transformer block."""
    if request.param == "demo":
        return demo_model, demo_calibration, demo_evaluation.take(0, 256)
    model = OnnxModel.load(transformer_files[0])
    data = load_npz(transformer_files[1], model)
    return model, data.take(0, 32), data.take(32, 64)


def _run(path, data, optimize: bool = True) -> np.ndarray:
    options = ort.SessionOptions()
    if not optimize:  # every Q/DQ executed as written: the fake-quantized reference
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, feed)[0] for feed in data.batches(32)])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _plan(tensorrt, model, precision: str) -> PrecisionPlan:
    return tensorrt.resolve_plan(PrecisionPlan.uniform(model.layer_names(), precision), current_machine())


def _quantized_graph(tensorrt, case, precision: str, tmp_path):
    """The TensorRT graph of a uniform ``precision`` plan: its path, proto and initializers."""
    model, calibration_data, _ = case
    calibration = tensorrt.calibrate(model, calibration_data, "minmax", tmp_path)
    plan = _plan(tensorrt, model, precision)
    graph = tensorrt.write_graph(model, plan, calibration, tmp_path / f"{precision}.onnx", tmp_path)
    proto = onnx.load(str(graph))
    return graph, proto, {t.name: t for t in proto.graph.initializer}


def test_int8_graph_is_symmetric_signed_per_channel_with_float_bias_and_matches_fake_quant(tensorrt, case, tmp_path):
    model, _, data = case
    graph, proto, inits = _quantized_graph(tensorrt, case, "int8", tmp_path)
    quantize = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert quantize, "no Q/DQ written"
    for node in quantize:  # activations: signed int8, zero point 0
        zero = numpy_helper.to_array(inits[node.input[2]])
        assert zero.dtype == np.int8 and not zero.any()
    weights = [t for t in proto.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) >= 2]
    float_weights = {t.name for t in model.proto.graph.initializer}
    layers = set(model.layer_names())
    weighted = [n for n in model.proto.graph.node if n.name in layers and n.input[1] in float_weights]
    assert len(weights) == len(weighted)  # every layer's weights stored as int8
    dequantize = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert any(numpy_helper.to_array(inits[n.input[1]]).size > 1 for n in dequantize)  # per-channel scales
    assert not [t for t in proto.graph.initializer if t.data_type == TensorProto.INT32]  # no int32 bias
    fake_quant = _run(graph, data, optimize=False)
    if current_machine().has_vnni:
        # ONNX Runtime fuses the Q/DQ into int8 kernels. Without VNNI its signed x signed kernels
        # saturate 16-bit sums, so they prove nothing there.
        assert _cosine(_run(graph, data), fake_quant) > 0.999
    reference = _run(model.path, data)
    # Quantized, and still the same function (the demo's planted outlier channel costs int8 a little).
    assert 0.95 < _cosine(fake_quant, reference) < 1.0


def test_fp16_graph_matches_simulated_rounding_and_bf16_simulation_stays_close(tensorrt, case, tmp_path):
    model, _, data = case
    fp16 = tensorrt.write_graph(model, _plan(tensorrt, model, "fp16"), None, tmp_path / "fp16.onnx", tmp_path)
    casts = {layer: "fp16" for layer in model.layer_names()}
    simulated = tmp_path / "fp16-simulated.onnx"
    onnx.save(write_cast_regions(model.proto, casts, simulate=True), str(simulated))
    ours, rounded, reference = _run(fp16, data), _run(simulated, data), _run(model.path, data)
    scale = np.abs(reference).max()
    assert np.abs(ours - rounded).max() < 2e-3 * scale  # what fp16 kernels compute: the rounded graph
    assert np.abs(ours - reference).max() > 0  # and it is not fp32
    bf16 = tensorrt.write_graph(model, _plan(tensorrt, model, "bf16"), None, tmp_path / "bf16.onnx", tmp_path)
    # ONNX admits bf16 Conv only from opset 22, so no full (typed) check; TensorRT parses it, see below.
    proto = onnx.load(str(bf16))
    onnx.checker.check_model(proto)
    bf16 = {t.name for t in proto.graph.initializer if t.data_type == TensorProto.BFLOAT16}
    bf16 |= {n.output[0] for n in proto.graph.node if n.op_type == "Cast" and n.attribute[0].i == TensorProto.BFLOAT16}
    for node in (n for n in proto.graph.node if n.name in casts):  # every input of every layer is bf16
        assert all(i in bf16 for i in node.input if i), node.name
    bf16_sim = tmp_path / "bf16-simulated.onnx"
    onnx.save(write_cast_regions(model.proto, {k: "bf16" for k in casts}, simulate=True), str(bf16_sim))
    assert 0.999 < _cosine(_run(bf16_sim, data), reference) < 1.0


@pytest.fixture(scope="module")
def builder_module():
    try:
        return tensorrt_module()
    except QbenchError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("precision", ["int8", "fp8", "fp16", "bf16"])
def test_graphs_build_into_strongly_typed_engines(builder_module, tensorrt, case, precision, tmp_path):
    model, calibration_data, _ = case
    static = precision in ("int8", "fp8")
    calibration = tensorrt.calibrate(model, calibration_data, "minmax", tmp_path) if static else None
    plan = _plan(tensorrt, model, precision)
    artifact = tensorrt.build(model, plan, calibration, tmp_path)
    assert artifact.size_bytes > 1000 and not artifact.cached
    assert tensorrt.build(model, plan, calibration, tmp_path).cached
    settings = json.loads(artifact.path.with_suffix(".json").read_text())
    assert settings["strongly_typed"] and settings["module"] == builder_module.__name__
    assert list(settings["profile_min_opt_max"].values())[0][2][0] == 64  # dynamic batch up to the eval batch
    if builder_module.__name__ == "tensorrt":  # TensorRT-RTX has no timing cache
        assert settings["timing_cache"] and any((tmp_path / "tensorrt-timing-cache").iterdir())


def test_probe_says_exactly_what_is_missing(tensorrt):
    availability = tensorrt.probe()
    if availability.available:
        pytest.skip("TensorRT and a GPU are present here")
    reason = availability.reason
    assert "pip install" in reason or "no NVIDIA GPU" in reason or "cuda-python" in reason


@pytest.mark.gpu
def test_engine_runs_and_reports_realized_precision(tensorrt, demo_model, demo_calibration, demo_evaluation, tmp_path):
    availability = tensorrt.probe()
    if not availability.available:
        pytest.skip(f"TensorRT runtime unavailable: {availability.reason}")
    calibration = tensorrt.calibrate(demo_model, demo_calibration, "minmax", tmp_path)
    names = demo_model.layer_names()
    plan = tensorrt.resolve_plan(PrecisionPlan({n: "int8" for n in names[::2]}), current_machine())
    artifact = tensorrt.build(demo_model, plan, calibration, tmp_path)
    runner = tensorrt.load(artifact, threads=1)
    try:
        logits = np.concatenate([runner.run(feed)[0] for feed in demo_evaluation.batches(64)])
        notes = runner.timing_notes()
    finally:
        runner.close()
    assert np.mean(logits.argmax(1) == demo_evaluation.labels) > 0.9
    assert notes["gpu_ms_median"] > 0 and notes["enqueue_ms_median"] > 0  # CUDA events and host time
    realized = tensorrt.realized_precisions(artifact, plan, demo_model)
    assert {n for n, p in realized.items() if p == "int8"} == set(names[::2])


def test_fp8_graph_has_float8_pairs_and_stays_close_to_fp32(tensorrt, case, tmp_path):
    model, _, data = case
    graph, proto, inits = _quantized_graph(tensorrt, case, "fp8", tmp_path)
    pairs = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert pairs and all(inits[n.input[2]].data_type == TensorProto.FLOAT8E4M3FN for n in pairs)
    fake_fp8 = _run(graph, data, optimize=False)
    # E4M3 keeps 3 mantissa bits (measured: 2.7 % relative error on the demo's fc weights), so
    # fp8 sits further from fp32 than int8 does: cosine 0.95 on the demo's logits, 0.98+ on the block.
    assert 0.93 < _cosine(fake_fp8, _run(model.path, data)) < 1.0


def test_a_tensor_cannot_feed_both_an_int8_and_an_fp8_layer(tensorrt, transformer_files, tmp_path):
    model = OnnxModel.load(transformer_files[0])
    calibration = tensorrt.calibrate(model, load_npz(transformer_files[1], model), "minmax", tmp_path)
    plan = tensorrt.resolve_plan(PrecisionPlan({"attn/q": "fp8", "attn/k": "int8"}), current_machine())
    with pytest.raises(QbenchError, match="feeds fp8 layer 'attn/q' and int8 layer 'attn/k'"):
        tensorrt.write_graph(model, plan, calibration, tmp_path / "mixed.onnx", tmp_path)


@pytest.mark.parametrize("precision", ["int4-weight", "int8-weight"])
def test_weight_only_graph_dequantizes_low_bit_weights_and_builds(
    builder_module, tensorrt, transformer_files, precision, tmp_path
):
    """Weight-only MatMuls read a DequantizeLinear of int4 weights in blocks of 32 input
    channels (opset 21) or of int8 weights per output channel; activations stay float."""
    model = OnnxModel.load(transformer_files[0])
    data = load_npz(transformer_files[1], model).take(0, 32)
    constant = [layer.name for layer in model.layers if layer.constant_weight and layer.op_type == "MatMul"]
    plan = tensorrt.resolve_plan(PrecisionPlan.uniform(constant, precision), current_machine())
    graph = tensorrt.write_graph(model, plan, None, tmp_path / "weight-only.onnx", tmp_path)
    proto = onnx.load(str(graph))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 21
    initializers = {t.name: t for t in proto.graph.initializer}
    dequantized = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dequantized) == len(constant) and not [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    low_bit = TensorProto.INT4 if precision == "int4-weight" else TensorProto.INT8
    assert {initializers[n.input[0]].data_type for n in dequantized} == {low_bit}
    attrs = {a.name: a.i for a in dequantized[0].attribute}
    assert attrs == ({"axis": 0, "block_size": 32} if precision == "int4-weight" else {"axis": 1})
    assert 0.99 < _cosine(_run(graph, data), _run(model.path, data)) <= 1.0 + 1e-6
    assert tensorrt.build(model, plan, None, tmp_path).size_bytes > 1000
