import onnx
import pytest

from qbench.errors import QbenchError
from qbench.model import OnnxModel


def test_demo_model_has_named_quantizable_layers(demo_model):
    names = demo_model.layer_names()
    assert len(names) == len(set(names)) >= 10
    assert {layer.op_type for layer in demo_model.layers} <= {"Conv", "Gemm"}
    assert demo_model.inputs[0].name == "image"
    assert demo_model.inputs[0].shape[1:] == (1, 8, 8)


def test_nameless_nodes_get_stable_unique_names(mlp_files):
    first = OnnxModel.load(mlp_files[0])
    second = OnnxModel.load(mlp_files[0])
    names = [n.name for n in first.proto.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert names == [n.name for n in second.proto.graph.node]
    assert "Relu_2" in names
    assert first.content_hash == second.content_hash


def test_content_hash_changes_with_the_file(tmp_path, mlp_files):
    from tests.conftest import write_mlp_model

    other = OnnxModel.load(write_mlp_model(tmp_path / "other.onnx", seed=7))
    assert other.content_hash != OnnxModel.load(mlp_files[0]).content_hash


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(QbenchError, match="model file not found"):
        OnnxModel.load(tmp_path / "nope.onnx")


def test_non_onnx_file_is_a_clear_error(tmp_path):
    bogus = tmp_path / "model.onnx"
    bogus.write_text("this is not a protobuf\n" * 10)
    with pytest.raises(QbenchError, match="not an ONNX model"):
        OnnxModel.load(bogus)


def test_old_opsets_are_upgraded_on_load(tmp_path, mlp_files):
    import numpy as np
    import onnxruntime as ort

    proto = onnx.load(str(mlp_files[0]))
    proto.opset_import[0].version = 11
    path = tmp_path / "old.onnx"
    onnx.save_model(proto, str(path))
    model = OnnxModel.load(path)
    assert model.opset == 13 and model.layer_names() == OnnxModel.load(mlp_files[0]).layer_names()
    upgraded = tmp_path / "upgraded.onnx"
    model.save(upgraded)
    x = {"x": np.random.default_rng(0).standard_normal((2, 16, 256)).astype(np.float32)}
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, x)[0]  # noqa: E731
    np.testing.assert_array_equal(run(path), run(upgraded))


def test_an_opset_that_cannot_be_upgraded_is_a_clear_error(tmp_path, mlp_files, monkeypatch):
    from onnx import version_converter

    def refuse(*_args):
        raise RuntimeError("No adapter for op Foo")

    monkeypatch.setattr(version_converter, "convert_version", refuse)
    proto = onnx.load(str(mlp_files[0]))
    proto.opset_import[0].version = 9
    path = tmp_path / "old.onnx"
    onnx.save_model(proto, str(path))
    with pytest.raises(QbenchError, match="opset 9 and could not be upgraded.*No adapter for op Foo"):
        OnnxModel.load(path)


def test_with_shapes_fixes_dynamic_dims_and_rejects_conflicts(demo_model):
    fixed = demo_model.with_shapes({"image": (4, 1, 8, 8)})
    assert fixed.inputs[0].shape == (4, 1, 8, 8)
    with pytest.raises(QbenchError, match="conflicts"):
        demo_model.with_shapes({"image": (1, 3, 8, 8)})
    with pytest.raises(QbenchError, match="names input 'pixels'"):
        demo_model.with_shapes({"pixels": (1, 1, 8, 8)})
