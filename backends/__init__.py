"""Runtime adapters and their registry.

Third-party backends register a ``Backend`` subclass under the ``qbench.backends`` entry-point
group; it is checked when first looked up.
"""

from __future__ import annotations

if __name__ != "qbench.backends":  # a source checkout on sys.path makes `import backends` possible
    raise ImportError("import qbench.backends, not backends: the folder installs as qbench.backends")

import inspect
from importlib import metadata

from qbench.backends._base import Artifact, Availability, Backend, Calibration, Runner
from qbench.backends._onnxruntime import OnnxRuntimeBackend
from qbench.backends._openvino import OpenVinoBackend
from qbench.backends._tensorrt import TensorRtBackend
from qbench.errors import QbenchError

__all__ = ["Artifact", "Availability", "Backend", "Calibration", "Runner", "all_backends", "get_backend"]

_BUILTIN: dict[str, type[Backend]] = {cls.name: cls for cls in (OnnxRuntimeBackend, OpenVinoBackend, TensorRtBackend)}
ENTRY_POINT_GROUP = "qbench.backends"


def _registry() -> dict[str, type[Backend]]:
    found = dict(_BUILTIN)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        cls = entry.load()
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise QbenchError(
                f"entry point {entry.name!r} in {ENTRY_POINT_GROUP!r} must name a Backend subclass, got {cls!r}"
            )
        if getattr(cls, "name", None) != entry.name:
            raise QbenchError(
                f"backend plugin {cls.__qualname__} must set name = {entry.name!r} to match its entry point"
            )
        found.setdefault(entry.name, cls)
    return found


def all_backends() -> list[Backend]:
    return [cls() for cls in _registry().values()]


def get_backend(name: str) -> Backend:
    """The backend called ``name``; ``openvino:GPU`` names OpenVINO on its GPU device."""
    registry = _registry()
    base, _, device = name.partition(":")
    if base not in registry:
        raise QbenchError(
            f"unknown backend {base!r}: choose one of {', '.join(registry)} (`qbench backends` lists them)"
        )
    if not device:
        return registry[base]()
    if "device" not in inspect.signature(registry[base]).parameters:
        raise QbenchError(f"backend {base!r} has no devices to choose from; use --backend {base}")
    return registry[base](device=device)
