"""ONNX Runtime on the CPU: static QDQ int8 per layer, dynamic int8 for MatMul/Gemm, fp32."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from qbench.backends import _dynamic as dyn
from qbench.backends import _nbits as nbits
from qbench.backends import _qdq as qdq
from qbench.backends._base import Artifact, Availability, Backend, Calibration, Runner, choice_check
from qbench.backends._splice import write_spliced
from qbench.cache import cache_root, content_key
from qbench.data import Dataset, fixed_batch_size
from qbench.decoder import SharedCacheFeeds
from qbench.errors import QbenchError, first_line
from qbench.machine import Machine
from qbench.model import Layer, OnnxModel, copy_onnx, external_data_name
from qbench.plan import BLOCK_SIZES, WEIGHT_ONLY_BITS, PrecisionPlan
from qbench.profile import PROFILE_WARMUP, OpTime, sandwiched

log = logging.getLogger(__name__)

# Op types in ONNX Runtime's optimized graph that compute in int8, by the node name they keep.
_INT8_KERNELS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "QGemm",
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "QLinearConvTranspose",
        "MatMulNBits",
    }
)
# ONNX Runtime's WeightBiasQuantization pass quantizes the float weights of a layer whose input
# and output tensors are quantized (because its neighbours are int8), so a layer the plan keeps
# in fp32 would silently run in int8 (seen on the demo: 3 of 7 fp32 layers). Plans must mean
# what they say, so every session we open disables it. Unknown names are ignored by older ORT.
_DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)


_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def _ort_precision(op_type: str) -> str:
    if op_type in _INT8_KERNELS or op_type.startswith("QLinear"):
        return "int8"
    if op_type in _QDQ_OPS:
        return "q/dq"
    return "reorder" if op_type in ("ReorderInput", "ReorderOutput") else "fp32"


def _kernel_names(layer: str) -> tuple[str, ...]:
    return (layer, f"{layer}_quant", f"{layer}_Q4", f"{layer}_Q8")


def _kernel_precision(node: Any) -> str:
    """The precision a node of ORT's optimized graph computes in."""
    if node.op_type == "MatMulNBits":
        bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
        return "int8-weight" if bits == 8 else "int4-weight"
    return "int8" if node.op_type in _INT8_KERNELS else "fp32"


def _ort_op_times(graph: Any, totals: dict[str, list], runs: int) -> list[OpTime]:
    """OpTimes from summed kernel microseconds, flagged with the optimized graph's structure."""
    producer = {out: node.name for node in graph.node for out in node.output}
    children: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            if name in producer:
                children.setdefault(producer[name], []).append(node.name)
    qdq_nodes = {node.name for node in graph.node if node.op_type in _QDQ_OPS}
    structure = [
        (n.name, _ort_precision(n.op_type), [producer[i] for i in n.input if i in producer], children.get(n.name, []))
        for n in graph.node
    ]
    between = sandwiched(structure, qdq_nodes)
    parents = {name: ps for name, _, ps, _ in structure}
    op_types = {node.name: node.op_type for node in graph.node}
    ops = []
    for node, (op_type, micros) in totals.items():
        if node in between:
            flag = "float between Q/DQ"
        elif op_type in ("ReorderInput", "ReorderOutput"):
            flag = "layout reorder"
        elif op_type == "QuantizeLinear" and any(op_types.get(p) == "DequantizeLinear" for p in parents.get(node, [])):
            flag = "requantize"
        else:
            flag = ""
        ops.append(OpTime(node, op_type, _ort_precision(op_type), micros / runs / 1e3, op_type, flag))
    return ops


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:  # a core dependency, but say how to fix a broken install
        raise QbenchError("onnxruntime is not importable; reinstall it with `pip install onnxruntime`") from exc
    return onnxruntime


def _session(path: pathlib.Path, options: Any) -> Any:
    return _ort().InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=list(_DISABLED_OPTIMIZERS)
    )


class _ConcurrentRunner(Runner):
    """A session that ``run_for`` runs from several threads at once (throughput with streams)."""

    def __init__(self, session: Any, settings: Mapping[str, Any], streams: int) -> None:
        self._session, self.settings, self.streams = session, dict(settings), streams

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, dict(feeds))

    def run_for(self, feeds: Mapping[str, np.ndarray], seconds: float) -> tuple[int, int]:
        import threading

        clock, feeds = time.perf_counter_ns, dict(feeds)
        counts = [0] * self.streams
        start = clock()
        deadline = start + int(seconds * 1e9)

        def stream(index: int) -> None:
            while clock() < deadline:
                self._session.run(None, feeds)
                counts[index] += 1

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(self.streams)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(counts), clock() - start

    def close(self) -> None:
        self._session = None


class OnnxRuntimeRunner(Runner):
    def __init__(self, session: Any, settings: Mapping[str, Any]) -> None:
        self._session = session
        self.settings = dict(settings)
        #: The feeds last bound, their IO binding, and per output the cache buffer it writes into
        #: (None: ORT allocates it, the logits).
        self._bound: tuple[SharedCacheFeeds, Any, list[np.ndarray | None]] | None = None

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if isinstance(feeds, SharedCacheFeeds):
            return self._run_in_place(feeds)
        return self._session.run(None, feeds)

    def _run_in_place(self, feeds: SharedCacheFeeds) -> list[np.ndarray]:
        """Present cache outputs bound to the past cache buffers, as onnxruntime-genai runs a
        decoder: the op appends the new token in place instead of copying the cache every call.
        The binding is kept for the next call with the same feeds (a timing loop)."""
        if self._bound is None or self._bound[0] is not feeds:
            binding = self._session.io_binding()
            for name, array in feeds.items():
                binding.bind_cpu_input(name, array)
            into = {output: feeds[source] for source, output in feeds.shared.items()}
            buffers = [into.get(output.name) for output in self._session.get_outputs()]
            for output, buffer in zip(self._session.get_outputs(), buffers, strict=True):
                if buffer is None:
                    binding.bind_output(output.name)
                else:
                    binding.bind_output(output.name, "cpu", 0, buffer.dtype, list(buffer.shape), buffer.ctypes.data)
            self._bound = (feeds, binding, buffers)
        _, binding, buffers = self._bound
        self._session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return [value.numpy() if buffer is None else buffer for buffer, value in zip(buffers, values, strict=True)]

    def close(self) -> None:
        self._session = self._bound = None


def native_int8_options(machine_is_x86: bool) -> dict[str, Any]:
    """What ``native-int8`` passes to ``quantize_static``: ORT's defaults (QDQ, per-tensor,
    MinMax, no reduce_range) except the activation type, which ORT's docs pick per CPU: on
    x86-64 U8S8 (its AVX2/AVX-512 kernels multiply u8 x s8; S8S8 can be slower than fp32 there),
    elsewhere S8S8."""
    from onnxruntime.quantization import QuantType

    return {"activation_type": QuantType.QUInt8 if machine_is_x86 else QuantType.QInt8, "weight_type": QuantType.QInt8}


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    """ONNX Runtime's own plan options (None: the default for this machine)."""

    #: Weight-only layers: MatMulNBits' compute type (``_nbits.ACCURACY_LEVELS``).
    accuracy_level: int | None = None

    def __post_init__(self) -> None:
        choice_check(self, {"accuracy_level": nbits.ACCURACY_LEVELS})


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime's CPU execution provider.

    Plans become QDQ graphs through ONNX Runtime's own quantizer run on the whole pre-processed
    model with the plan's float layers excluded (see ``_qdq``), built from activation ranges
    calibrated once per (model, data, method); MatMul/Gemm layers marked ``int8-dynamic`` then
    go through ``quantize_dynamic``. ``native-int8`` is ``quant_pre_process`` plus
    ``quantize_static`` on the whole model with ORT's own calibration and defaults.
    """

    name = "onnxruntime"
    Options = OnnxRuntimeOptions

    def probe(self) -> Availability:
        try:
            ort = _ort()
        except QbenchError as exc:
            return Availability(False, str(exc))
        providers = ort.get_available_providers()
        if "CPUExecutionProvider" not in providers:
            return Availability(False, f"CPUExecutionProvider missing (have {providers})", ort.__version__)
        return Availability(True, "ready", ort.__version__, "CPU")

    def precisions(self, layer: Layer) -> tuple[str, ...]:
        if layer.takes_weight_only:
            return ("fp32", "int8", "int8-dynamic", *WEIGHT_ONLY_BITS)
        if layer.op_type in ("MatMul", "Gemm"):
            return ("fp32", "int8", "int8-dynamic")
        return ("fp32", "int8")

    def option_choices(self) -> dict[str, tuple[Any, ...]]:
        return {
            "quantizer": ("qdq", "native"),
            "activation_type": ("uint8", "int8"),
            "per_channel": (False, True),
            "reduce_range": (False, True),
            "block_size": BLOCK_SIZES,
            "weight_symmetric": (True, False),
            "accuracy_level": nbits.ACCURACY_LEVELS,
        }

    def searched_options(self) -> dict[str, frozenset[str] | None]:
        return {**super().searched_options(), "accuracy_level": frozenset(WEIGHT_ONLY_BITS)}

    def resolve_plan(self, plan: PrecisionPlan, machine: Machine) -> PrecisionPlan:
        if plan.is_native:  # the native quantizer takes no options from the plan
            return plan
        # ONNX Runtime's CPU guidance: x86 wants unsigned activations and signed weights (its
        # int8 kernels multiply u8 x s8); without VNNI the 16-bit intermediate sums can
        # saturate, which reduce_range (7-bit weights) avoids. ARM prefers signed/signed.
        o = plan.options
        if machine.is_x86:
            defaults = {"activation_type": "uint8", "weight_type": "int8", "reduce_range": not machine.has_vnni}
        else:
            defaults = {"activation_type": "int8", "weight_type": "int8", "reduce_range": False}
        defaults["per_channel"] = False  # best CPU throughput; the tuner may try True
        weight_only = {WEIGHT_ONLY_BITS[p] for p in plan.layers.values() if p in WEIGHT_ONLY_BITS}
        if weight_only:  # only then, so other plans keep their hashes
            defaults["block_size"] = 32  # GGUF's Q4/Q8 block; 64 and 128 are smaller and coarser
            # int4: asymmetric (zero points), as fast as symmetric and far closer to fp32 on
            # SmolLM2 (docs/llms.md); int8 alone keeps the symmetric kernel path.
            defaults["weight_symmetric"] = 4 not in weight_only
            if o.get("accuracy_level") is None:
                defaults["accuracy_level"] = nbits.best_level(nbits.level_speedups(machine, cache_root()), weight_only)
        changes = {k: v for k, v in defaults.items() if o.get(k) is None}
        return plan.with_options(**changes) if changes else plan

    def calibrate(self, model: OnnxModel, data: Dataset, method: str, workdir: pathlib.Path) -> Calibration:
        calibration = qdq.calibrate(model, data, method, workdir)
        calibration.details["dataset"] = data  # any plan may be built from it, its own quantizer's too
        return calibration

    def needs_ranges(self, plan: PrecisionPlan) -> bool:
        return not plan.is_native  # native-int8: ``quantize_static`` calibrates the samples itself

    # -- build -------------------------------------------------------------------------------

    def _build_key(self, plan: PrecisionPlan) -> tuple[str, ...]:
        # "nbits-2": weight-only artifacts cached before MatMulNBits went by exclusion held every
        # MatMul in the plan's first format; a new key keeps them from being reused.
        key = (_ort().__version__, f"x86={self._x86()}" if plan.is_native else "")
        return (*key, "nbits-2") if plan.layers_in(*WEIGHT_ONLY_BITS) else key

    def _build_uncached(
        self,
        model: OnnxModel,
        plan: PrecisionPlan,
        calibration: Calibration | None,
        workdir: pathlib.Path,
        out: pathlib.Path,
    ) -> None:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        dynamic = plan.layers_in("int8-dynamic")
        weight_only = plan.layers_in(*WEIGHT_ONLY_BITS)
        base = current = qdq.named_model_path(model, workdir)
        staged = out.with_suffix(".static.onnx")
        # Dynamic MatMuls of the unquantized model are spliced from pieces quantized once per
        # process; after static int8, or with a Gemm among them, the quantizer writes them all.
        splice = bool(dynamic) and not plan.is_native and not plan.needs_calibration and dyn.spliceable(base, dynamic)
        dynamic_out = out.with_suffix(".dynamic.onnx") if weight_only else out
        try:
            if plan.is_native:
                self._write_native(model, calibration, workdir, staged)
                current = staged
            elif plan.needs_calibration:
                qdq.write_qdq_graph(model, plan, calibration, workdir, staged)
                current = staged
            if dynamic and not splice:
                types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
                with qdq.quiet_root_logger():
                    quantize_dynamic(
                        current,
                        dynamic_out,
                        per_channel=plan.options.per_channel,
                        reduce_range=plan.options.reduce_range,
                        weight_type=types[plan.options.weight_type],
                        nodes_to_quantize=dynamic,
                        use_external_data_format=model.large,
                        # Types behind contrib ops (GroupQueryAttention) that shape inference skips.
                        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
                    )
                current = dynamic_out
            if splice:
                o = plan.options
                fmt = dyn.DynamicFormat(o.per_channel, o.reduce_range, o.weight_type)
                write_spliced(base, out, plan, base, dyn.dynamic_pieces(base, fmt, dynamic))
            # Last: the int8 writers leave weight-only layers float, with their weights constant.
            elif weight_only:
                write_spliced(current, out, plan, base=base)
            elif current != out:
                copy_onnx(current, out)
        finally:
            for scratch in (staged, dynamic_out) if dynamic_out != out else (staged,):
                scratch.unlink(missing_ok=True)
                scratch.with_name(external_data_name(scratch)).unlink(missing_ok=True)

    @staticmethod
    def _x86() -> bool:
        from qbench.machine import current_machine

        return current_machine().is_x86

    def _write_native(
        self, model: OnnxModel, calibration: Calibration, workdir: pathlib.Path, out: pathlib.Path
    ) -> None:
        """ORT's one-line recipe: pre-process, then ``quantize_static`` on the whole model with
        its own calibration over the calibration samples (one at a time, as a reader yields them)."""
        from onnxruntime.quantization import CalibrationDataReader, quantize_static

        data: Dataset = calibration.details["dataset"]

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._feeds = data.batches(fixed_batch_size(model) or 1, keep_tail=fixed_batch_size(model) is None)

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self._feeds, None)

        with qdq.quiet_root_logger():
            quantize_static(
                qdq.prepared_model_path(model, workdir),
                out,
                Reader(),
                use_external_data_format=model.large,
                **native_int8_options(self._x86()),
            )

    # -- run ---------------------------------------------------------------------------------

    def _session_options(self, threads: int, shared_process: bool):
        ort = _ort()
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning idle threads of one session steal the cores of another (docs/decisions.md).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0" if shared_process else "1")
        so.log_severity_level = 3
        return so

    def load(self, artifact: Artifact, threads: int, shared_process: bool = True) -> Runner:
        if threads < 1:
            raise QbenchError(f"`threads` must be at least 1, but got {threads}")
        so = self._session_options(threads, shared_process)
        try:
            session = _session(artifact.path, so)
        except Exception as exc:  # ORT raises its own exception types for unreadable graphs
            raise QbenchError(f"onnxruntime cannot load {artifact.path.name}: {first_line(exc)}") from exc
        settings = {
            "threads": threads,
            "inter_op_threads": 1,
            "allow_spinning": not shared_process,
            "graph_optimization_level": "all",
            "provider": "CPUExecutionProvider",
            "disabled_optimizers": list(_DISABLED_OPTIMIZERS),
        }
        return OnnxRuntimeRunner(session, settings)

    def load_for_throughput(self, artifact: Artifact, threads: int, streams: int) -> Runner:
        """One session run from ``streams`` threads at once (ORT allows concurrent ``run`` calls on
        a session), the intra-op threads shared out between them; ``0``: one stream per thread."""
        streams = streams or threads
        intra = max(1, threads // streams)
        so = self._session_options(intra, shared_process=False)
        try:
            session = _session(artifact.path, so)
        except Exception as exc:
            raise QbenchError(f"onnxruntime cannot load {artifact.path.name}: {first_line(exc)}") from exc
        settings = {
            "threads": intra,
            "concurrent_runs": streams,
            "inter_op_threads": 1,
            "allow_spinning": True,
            "graph_optimization_level": "all",
            "provider": "CPUExecutionProvider",
        }
        return _ConcurrentRunner(session, settings, streams)

    def profile(self, artifact: Artifact, threads: int, feeds: Mapping[str, np.ndarray], runs: int) -> list[OpTime]:
        """ORT's profiler: the ``*_kernel_time`` events of the warm runs, per node, with the
        session's optimized graph (saved alongside) to find float ops between Q/DQ pairs."""
        import tempfile

        import onnx

        with tempfile.TemporaryDirectory(prefix="qbench-profile-") as tmp:
            so = self._session_options(threads, shared_process=True)
            so.enable_profiling = True
            so.profile_file_prefix = str(pathlib.Path(tmp) / "ort")
            so.optimized_model_filepath = str(pathlib.Path(tmp) / "optimized.onnx")
            session = _session(artifact.path, so)
            for _ in range(PROFILE_WARMUP):
                session.run(None, dict(feeds))
            for _ in range(runs):
                session.run(None, dict(feeds))
            events = json.loads(pathlib.Path(session.end_profiling()).read_text())
            graph = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
        warm_from = sorted(e["ts"] for e in events if e.get("name") == "model_run")[PROFILE_WARMUP]
        totals: dict[str, list] = {}
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= warm_from:
                node = e["name"].removesuffix("_kernel_time")
                totals.setdefault(node, [e["args"].get("op_name", "?"), 0])[1] += e["dur"]
        return _ort_op_times(graph, totals, runs)

    def _realized_tag(self) -> str:
        return content_key(*_DISABLED_OPTIMIZERS)[:8]  # what runs depends on the optimizers left on

    def _realize(self, artifact: Artifact, plan: PrecisionPlan, model: OnnxModel) -> dict[str, str]:
        import onnx

        ort = _ort()
        optimized = artifact.path.with_suffix(f".{os.getpid()}.optimized.onnx")
        so = self._session_options(1, shared_process=True)
        # The extended level applies the QDQ fusions that decide int8 vs float; the layout
        # passes of the "all" level only rewrite float convolutions into NCHWc form.
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(optimized)
        try:
            _session(artifact.path, so)
            kernels = {node.name: node for node in onnx.load(str(optimized), load_external_data=False).graph.node}
        finally:
            optimized.unlink(missing_ok=True)
        realized = {}
        for layer in model.layers:
            # The dynamic quantizer renames the node it replaces to "<name>_quant", the weight-only
            # one to "<name>_Q4" / "<name>_Q8".
            node = next((kernels[n] for n in _kernel_names(layer.name) if n in kernels), None)
            realized[layer.name] = "removed" if node is None else _kernel_precision(node)
        return realized
