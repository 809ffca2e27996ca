"""The suite every backend adapter must pass, on its real runtime; skipped (with the reason)
only where the runtime is not usable on this machine."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from qbench.backends import Backend, all_backends, get_backend
from qbench.data import load_npz
from qbench.errors import QbenchError
from qbench.machine import current_machine
from qbench.model import OnnxModel
from qbench.plan import PrecisionPlan, recipe_plan


@pytest.fixture(params=[b.name for b in all_backends()])
def backend(request) -> Backend:
    b = get_backend(request.param)
    availability = b.probe()
    if not availability.available:
        pytest.skip(f"backend {b.name} unavailable here: {availability.reason}")
    return b


@pytest.fixture
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("work")


def _outputs(backend, artifact, data, batch=64):
    runner = backend.load(artifact, threads=2)
    try:
        return np.concatenate([runner.run(feed)[0] for feed in data.batches(batch)])
    finally:
        runner.close()


def _top1(logits, labels):
    return float(np.mean(logits.argmax(1) == labels))


def test_probe_reports_a_version(backend):
    a = backend.probe()
    assert a.available and a.version and a.reason


def test_fp32_plan_matches_the_original_model(backend, demo_model, demo_evaluation, workdir):
    plan = backend.resolve_plan(PrecisionPlan(name="fp32"), current_machine())
    artifact = backend.build(demo_model, plan, None, workdir)
    samples = demo_evaluation.take(0, 400)  # equal numerics, not accuracy: a few hundred samples show it
    ours = _outputs(backend, artifact, samples)
    reference = ort.InferenceSession(str(demo_model.path), providers=["CPUExecutionProvider"])
    expected = reference.run(None, {"image": samples.inputs["image"]})[0]
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
    assert set(backend.realized_precisions(artifact, plan, demo_model).values()) == {"fp32"}


def test_int8_plans_share_one_calibration_and_keep_accuracy(
    backend, demo_model, demo_calibration, demo_evaluation, workdir
):
    machine = current_machine()
    calibration = backend.calibrate(demo_model, demo_calibration, "minmax", workdir)
    assert backend.calibrate(demo_model, demo_calibration, "minmax", workdir).details["cached"]
    int8 = backend.resolve_plan(PrecisionPlan.uniform(demo_model.layer_names(), "int8"), machine)
    artifact = backend.build(demo_model, int8, calibration, workdir)
    assert not artifact.cached
    again = backend.build(demo_model, int8, calibration, workdir)
    assert again.cached and again.path == artifact.path
    fp32 = backend.build(demo_model, backend.resolve_plan(PrecisionPlan(name="fp32"), machine), None, workdir)
    assert artifact.size_bytes < fp32.size_bytes / 2  # int8 weights really replaced float ones
    labels = demo_evaluation.labels
    fp32_top1 = _top1(_outputs(backend, fp32, demo_evaluation), labels)
    int8_top1 = _top1(_outputs(backend, artifact, demo_evaluation), labels)
    assert fp32_top1 > 0.95
    assert int8_top1 > fp32_top1 - 0.05  # quantized, not broken


def test_a_quantizer_that_calibrates_the_samples_itself_gets_them_without_ranges(
    backend, demo_model, demo_calibration, demo_evaluation, workdir
):
    """native-int8 (ONNX Runtime's ``quantize_static``, NNCF's ``quantize``) and NNCF's per-layer
    int8 read only the samples: no activation ranges are computed for them (13 s of a cold LLM
    tune on SmolLM2-135M). The plan still builds, and quantized, not broken."""
    if "native" not in backend.option_choices().get("quantizer", ()):
        pytest.skip(f"{backend.name} has no quantizer of its own")
    native = recipe_plan("native-int8", ((layer.name, layer.op_type) for layer in demo_model.layers))
    plan = backend.resolve_plan(native, current_machine())
    assert not backend.needs_ranges(plan)
    calibration = backend.calibration_for(plan, demo_model, demo_calibration, workdir)
    assert calibration.details["dataset"] is demo_calibration and calibration.samples == len(demo_calibration)
    assert not any((workdir / "calibration").glob("*"))  # no ranges written
    artifact = backend.build(demo_model, plan, calibration, workdir)
    assert not any((workdir / "calibration").glob("*.json"))
    top1 = _top1(_outputs(backend, artifact, demo_evaluation.take(0, 400)), demo_evaluation.labels[:400])
    assert top1 > 0.9
    per_layer = backend.resolve_plan(PrecisionPlan.uniform(demo_model.layer_names(), "int8"), current_machine())
    if backend.needs_ranges(per_layer):
        assert backend.calibration_for(per_layer, demo_model, demo_calibration, workdir).path.exists()


def test_the_artifact_cache_stays_under_its_limit(backend, demo_model, demo_calibration, tmp_path, monkeypatch):
    machine = current_machine()
    fp32 = backend.build(demo_model, backend.resolve_plan(PrecisionPlan(name="fp32"), machine), None, tmp_path)
    monkeypatch.setenv("QBENCH_ARTIFACT_CACHE_GB", str(fp32.size_bytes * 0.9 / 2**30))  # less than fp32 + int8
    calibration = backend.calibrate(demo_model, demo_calibration, "minmax", tmp_path)
    int8_plan = backend.resolve_plan(PrecisionPlan.uniform(demo_model.layer_names(), "int8"), machine)
    int8 = backend.build(demo_model, int8_plan, calibration, tmp_path)
    assert int8.path.exists() and not fp32.path.exists()  # the least recently used went
    assert not any(p.exists() for p in fp32.companions)
    rebuilt = backend.build(demo_model, backend.resolve_plan(PrecisionPlan(name="fp32"), machine), None, tmp_path)
    assert not rebuilt.cached


def test_realized_precision_follows_a_half_int8_plan(backend, demo_model, demo_calibration, workdir):
    names = demo_model.layer_names()
    half = {name: "int8" for name in names[::2]}
    plan = backend.resolve_plan(PrecisionPlan(half, name="half"), current_machine())
    calibration = backend.calibrate(demo_model, demo_calibration, "minmax", workdir)
    artifact = backend.build(demo_model, plan, calibration, workdir)
    realized = backend.realized_precisions(artifact, plan, demo_model)
    assert set(realized) == set(names)
    assert {name for name, p in realized.items() if p == "fp32"} == set(names[1::2])
    assert {name for name, p in realized.items() if p == "int8"} == set(names[::2])


def test_plans_the_backend_cannot_run_are_refused(backend, demo_model, workdir):
    conv = next(layer for layer in demo_model.layers if layer.op_type == "Conv")
    impossible = next((p for p in ("int8-dynamic", "fp8", "int4-weight") if p not in backend.precisions(conv)), None)
    if impossible is None:
        pytest.skip(f"{backend.name} runs every precision on Conv")
    with pytest.raises(QbenchError, match=f"cannot run layer '{conv.name}'"):
        backend.build(demo_model, PrecisionPlan({conv.name: impossible}), None, workdir)
    with pytest.raises(QbenchError, match="does not have"):
        backend.build(demo_model, PrecisionPlan({"no/such/layer": "int8"}), None, workdir)


def test_bad_thread_count(backend, demo_model, workdir):
    artifact = backend.build(demo_model, backend.resolve_plan(PrecisionPlan(), current_machine()), None, workdir)
    with pytest.raises(QbenchError, match="threads"):
        backend.load(artifact, threads=0)


def test_dynamic_int8_matmul_on_a_transformer_shaped_model(backend, mlp_files, workdir):
    model = OnnxModel.load(mlp_files[0])
    matmuls = [layer for layer in model.layers if layer.op_type == "MatMul"]
    if "int8-dynamic" not in backend.precisions(matmuls[0]):
        pytest.skip(f"{backend.name} has no dynamic int8")
    data = load_npz(mlp_files[1], model)
    machine = current_machine()
    plan = backend.resolve_plan(PrecisionPlan.uniform([m.name for m in matmuls], "int8-dynamic"), machine)
    artifact = backend.build(model, plan, None, workdir)
    realized = backend.realized_precisions(artifact, plan, model)
    assert realized == {m.name: "int8" for m in matmuls}
    fp32 = backend.build(model, backend.resolve_plan(PrecisionPlan(), machine), None, workdir)
    ours, ref = _outputs(backend, artifact, data, 16), _outputs(backend, fp32, data, 16)
    cosine = np.sum(ours * ref) / (np.linalg.norm(ours) * np.linalg.norm(ref))
    assert 0.99 < cosine < 1.0  # quantized (not identical) and still faithful
