"""Weight-only layers as explicit ``DequantizeLinear`` on low-bit constant weights (ONNX opset
21), the form TensorRT reads for weight-only quantization: int4 weights in blocks of
``block_size`` input channels (TensorRT's block quantization is int4-only), int8 weights per
output channel. Both symmetric; activations stay float.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper

from qbench.errors import QbenchError
from qbench.plan import PrecisionPlan

OPSET = 21  # block_size on DequantizeLinear and the INT4 type arrived in opset 21
_LEVELS = {"int4-weight": 7, "int8-weight": 127}


def quantize_weight(weight: np.ndarray, precision: str, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(q, scale)`` for a ``[in, out]`` MatMul weight: int4 per block of input channels
    (scale ``[in / block, out]``), int8 per output channel (scale ``[out]``)."""
    levels = _LEVELS[precision]
    if precision == "int4-weight":
        blocks = weight.reshape(weight.shape[0] // block_size, block_size, weight.shape[1])
        scale = np.abs(blocks).max(axis=1) / levels
        q = np.round(blocks / np.where(scale == 0, 1, scale)[:, None, :]).reshape(weight.shape)
    else:
        scale = np.abs(weight).max(axis=0) / levels
        q = np.round(weight / np.where(scale == 0, 1, scale))
    return np.clip(q, -levels - 1, levels).astype(np.int8), scale.astype(np.float32)


def write_weight_dq(graph: onnx.ModelProto, plan: PrecisionPlan) -> onnx.ModelProto:
    """``graph`` at opset 21 with the weight of each weight-only MatMul of ``plan`` replaced by a
    DequantizeLinear of its low-bit copy; an original weight no other node reads is dropped."""
    layers = {layer: plan.precision(layer) for layer in plan.layers_in(*_LEVELS)}
    if not layers:
        return graph
    if max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) < OPSET:
        graph = onnx.version_converter.convert_version(graph, OPSET)  # a new model
    else:
        graph = onnx.ModelProto.FromString(graph.SerializeToString())  # the caller's stays as it was
    initializers = {t.name: t for t in graph.graph.initializer}
    nodes = []
    for node in graph.graph.node:
        precision = layers.get(node.name)
        if precision is not None:
            weight = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)
            block = plan.options.block_size
            if precision == "int4-weight" and weight.shape[0] % block:
                raise QbenchError(
                    f"{node.name}: {weight.shape[0]} input channels are not a multiple of block_size {block}; "
                    "pick another block_size or leave the layer out of int4-weight"
                )
            q, scale = quantize_weight(weight, precision, block)
            name = f"{node.name}/weight"
            stored = q.astype(ml_dtypes.int4) if precision == "int4-weight" else q
            graph.graph.initializer.extend(
                [numpy_helper.from_array(stored, f"{name}_q"), numpy_helper.from_array(scale, f"{name}_scale")]
            )
            attrs = {"axis": 0, "block_size": block} if precision == "int4-weight" else {"axis": 1}
            nodes.append(
                helper.make_node(
                    "DequantizeLinear", [f"{name}_q", f"{name}_scale"], [f"{name}_dq"], name=f"{name}_dq", **attrs
                )
            )
            node.input[1] = f"{name}_dq"
        nodes.append(node)
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)
    read = {name for node in graph.graph.node for name in node.input}
    kept = [t for t in graph.graph.initializer if t.name in read]
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(kept)
    return graph
