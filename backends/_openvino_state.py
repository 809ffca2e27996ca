"""A decoder on OpenVINO as its LLM pipeline runs one: stateful, the key/value cache kept inside.

OpenVINO's ``MakeStateful`` transformation turns each cache input into a ``ReadValue`` of a
variable and each present output into the ``Assign`` that updates it, so a decode step takes only
the new token ids and the plugin appends to the cache it holds, instead of copying the whole cache
in and out every token (what the graph's own inputs and outputs do).

The runner keeps qbench's decoder protocol: feeds carry the cache arrays, outputs the present
caches. A cache array the runner has not seen is copied into the state; for the present outputs
it returns placeholders of the right shape without memory (``as_strided`` with zero strides), and
a later call fed those same placeholders (a generation's next step) runs on the state as it is.
``rewind``, between timed calls, puts back the cache the timed feeds describe, so every timed
decode call sees the same cached length.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from qbench.backends._base import Runner
from qbench.decoder import cache_pairs


def stateful_pairs(ov_model: Any) -> dict[str, str]:
    """Cache input -> present output of an OpenVINO model of a decoder; empty when it is none."""
    inputs = [(port.get_any_name(), port.get_partial_shape().rank.get_length()) for port in ov_model.inputs]
    return cache_pairs(inputs, [port.get_any_name() for port in ov_model.outputs])


def make_stateful(ov_model: Any, pairs: Mapping[str, str]) -> None:
    """``ov_model`` with the caches in ``pairs`` as internal state, in place."""
    from openvino._offline_transformations import apply_make_stateful_transformation

    apply_make_stateful_transformation(ov_model, dict(pairs))


def _placeholder(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An array of ``shape`` that owns no memory (every element is one zero), read-only."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=shape, strides=(0,) * len(shape), writeable=False)


class StatefulRunner(Runner):
    """A compiled stateful decoder; ``outputs`` are the original model's output names, in order."""

    def __init__(
        self, compiled: Any, settings: Mapping[str, Any], pairs: Mapping[str, str], outputs: list[str]
    ) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._pairs = dict(pairs)
        self._outputs = outputs
        self._kept = {port.get_any_name(): i for i, port in enumerate(compiled.outputs)}
        # The new tokens' ids: the integer input [batch, new] that is not the mask [batch, total].
        self._tokens = next(
            port.get_any_name()
            for port in compiled.inputs
            if port.get_partial_shape().rank.get_length() == 2
            and port.get_element_type().is_integral()
            and "mask" not in port.get_any_name()
        )
        # MakeStateful names each variable after its input and output: "past.0.key" + "present.0.key".
        self._states = {
            next(p for p in self._pairs if state.name == p + self._pairs[p]): state
            for state in self._request.query_state()
        }
        #: Cache input -> the array the state now holds (a placeholder after a call).
        self._held: dict[str, np.ndarray] = {}
        #: The real cache arrays of the last call's feeds: what ``rewind`` restores.
        self._rewind_to: dict[str, np.ndarray] | None = None
        self.settings = dict(settings)

    def _load_state(self, caches: Mapping[str, np.ndarray]) -> None:
        import openvino

        for name, array in caches.items():
            self._states[name].state = openvino.Tensor(np.ascontiguousarray(array))
        self._held = dict(caches)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        caches = {name: feeds[name] for name in self._pairs}
        if any(self._held.get(name) is not array for name, array in caches.items()):
            self._load_state(caches)
            self._rewind_to = caches
        elif self._rewind_to is not None and any(caches[n] is not self._rewind_to[n] for n in caches):
            self._rewind_to = None  # a generation's step: nothing to put back
        self._request.infer({name: array for name, array in feeds.items() if name not in self._pairs})
        values = {name: self._request.get_output_tensor(i).data.copy() for name, i in self._kept.items()}
        new = feeds[self._tokens].shape[1]
        for name, present in self._pairs.items():
            batch, heads, cached, width = caches[name].shape
            values[present] = self._held[name] = _placeholder((batch, heads, cached + new, width), caches[name].dtype)
        return [values[name] for name in self._outputs]

    def rewind(self) -> None:
        if self._rewind_to is not None:
            self._load_state(self._rewind_to)

    def close(self) -> None:
        self._request = self._compiled = None
        self._states, self._held, self._rewind_to = {}, {}, None
