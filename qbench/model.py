"""Loading an ONNX model: inputs, quantizable layers with stable names, a content hash."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import pathlib
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

import onnx
from google.protobuf.message import DecodeError

from qbench.errors import QbenchError, first_line

log = logging.getLogger(__name__)

# Ops whose weights and activations a precision plan can lower; the unit of a plan is one node.
QUANTIZABLE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
# QDQ with per-channel weights needs opset 13. Older models (PaddleOCR exports are opset 11/12)
# are upgraded on load with ONNX's version converter, which is exact for them.
MIN_OPSET = 13

_ONNX_TO_NUMPY = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.BOOL: "bool",
}


@dataclass(frozen=True)
class InputSpec:
    """One graph input: numpy dtype name and shape, with a name (str) or None for dynamic dims."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True)
class Layer:
    """A quantizable node, named by its (possibly assigned) ONNX node name."""

    name: str
    op_type: str
    #: Whether the second input is an initializer (a weight-only format can compress it).
    constant_weight: bool = False

    @property
    def takes_weight_only(self) -> bool:
        """Whether weight-only formats (int4-weight, int8-weight) apply: a MatMul with constant weights."""
        return self.op_type == "MatMul" and self.constant_weight


class OnnxModel:
    """An ONNX model as qbench sees it. Nameless nodes get stable names (``OpType_index``).

    ``proto`` is the named graph every backend builds from; ``content_hash`` hashes the file
    bytes, so the same file always keys the same cache entries and leaderboard rows. A model whose
    weights are over 2 GiB keeps them on disk: ``proto``'s tensors refer to the files in
    ``weights_from`` (its folder), and ``save`` copies them across one tensor at a time.
    """

    def __init__(
        self,
        proto: onnx.ModelProto,
        name: str,
        content_hash: str,
        path: pathlib.Path,
        weights_from: pathlib.Path | None = None,
    ):
        self.proto = proto
        self.weights_from = weights_from
        self.name = name
        self.content_hash = content_hash
        self.path = path
        self.opset = _default_opset(proto)
        initializers = {init.name for init in proto.graph.initializer}
        self.inputs = tuple(_input_spec(v) for v in proto.graph.input if v.name not in initializers)
        self.output_names = tuple(v.name for v in proto.graph.output)
        self.layers = tuple(
            Layer(n.name, n.op_type, len(n.input) > 1 and n.input[1] in initializers)
            for n in proto.graph.node
            if n.op_type in QUANTIZABLE_OPS
        )

    @classmethod
    def load(cls, path: str | pathlib.Path) -> OnnxModel:
        given = pathlib.Path(path)
        path = model_file(given)
        if not path.is_file():
            raise QbenchError(f"model file not found: {path} (pass the path of an .onnx file)")
        raw = path.read_bytes()
        try:
            proto = onnx.load_model_from_string(raw)
        except (DecodeError, RuntimeWarning, ValueError) as exc:
            raise QbenchError(f"{path} is not an ONNX model ({exc}); export your model to ONNX first") from exc
        if not proto.graph.node:
            raise QbenchError(f"{path} is not an ONNX model: it holds no graph nodes")
        digest = hashlib.sha256(raw)
        data_files = _external_data_files(proto, path)
        for data_file in data_files:
            with data_file.open("rb") as handle:
                while chunk := handle.read(1 << 24):
                    digest.update(chunk)
        weights_from = None
        if sum(f.stat().st_size for f in data_files) > MAX_INLINE_BYTES:
            weights_from = path.resolve().parent  # read as needed, never all at once
        elif data_files:
            from onnx import external_data_helper

            external_data_helper.load_external_data_for_model(proto, str(path.resolve().parent))
        opset = _default_opset(proto)
        if opset < MIN_OPSET:
            proto = _upgrade_opset(proto, opset, path)
        newest = onnx.defs.onnx_opset_version()
        if opset > newest:
            raise QbenchError(
                f"{path} uses ONNX opset {opset}, newer than this onnx package supports ({newest}); "
                "upgrade onnx and onnxruntime or export with an older opset"
            )
        _name_nodes(proto)
        name = given.name if given.is_dir() else path.stem
        return cls(proto, name, digest.hexdigest()[:16], path, weights_from)

    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def input_spec(self, name: str) -> InputSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def with_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> OnnxModel:
        """Fix dynamic dimensions (``--shape``); a static dimension that disagrees is an error."""
        for name, shape in shapes.items():
            try:
                spec = self.input_spec(name)
            except KeyError:
                raise QbenchError(
                    f"--shape names input {name!r}, but the model's inputs are {', '.join(s.name for s in self.inputs)}"
                ) from None
            if len(shape) != len(spec.shape):
                raise QbenchError(f"--shape {name} has {len(shape)} dims, but input is {spec.describe()}")
            for have, want in zip(spec.shape, shape, strict=True):
                if isinstance(have, int) and have != want:
                    raise QbenchError(f"--shape {name}={list(shape)} conflicts with fixed input {spec.describe()}")
        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        for value in proto.graph.input:
            if value.name in shapes:
                for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name], strict=True):
                    dim.Clear()
                    dim.dim_value = size
        return OnnxModel(proto, self.name, self.content_hash, self.path, self.weights_from)

    @functools.cached_property
    def large(self) -> bool:
        """Whether the model is over protobuf's 2 GiB limit: files written from it keep their
        weights in a side file (``external_data_name``), and ONNX Runtime's tools must be told."""
        return is_large(self.proto)

    def save(self, path: pathlib.Path) -> None:
        """Write the named graph (the form every backend and the calibrator read)."""
        save_onnx(self.proto, path, self.weights_from)


#: Protobuf cannot serialize a message over 2 GiB: bigger models keep their weights in side files.
MAX_INLINE_BYTES = 2**31 - 2**20
#: Tensors at least this big go to the side file of a large model (ONNX Runtime's quantizer's
#: threshold); smaller ones stay in the graph.
_EXTERNAL_THRESHOLD = 1024


#: ``Path.with_suffix`` of an ``.onnx`` file's side file of weights (``external_data_name``).
ONNX_DATA_SUFFIX = ".onnx.data"


def external_data_name(path: pathlib.Path) -> str:
    """The side file holding the weights of a large model written to ``path`` (as ONNX Runtime's
    quantizer names it, so its outputs and ours look alike): ``model.onnx.data``."""
    return path.name + ".data"


def copy_onnx(source: pathlib.Path, target: pathlib.Path) -> None:
    """Copy a model file. Its side file of weights (``external_data_name``) is copied under the
    target's name, and the copy's graph names it."""
    from onnx import external_data_helper

    data = source.with_name(external_data_name(source))
    if not data.exists():
        target.write_bytes(source.read_bytes())
        return
    proto = onnx.load(str(source), load_external_data=False)
    for tensor in external_data_helper._get_all_tensors(proto):
        if external_data_helper.uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value != data.name:
                    raise QbenchError(f"{source}: tensor {tensor.name!r} is in {entry.value!r}, not in {data.name}")
                if entry.key == "location":
                    entry.value = external_data_name(target)
    # a copy, not a hard link: onnx refuses weights in a file with several links
    shutil.copyfile(data, target.with_name(external_data_name(target)))
    onnx.save_model(proto, str(target))


def _external(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def weight_bytes(tensor: onnx.TensorProto) -> int:
    """The bytes of a tensor's values (about: its serialized size, which does not copy them)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return int(_external(tensor).get("length") or 0)
    return tensor.ByteSize()


def is_large(proto: onnx.ModelProto) -> bool:
    """Whether ``proto``'s weights (held, or referred to on disk) exceed what one protobuf
    message can hold."""
    referenced = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    return referenced or sum(weight_bytes(t) for t in proto.graph.initializer) > MAX_INLINE_BYTES


def _point_at(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    tensor.data_location = onnx.TensorProto.EXTERNAL


def _copy_range(source: pathlib.Path, offset: int, length: int | None, target) -> int:
    """Append ``length`` bytes of ``source`` from ``offset`` (to its end when None) to ``target``."""
    copied = 0
    with source.open("rb") as handle:
        handle.seek(offset)
        while length is None or copied < length:
            chunk = handle.read(1 << 24 if length is None else min(1 << 24, length - copied))
            if not chunk:
                break
            target.write(chunk)
            copied += len(chunk)
    if length is not None and copied != length:
        raise QbenchError(f"{source} ends before the {length} bytes at offset {offset} a tensor is stored in")
    return copied


def save_onnx(proto: onnx.ModelProto, path: pathlib.Path, weights_from: pathlib.Path | None = None) -> None:
    """Write ``proto`` to ``path``. A model over 2 GiB keeps its weights in ``external_data_name``
    beside it: tensors held in memory are written there, tensors that refer to files in
    ``weights_from`` (a large model as read) are copied there, one at a time. ``proto`` is left
    as it was; one tensor at a time is copied in memory, never the whole model."""
    path = pathlib.Path(path)
    if not is_large(proto):
        onnx.save_model(proto, str(path))
        return
    location = external_data_name(path)
    #: (tensor, its references before, or None for weights it held, offset, length)
    moved: list[tuple[onnx.TensorProto, list[tuple[str, str]] | None, int, int]] = []
    try:
        with open(path.with_name(location), "wb") as data:
            for tensor in proto.graph.initializer:
                held = tensor.data_location != onnx.TensorProto.EXTERNAL
                # (values in typed fields, not raw_data, stay in the graph: small ones, in practice)
                if held and (not tensor.HasField("raw_data") or tensor.ByteSize() < _EXTERNAL_THRESHOLD):
                    continue
                data.seek(-data.tell() % 4096, 1)  # page-aligned, so runtimes can map the weights
                offset = data.tell()
                if held:
                    raw = tensor.raw_data
                    data.write(raw)
                    moved.append((tensor, None, offset, len(raw)))
                    del raw
                    tensor.ClearField("raw_data")
                else:
                    if weights_from is None:
                        raise QbenchError(f"tensor {tensor.name!r} refers to external data, but no folder holds it")
                    info = _external(tensor)
                    length = int(info["length"]) if info.get("length") else None
                    length = _copy_range(weights_from / info["location"], int(info.get("offset") or 0), length, data)
                    moved.append((tensor, [(e.key, e.value) for e in tensor.external_data], offset, length))
                _point_at(tensor, location, offset, moved[-1][3])
        onnx.save_model(proto, str(path))
    finally:  # as it was: references back, held weights read back from the file just written
        with contextlib.ExitStack() as stack:
            data = None
            for tensor, references, offset, length in moved:
                del tensor.external_data[:]
                if references is not None:
                    for key, value in references:
                        tensor.external_data.add(key=key, value=value)
                    continue
                data = data or stack.enter_context(open(path.with_name(location), "rb"))
                data.seek(offset)
                tensor.raw_data = data.read(length)
                tensor.ClearField("data_location")


def model_file(path: str | pathlib.Path) -> pathlib.Path:
    """The ONNX file ``path`` names: itself, or in a model folder the decoder its
    ``genai_config.json`` names (onnxruntime-genai's model builder writes one), else its only
    ``.onnx`` file."""
    path = pathlib.Path(path)
    if not path.is_dir():
        return path
    config = path / "genai_config.json"
    if config.is_file():
        try:
            name = json.loads(config.read_text())["model"]["decoder"]["filename"]
        except (ValueError, KeyError, TypeError) as exc:
            raise QbenchError(f"{config} names no decoder file (model.decoder.filename): {exc!r}") from None
        inside = path.resolve()
        if not isinstance(name, str) or not name or inside not in (inside / name).resolve().parents:
            # an absolute path, "..", or a link out of the folder: refused like escaping external data
            raise QbenchError(
                f"{config}: model.decoder.filename {name!r} must name a file inside the model folder {path}"
            )
        return path / name
    found = sorted(path.glob("*.onnx"))
    if len(found) != 1:
        raise QbenchError(
            f"model folder {path} holds {len(found)} .onnx files; pass the file itself, or a folder with one "
            "(or with onnxruntime-genai's genai_config.json)"
        )
    return found[0]


def _external_data_files(proto: onnx.ModelProto, path: pathlib.Path) -> list[pathlib.Path]:
    """The files beside the model that hold its weights (``external_data``). A location that leaves the
    model's folder (absolute, ``..``, a link elsewhere) is refused, as ONNX Runtime does."""
    from onnx import external_data_helper

    tensors = [t for t in external_data_helper._get_all_tensors(proto) if external_data_helper.uses_external_data(t)]
    if not tensors:
        return []
    folder = path.resolve().parent
    files = []
    for tensor in tensors:
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if (
            pathlib.PurePath(location).is_absolute()
            or ".." in pathlib.PurePath(location).parts
            or not target.is_relative_to(folder)
        ):
            raise QbenchError(
                f"{path}: tensor {tensor.name!r} points at external data {location!r} outside the model's folder; "
                "keep weight files beside the model and name them relative to it"
            )
        if not target.is_file():
            raise QbenchError(
                f"{path}: tensor {tensor.name!r} keeps its weights in {location!r}, missing next to the model; "
                "copy the .onnx file together with its data file(s)"
            )
        files.append(target)
    return sorted(set(files))


def _upgrade_opset(proto: onnx.ModelProto, opset: int, path: pathlib.Path) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        upgraded = version_converter.convert_version(proto, MIN_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeErrors naming the op it cannot adapt
        raise QbenchError(
            f"{path} uses ONNX opset {opset} and could not be upgraded to {MIN_OPSET} "
            f"({first_line(exc)}); re-export it with opset {MIN_OPSET} or newer"
        ) from exc
    log.info("%s: upgraded ONNX opset %d to %d for QDQ quantization", path.name, opset, MIN_OPSET)
    return upgraded


def _default_opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def _input_spec(value: onnx.ValueInfoProto) -> InputSpec:
    tensor = value.type.tensor_type
    dtype = _ONNX_TO_NUMPY.get(tensor.elem_type, f"onnx-type-{tensor.elem_type}")
    shape: list[int | str | None] = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value"):
            shape.append(dim.dim_value)
        else:
            shape.append(dim.dim_param or None)
    return InputSpec(value.name, dtype, tuple(shape))


def _name_nodes(proto: onnx.ModelProto) -> None:
    """Give nameless nodes the name ``OpType_index`` and make duplicates unique, in place."""
    seen: set[str] = set()
    for index, node in enumerate(proto.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        while name in seen:
            name = f"{name}_{index}"
        node.name = name
        seen.add(name)
