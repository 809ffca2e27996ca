"""TensorRT: a plan written into the ONNX graph, built into a strongly-typed engine.

Since TensorRT 11 (and in TensorRT-RTX) precision is a property of the graph, not of builder
flags: int8 layers get symmetric signed Q/DQ pairs (per-channel weights, biases left in float)
from the shared QDQ writer, fp16/bf16 layers get Cast regions (``_tensorrt_casts``), weight-only layers a
DequantizeLinear of int4 (blocked) or int8 weights (``_tensorrt_blockdq``). The engine is built
from that graph with a strongly-typed network, an optimization profile for dynamic batch
sizes, a workspace limit and a timing cache per GPU and TensorRT version, and cached by content
hash. Either the full ``tensorrt`` module or ``tensorrt_rtx`` is used; the RTX builder works
without a GPU, so graphs and engines are checked on any machine. Running an engine needs an
NVIDIA GPU and ``cuda-python``.
"""

from __future__ import annotations

import importlib
import json
import pathlib
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from qbench.backends import _qdq as qdq
from qbench.backends._base import Artifact, Availability, Backend, Calibration, Runner
from qbench.backends._tensorrt_blockdq import write_weight_dq
from qbench.backends._tensorrt_casts import write_cast_regions
from qbench.data import Dataset
from qbench.errors import QbenchError
from qbench.machine import Machine, current_machine
from qbench.model import Layer, OnnxModel, save_onnx
from qbench.plan import BLOCK_SIZES, WEIGHT_ONLY_BITS, PrecisionPlan

_MODULES = ("tensorrt", "tensorrt_rtx")  # full TensorRT first; the RTX edition builds without a GPU
WORKSPACE_BYTES = 1 << 30
OPTIMIZATION_LEVEL = 3  # TensorRT's default; recorded with the engine
# Ops the Q/DQ writer may quantize for TensorRT. Its fusion rules want Q/DQ on the inputs of
# int8 compute layers, on residual Adds whose branches are int8 (so Conv+Add fuses) and on the
# ops it runs in int8 around them (pooling, Concat); activations fuse into the layer before them.
TENSORRT_QDQ_OPS = (
    "Conv",
    "ConvTranspose",
    "MatMul",
    "Gemm",
    "Add",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Concat",
)
MAX_BATCH = 64  # the evaluation batch (qbench.benchmark.EVAL_BATCH) must fit the profile
_INSTALL = "pip install 'qbench[tensorrt]'"


def tensorrt_module() -> Any:
    """The first importable TensorRT Python module, or a QbenchError saying what to install."""
    for name in _MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise QbenchError(f"neither tensorrt nor tensorrt_rtx is importable: {_INSTALL}")


class _Log:
    """A TensorRT logger that keeps errors, so a failed build says why in one line."""

    def __init__(self, trt: Any) -> None:
        outer = self

        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity, msg) -> None:
                if severity <= trt.ILogger.Severity.ERROR:
                    outer.errors.append(str(msg))

        self.errors: list[str] = []
        self.logger = Logger()


def _gpu_name(machine: Machine) -> str:
    return machine.gpus[0].split(",")[0].strip() if machine.gpus else "no-gpu"


class TensorRtBackend(Backend):
    """NVIDIA TensorRT (or TensorRT-RTX): fp32, fp16, bf16, int8 and fp8 per layer, strongly typed."""

    name = "tensorrt"
    artifact_suffix = ".engine"
    companion_suffixes = (".json",)

    def probe(self) -> Availability:
        try:
            trt = tensorrt_module()
        except QbenchError as exc:
            return Availability(False, f"{exc} (building engines needs no GPU; running them needs one)")
        version = f"{trt.__name__} {trt.__version__}"
        machine = current_machine()
        if not machine.gpus:
            return Availability(False, "engines build here, but nvidia-smi shows no NVIDIA GPU to run them", version)
        try:
            _cudart()
        except QbenchError as exc:
            return Availability(False, str(exc), version)
        return Availability(True, "ready", version, machine.gpus[0])

    def precisions(self, layer: Layer) -> tuple[str, ...]:
        if layer.takes_weight_only:
            return ("fp32", "fp16", "bf16", "int8", "fp8", *WEIGHT_ONLY_BITS)
        return ("fp32", "fp16", "bf16", "int8", "fp8")

    def option_choices(self) -> dict[str, tuple[Any, ...]]:
        # Since TensorRT 10 the Q/DQ graph is the way to int8.
        return {"quantizer": ("qdq",), "block_size": BLOCK_SIZES, "weight_symmetric": (True,)}

    def resolve_plan(self, plan: PrecisionPlan, machine: Machine) -> PrecisionPlan:
        # TensorRT's explicit quantization is symmetric and signed; per-channel weights cost
        # nothing on its kernels.
        defaults = {"activation_type": "int8", "weight_type": "int8", "per_channel": True, "reduce_range": False}
        if plan.layers_in(*WEIGHT_ONLY_BITS):
            defaults.update(block_size=BLOCK_SIZES[0], weight_symmetric=True)
        changes = {k: v for k, v in defaults.items() if plan.options.get(k) is None}
        return plan.with_options(**changes) if changes else plan

    def calibrate(self, model: OnnxModel, data: Dataset, method: str, workdir: pathlib.Path) -> Calibration:
        return qdq.calibrate(model, data, method, workdir)

    # -- graph and engine --------------------------------------------------------------------

    def write_graph(
        self,
        model: OnnxModel,
        plan: PrecisionPlan,
        calibration: Calibration | None,
        out: pathlib.Path,
        workdir: pathlib.Path,
    ) -> pathlib.Path:
        """The plan's TensorRT flavour as ONNX: Q/DQ pairs around int8 and fp8 layers, Casts
        around fp16/bf16 ones, DequantizeLinear on the low-bit weights of weight-only ones;
        written to ``out``."""
        self.check_plan(plan, model)
        if plan.layers_in("int8", "fp8"):
            # fp8 layers are laid out as int8 first, then their Q/DQ pairs become float8 ones.
            as_int8 = PrecisionPlan({k: "int8" for k in plan.layers_in("int8", "fp8")}, plan.options, plan.name)
            qdq.write_qdq_graph(
                model,
                as_int8,
                calibration,
                workdir,
                out,
                symmetric_activations=True,
                quantize_bias=False,
                op_types=TENSORRT_QDQ_OPS,
            )
            graph = onnx.load(str(out))
            if plan.layers_in("fp8"):
                prepared = onnx.load(str(qdq.prepared_model_path(model, workdir)))
                weights = {t.name: onnx.numpy_helper.to_array(t) for t in prepared.graph.initializer}
                qdq.requantize_to_fp8(graph, set(plan.layers_in("fp8")), set(plan.layers_in("int8")), weights)
        else:
            graph = model.proto
        casts = {layer: p for layer, p in plan.layers.items() if p in ("fp16", "bf16")}
        graph = write_cast_regions(graph, casts) if casts else graph
        save_onnx(write_weight_dq(graph, plan), out)
        return out

    def _build_key(self, plan: PrecisionPlan) -> tuple[str, ...]:
        trt = tensorrt_module()
        return (trt.__name__, trt.__version__, _gpu_name(current_machine()))

    def _build_uncached(
        self,
        model: OnnxModel,
        plan: PrecisionPlan,
        calibration: Calibration | None,
        workdir: pathlib.Path,
        out: pathlib.Path,
    ) -> None:
        trt = tensorrt_module()
        gpu = _gpu_name(current_machine())
        with tempfile.TemporaryDirectory(prefix="qbench-trt-") as scratch:
            graph = self.write_graph(model, plan, calibration, pathlib.Path(scratch) / "graph.onnx", workdir)
            engine, settings = build_engine(trt, graph, workdir / "tensorrt-timing-cache" / f"{gpu}-{trt.__version__}")
        out.write_bytes(engine)
        out.with_suffix(".json").write_text(json.dumps({**settings, "gpu": gpu}, indent=1))

    # -- run (needs an NVIDIA GPU) -----------------------------------------------------------

    def load(self, artifact: Artifact, threads: int, shared_process: bool = True) -> Runner:
        if threads < 1:
            raise QbenchError(f"`threads` must be at least 1, but got {threads}")
        availability = self.probe()
        if not availability.available:
            raise QbenchError(f"cannot run a TensorRT engine here: {availability.reason}")
        return TensorRtRunner(tensorrt_module(), artifact.path.read_bytes())

    def _realized_tag(self) -> str:
        return "engine"

    def _realize(self, artifact: Artifact, plan: PrecisionPlan, model: OnnxModel) -> dict[str, str]:
        """Per plan layer, the precision of the engine layers built from it, read with the
        engine inspector (the engine is built with detailed profiling verbosity)."""
        runner = self.load(artifact, threads=1)
        trt = tensorrt_module()
        try:
            inspector = runner.engine.create_engine_inspector()
            info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        finally:
            runner.close()
        realized = {}
        for layer in model.layer_names():
            # An engine layer is named after the graph nodes it fused: "/a/Conv + /a/Relu".
            kinds = {
                _layer_precision(entry)
                for entry in info.get("Layers", [])
                if any(part.strip().startswith(layer) for part in str(entry.get("Name", "")).split("+"))
            }
            kinds.discard(None)
            realized[layer] = "removed" if not kinds else ("int8" if "int8" in kinds else sorted(kinds)[0])
        return realized


def build_engine(trt: Any, graph: pathlib.Path, timing_cache: pathlib.Path) -> tuple[bytes, dict[str, Any]]:
    """Parse ``graph`` into a strongly-typed network and build a serialized engine."""
    log = _Log(trt)
    builder = trt.Builder(log.logger)
    # TensorRT 10 needs the strongly-typed flag; 11 and RTX are strongly typed always (and accept it).
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log.logger)
    if not parser.parse(graph.read_bytes(), str(graph.parent)):
        errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
        raise QbenchError(f"TensorRT cannot parse {graph.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.builder_optimization_level = OPTIMIZATION_LEVEL
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # for the engine inspector
    profile = builder.create_optimization_profile()
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = list(tensor.shape)
        if any(d < 0 for d in dims[1:]):
            raise QbenchError(f"input {tensor.name!r} has dynamic dimensions {dims}; fix them with --shape")
        low, high = ([1, *dims[1:]], [MAX_BATCH, *dims[1:]]) if dims[0] < 0 else (dims, dims)
        profile.set_shape(tensor.name, low, low, high)
        shapes[tensor.name] = [low, low, high]
    config.add_optimization_profile(profile)
    # TensorRT-RTX tunes on the device at run time; its timing-cache calls are deprecated no-ops.
    use_cache = trt.__name__ == "tensorrt"
    if use_cache:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise QbenchError(f"TensorRT could not build {graph.name}: {'; '.join(log.errors) or 'no reason given'}")
    if use_cache:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    settings = {
        "module": trt.__name__,
        "version": trt.__version__,
        "strongly_typed": True,
        "workspace_bytes": WORKSPACE_BYTES,
        "builder_optimization_level": OPTIMIZATION_LEVEL,
        "profile_min_opt_max": shapes,
        "timing_cache": timing_cache.name if use_cache else None,
    }
    return bytes(serialized), settings


def _layer_precision(entry: Mapping[str, Any]) -> str | None:
    text = json.dumps(entry.get("Inputs", [])) + json.dumps(entry.get("Outputs", []))
    for marker, precision in (("Int8", "int8"), ("FP8", "fp8"), ("Half", "fp16"), ("BF16", "bf16"), ("Float", "fp32")):
        if marker in text:
            return precision
    return None


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError as exc:
            raise QbenchError("running TensorRT engines needs cuda-python: pip install cuda-python") from exc
    return runtime


def _check(result: tuple) -> Any:
    error, *values = result
    if int(error) != 0:
        raise QbenchError(f"CUDA call failed: {error}")
    return values[0] if len(values) == 1 else values


class TensorRtRunner(Runner):
    """One execution context on one CUDA stream. Each run copies inputs in, enqueues with
    ``execute_async_v3`` between two CUDA events, copies outputs back and waits; the GPU time
    (events) and the host enqueue time of the last run are kept apart from the wall time that
    qbench measures, so enqueue-bound runs show."""

    def __init__(self, trt: Any, engine: bytes) -> None:
        self._cuda = _cudart()
        self._log = _Log(trt)
        self._runtime = trt.Runtime(self._log.logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine)
        if self.engine is None:
            raise QbenchError(f"TensorRT cannot load the engine: {'; '.join(self._log.errors)}")
        self._context = self.engine.create_execution_context()
        self._stream = _check(self._cuda.cudaStreamCreate())
        self._events = [_check(self._cuda.cudaEventCreate()) for _ in range(2)]
        self._device: dict[str, tuple[int, int]] = {}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.gpu_ms: list[float] = []
        self.enqueue_ms: list[float] = []
        self.settings = {"stream": "one", "cuda_graphs": False}

    def _buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self._device.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                _check(self._cuda.cudaFree(pointer))
            pointer, size = int(_check(self._cuda.cudaMalloc(nbytes))), nbytes
            self._device[name] = (pointer, size)
        return pointer

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        cuda, kind = self._cuda, self._cuda.cudaMemcpyKind
        staged = []  # host copies stay alive until the stream is synchronized
        for name, array in feeds.items():
            array = np.ascontiguousarray(array, dtype=self._dtypes[name])
            staged.append(array)
            self._context.set_input_shape(name, array.shape)
            pointer = self._buffer(name, array.nbytes)
            _check(
                cuda.cudaMemcpyAsync(
                    pointer, array.ctypes.data, array.nbytes, kind.cudaMemcpyHostToDevice, self._stream
                )
            )
            self._context.set_tensor_address(name, pointer)
        results = {}
        for name in self._outputs:
            results[name] = np.empty(tuple(self._context.get_tensor_shape(name)), self._dtypes[name])
            self._context.set_tensor_address(name, self._buffer(name, results[name].nbytes))
        _check(cuda.cudaEventRecord(self._events[0], self._stream))
        start = time.perf_counter()
        if not self._context.execute_async_v3(self._stream):
            raise QbenchError("TensorRT execute_async_v3 failed")
        self.enqueue_ms.append((time.perf_counter() - start) * 1e3)
        _check(cuda.cudaEventRecord(self._events[1], self._stream))
        for name, host in results.items():
            pointer = self._device[name][0]
            _check(
                cuda.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes, kind.cudaMemcpyDeviceToHost, self._stream)
            )
        _check(cuda.cudaStreamSynchronize(self._stream))
        self.gpu_ms.append(float(_check(cuda.cudaEventElapsedTime(*self._events))))
        return [results[name] for name in self._outputs]

    def timing_notes(self) -> dict[str, Any]:
        if not self.gpu_ms:
            return {}
        gpu, enqueue = float(np.median(self.gpu_ms)), float(np.median(self.enqueue_ms))
        # When the host takes nearly as long to enqueue as the GPU to execute, the GPU waits on
        # Python: the wall time then measures the host, and CUDA graphs or batching would help.
        return {"gpu_ms_median": gpu, "enqueue_ms_median": enqueue, "enqueue_bound": enqueue > 0.8 * gpu}

    def close(self) -> None:
        for pointer, _ in self._device.values():
            self._cuda.cudaFree(pointer)
        self._device = {}
        self._context = self.engine = None
