"""OpenVINO: a plan's QDQ graph (or NNCF's quantization) compiled for the CPU or another device.

OpenVINO reads explicit-quantization ONNX directly and runs each Q/DQ-wrapped convolution or
MatMul in int8; the plan's fp32 layers stay in float. Weight-only layers go through
``nncf.compress_weights`` (int4 per group of ``block_size``, int8 per output channel; symmetric
or asymmetric by the plan's ``weight_symmetric``), which the CPU plugin runs as FullyConnected
with decompression on the fly. The artifact is OpenVINO IR (``.xml`` and ``.bin``), cached by
content hash; the runtime options a plan sets travel inside the IR.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import pathlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from qbench.backends import _nbits as nbits
from qbench.backends import _qdq as qdq
from qbench.backends._base import Artifact, Availability, Backend, Calibration, Runner, choice_check
from qbench.backends._openvino_state import StatefulRunner, make_stateful, stateful_pairs
from qbench.data import Dataset
from qbench.errors import QbenchError, first_line
from qbench.machine import Machine
from qbench.model import Layer, OnnxModel, external_data_name
from qbench.plan import BLOCK_SIZES, WEIGHT_ONLY_BITS, PrecisionPlan
from qbench.profile import PROFILE_WARMUP, OpTime, sandwiched

# OpenVINO operations that carry a quantizable layer's weights, as convert_model names them:
# ONNX Conv "/x/Conv" becomes Convolution "/x/Conv/WithoutBiases" plus an Add named "/x/Conv".
_WEIGHTED_OPS = frozenset(
    {"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData", "GroupConvolutionBackpropData"}
)
# Executed-graph node types that compute a quantizable layer (the CPU plugin's names).
_COMPUTE_TYPES = frozenset({"Convolution", "FullyConnected", "MatMul", "Deconvolution", "GroupConvolution"})
_RUNTIME_PRECISIONS = {"i8": "int8", "u8": "int8", "f32": "fp32", "bf16": "bf16", "f16": "fp16"}
# A node computing in float on weights of these types decompresses them: a weight-only layer.
_WEIGHT_ONLY_TYPES = {"i4": "int4-weight", "u4": "int4-weight", "i8": "int8-weight", "u8": "int8-weight"}
_FLOAT_TYPES = frozenset({"f32", "bf16", "f16"})
# Operations nncf.compress_weights compresses unless told to ignore them (embeddings are Gathers).
_COMPRESSIBLE_OPS = frozenset({"MatMul", "Gather", "Convolution"})
_RT_INFO = "qbench_inference_precision"  # stored in the IR so load() needs only the artifact
_KV_CACHE_INFO = "qbench_kv_cache"
KV_CACHES = ("state", "inputs")
NNCF_PRESETS = ("performance", "mixed")
INFERENCE_PRECISIONS = ("f32", "bf16", "f16")


@dataclass(frozen=True)
class OpenVinoOptions:
    """OpenVINO's own plan options (None: the default for this machine)."""

    #: The precision float layers compute in (the CPU plugin's ``INFERENCE_PRECISION_HINT``).
    inference_precision: str | None = None
    #: NNCF's quantization preset: "performance" (symmetric) or "mixed" (asymmetric activations).
    preset: str | None = None
    #: Where a decoder keeps its key/value cache: "state" (inside the model, as OpenVINO's LLM
    #: pipeline runs it; the default) or "inputs" (the graph's cache inputs and outputs).
    kv_cache: str | None = None

    def __post_init__(self) -> None:
        choice_check(self, {"inference_precision": INFERENCE_PRECISIONS, "preset": NNCF_PRESETS, "kv_cache": KV_CACHES})


@functools.lru_cache(maxsize=1)
def _core() -> Any:
    import openvino

    return openvino.Core()


@functools.lru_cache(maxsize=1)
def _cpu_has_bf16() -> bool:
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _is_part_of(ov_name: str, layer: str) -> bool:
    """Whether an OpenVINO operation name comes from ONNX node ``layer`` (convert_model keeps
    the node name and derives the names of the operations it splits a node into from it)."""
    return ov_name == layer or ov_name.startswith(f"{layer}/")


def _openvino_error(exc: BaseException) -> str:
    """OpenVINO's messages open with the C++ check that failed; keep the lines that say what."""
    lines = [line.strip(" -") for line in str(exc).splitlines() if line.strip(" -")]
    said = [line for line in lines if not line.startswith(("Check '", "FrontEnd API failed", "Summary"))]
    return " ".join(said) or first_line(exc)


def _property_text(value: Any) -> str:
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)  # Type: "bf16", not "<Type…>"


def _ov_names(ov_model: Any, layer: str) -> list[str]:
    """OpenVINO operations of the converted model that hold ONNX layer ``layer``'s weights."""
    return [
        op.get_friendly_name()
        for op in ov_model.get_ops()
        if op.get_type_name() in _WEIGHTED_OPS and _is_part_of(op.get_friendly_name(), layer)
    ]


def _exec_precision(node_type: str, exec_type: str) -> str:
    """Precision from an exec type such as ``brgconv_avx2_I8`` or ``jit_avx2_FP32``."""
    if node_type == "Reorder":
        return "reorder"
    suffix = exec_type.rsplit("_", 1)[-1].lower()
    return {"i8": "int8", "u8": "int8", "fp32": "fp32", "f32": "fp32", "bf16": "bf16", "fp16": "fp16"}.get(
        suffix, "fp32"
    )


def _runtime_structure(runtime_model: Any) -> dict[str, tuple[list[str], list[str]]]:
    """Executed node name -> (parent names, child names) in the compiled graph."""
    structure = {}
    for op in runtime_model.get_ordered_ops():
        parents = [i.get_source_output().get_node().get_friendly_name() for i in op.inputs()]
        children = [t.get_node().get_friendly_name() for out in op.outputs() for t in out.get_target_inputs()]
        structure[op.get_friendly_name()] = (parents, children)
    return structure


class OpenVinoRunner(Runner):
    def __init__(self, compiled: Any, settings: Mapping[str, Any]) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._outputs = len(compiled.outputs)
        self._bound: dict[str, np.ndarray] = {}
        self._kept_alive: dict[str, np.ndarray] = {}  # the memory the bound tensors share
        self.settings = dict(settings)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        import openvino

        # Binding arrays to the request costs a noticeable share of a small model's call, so
        # arrays already bound (a timing loop passes the same ones) are not bound again, as
        # benchmark_app fills its input tensors once. The tensors share the arrays' memory.
        if feeds.keys() != self._bound.keys() or any(self._bound[k] is not v for k, v in feeds.items()):
            contiguous = {name: np.ascontiguousarray(array) for name, array in feeds.items()}
            for name, array in contiguous.items():
                self._request.set_tensor(name, openvino.Tensor(array, shared_memory=True))
            self._bound, self._kept_alive = dict(feeds), contiguous
        self._request.infer()
        return [self._request.get_output_tensor(i).data.copy() for i in range(self._outputs)]

    def close(self) -> None:
        self._request = self._compiled = None
        self._bound, self._kept_alive = {}, {}


class _AsyncRunner(OpenVinoRunner):
    """A model compiled for throughput: ``run_for`` keeps the optimal number of requests in flight."""

    def run_for(self, feeds: Mapping[str, np.ndarray], seconds: float) -> tuple[int, int]:
        import openvino

        jobs = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        queue = openvino.AsyncInferQueue(self._compiled, jobs)
        arrays = {name: np.ascontiguousarray(array) for name, array in feeds.items()}
        for request in queue:  # inputs set once, as benchmark_app fills its tensors once
            for name, array in arrays.items():
                request.set_tensor(name, openvino.Tensor(array, shared_memory=True))
        clock, calls = time.perf_counter_ns, 0
        start = clock()
        deadline = start + int(seconds * 1e9)
        while clock() < deadline:
            queue.start_async()
            calls += 1
        queue.wait_all()
        return calls, clock() - start


class OpenVinoBackend(Backend):
    """OpenVINO on ``device`` (``CPU`` unless the backend is named ``openvino:GPU`` or similar).

    Plans go through ``nncf.quantize`` with the plan's float layers as the ignored scope (the
    default: NNCF places the quantizers around them and knows pre-VNNI CPUs), or, with the plan
    option ``quantizer: qdq``, become QDQ graphs through the quantizer ONNX Runtime uses.
    ``native-int8`` is ``nncf.quantize`` on the whole model with NNCF's defaults. Compiled with
    the latency hint, one stream and a fixed thread count.
    """

    name = "openvino"
    Options = OpenVinoOptions
    artifact_suffix = ".xml"
    companion_suffixes = (".bin",)
    # Compiled models of one IR interleaved in one process can differ in speed, unlike ONNX
    # Runtime sessions (docs/decisions.md): the nightly A/A band covers it.

    def __init__(self, device: str = "CPU") -> None:
        self.device = device.upper()
        if self.device != "CPU":  # rows on other devices must not rank against CPU rows
            self.name = f"openvino:{self.device}"

    def probe(self) -> Availability:
        try:
            import openvino
        except ImportError:
            return Availability(False, "the openvino package is not installed: pip install 'qbench[openvino]'")
        version = "-".join(openvino.__version__.split("-")[:2])  # "2026.4.1-22982", no git hash and branch
        try:
            devices = _core().available_devices
        except Exception as exc:  # a broken plugin install
            return Availability(False, f"OpenVINO cannot list devices: {first_line(exc)}", version)
        if self.device not in devices and self.device.split(".")[0] not in {d.split(".")[0] for d in devices}:
            return Availability(
                False,
                f"OpenVINO has no device {self.device!r} here (it has {', '.join(devices)}); "
                f"use --backend openvino:{devices[0]}",
                version,
            )
        full_name = _core().get_property(self.device, "FULL_DEVICE_NAME")
        return Availability(True, "ready", version, f"{self.device}: {full_name}")

    def precisions(self, layer: Layer) -> tuple[str, ...]:
        if layer.takes_weight_only:
            return ("fp32", "int8", *WEIGHT_ONLY_BITS)
        return ("fp32", "int8")

    def option_choices(self) -> dict[str, tuple[Any, ...]]:
        hints = ("f32", "bf16") if self.device == "CPU" and _cpu_has_bf16() else ("f32",)
        return {
            "quantizer": ("nncf", "qdq", "native"),
            "inference_precision": hints,
            "preset": NNCF_PRESETS,
            "block_size": BLOCK_SIZES,
            "weight_symmetric": (True, False),
        }

    def searched_options(self) -> dict[str, frozenset[str] | None]:
        return {**super().searched_options(), "preset": frozenset({"int8"}), "inference_precision": None}

    def resolve_plan(self, plan: PrecisionPlan, machine: Machine) -> PrecisionPlan:
        # NNCF by default: on an AVX2 CPU without VNNI the QDQ route with symmetric signed
        # activations lost far more accuracy than NNCF (docs/decisions.md). Float layers stay f32
        # unless the plan asks for bf16: OpenVINO's own default on AMX/AVX-512-BF16 CPUs is bf16,
        # which would make "fp32" layers lose precision.
        if plan.is_native:
            return plan if plan.options.get("inference_precision") else plan.with_options(inference_precision="f32")
        defaults: dict[str, Any] = {"quantizer": "nncf", "inference_precision": "f32"}
        if plan.layers_in(*WEIGHT_ONLY_BITS):
            defaults["block_size"] = BLOCK_SIZES[0]  # NNCF's own default group is 128; 32 as on ONNX Runtime
            # Asymmetric: NNCF's own default for int8; for int4 as fast as its INT4_SYM default
            # and far closer to fp32 on SmolLM2 (docs/llms.md).
            defaults["weight_symmetric"] = False
        if (plan.options.quantizer or "nncf") == "qdq":
            # The QDQ route: with VNNI, symmetric signed int8 is fast where asymmetric signed
            # activations can be slower than fp32; without VNNI, unsigned asymmetric activations
            # keep accuracy (OpenVINO's own pre-VNNI choice) at some speed (docs/decisions.md).
            vnni = machine.has_vnni
            defaults.update(
                activation_type="int8" if vnni else "uint8",
                activation_symmetric=vnni,
                weight_type="int8",
                per_channel=True,
                reduce_range=False,
            )
        changes = {k: v for k, v in defaults.items() if plan.options.get(k) is None}
        return plan.with_options(**changes) if changes else plan

    def calibrate(self, model: OnnxModel, data: Dataset, method: str, workdir: pathlib.Path) -> Calibration:
        calibration = qdq.calibrate(model, data, method, workdir)
        calibration.details["dataset"] = data  # any plan may be built from it, its own quantizer's too
        return calibration

    def needs_ranges(self, plan: PrecisionPlan) -> bool:
        return plan.options.quantizer == "qdq"  # NNCF collects its own statistics from the samples

    # -- build -------------------------------------------------------------------------------

    def _build_key(self, plan: PrecisionPlan) -> tuple[str, ...]:
        import openvino

        return (openvino.__version__,)

    def _build_uncached(
        self,
        model: OnnxModel,
        plan: PrecisionPlan,
        calibration: Calibration | None,
        workdir: pathlib.Path,
        out: pathlib.Path,
    ) -> None:
        import openvino

        static = plan.needs_calibration
        staged = out.with_suffix(".qdq.onnx")
        try:
            if static and plan.options.quantizer == "qdq":
                qdq.write_qdq_graph(model, plan, calibration, workdir, staged)
                source = staged
            else:
                source = qdq.named_model_path(model, workdir)
            ov_model = self._convert(source)
            if static and plan.options.quantizer in ("nncf", "native"):
                ov_model = self._nncf_quantize(ov_model, model, plan, calibration)
            if plan.layers_in(*WEIGHT_ONLY_BITS):
                ov_model = self._compress_weights(ov_model, plan, nbits.tied_embedding(model.proto))
            ov_model.set_rt_info(plan.options.get("inference_precision"), _RT_INFO)
            if plan.options.get("kv_cache"):  # only when asked: other IRs stay byte for byte as before
                ov_model.set_rt_info(plan.options.get("kv_cache"), _KV_CACHE_INFO)
            # compress_to_fp16 defaults to True; fp32 layers must keep fp32 weights.
            openvino.save_model(ov_model, str(out), compress_to_fp16=False)
        finally:
            staged.unlink(missing_ok=True)
            staged.with_name(external_data_name(staged)).unlink(missing_ok=True)

    @staticmethod
    def _convert(source: pathlib.Path) -> Any:
        import openvino

        try:
            return openvino.convert_model(str(source))
        except Exception as exc:  # OpConversionFailure and friends: an op OpenVINO cannot read
            raise QbenchError(f"OpenVINO cannot read {source.name}: {_openvino_error(exc)}") from exc

    @staticmethod
    def _nncf_quantize(ov_model: Any, model: OnnxModel, plan: PrecisionPlan, calibration: Calibration) -> Any:
        try:
            import nncf
        except ImportError as exc:
            raise QbenchError("plan option quantizer=nncf needs NNCF: pip install 'qbench[openvino]'") from exc
        data: Dataset = calibration.details["dataset"]
        dataset = nncf.Dataset(list(data.batches(1)))
        if plan.is_native:  # NNCF's one-line default: whole model, its own subset size and preset
            with _quiet_nncf():
                return nncf.quantize(ov_model, dataset)
        float_layers = [layer for layer in model.layer_names() if plan.precision(layer) != "int8"]
        # NNCF's ignored scope takes OpenVINO operation names, not the ONNX node names of the plan.
        ignored = [name for layer in float_layers for name in _ov_names(ov_model, layer)]
        preset = plan.options.get("preset")
        extra = {"preset": getattr(nncf.QuantizationPreset, preset.upper())} if preset else {}
        with _quiet_nncf():
            return nncf.quantize(
                ov_model,
                dataset,
                subset_size=len(data),
                ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
                **extra,
            )

    @staticmethod
    def _compress_weights(ov_model: Any, plan: PrecisionPlan, tie: tuple[str, str] | None = None) -> Any:
        """The plan's weight-only MatMuls compressed by NNCF, one pass per format; every other
        compressible operation is in the ignored scope (NNCF would otherwise take them all). An
        embedding ``tie``d to the LM head (``(gather, head)``) follows the head's format."""
        try:
            import nncf
        except ImportError as exc:
            raise QbenchError("weight-only layers on OpenVINO need NNCF: pip install 'qbench[openvino]'") from exc
        Mode = nncf.CompressWeightsMode
        symmetric = plan.options.weight_symmetric is not False
        modes = {
            "int4-weight": Mode.INT4_SYM if symmetric else Mode.INT4_ASYM,
            "int8-weight": Mode.INT8_SYM if symmetric else Mode.INT8_ASYM,
        }
        for precision, mode in modes.items():
            layers = plan.layers_in(precision)
            if not layers:
                continue
            targets = {name for layer in layers for name in _ov_names(ov_model, layer)}
            if tie is not None and tie[1] in layers:
                gathers = (op for op in ov_model.get_ops() if op.get_type_name() == "Gather")
                targets |= {op.get_friendly_name() for op in gathers if _is_part_of(op.get_friendly_name(), tie[0])}
            ignored = [
                op.get_friendly_name()
                for op in ov_model.get_ops()
                if op.get_type_name() in _COMPRESSIBLE_OPS and op.get_friendly_name() not in targets
            ]
            # int4: all_layers and no backup, or NNCF keeps the first and last layers in int8 on its own.
            int4 = {
                "group_size": plan.options.block_size,
                "ratio": 1.0,
                "all_layers": True,
                "backup_mode": nncf.BackupMode.NONE,
            }
            with _quiet_nncf():
                ov_model = nncf.compress_weights(
                    ov_model,
                    mode=mode,
                    ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
                    **(int4 if precision == "int4-weight" else {}),
                )
        return ov_model

    # -- run ---------------------------------------------------------------------------------

    def load(
        self,
        artifact: Artifact,
        threads: int,
        shared_process: bool = True,
        extra_config: dict | None = None,
        kv_cache: str | None = None,
    ) -> Runner:
        """``kv_cache="state"``: a decoder keeps its key/value cache as internal state, as
        OpenVINO's LLM pipeline runs it (``_openvino_state``); ``"inputs"``: through the graph's
        own cache inputs and outputs, copied every call; None: as the plan's ``kv_cache`` option
        stored in the IR says, else ``"state"``."""
        if threads < 1:
            raise QbenchError(f"`threads` must be at least 1, but got {threads}")
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", **(extra_config or {})}
        compiled, config, decoder = self._compile(artifact, threads, config, kv_cache)
        # What the compiled model reports, not what was asked: the values that shaped the latency.
        names = [*config, "ENABLE_CPU_PINNING"] if self.device == "CPU" else list(config)
        names = [name for name in names if name not in (extra_config or {})]
        settings = {"device": self.device, **{k: _property_text(compiled.get_property(k)) for k in names}}
        if decoder is None:
            return OpenVinoRunner(compiled, settings)
        return StatefulRunner(compiled, {**settings, "kv_cache": "state"}, *decoder)

    def _compile(
        self, artifact: Artifact, threads: int, config: dict, kv_cache: str | None = "inputs"
    ) -> tuple[Any, dict, tuple[dict[str, str], list[str]] | None]:
        """``artifact`` compiled on ``threads`` threads in the precision stored in its IR, with
        ``config`` on top; returns the compiled model, the whole config asked for, and, where
        ``kv_cache`` (see ``load``) made a decoder's cache internal state, its cache pairs and
        output names."""
        core = _core()
        ov_model = core.read_model(str(artifact.path))
        hint = ov_model.get_rt_info(_RT_INFO).astype(str) if ov_model.has_rt_info(_RT_INFO) else "f32"
        config = {"INFERENCE_NUM_THREADS": str(threads), "INFERENCE_PRECISION_HINT": hint, **config}
        if kv_cache is None:
            stored = ov_model.has_rt_info(_KV_CACHE_INFO)
            kv_cache = ov_model.get_rt_info(_KV_CACHE_INFO).astype(str) if stored else "state"
        pairs = stateful_pairs(ov_model) if kv_cache == "state" else {}
        decoder = None
        if pairs:
            decoder = (pairs, [port.get_any_name() for port in ov_model.outputs])
            make_stateful(ov_model, pairs)
        try:
            return core.compile_model(ov_model, self.device, config), config, decoder
        except Exception as exc:
            raise QbenchError(
                f"OpenVINO cannot compile {artifact.path.name} for {self.device}: {_openvino_error(exc)}"
            ) from exc

    def load_for_throughput(self, artifact: Artifact, threads: int, streams: int) -> Runner:
        """Compiled with the throughput hint (streams: ``NUM_STREAMS``, 0 for the hint's own
        choice) and run through an ``AsyncInferQueue`` of the compiled model's
        ``OPTIMAL_NUMBER_OF_INFER_REQUESTS``, as ``benchmark_app -hint throughput`` does."""
        config = {"PERFORMANCE_HINT": "THROUGHPUT", **({"NUM_STREAMS": str(streams)} if streams else {})}
        compiled, config, _ = self._compile(artifact, threads, config, kv_cache="inputs")  # requests share no state
        names = [*config, "NUM_STREAMS", "OPTIMAL_NUMBER_OF_INFER_REQUESTS"]
        settings = {
            "device": self.device,
            **{k: _property_text(compiled.get_property(k)) for k in dict.fromkeys(names)},
        }
        return _AsyncRunner(compiled, settings)

    def profile(self, artifact: Artifact, threads: int, feeds: Mapping[str, np.ndarray], runs: int) -> list[OpTime]:
        """OpenVINO's performance counters (``PERF_COUNT``), summed over warm runs per executed
        node; its exec type names the kernel and precision (``brgconv_avx2_I8``)."""
        runner = self.load(artifact, threads, extra_config={"PERF_COUNT": True})
        try:
            for _ in range(PROFILE_WARMUP):
                runner.run(feeds)
            totals: dict[str, list] = {}
            for _ in range(runs):
                runner.run(feeds)
                for info in runner._request.get_profiling_info():
                    if info.status == info.Status.EXECUTED:
                        entry = totals.setdefault(info.node_name, [info.node_type, info.exec_type, 0.0])
                        entry[2] += info.real_time.total_seconds() * 1e3
            structure = _runtime_structure(runner._compiled.get_runtime_model())
        finally:
            runner.close()
        precision = {node: _exec_precision(node_type, exec_type) for node, (node_type, exec_type, _) in totals.items()}
        graph = [(n, precision.get(n, "fp32"), parents, children) for n, (parents, children) in structure.items()]
        between = sandwiched(graph, {n for n, p in precision.items() if p == "int8"})
        ops = []
        for node, (node_type, exec_type, ms) in totals.items():
            if node in between:
                flag = "float between int8 ops"
            elif node_type == "Reorder":
                flag = "layout reorder"
            elif node_type == "FakeQuantize":  # not fused into a neighbour: a quantize pass of its own
                flag = "standalone quantize"
            else:
                flag = ""
            ops.append(OpTime(node, node_type, precision[node], ms / runs, exec_type, flag))
        return ops

    def _realized_tag(self) -> str:
        return self.device

    def _realize(self, artifact: Artifact, plan: PrecisionPlan, model: OnnxModel) -> dict[str, str]:
        runner = self.load(artifact, threads=1)
        try:
            executed = [
                (op.get_rt_info()["originalLayersNames"].astype(str).split(","), _realized_precision(op))
                for op in runner._compiled.get_runtime_model().get_ordered_ops()
                if op.get_rt_info()["layerType"].astype(str) in _COMPUTE_TYPES
            ]
        finally:
            runner.close()
        outputs = {node.name: set(node.output) for node in model.proto.graph.node}
        realized = {}
        for layer in model.layer_names():
            # The executed node lists the operations it fused, by their OpenVINO names; an
            # operation producing a graph output is named after that output instead.
            realized[layer] = next(
                (p for names, p in executed if any(_is_part_of(n, layer) or n in outputs[layer] for n in names)),
                "removed",
            )
        return realized


def _realized_precision(node: Any) -> str:
    """What an executed compute node ran in: float activations times low-bit weights is a
    weight-only layer; otherwise the node's runtime precision."""
    precision = node.get_rt_info()["runtimePrecision"].astype(str)
    activation = node.inputs()[0].get_element_type().get_type_name()
    if precision in _WEIGHT_ONLY_TYPES and activation in _FLOAT_TYPES:
        return _WEIGHT_ONLY_TYPES[precision]
    return _RUNTIME_PRECISIONS.get(precision, precision)


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF logs a bit-width table at INFO and draws progress bars on stdout, where qbench prints
    its tables; its warnings still get through."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
