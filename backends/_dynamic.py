"""Dynamic int8 MatMuls on ONNX Runtime, spliced from pieces quantized once per process.

``quantize_dynamic`` over a whole decoder takes seconds, and a tune builds dozens of plans that
differ only in which layers are int8. Its output for one MatMul depends only on that MatMul's
names and weight: the weight as int8 with its scale and zero point, a ``MatMulInteger`` with the
nodes that rescale its result, and one ``DynamicQuantizeLinear`` per quantized input shared by
every MatMul reading it. So each layer is quantized once, in a small graph of the wanted
MatMuls alone (same names, same weights), and a plan's graph is the base model with those
pieces put where the MatMuls were: the nodes and tensors ``quantize_dynamic`` writes for the same
plan (tests/test_llm.py compares them).
"""

from __future__ import annotations

import pathlib
import tempfile
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from qbench.backends import _nbits as nbits
from qbench.backends._qdq import quiet_root_logger


@dataclass(frozen=True)
class DynamicFormat:
    """The ``quantize_dynamic`` arguments a piece depends on."""

    per_channel: bool
    reduce_range: bool
    weight_type: str  # "int8" or "uint8"


@dataclass
class DynamicPiece:
    quantizer: Any  # the DynamicQuantizeLinear of the layer's input (shared by its readers)
    nodes: list[Any]  # the rest, in the order quantize_dynamic writes them
    initializers: dict[str, Any]
    replaced: tuple[str, tuple[int, ...]]  # the float weight's name and shape
    opsets: tuple[tuple[str, int], ...]  # the opset imports quantize_dynamic wrote


#: Pieces by (model file, format, layer), kept for the process as ``nbits`` keeps its own.
_PIECES: OrderedDict[tuple, DynamicPiece] = OrderedDict()


def dynamic_pieces(base: pathlib.Path, fmt: DynamicFormat, layers: Iterable[str]) -> dict[str, DynamicPiece]:
    """``layers`` of ``base`` as ``quantize_dynamic`` writes them in ``fmt``, by layer; a layer
    that is not a MatMul with a constant weight has no piece."""
    stat = base.stat()
    key = (str(base), stat.st_size, stat.st_mtime_ns, fmt)
    wanted = list(dict.fromkeys(layers))
    missing = [layer for layer in wanted if (*key, layer) not in _PIECES]
    for chunk in nbits._chunks(base, missing):
        for layer, piece in _quantized(base, fmt, chunk).items():
            _PIECES[(*key, layer)] = piece
        while len(_PIECES) > nbits._LAYERS_KEPT:
            _PIECES.popitem(last=False)
    found = {}
    for layer in wanted:
        if (*key, layer) in _PIECES:
            _PIECES.move_to_end((*key, layer))
            found[layer] = _PIECES[(*key, layer)]
    return found


def spliceable(base: pathlib.Path, layers: Iterable[str]) -> bool:
    """Whether every one of ``layers`` is a MatMul of ``base`` with a constant weight (a Gemm
    goes through the quantizer: its pieces are not made here)."""
    shell, tensors = nbits._base_parts(base)
    matmuls = {n.name for n in shell.graph.node if n.op_type == "MatMul" and n.input[1] in tensors}
    return set(layers) <= matmuls


def _carrier(base: pathlib.Path, layers: list[str]) -> tuple[Any, dict[str, tuple[int, ...]]]:
    """A graph of ``base``'s MatMuls named in ``layers`` that have a constant weight, each reading
    its input from a graph input, with the same node, tensor and weight names."""
    import onnx
    from onnx import helper

    shell, tensors = nbits._base_parts(base)
    names = set(layers)
    nodes = [n for n in shell.graph.node if n.name in names and n.op_type == "MatMul" and n.input[1] in tensors]
    float_type = onnx.TensorProto.FLOAT
    inputs = list(dict.fromkeys(n.input[0] for n in nodes))
    graph = helper.make_graph(
        [nbits._copy(onnx.NodeProto, n) for n in nodes],
        "pieces",
        [helper.make_tensor_value_info(name, float_type, None) for name in inputs],
        [helper.make_tensor_value_info(n.output[0], float_type, None) for n in nodes],
        [nbits._copy(onnx.TensorProto, tensors[n.input[1]]) for n in nodes],
    )
    carrier = helper.make_model(graph, opset_imports=list(shell.opset_import), ir_version=shell.ir_version)
    nbits._read_weights(carrier, base, [n.name for n in nodes])
    return carrier, {n.name: (n.input[1], tuple(tensors[n.input[1]].dims)) for n in nodes}


def _quantized(base: pathlib.Path, fmt: DynamicFormat, layers: list[str]) -> dict[str, DynamicPiece]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    carrier, replaced = _carrier(base, layers)
    if not replaced:
        return {}
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    with tempfile.TemporaryDirectory(prefix="qbench-dynamic-") as folder:
        out = pathlib.Path(folder) / "pieces.onnx"
        with quiet_root_logger():
            quantize_dynamic(
                carrier,
                out,
                per_channel=fmt.per_channel,
                reduce_range=fmt.reduce_range,
                weight_type=types[fmt.weight_type],
                nodes_to_quantize=list(replaced),
            )
        quantized = onnx.load(str(out))
    graph = quantized.graph
    inputs = {i.name for i in graph.input}
    tensors = {t.name: t for t in graph.initializer}
    producer = {o: index for index, n in enumerate(graph.node) for o in n.output}
    layer_of_output = {carrier_node.output[0]: carrier_node.name for carrier_node in carrier.graph.node}
    opsets = tuple((o.domain, o.version) for o in quantized.opset_import)
    pieces = {}
    for output, layer in layer_of_output.items():
        if output not in producer or graph.node[producer[output]].op_type == "MatMul":
            continue  # left float by the quantizer
        own, quantizer, frontier = set(), None, [producer[output]]
        while frontier:  # back from the layer's output to its input's DynamicQuantizeLinear
            index = frontier.pop()
            node = graph.node[index]
            if node.op_type == "DynamicQuantizeLinear":
                quantizer = node
                continue
            own.add(index)
            frontier += [producer[name] for name in node.input if name in producer and name not in inputs]
        nodes = [nbits._copy(onnx.NodeProto, graph.node[i]) for i in sorted(own)]
        used = {
            name: nbits._copy(onnx.TensorProto, tensors[name]) for n in nodes for name in n.input if name in tensors
        }
        pieces[layer] = DynamicPiece(nbits._copy(onnx.NodeProto, quantizer), nodes, used, replaced[layer], opsets)
    return pieces


def splice_dynamic(model: Any, found: dict[str, DynamicPiece], dims: dict[str, tuple[int, ...]]) -> list[str]:
    """Replace the MatMuls of ``found`` with their pieces, in place (``dims``: the shapes of the
    model's initializers); the layers it could not (a different weight than the piece's)."""
    graph = model.graph
    present = {t.name for t in graph.initializer}
    nodes, quantized_inputs, dropped, left = [], set(), set(), []
    for node in graph.node:
        piece = found.get(node.name) if node.op_type == "MatMul" else None
        if piece is None:
            nodes.append(node)
            continue
        if piece.replaced != (node.input[1], dims.get(node.input[1])):
            left.append(node.name)
            nodes.append(node)
            continue
        if node.input[0] not in quantized_inputs:  # the first reader quantizes the input for all
            quantized_inputs.add(node.input[0])
            nodes.append(piece.quantizer)
        nodes += piece.nodes
        dropped.add(node.input[1])
        for name, tensor in piece.initializers.items():
            if name not in present:
                graph.initializer.add().CopyFrom(tensor)
                present.add(name)
    replacement = [nbits._copy(type(n), n) for n in nodes]
    del graph.node[:]
    graph.node.extend(replacement)
    nbits.drop_unread(graph, dropped)
    versions = {o.domain: o for o in model.opset_import}
    for domain, version in {opset for piece in found.values() for opset in piece.opsets}:
        if domain not in versions:
            versions[domain] = model.opset_import.add(domain=domain, version=version)
        versions[domain].version = max(versions[domain].version, version)
    return left
