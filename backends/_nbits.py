"""Weight-only layers on ONNX Runtime: ``MatMulNBits`` (4- or 8-bit blocked weights, float
activations), and the ``accuracy_level`` this CPU runs it fastest at.

The level decides the kernel, its speed differs by an order of magnitude between levels on
some CPUs (docs/decisions.md), and no CPU feature flag predicts which is faster, so the default
is measured once per machine and runtime version and cached.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from qbench.backends._qdq import quiet_root_logger
from qbench.cache import atomic_cached, content_key
from qbench.machine import Machine
from qbench.model import weight_bytes
from qbench.plan import WEIGHT_ONLY_BITS

#: ``metadata_props`` key of a model whose embedding Gather and LM head MatMul share values:
#: ``"<gather node>=<LM head node>"`` (qbench's zoo LLM writes it).
TIED_EMBEDDING = "qbench.tied_embedding"

log = logging.getLogger(__name__)

# Probe shapes: a decode step and a short prompt through one LLM-sized projection.
_PROBE_TOKENS = (1, 32)
_PROBE_IN, _PROBE_OUT = 1024, 2048
_PROBE_SECONDS = 0.1
_PROBE_BLOCK = 32  # the default block size (OnnxRuntimeBackend.resolve_plan)
#: MatMulNBits' ``accuracy_level``: the type activations are multiplied in (0: the kernel's
#: default, float; 4: int8). Levels 1-3 (fp32, fp16, bf16) are not offered: on x86 CPUs ONNX
#: Runtime runs them as level 0.
ACCURACY_LEVELS = (0, 4)


def _compress(
    model: Any, bits: int, block_size: int, level: int, layers: list[str] | None = None, symmetric: bool = True
) -> Any:
    """``model`` with the MatMuls named in ``layers`` (all with constant weights when None) as
    MatMulNBits, symmetric (a scale per block) or asymmetric (a scale and a zero point)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=symmetric, accuracy_level=level, op_types_to_quantize=("MatMul",), bits=bits
    )
    # By exclusion: the quantizer takes every MatMul of op_types_to_quantize and adds
    # nodes_to_include to them, so including the plan's layers alone would convert them all.
    excluded = (
        [] if layers is None else [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in layers]
    )
    quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=excluded, algo_config=config)
    with quiet_root_logger():
        quantizer.process()
    return quantizer.model.model


@dataclass
class Pieces:
    """MatMuls of one model quantized in one format: by MatMul node name, the MatMulNBits node
    that replaces it, its tensors, and the weight it replaces (name and shape)."""

    nodes: dict[str, Any]
    initializers: dict[str, Any]
    replaced: dict[str, tuple[str, tuple[int, ...]]]


#: Layers quantized once and kept for the process (a tune builds many plans of one model), by
#: (model file, bits, block size, symmetry, layer). The accuracy level is only an attribute of
#: the node: one quantization serves every level.
_LAYERS: OrderedDict[tuple, tuple[Any, dict[str, Any], tuple[str, tuple[int, ...]]]] = OrderedDict()
_LAYERS_KEPT = 2000


def pieces(
    base: pathlib.Path, bits: int, block_size: int, level: int, symmetric: bool, layers: Iterable[str]
) -> Pieces:
    """``layers`` of ``base`` quantized in one format. ONNX Runtime's quantizer runs only on the
    layers this process has not quantized in that format yet; each weight is quantized on its
    own, so a layer's piece is the same whichever other layers a plan quantizes."""
    import onnx
    from onnx import helper

    stat = base.stat()
    key = (str(base), stat.st_size, stat.st_mtime_ns, bits, block_size, symmetric)
    wanted = list(dict.fromkeys(layers))
    missing = [layer for layer in wanted if (*key, layer) not in _LAYERS]
    for chunk in _chunks(base, missing):
        model, dims = _assembled(base, set())
        _read_weights(model, base, chunk)
        matmuls = {n.output[0]: n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in dims}
        quantized = _compress(model, bits, block_size, level, chunk, symmetric)
        tensors = {t.name: t for t in quantized.graph.initializer}
        for node in quantized.graph.node:
            original = matmuls.get(node.output[0]) if node.op_type == "MatMulNBits" else None
            if original is not None and original.name in chunk:  # copies: a kept sub-message keeps the model alive
                own = {name: _copy(onnx.TensorProto, tensors[name]) for name in node.input[1:] if name in tensors}
                piece = _copy(onnx.NodeProto, node)
                _LAYERS[(*key, original.name)] = (piece, own, (original.input[1], dims[original.input[1]]))
        while len(_LAYERS) > _LAYERS_KEPT:
            _LAYERS.popitem(last=False)
    found = Pieces({}, {}, {})
    for layer in wanted:
        if (*key, layer) not in _LAYERS:
            continue  # not a constant-weight MatMul: the caller's quantizer pass reports it
        node, own, replaced = _LAYERS[(*key, layer)]
        _LAYERS.move_to_end((*key, layer))
        piece = _copy(onnx.NodeProto, node)
        # As the quantizer writes it: attributes sorted by name, no accuracy_level for level 0.
        attributes = [a for a in piece.attribute if a.name != "accuracy_level"]
        if level:
            attributes.append(helper.make_attribute("accuracy_level", level))
        del piece.attribute[:]
        piece.attribute.extend(sorted(attributes, key=lambda a: a.name))
        found.nodes[layer], found.replaced[layer] = piece, replaced
        found.initializers.update(own)
    return found


#: A model whose weights stay on disk (over 2 GiB) is quantized this many bytes of weights at a
#: time, so at most that much of it is in memory.
_CHUNK_BYTES = 512 * 2**20


def _chunks(base: pathlib.Path, layers: list[str]) -> list[list[str]]:
    """``layers`` in groups to quantize at once: all together when the model is in memory, else
    groups of at most ``_CHUNK_BYTES`` of weights (a layer bigger than that alone)."""
    import onnx

    if not layers:
        return []
    shell, tensors = _base_parts(base)
    if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors.values()):
        return [layers]
    weights = {n.name: n.input[1] for n in shell.graph.node if n.op_type == "MatMul" and len(n.input) > 1}
    groups: list[list[str]] = [[]]
    size = 0
    for layer in layers:
        tensor = tensors.get(weights.get(layer, ""))
        length = weight_bytes(tensor) if tensor is not None else 0
        if groups[-1] and size + length > _CHUNK_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(layer)
        size += length
    return groups


def _read_weights(model: Any, base: pathlib.Path, layers: list[str]) -> None:
    """Read the weights of ``layers`` from ``base``'s side file into ``model`` (whose other
    tensors may stay references to it): what the quantizer reads."""
    import onnx
    from onnx import external_data_helper

    names = set(layers)
    wanted = {n.input[1] for n in model.graph.node if n.name in names and len(n.input) > 1}
    for tensor in model.graph.initializer:
        if tensor.name in wanted and tensor.data_location == onnx.TensorProto.EXTERNAL:
            external_data_helper.load_external_data_for_tensor(tensor, str(base.resolve().parent))
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT


def _copy(kind: Any, message: Any) -> Any:
    copy = kind()
    copy.CopyFrom(message)
    return copy


def splice(
    model: Any, layers: Iterable[str], found: Pieces, dims: dict[str, tuple[int, ...]] | None = None
) -> list[str]:
    """Replace the MatMuls named in ``layers`` with their pre-quantized pieces, in place; the
    layers it could not (no piece, or a different weight than the piece was made from). ``dims``:
    the shapes of the model's initializers, where some were left out of ``model`` already."""
    graph = model.graph
    dims = {t.name: tuple(t.dims) for t in graph.initializer} if dims is None else dims
    present = {t.name for t in graph.initializer}
    wanted, left, dropped = set(layers), [], set()
    for node in graph.node:
        if node.name not in wanted or node.op_type != "MatMul":
            continue
        if found.replaced.get(node.name) != (node.input[1], dims.get(node.input[1])):
            left.append(node.name)
            continue
        dropped.add(node.input[1])
        node.CopyFrom(found.nodes[node.name])
        for name in node.input[1:]:
            if name in found.initializers and name not in present:
                graph.initializer.add().CopyFrom(found.initializers[name])
                present.add(name)
    drop_unread(graph, dropped)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.add(domain="com.microsoft", version=1)
    return left


def drop_unread(graph: Any, names: set[str]) -> None:
    """Remove the initializers in ``names`` that no node of ``graph`` reads any more, in place."""
    still_read = {name for n in graph.node for name in n.input}
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name in names - still_read:
            del graph.initializer[index]


#: The last base model read: its graph without initializers, and the initializers by name.
_BASE: dict[tuple, tuple[Any, dict[str, Any]]] = {}


def _base_parts(base: pathlib.Path) -> tuple[Any, dict[str, Any]]:
    import onnx

    stat = base.stat()
    key = (str(base), stat.st_size, stat.st_mtime_ns)
    if key not in _BASE:  # a large model's weights stay on disk: its tensors refer to them
        model = onnx.load(str(base), load_external_data=False)
        tensors = {t.name: t for t in model.graph.initializer}
        shell = onnx.ModelProto()
        shell.CopyFrom(model)
        del shell.graph.initializer[:]
        _BASE.clear()
        _BASE[key] = (shell, tensors)
    return _BASE[key]


def _assembled(base: pathlib.Path, skip: set[str]) -> tuple[Any, dict[str, tuple[int, ...]]]:
    """A copy of ``base`` without the initializers in ``skip`` (weights a splice replaces: not
    copied only to be dropped), and every initializer's shape."""
    import onnx

    shell, tensors = _base_parts(base)
    model = onnx.ModelProto()
    model.CopyFrom(shell)
    for name, tensor in tensors.items():
        if name not in skip:
            model.graph.initializer.add().CopyFrom(tensor)
    return model, {name: tuple(t.dims) for name, t in tensors.items()}


def _probe_model(bits: int | None, level: int, tokens: int) -> bytes:
    """One projection ``[tokens, IN] x [IN, OUT]``: fp32 when ``bits`` is None, else MatMulNBits."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((_PROBE_IN, _PROBE_OUT)).astype(np.float32) * 0.02
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="probe")],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [tokens, _PROBE_IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [tokens, _PROBE_OUT])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if bits is not None:
        model = _compress(model, bits, _PROBE_BLOCK, level)
    return model.SerializeToString()


def _median_ms(session, feeds: dict[str, np.ndarray]) -> float:
    for _ in range(5):
        session.run(None, feeds)
    samples, start = [], time.perf_counter()
    while time.perf_counter() - start < _PROBE_SECONDS or len(samples) < 10:
        t = time.perf_counter_ns()
        session.run(None, feeds)
        samples.append(time.perf_counter_ns() - t)
    return float(np.median(samples)) / 1e6


def measure_levels(threads: int, rounds: int = 3) -> dict[str, dict[str, float]]:
    """Speedup over fp32 of each (bits, accuracy level), geometric mean over the probe shapes;
    every variant of a shape is timed round-robin with fp32, so a busy moment hits them all."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    variants = [(bits, level) for bits in sorted(set(WEIGHT_ONLY_BITS.values())) for level in ACCURACY_LEVELS]
    logs: dict[tuple[int, int], list[float]] = {v: [] for v in variants}
    with quiet_root_logger():
        for tokens in _PROBE_TOKENS:
            feeds = {"x": np.random.default_rng(1).standard_normal((tokens, _PROBE_IN)).astype(np.float32)}
            sessions = {
                v: ort.InferenceSession(_probe_model(*v, tokens), options, providers=["CPUExecutionProvider"])
                for v in [(None, 0), *variants]
            }
            times: dict[tuple[int | None, int], list[float]] = {v: [] for v in sessions}
            for _ in range(rounds):
                for v, session in sessions.items():
                    times[v].append(_median_ms(session, feeds))
            for v in variants:
                logs[v].append(np.log(np.median(times[(None, 0)]) / np.median(times[v])))
    speedups: dict[str, dict[str, float]] = {}
    for (bits, level), values in logs.items():
        speedups.setdefault(str(bits), {})[str(level)] = float(np.exp(np.mean(values)))
    return speedups


def level_speedups(machine: Machine, cache_dir: pathlib.Path) -> dict[str, dict[str, float]]:
    """``measure_levels`` for this machine and ONNX Runtime version, measured once and cached."""
    import onnxruntime as ort

    threads = machine.default_threads()
    path = cache_dir / f"nbits-levels-{content_key(machine.fingerprint_hash, ort.__version__, str(threads))[:16]}.json"

    def produce(out: pathlib.Path) -> None:
        log.info("measuring MatMulNBits accuracy levels on this CPU (once per machine and runtime)")
        out.write_text(json.dumps(measure_levels(threads), indent=1))

    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_cached(path, produce)
    return json.loads(path.read_text())


def best_level(speedups: dict[str, dict[str, float]], bits: Iterable[int]) -> int:
    """The level with the best geometric-mean speedup over the bit widths a plan uses."""
    wanted = [str(b) for b in bits]
    return max(ACCURACY_LEVELS, key=lambda level: sum(np.log(speedups[b][str(level)]) for b in wanted))


def tied_embedding(model: Any) -> tuple[str, str] | None:
    """``(embedding Gather node, LM head MatMul node)`` of a model whose metadata ties them, else None."""
    tie = {p.key: p.value for p in model.metadata_props}.get(TIED_EMBEDDING, "")
    gather, _, head = tie.partition("=")
    return (gather, head) if gather and head else None


def share_tied_embedding(model: Any, gather_name: str, head_output: str) -> None:
    """Where the LM head writing ``head_output`` became MatMulNBits, the tied embedding Gather
    ``gather_name`` reads the same blocks through ``GatherBlockQuantized`` (in place): the fp32
    table, the largest tensor of a small LLM, is gone."""
    from onnx import helper, numpy_helper

    graph = model.graph
    gather = next((n for n in graph.node if n.name == gather_name and n.op_type == "Gather"), None)
    head = next((n for n in graph.node if n.op_type == "MatMulNBits" and n.output[0] == head_output), None)
    if gather is None or head is None:
        return
    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    bits, block, rows = attrs["bits"], attrs["block_size"], attrs["N"]
    if attrs["K"] % block:  # the head's last block is padded: its rows are not the table's
        return
    initializers = {t.name: t for t in graph.initializer}
    arrays = [numpy_helper.to_array(initializers[name]) for name in head.input[1:4] if name in initializers]
    blocks = -(-attrs["K"] // block)
    inputs = [
        _add_initializer(graph, f"{gather_name}.q", arrays[0].reshape(rows, -1)),
        gather.input[1],
        _add_initializer(graph, f"{gather_name}.scales", arrays[1].reshape(rows, blocks)),
    ]
    if len(arrays) > 2:  # asymmetric: zero points, packed as the data is
        inputs.append(_add_initializer(graph, f"{gather_name}.zero_points", arrays[2].reshape(rows, -1)))
    quantized = helper.make_node(
        "GatherBlockQuantized",
        inputs,
        list(gather.output),
        name=gather_name,
        domain="com.microsoft",
        bits=bits,
        block_size=block,
        gather_axis=0,
        quantize_axis=1,
    )
    index = list(graph.node).index(gather)
    graph.node.remove(gather)
    graph.node.insert(index, quantized)
    table = gather.input[0]
    if not any(table in n.input for n in graph.node):
        graph.initializer.remove(initializers[table])


def _add_initializer(graph: Any, name: str, value: np.ndarray) -> str:
    from onnx import numpy_helper

    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    return name
