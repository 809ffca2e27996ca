"""Explicit quantization shared by every backend: calibrate once, write a plan's QDQ graph.

ONNX Runtime's quantizer does the work (``quantize_static`` with ``nodes_to_quantize``);
ONNX Runtime runs the graph as it is, OpenVINO compiles it, TensorRT parses it. Activation
ranges cover every float tensor, so one calibration serves any plan on any backend.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import pathlib
import time
from collections.abc import Iterator

import numpy as np

from backends._base import Calibration
from qbench.data import Dataset, fixed_batch_size
from qbench.errors import QbenchError
from qbench.model import OnnxModel
from qbench.plan import PrecisionPlan

CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
_CALIBRATION_BATCH = 32


def sha(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantizer warns on the root logger that the model was not pre-processed.
    We skip pre-processing on purpose (it renames and fuses nodes, breaking per-layer plans)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def named_model_path(model: OnnxModel, workdir: pathlib.Path) -> pathlib.Path:
    """The model with qbench's stable node names, on disk (the quantizer reads files)."""
    path = workdir / "models" / f"{model.name}-{model.content_hash}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        model.save(tmp)
        tmp.replace(path)
    return path


def calibrate(model: OnnxModel, data: Dataset, method: str, workdir: pathlib.Path) -> Calibration:
    """Activation ranges of every float tensor, cached per (model, data, method)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator, save_tensors_data

    if method not in CALIBRATION_METHODS:
        raise QbenchError(f"calibration method must be one of {list(CALIBRATION_METHODS)}, but got {method!r}")
    path = workdir / "calibration" / f"{model.content_hash}-{data.content_hash}-{method}.json"
    if path.exists():
        return Calibration(path, method, len(data), 0.0, {"cached": True})
    path.parent.mkdir(parents=True, exist_ok=True)
    fixed = fixed_batch_size(model)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = data.batches(fixed or _CALIBRATION_BATCH, keep_tail=not fixed)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    start = time.perf_counter()
    augmented = path.with_suffix(".augmented.onnx")
    try:
        calibrator = create_calibrator(
            named_model_path(model, workdir),
            None,  # every float tensor: any later plan can pick any layer
            augmented_model_path=str(augmented),
            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
            extra_options={"execution_providers": ["CPUExecutionProvider"]},
        )
        calibrator.collect_data(Reader())
        tmp = path.with_suffix(".tmp")
        save_tensors_data(calibrator.compute_data(), tmp)
        tmp.replace(path)
    finally:
        augmented.unlink(missing_ok=True)
        augmented.with_suffix(".onnx.data").unlink(missing_ok=True)
    return Calibration(path, method, len(data), time.perf_counter() - start, {"cached": False})


def check_calibration(plan: PrecisionPlan, calibration: Calibration | None) -> None:
    if calibration is None:
        raise ValueError("a plan with static int8 layers needs a calibration")
    if plan.options.calibration != calibration.method:
        raise ValueError(f"plan wants {plan.options.calibration} calibration, got {calibration.method}")


def write_qdq_graph(
    model: OnnxModel,
    plan: PrecisionPlan,
    calibration: Calibration,
    workdir: pathlib.Path,
    out: pathlib.Path,
    symmetric_activations: bool = False,
    quantize_bias: bool = True,
) -> None:
    """Write the plan's static int8 layers as QuantizeLinear/DequantizeLinear pairs into ``out``.

    ``symmetric_activations`` pins activation zero points to 0, which signed-int8 runtimes
    (OpenVINO, TensorRT) need to stay on their fast kernels; ``quantize_bias=False`` leaves
    biases in float (TensorRT rejects int32 bias quantization).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantType, quantize_static

    check_calibration(plan, calibration)
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    o = plan.options
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric_activations else {}
    extra["QuantizeBias"] = quantize_bias
    with quiet_root_logger():
        quantize_static(
            named_model_path(model, workdir),
            out,
            None,
            activation_type=types[o.activation_type],
            weight_type=types[o.weight_type],
            per_channel=o.per_channel,
            reduce_range=o.reduce_range,
            nodes_to_quantize=plan.layers_in("int8"),
            calibration_cache_path=calibration.path,
            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[calibration.method]),
            extra_options=extra,
        )
