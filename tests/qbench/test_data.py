import numpy as np
import pytest

from qbench.data import dataset_from_arrays, load_npz, split_for_calibration
from qbench.errors import QbenchError


def test_demo_data_loads_with_labels(demo_model, demo_evaluation, demo_calibration):
    assert len(demo_evaluation) == len(demo_evaluation.labels) > 500
    assert len(demo_calibration) > 100
    assert demo_evaluation.content_hash != demo_calibration.content_hash


def test_batches_cover_every_sample_once(demo_evaluation):
    sizes = [len(feed["image"]) for feed in demo_evaluation.batches(64)]
    assert sum(sizes) == len(demo_evaluation)
    fixed = [len(feed["image"]) for feed in demo_evaluation.batches(64, keep_tail=False)]
    assert set(fixed) == {64}


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"pixels": np.zeros((4, 1, 8, 8), np.float32)}, "do not match the model's inputs"),
        ({"image": np.zeros((4, 8, 8), np.float32)}, "has shape \\[4, 8, 8\\]"),
        ({"image": np.zeros((4, 1, 8, 9), np.float32)}, "axis 3 differs"),
        ({"image": np.zeros((4, 1, 8, 8), np.complex64)}, "is complex64"),
        ({"image": np.zeros((4, 1, 8, 8), np.float32), "labels": np.zeros(3)}, "'labels' has 3 entries"),
    ],
)
def test_mismatched_data_is_rejected(demo_model, arrays, message):
    with pytest.raises(QbenchError, match=message):
        dataset_from_arrays(arrays, demo_model, "data.npz")


def test_compatible_dtypes_are_cast(demo_model):
    data = dataset_from_arrays({"image": np.zeros((2, 1, 8, 8), np.float64)}, demo_model, "x")
    assert data.inputs["image"].dtype == np.float32


def test_unreadable_files(tmp_path, demo_model):
    with pytest.raises(QbenchError, match="data file not found"):
        load_npz(tmp_path / "none.npz", demo_model)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(QbenchError, match="not a readable .npz"):
        load_npz(bad, demo_model)


def test_split_for_calibration_is_disjoint(demo_evaluation):
    calib, rest = split_for_calibration(demo_evaluation)
    assert len(calib) + len(rest) == len(demo_evaluation)
    assert np.array_equal(calib.inputs["image"], demo_evaluation.inputs["image"][: len(calib)])


def test_fixed_batch_models_score_whole_batches_only(demo_model):
    fixed = demo_model.with_shapes({"image": (4, 1, 8, 8)})
    data = dataset_from_arrays({"image": np.zeros((10, 1, 8, 8), np.float32), "labels": np.arange(10)}, fixed, "x")
    assert len(data) == 8 and len(data.labels) == 8
    assert [len(f["image"]) for f in data.batches(4, keep_tail=False)] == [4, 4]
