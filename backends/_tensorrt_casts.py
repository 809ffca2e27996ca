"""16-bit float layers written into the graph: the strongly-typed way to ask for fp16 or bf16.

Since TensorRT 11 a layer runs in the type of its inputs, so a layer the plan wants in fp16
gets its float weights converted to fp16, a Cast to fp16 on each activation input, and a Cast
back to float32 on its output. ``simulate=True`` writes the float32 twin of that graph instead:
the same tensors rounded to the 16-bit type and back, computed in float32. It runs anywhere
(ONNX Runtime has no bf16 kernels on the CPU) and is the reference the 16-bit graph is checked
against.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ONNX_TYPES = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}


def _bfloat16_bits(array: np.ndarray) -> np.ndarray:
    """The upper 16 bits of each float32, rounded to nearest even (numpy has no bfloat16)."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def to_bfloat16_tensor(array: np.ndarray, name: str) -> TensorProto:
    return helper.make_tensor(name, TensorProto.BFLOAT16, array.shape, _bfloat16_bits(array).tobytes(), raw=True)


def _rounded_float32(array: np.ndarray, precision: str) -> np.ndarray:
    if precision == "fp16":
        return array.astype(np.float16).astype(np.float32)
    return (_bfloat16_bits(array).astype(np.uint32) << 16).view(np.float32).reshape(array.shape)


def write_cast_regions(
    proto: onnx.ModelProto, precisions: Mapping[str, str], simulate: bool = False
) -> onnx.ModelProto:
    """A copy of ``proto`` where each node named in ``precisions`` (``fp16`` or ``bf16``) runs in
    that type; see the module docstring for ``simulate``."""
    model = copy.deepcopy(proto)
    graph = model.graph
    floats = {t.name: t for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    added: set[str] = set()
    nodes: list[onnx.NodeProto] = []

    def cast(source: str, target: str, to: int) -> None:
        if target not in added:
            added.add(target)
            nodes.append(helper.make_node("Cast", [source], [target], name=f"{target}/Cast", to=to))

    def round_trip(source: str, target: str, precision: str) -> None:  # simulate: to 16 bits and back
        cast(source, f"{target}/16", ONNX_TYPES[precision])
        cast(f"{target}/16", target, TensorProto.FLOAT)

    for node in graph.node:
        precision = precisions.get(node.name)
        if precision is None:
            nodes.append(node)
            continue
        for i, name in enumerate(node.input):
            if not name:
                continue
            converted = f"{name}/{precision}"
            if name in floats:
                if converted not in added:
                    added.add(converted)
                    array = numpy_helper.to_array(floats[name])
                    if simulate:
                        graph.initializer.append(numpy_helper.from_array(_rounded_float32(array, precision), converted))
                    elif precision == "fp16":
                        graph.initializer.append(numpy_helper.from_array(array.astype(np.float16), converted))
                    else:
                        graph.initializer.append(to_bfloat16_tensor(array, converted))
            elif simulate:
                round_trip(name, converted, precision)
            else:
                cast(name, converted, ONNX_TYPES[precision])
            node.input[i] = converted
        outputs = list(node.output)
        for i, name in enumerate(outputs):
            node.output[i] = f"{name}/{precision}-out"
        nodes.append(node)
        for name in outputs:
            if simulate:
                round_trip(f"{name}/{precision}-out", name, precision)
            else:
                cast(f"{name}/{precision}-out", name, TensorProto.FLOAT)
    del graph.node[:]
    graph.node.extend(nodes)
    return model
