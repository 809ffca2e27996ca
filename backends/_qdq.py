"""Explicit quantization shared by every backend: calibrate once, write a plan's QDQ graph.

A plan is written by *exclusion*: ONNX Runtime's own whole-model quantizer (``quantize_static``)
runs on the pre-processed model with the plan's non-int8 layers, and the ops that touch them,
in ``nodes_to_exclude``. Every op between two int8 layers (activations, Add, Concat, pooling,
Resize) then gets the quantizer's own treatment, so a uniform int8 plan is exactly the
runtime's native int8 graph. Quantizing only the listed layers instead (``nodes_to_quantize``)
leaves a float ``Clip`` between two Q/DQ pairs after every int8 conv, which the runtime cannot
fuse, and the int8 plan runs slower than fp32 (docs/decisions.md).
Activation ranges cover every float tensor of the pre-processed model, so one calibration
serves any plan on any backend.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from qbench.backends._base import Calibration, check_calibration
from qbench.cache import atomic_cached, short_stem
from qbench.data import Dataset, fixed_batch_size
from qbench.errors import QbenchError
from qbench.model import ONNX_DATA_SUFFIX, OnnxModel, copy_onnx, external_data_name
from qbench.plan import PrecisionPlan

log = logging.getLogger(__name__)
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# The calibrator makes every float tensor a graph output, so the runtime keeps all of a batch's
# activations at once, and memory grows with the batch (docs/decisions.md). Ranges and
# histograms do not depend on the batch size.
_CALIBRATION_BATCH = 4


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantization tools log on the root logger (warnings that a model was not
    pre-processed) and, when pre-processing fails, a full traceback at ERROR before raising; we
    handle both (fallback, or a failed plan with the reason), so keep them off the terminal."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization")]
    levels = [logger.level for logger in loggers]
    loggers[0].setLevel(logging.ERROR)
    loggers[1].setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def named_model_path(model: OnnxModel, workdir: pathlib.Path) -> pathlib.Path:
    """The model with qbench's stable node names, on disk (the quantizer reads files)."""
    path = workdir / "models" / f"{short_stem(model.name)}-{model.content_hash}.onnx"
    atomic_cached(path, model.save, companions=(ONNX_DATA_SUFFIX,))
    return path


def prepared_model_path(model: OnnxModel, workdir: pathlib.Path) -> pathlib.Path:
    """The named model after ONNX Runtime's ``quant_pre_process`` (shape inference, Conv+BN
    folding, constant folding), the step ORT's docs put before ``quantize_static``: fewer Q/DQ
    pairs, faster int8.
    Layer names survive it (checked on every zoo model); if one does not, the named model is used.
    Symbolic shape inference fails on some graphs (Resize without roi, PP-OCR det); it is then
    skipped, as ORT's own error message advises."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = named_model_path(model, workdir).resolve()
    path = source.with_name(f"{source.stem}-prepared-ort{onnxruntime.__version__}.onnx")

    def prepare(out: pathlib.Path) -> None:
        # When symbolic shape inference fails, ORT saves its partial model to the current
        # directory (sym_shape_infer_temp.onnx and a <uuid>.data file): keep that out of the
        # user's directory.
        with quiet_root_logger(), tempfile.TemporaryDirectory(prefix="qbench-prep-") as scratch:
            with contextlib.chdir(scratch):
                onnxruntime.set_default_logger_severity(3)  # "removing unused initializer", per tensor
                large = {}
                if model.large:
                    large = {
                        "save_as_external_data": True,
                        "all_tensors_to_one_file": True,
                        "external_data_location": external_data_name(out),
                    }
                try:
                    quant_pre_process(str(source), str(out), **large)
                except Exception as exc:  # SymbolicShapeInference raises a bare Exception
                    log.debug("symbolic shape inference failed (%s); pre-processing without it", exc)
                    quant_pre_process(str(source), str(out), skip_symbolic_shape=True, **large)
        kept = {node.name for node in onnx.load(str(out), load_external_data=False).graph.node}
        lost = [name for name in model.layer_names() if name not in kept]
        if lost:
            log.warning("pre-processing renamed layer %r; quantizing the model as it is", lost[0])
            copy_onnx(source, out)

    atomic_cached(path, prepare, companions=(ONNX_DATA_SUFFIX,))
    return path


def float_neighbours(graph: Any, float_layers: Iterable[str], layers: Iterable[str]) -> set[str]:
    """Non-layer nodes that must stay float because they touch a float layer: those fed
    (directly or through other such nodes) by a float layer, and those whose every consumer is
    a float layer or such a node. An op between two int8 layers is left to the quantizer."""
    floats, layer_set = set(float_layers), set(layers)
    producer = {out: node.name for node in graph.node for out in node.output}
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    others = [node for node in graph.node if node.name not in layer_set]
    changed = True
    while changed:
        changed = False
        for node in others:
            if node.name in floats:
                continue
            fed_by_float = any(producer.get(name) in floats for name in node.input if name)
            readers = [reader for out in node.output for reader in consumers.get(out, [])]
            feeds_only_float = bool(readers) and all(reader in floats for reader in readers)
            if fed_by_float or feeds_only_float:
                floats.add(node.name)
                changed = True
    return floats - layer_set


def calibrate(model: OnnxModel, data: Dataset, method: str, workdir: pathlib.Path) -> Calibration:
    """Activation ranges of every float tensor, cached per (model, data, method)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator, save_tensors_data

    if method not in CALIBRATION_METHODS:
        raise QbenchError(f"calibration method must be one of {list(CALIBRATION_METHODS)}, but got {method!r}")
    path = workdir / "calibration" / f"{model.content_hash}-{data.content_hash}-{method}-prepared.json"
    fixed = fixed_batch_size(model)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = data.batches(fixed or _CALIBRATION_BATCH, keep_tail=not fixed)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    def collect(out: pathlib.Path) -> None:
        augmented = out.with_suffix(".augmented.onnx")
        try:
            calibrator = create_calibrator(
                prepared_model_path(model, workdir),
                None,  # every float tensor: any later plan can pick any layer
                augmented_model_path=str(augmented),
                calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
                use_external_data_format=model.large,
                extra_options={"execution_providers": ["CPUExecutionProvider"]},
            )
            calibrator.collect_data(Reader())
            save_tensors_data(calibrator.compute_data(), out)
        finally:
            augmented.unlink(missing_ok=True)
            augmented.with_suffix(".onnx.data").unlink(missing_ok=True)

    start = time.perf_counter()
    cached = atomic_cached(path, collect)
    return Calibration(path, method, len(data), 0.0 if cached else time.perf_counter() - start, {"cached": cached})


def write_qdq_graph(
    model: OnnxModel,
    plan: PrecisionPlan,
    calibration: Calibration,
    workdir: pathlib.Path,
    out: pathlib.Path,
    symmetric_activations: bool = False,
    quantize_bias: bool = True,
    op_types: Iterable[str] | None = None,
) -> None:
    """Write the plan's static int8 layers into ``out`` by exclusion (see the module docstring).

    ``symmetric_activations`` pins activation zero points to 0 (TensorRT needs it; the plan
    option ``activation_symmetric`` asks for it elsewhere); ``quantize_bias=False`` leaves biases
    in float (TensorRT rejects int32 bias quantization); ``op_types`` limits which op types the
    quantizer may touch (default: all it knows).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantType, quantize_static

    check_calibration(plan, calibration)
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    o = plan.options
    symmetric = symmetric_activations or bool(o.activation_symmetric)
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else {}
    extra["QuantizeBias"] = quantize_bias
    extra["DefaultTensorType"] = onnx.TensorProto.FLOAT  # for tensors behind contrib ops shape inference skips
    source = prepared_model_path(model, workdir)
    graph = onnx.load(str(source), load_external_data=False).graph
    layers = model.layer_names()
    float_layers = [layer for layer in layers if plan.precision(layer) != "int8"]
    excluded = [*float_layers, *sorted(float_neighbours(graph, float_layers, layers))]
    with quiet_root_logger():
        quantize_static(
            source,
            out,
            None,
            activation_type=types[o.activation_type],
            weight_type=types[o.weight_type],
            per_channel=o.per_channel,
            reduce_range=o.reduce_range,
            nodes_to_exclude=excluded,
            op_types_to_quantize=list(op_types) if op_types is not None else None,
            calibration_cache_path=calibration.path,
            use_external_data_format=model.large,
            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[calibration.method]),
            extra_options=extra,
        )


# float8 E4M3 (FN: finite, no infinities) has its largest magnitude at 448; int8 at 127.
_FP8_MAX, _INT8_MAX = 448.0, 127.0
_FP8_OPSET = 19  # the first opset whose QuantizeLinear/DequantizeLinear take float8


def _fp8_tensor(array: np.ndarray, name: str) -> Any:
    import ml_dtypes
    from onnx import TensorProto, helper

    fp8 = np.clip(array, -_FP8_MAX, _FP8_MAX).astype(ml_dtypes.float8_e4m3fn)  # outside the range: NaN
    return helper.make_tensor(name, TensorProto.FLOAT8E4M3FN, fp8.shape, fp8.view(np.uint8).tobytes(), raw=True)


def requantize_to_fp8(
    proto: Any, fp8_layers: set[str], int8_layers: set[str], float_weights: dict[str, np.ndarray]
) -> Any:
    """Turn the int8 Q/DQ pairs of ``fp8_layers`` into float8 E4M3 ones, in place.

    The int8 writer laid out every pair (symmetric, so zero points are 0). A pair belongs to the
    layers that read it (directly or through ops that have no pair of their own, such as a
    pooling), or, when no layer does, to the layers whose output it quantizes. An
    fp8 pair keeps its place with its scale rescaled from the int8 range (127) to the fp8 range
    (448) and float8 zero points; weights are quantized again from their float values
    (``float_weights``, by name), not from the int8 ones. A tensor read by both an int8 and an
    fp8 layer cannot be both: that is an error naming it.
    """
    import onnx
    from onnx import numpy_helper, version_converter

    if proto.opset_import[0].version < _FP8_OPSET:
        proto.CopyFrom(version_converter.convert_version(proto, _FP8_OPSET))
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def nearest_layers(tensor: str, downstream: bool, across_pairs: bool = False) -> set[str]:
        """The plan layers reached from ``tensor`` through other ops (Add, pooling, …), up to the
        next Q/DQ pair in that direction unless ``across_pairs``."""
        found, seen, todo = set(), set(), [tensor]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            nodes = readers.get(name, []) if downstream else [producer[name]] if name in producer else []
            for node in nodes:
                if node.name in fp8_layers | int8_layers:
                    found.add(node.name)
                elif across_pairs or node.op_type != ("QuantizeLinear" if downstream else "DequantizeLinear"):
                    todo += list(node.output) if downstream else [i for i in node.input if i and i not in inits]
        return found

    def wants_fp8(group: list[Any], source: str) -> bool:
        # The layers this pair feeds decide; else those it quantizes the output of; a pair with
        # neither next to it (an Add's output pair) looks past the neighbouring pairs.
        for across_pairs in (False, True):
            users = set().union(*(nearest_layers(dq.output[0], True, across_pairs) for dq in group))
            if users & fp8_layers and users & int8_layers and not across_pairs:
                raise QbenchError(
                    f"tensor {source!r} feeds fp8 layer {sorted(users & fp8_layers)[0]!r} and int8 layer "
                    f"{sorted(users & int8_layers)[0]!r}; give both the same precision"
                )
            if users:
                return bool(users & fp8_layers) and not users & int8_layers
            origins = nearest_layers(source, False, across_pairs)
            if origins:
                return origins <= fp8_layers
        return False

    def rescale(nodes: list[Any], dq: Any) -> np.ndarray:
        scale = numpy_helper.to_array(inits[dq.input[1]]) * (_INT8_MAX / _FP8_MAX)
        scale_name, zero_name = f"{dq.input[1]}/fp8", f"{dq.input[2]}/fp8"
        if scale_name not in inits:
            inits[scale_name] = numpy_helper.from_array(scale.astype(np.float32), scale_name)
            inits[zero_name] = _fp8_tensor(np.zeros(scale.shape), zero_name)
            graph.initializer.extend([inits[scale_name], inits[zero_name]])
        for node in nodes:
            node.input[1], node.input[2] = scale_name, zero_name
        return scale

    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:  # activations
        group = [r for r in readers.get(q.output[0], []) if r.op_type == "DequantizeLinear"]
        if group and wants_fp8(group, q.input[0]):
            rescale([q, *group], group[0])
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]:  # weights
        if not wants_fp8([dq], dq.input[0]):
            continue
        scale = rescale([dq], dq)
        weight = float_weights[dq.input[0].removesuffix("_quantized")]
        shape = [1] * weight.ndim
        if scale.ndim:  # per channel, along the DQ's axis
            shape[next((a.i for a in dq.attribute if a.name == "axis"), 1)] = scale.size
        fp8_name = f"{dq.input[0]}/fp8"
        graph.initializer.append(_fp8_tensor(weight / scale.reshape(shape), fp8_name))
        dq.input[0] = fp8_name
    del graph.value_info[:]  # recorded int8 types of the Q outputs are stale; runtimes infer them again
    onnx.checker.check_model(proto)
    return proto
