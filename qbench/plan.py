"""Precision plans: which layers run in which precision, plus plan-wide quantizer options."""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from qbench.errors import QbenchError

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8-dynamic", "fp8", "int4-weight", "int8-weight")
#: Weight-only formats: the weights of a MatMul with constant weights are stored in 4 or 8 bits
#: (per block of ``block_size`` input channels) and activations stay float, as BitsAndBytes does.
WEIGHT_ONLY_BITS = {"int4-weight": 4, "int8-weight": 8}
BLOCK_SIZES = (32, 64, 128)
#: How the tuner groups layers into choices: one per layer, or one per repeated position (the
#: q_proj of every decoder block together), which keeps a 30-block LLM's 271 layers to 10 choices.
GROUPINGS = ("layer", "repeated")
FLOAT_PRECISIONS = frozenset({"fp32", "fp16", "bf16"})
CALIBRATED_PRECISIONS = ("int8", "fp8")
PLAN_FORMAT_VERSION = 1
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
INT8_TYPES = ("int8", "uint8")
#: "qdq": qbench's per-layer QDQ graph (ONNX Runtime's quantizer, by exclusion); "nncf": NNCF with
#: the plan's float layers ignored (OpenVINO); "native": the runtime's own one-line whole-model
#: quantization with its documented defaults (the floor every plan is measured against).
QUANTIZERS = ("qdq", "nncf", "native")


@dataclass(frozen=True)
class PlanOptions:
    """Plan-wide quantizer options. ``None`` means "the backend's default for this machine".

    The fields are the options every backend shares; ``runtime`` holds the options one runtime
    adds, which its adapter declares (``Backend.Options``) and checks (``Backend.check_plan``).
    Read any option with ``get`` and change any with ``updated``.
    """

    activation_type: str | None = None
    weight_type: str | None = None
    per_channel: bool | None = None
    reduce_range: bool | None = None
    #: Activation zero points pinned to 0 (QDQ writer); signed-int8 runtimes may need it.
    activation_symmetric: bool | None = None
    calibration: str = "minmax"
    #: Who writes the int8 graph: "qdq" (ONNX Runtime's quantizer, every backend) or "nncf" (OpenVINO).
    quantizer: str | None = None
    #: Weight-only layers: input channels per quantization block.
    block_size: int | None = None
    #: Weight-only layers: symmetric blocks (a scale each) or asymmetric (a scale and a zero point
    #: each, as GGUF's Q4_1), which fits a block whose values are not centred on zero.
    weight_symmetric: bool | None = None
    #: One runtime's own options, as sorted ``(name, value)`` pairs (a mapping is accepted).
    runtime: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        pairs = self.runtime.items() if isinstance(self.runtime, Mapping) else self.runtime
        try:
            runtime = tuple(sorted((str(k), v) for k, v in pairs if v is not None))
        except (TypeError, ValueError):
            raise QbenchError(f"plan runtime options must map names to values, but got {self.runtime!r}") from None
        clash = {name for name, _ in runtime} & SHARED_OPTIONS
        if clash:
            raise QbenchError(f"plan option(s) {sorted(clash)} are shared options, not runtime options")
        object.__setattr__(self, "runtime", runtime)
        for name in ("activation_type", "weight_type"):
            value = getattr(self, name)
            if value is not None and value not in INT8_TYPES:
                raise QbenchError(f"plan option `{name}` must be one of {INT8_TYPES}, but got {value!r}")
        for name in ("per_channel", "reduce_range", "activation_symmetric", "weight_symmetric"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise QbenchError(f"plan option `{name}` must be true or false, but got {value!r}")
        for name, allowed in (
            ("calibration", CALIBRATION_METHODS),
            ("quantizer", (None, *QUANTIZERS)),
            ("block_size", (None, *BLOCK_SIZES)),
        ):
            value = getattr(self, name)
            if value not in allowed:
                choices = tuple(a for a in allowed if a is not None)
                raise QbenchError(f"plan option `{name}` must be one of {choices}, but got {value!r}")

    def get(self, name: str) -> Any:
        """A shared or runtime option's value; None when unset."""
        return getattr(self, name) if name in SHARED_OPTIONS else dict(self.runtime).get(name)

    def updated(self, **changes: Any) -> PlanOptions:
        shared = {k: v for k, v in changes.items() if k in SHARED_OPTIONS}
        runtime = {**dict(self.runtime), **{k: v for k, v in changes.items() if k not in SHARED_OPTIONS}}
        return replace(self, **shared, runtime=runtime)

    def as_dict(self) -> dict[str, Any]:
        """Every option by name, shared and runtime, flat (the plan file's ``options``)."""
        flat = {name: getattr(self, name) for name in sorted(SHARED_OPTIONS)}
        return {**flat, **dict(self.runtime)}

    @classmethod
    def from_flat(cls, options: Mapping[str, Any]) -> PlanOptions:
        """The inverse of ``as_dict``: names that are not shared options are runtime options."""
        shared = {k: v for k, v in options.items() if k in SHARED_OPTIONS}
        return cls(**shared, runtime={k: v for k, v in options.items() if k not in SHARED_OPTIONS})


SHARED_OPTIONS = frozenset(f.name for f in fields(PlanOptions) if f.name != "runtime")


@dataclass(frozen=True)
class TunedOn:
    """Where and for what a plan was tuned. It travels in the plan file (``"tuned"``), so a bench
    of the plan on another machine can say whether the budget and the speedup still hold there.
    Not part of the plan's identity: the same precisions re-checked elsewhere are the same plan."""

    machine_hash: str
    cpu: str  # the CPU model as the fingerprint names it
    isa: str  # its int8 capability in words (``machine.isa_summary``)
    backend: str
    model_hash: str
    metric: str
    max_drop: float  # the budget, on ``metric``
    workload: str  # what one timed call ran ("batch", "decode:128", …)
    scenario: str
    speedup: float  # against fp32 there, paired (the tune's final figure)
    drop: float  # on the held-out data there

    def __post_init__(self) -> None:
        for name in ("machine_hash", "cpu", "isa", "backend", "model_hash", "metric", "workload", "scenario"):
            value = getattr(self, name)
            if not isinstance(value, str) or not 0 < len(value) <= MAX_PLAN_NAME or not value.isprintable():
                raise QbenchError(f'"tuned"."{name}" must be 1 to {MAX_PLAN_NAME} printable characters, not {value!r}')
        for name, low, high in (("max_drop", 0.0, 1.0), ("speedup", 1e-6, 1e6), ("drop", -1e6, 1e6)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise QbenchError(f'"tuned"."{name}" must be a number from {low:g} to {high:g}, not {value!r}')

    @classmethod
    def from_dict(cls, data: Any, source: str) -> TunedOn:
        names = [f.name for f in fields(cls)]
        if not isinstance(data, Mapping) or set(data) != set(names):
            raise QbenchError(f'{source}: "tuned" must be an object with exactly the keys {", ".join(names)}')
        try:
            return cls(**data)
        except QbenchError as exc:
            raise QbenchError(f"{source}: {exc}") from None

    def budget_text(self) -> str:
        return f"{self.metric}:{self.max_drop:g}"


@dataclass(frozen=True)
class PrecisionPlan:
    """An immutable map from layer name to precision; layers it does not name run in fp32.

    ``name`` is a label for tables and is not part of the content hash, so two plans that
    assign the same precisions with the same options share artifacts and leaderboard keys.
    """

    layers: Mapping[str, str] = field(default_factory=dict)
    options: PlanOptions = field(default_factory=PlanOptions)
    name: str = "custom"
    tuned: TunedOn | None = field(default=None, compare=False)  # where it was tuned, from a tune's plan file

    def __post_init__(self) -> None:
        bad = {layer: p for layer, p in self.layers.items() if p not in PRECISIONS}
        if bad:
            layer, precision = next(iter(bad.items()))
            raise QbenchError(
                f"plan {self.name!r}: layer {layer!r} has unknown precision {precision!r}; use one of {PRECISIONS}"
            )
        # Drop fp32 entries (the default) so equal plans hash equal, then freeze.
        lowered = {k: v for k, v in sorted(self.layers.items()) if v != "fp32"}
        object.__setattr__(self, "layers", MappingProxyType(lowered))

    @classmethod
    def uniform(
        cls, layer_names: Iterable[str], precision: str, name: str | None = None, options: PlanOptions | None = None
    ) -> PrecisionPlan:
        return cls({layer: precision for layer in layer_names}, options or PlanOptions(), name or precision)

    def precision(self, layer: str) -> str:
        return self.layers.get(layer, "fp32")

    def layers_in(self, *precisions: str) -> list[str]:
        return [layer for layer, p in self.layers.items() if p in precisions]

    @property
    def is_native(self) -> bool:
        """Whether the runtime's own whole-model quantizer builds this plan (recipe native-int8)."""
        return self.options.quantizer == "native"

    @property
    def needs_calibration(self) -> bool:
        """Whether any layer is statically quantized (int8 or fp8: activation ranges needed)."""
        return bool(self.layers_in(*CALIBRATED_PRECISIONS))

    def with_options(self, **changes: Any) -> PrecisionPlan:
        return replace(self, options=self.options.updated(**changes))

    def to_dict(self) -> dict[str, Any]:
        data = {
            "qbench_plan": PLAN_FORMAT_VERSION,
            "name": self.name,
            "layers": dict(self.layers),
            "options": self.options.as_dict(),
        }
        if self.tuned is not None:
            data["tuned"] = asdict(self.tuned)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "plan") -> PrecisionPlan:
        if not isinstance(data, Mapping) or data.get("qbench_plan") != PLAN_FORMAT_VERSION:
            raise QbenchError(
                f'{source} is not a qbench plan: expected a JSON object with "qbench_plan": {PLAN_FORMAT_VERSION}'
            )
        unknown = sorted(set(data) - {"qbench_plan", "name", "layers", "options", "tuned"})
        if unknown:
            raise QbenchError(
                f'{source}: unknown key {json.dumps(unknown[0])}; a plan has "qbench_plan", "name", "layers", '
                '"options" and, from a tune, "tuned"'
            )
        layers = data.get("layers", {})
        if not isinstance(layers, Mapping):
            raise QbenchError(f'{source}: "layers" must map layer names to precisions')
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in layers.items()):
            raise QbenchError(f'{source}: "layers" must map layer names to precision names (strings)')
        options = data.get("options", {})
        if not isinstance(options, Mapping):
            raise QbenchError(
                f'{source}: "options" must be a JSON object of plan options, e.g. {{"per_channel": true}}'
            )
        # Names that are not shared options are runtime options: the backend checks them.
        name = data.get("name", pathlib.Path(source).stem)
        if not isinstance(name, str) or not 0 < len(name) <= MAX_PLAN_NAME or not name.isprintable():
            raise QbenchError(
                f'{source}: "name" must be 1 to {MAX_PLAN_NAME} printable characters (no control or direction '
                "characters: it is printed in every table)"
            )
        tuned = TunedOn.from_dict(data["tuned"], source) if "tuned" in data else None
        return cls(dict(layers), PlanOptions.from_flat(options), name, tuned)

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> PrecisionPlan:
        if len(text) > MAX_PLAN_CHARS:
            raise QbenchError(f"{source} holds {len(text):,} characters; a plan is at most {MAX_PLAN_CHARS:,}")
        try:
            data = json.loads(text, object_pairs_hook=lambda pairs: _unique_keys(pairs, source))
        except json.JSONDecodeError as exc:
            raise QbenchError(f"{source} is not valid JSON: {exc}") from exc
        except RecursionError:
            raise QbenchError(f"{source} is nested too deeply to be a qbench plan") from None
        return cls.from_dict(data, source)

    @property
    def content_hash(self) -> str:
        payload = self.to_dict()
        del payload["name"]
        payload.pop("tuned", None)
        # Unset options are left out, so adding an option does not change existing plans' hashes.
        payload["options"] = {k: v for k, v in payload["options"].items() if v is not None}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


MAX_PLAN_NAME = 200  # plan names label every table row


def _unique_keys(pairs: list[tuple[str, Any]], source: str) -> dict[str, Any]:
    """A JSON object whose keys repeat is refused: the last value would silently win."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise QbenchError(f"{source}: key {json.dumps(key)} appears twice; give it once")
        seen.add(key)
    return dict(pairs)


MAX_PLAN_CHARS = 16 * 2**20  # a plan for a 100k-layer model is a few MB

BUILTIN_RECIPES = ("fp32", "int8", "native-int8", "int8-dynamic", "int4-weight", "int8-weight")


def recipe_plan(recipe: str, layers: Iterable[tuple[str, str] | tuple[str, str, bool]]) -> PrecisionPlan:
    """A named recipe or a plan file, for a model whose layers are ``(name, op_type)`` pairs,
    or ``(name, op_type, constant_weight)`` triples (weight-only recipes need the third)."""
    layers = [(layer[0], layer[1], layer[2] if len(layer) > 2 else False) for layer in layers]
    if recipe == "fp32":
        return PrecisionPlan({}, name="fp32")
    if recipe == "int8":
        return PrecisionPlan.uniform((name for name, _, _ in layers), "int8", "int8")
    if recipe == "native-int8":
        return PrecisionPlan.uniform(
            (name for name, _, _ in layers), "int8", "native-int8", PlanOptions(quantizer="native")
        )
    if recipe == "int8-dynamic":
        matmuls = (name for name, op, _ in layers if op in ("MatMul", "Gemm"))
        return PrecisionPlan.uniform(matmuls, "int8-dynamic", "int8-dynamic")
    if recipe in WEIGHT_ONLY_BITS:
        weighted = [name for name, op, constant in layers if op == "MatMul" and constant]
        if not weighted:
            raise QbenchError(f"recipe {recipe}: the model has no MatMul with constant weights to compress")
        return PrecisionPlan.uniform(weighted, recipe, recipe)
    path = pathlib.Path(recipe)
    if path.suffix == ".json":
        if not path.is_file():
            raise QbenchError(f"plan file not found: {path}")
        if path.stat().st_size > MAX_PLAN_CHARS:
            raise QbenchError(f"{path} is {path.stat().st_size:,} bytes; a plan file is at most {MAX_PLAN_CHARS:,}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise QbenchError(
                f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save the plan as UTF-8"
            ) from None
        return PrecisionPlan.from_json(text, str(path))
    raise QbenchError(
        f"unknown recipe {recipe!r}: use one of {', '.join(BUILTIN_RECIPES)} or a plan file ending in .json"
    )


def check_plan_layers(plan: PrecisionPlan, layer_names: Iterable[str]) -> None:
    unknown = sorted(set(plan.layers) - set(layer_names))
    if unknown:
        shown = ", ".join(unknown[:3]) + (" …" if len(unknown) > 3 else "")
        raise QbenchError(
            f"plan {plan.name!r} names {len(unknown)} layer(s) the model does not have ({shown}); "
            "`qbench layers MODEL` lists the model's quantizable layers"
        )
