"""Decoder LLM graphs as exporters write them, recognised by their inputs, and fed from token ids.

A decoder takes token ids and the key/value cache of the tokens before them, plus, depending on
who exported it, some bookkeeping the runtime needs:

- qbench's zoo graph: ``input_ids`` and ``past.<i>.key``/``.value`` only;
- optimum / transformers exports: ``attention_mask`` ``[batch, past + new]`` and often
  ``position_ids`` ``[batch, new]``, the cache as ``past_key_values.<i>.key``/``.value``;
- onnxruntime-genai's model builder (``GroupQueryAttention``): ``attention_mask`` only, or
  ``seqlens_k`` ``[batch]`` (int32, total length minus one) and ``total_sequence_length`` (an
  int32 scalar) when the graph takes them directly.

``DecoderInputs.of(model)`` finds these roles; ``feeds`` writes every input of one call from the
token ids and the cache length, so data files hold token ids and labels only, whatever graph they
score.

A ``GroupQueryAttention`` graph can also run as onnxruntime-genai runs it: past and present
cache are one buffer, with room for the new token, that the op appends to in place (no copy of
the cache per token). Decode feeds for such a graph are ``SharedCacheFeeds``, which tell a runtime
that can bind outputs to input buffers (ONNX Runtime) to do so.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from qbench.errors import QbenchError
from qbench.model import InputSpec, OnnxModel

_CACHE_PREFIXES = ("past", "cache")
_ROLES = ("attention_mask", "position_ids", "seqlens_k", "total_sequence_length")


class SharedCacheFeeds(dict):
    """Feeds whose cache inputs are also their present outputs' buffers: ``shared`` maps each
    cache input to its output. A runtime that cannot bind outputs runs them as plain feeds."""

    def __init__(self, feeds: dict[str, np.ndarray], shared: dict[str, str]) -> None:
        super().__init__(feeds)
        self.shared = shared


@dataclass(frozen=True)
class DecoderInputs:
    """The roles of a decoder's inputs; ``caches`` are ``[batch, kv_heads, tokens, head_dim]``."""

    tokens: InputSpec
    caches: tuple[InputSpec, ...]
    attention_mask: InputSpec | None = None
    position_ids: InputSpec | None = None
    seqlens_k: InputSpec | None = None
    total_sequence_length: InputSpec | None = None
    #: Cache input -> its present output, where past and present may share one buffer (a
    #: GroupQueryAttention graph); empty for graphs that concatenate the cache.
    shared_outputs: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, model: OnnxModel) -> DecoderInputs | None:
        """The decoder roles of ``model``'s inputs, or None when it is not a decoder with a cache."""
        caches = tuple(s for s in model.inputs if s.name.startswith(_CACHE_PREFIXES) and len(s.shape) == 4)
        if not caches:
            return None
        caches = _with_config_dims(caches, model)
        named = {s.name: s for s in model.inputs}
        roles = {role: named.get(role) for role in _ROLES}
        tokens = _token_input(model, caches, [s for s in roles.values() if s is not None])
        return cls(tokens, caches, **roles, shared_outputs=_shared_outputs(model, caches))

    @property
    def bookkeeping(self) -> tuple[InputSpec, ...]:
        """The inputs ``feeds`` derives from token ids and cache length (not the ids themselves)."""
        extra = (self.attention_mask, self.position_ids, self.seqlens_k, self.total_sequence_length)
        return (*self.caches, *(s for s in extra if s is not None))

    def kv_bytes_per_token(self, batch: int = 1) -> int:
        """Bytes the cache grows by per token: keys and values of every layer."""
        return sum(batch * s.shape[1] * s.shape[3] * np.dtype(s.dtype).itemsize for s in self.caches)

    def feeds(self, ids: np.ndarray, cached: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """Every input of one call on token ids ``[batch, new]`` after ``cached`` tokens: an empty
        cache (``cached`` 0) or one of random values (attention costs the same whatever they are).
        With ``rng`` and a graph that can share its cache buffers, ``SharedCacheFeeds``."""
        batch, new = ids.shape
        total = cached + new
        shared = bool(cached and rng is not None and self.shared_outputs)
        feeds = {self.tokens.name: ids.astype(self.tokens.dtype, copy=False)}
        for spec in self.caches:
            shape = (batch, spec.shape[1], total if shared else cached, spec.shape[3])
            if cached and rng is not None:
                feeds[spec.name] = rng.standard_normal(shape, dtype=np.float32).astype(spec.dtype, copy=False)
            else:
                feeds[spec.name] = np.zeros(shape, spec.dtype)
        feeds.update(self._bookkeeping(batch, new, cached))
        return SharedCacheFeeds(feeds, dict(self.shared_outputs)) if shared else feeds

    def step(self, ids: np.ndarray, cache: Sequence[np.ndarray], cached: int) -> dict[str, np.ndarray]:
        """The feeds of one generation step: the new token ids and the cache the last call returned."""
        feeds = {self.tokens.name: ids.astype(self.tokens.dtype, copy=False)}
        feeds.update({spec.name: array for spec, array in zip(self.caches, cache, strict=True)})
        feeds.update(self._bookkeeping(ids.shape[0], ids.shape[1], cached))
        return feeds

    def _bookkeeping(self, batch: int, new: int, cached: int) -> dict[str, np.ndarray]:
        """The inputs besides ids and cache that some exporters' graphs take."""
        total = cached + new
        feeds = {}
        if self.attention_mask is not None:
            feeds[self.attention_mask.name] = np.ones((batch, total), self.attention_mask.dtype)
        if self.position_ids is not None:
            positions = np.arange(cached, total, dtype=self.position_ids.dtype)
            feeds[self.position_ids.name] = np.broadcast_to(positions, (batch, new)).copy()
        if self.seqlens_k is not None:
            feeds[self.seqlens_k.name] = np.full((batch,), total - 1, self.seqlens_k.dtype)
        if self.total_sequence_length is not None:
            feeds[self.total_sequence_length.name] = np.array(total, self.total_sequence_length.dtype)
        return feeds

    def complete(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch of token ids (and nothing else the graph takes) completed into a prefill call."""
        return {**feeds, **self.feeds(feeds[self.tokens.name], 0)}


class GenerateFeeds(dict):
    """The prompt's feeds of a greedy generation of ``new_tokens`` tokens: ``run_with(run)`` runs
    the prompt, then ``new_tokens - 1`` steps, each on the token and the cache the call before
    returned, as a chat reply is produced (one timed call is the whole generation)."""

    def __init__(
        self, feeds: dict[str, np.ndarray], decoder: DecoderInputs, logits: int, presents: tuple[int, ...], new: int
    ) -> None:
        super().__init__(feeds)
        self.decoder, self.logits, self.presents, self.new_tokens = decoder, logits, presents, new

    @classmethod
    def of(cls, model: OnnxModel, decoder: DecoderInputs, ids: np.ndarray, new_tokens: int) -> GenerateFeeds:
        """The generation of ``new_tokens`` after prompt ``ids`` on ``model``, whose outputs must
        be the logits and each cache input's present (``past….key`` -> ``present….key``)."""
        outputs = [o.name for o in model.proto.graph.output]
        shared = dict(decoder.shared_outputs)
        wanted = [shared.get(spec.name) or _present_name(spec.name) for spec in decoder.caches]
        missing = [spec.name for spec, name in zip(decoder.caches, wanted, strict=True) if name not in outputs]
        logits = next((i for i, name in enumerate(outputs) if name not in wanted), None)
        if missing or logits is None:
            raise QbenchError(
                f"{model.name}: workload generate needs the logits and each cache input's present output "
                f"(present.<i>.key/.value); its outputs are {', '.join(outputs[:4])} …"
            )
        presents = tuple(outputs.index(name) for name in wanted)
        return cls(decoder.feeds(ids, 0), decoder, logits, presents, new_tokens)

    def run_with(self, run: Callable[[Mapping[str, np.ndarray]], Sequence[np.ndarray]]) -> Sequence[np.ndarray]:
        """The whole generation through ``run`` (a runner's ``run``); returns the last call's outputs."""
        outputs = run(dict(self))
        cached = self[self.decoder.tokens.name].shape[1]
        for _ in range(self.new_tokens - 1):
            logits = outputs[self.logits]
            ids = np.argmax(logits[:, -1, :] if logits.ndim == 3 else logits, axis=-1)[:, None]
            outputs = run(self.decoder.step(ids, [outputs[i] for i in self.presents], cached))
            cached += 1
        return outputs


def cache_pairs(inputs: Sequence[tuple[str, int]], outputs: Sequence[str]) -> dict[str, str]:
    """Each key/value cache input (name, rank) -> the output that returns it grown by the new
    tokens (``past.3.key`` -> ``present.3.key``): what a stateful decoder keeps inside."""
    named = set(outputs)
    return {
        name: _present_name(name)
        for name, rank in inputs
        if name.startswith(_CACHE_PREFIXES) and rank == 4 and _present_name(name) in named
    }


def _present_name(cache: str) -> str:
    """``past_key_values.3.key``, ``past.3.key`` or ``cache.3.key`` -> ``present.3.key``."""
    for prefix in ("past_key_values.", *(f"{p}." for p in _CACHE_PREFIXES)):
        if cache.startswith(prefix):
            return "present." + cache.removeprefix(prefix)
    return cache


def _token_input(model: OnnxModel, caches: tuple[InputSpec, ...], roles: list[InputSpec]) -> InputSpec:
    """The one token-id input of a decoder whose other inputs are ``caches`` and ``roles``; a
    one-line error saying what qbench needs when the inputs are not that."""
    known = {s.name for s in caches} | {s.name for s in roles}
    tokens = [s for s in model.inputs if s.name not in known and s.dtype.startswith("int") and len(s.shape) == 2]
    others = [s for s in model.inputs if s.name not in known and s not in tokens]
    fixed = all(isinstance(s.shape[1], int) and isinstance(s.shape[3], int) for s in caches)
    if len(tokens) == 1 and not others and fixed:
        return tokens[0]
    shown = ", ".join(s.describe() for s in model.inputs if s.name not in {c.name for c in caches[2:]})
    raise QbenchError(
        f"{model.name} has key/value cache inputs but qbench cannot tell what to feed it: it needs one "
        "token-id input [batch, tokens], caches past*/cache* of shape [batch, kv_heads, tokens, head_dim] "
        f"with fixed heads and head size, and optionally {', '.join(_ROLES)}; it has {shown}"
    )


def _shared_outputs(model: OnnxModel, caches: tuple[InputSpec, ...]) -> tuple[tuple[str, str], ...]:
    """Each cache input and the output GroupQueryAttention writes it to (same position, by name:
    ``past_key_values.3.key`` -> ``present.3.key``), when every cache input feeds one such op."""
    writers = {}
    for node in model.proto.graph.node:
        if node.op_type == "GroupQueryAttention" and len(node.input) > 4 and len(node.output) > 2:
            writers[node.input[3]], writers[node.input[4]] = node.output[1], node.output[2]
    if not all(spec.name in writers for spec in caches):
        return ()
    return tuple((spec.name, writers[spec.name]) for spec in caches)


def _with_config_dims(caches: tuple[InputSpec, ...], model: OnnxModel) -> tuple[InputSpec, ...]:
    """Caches whose head count or head size the graph leaves symbolic (onnxruntime-genai writes
    ``kv_cache_dim``) take them from the ``genai_config.json`` beside the model."""
    if all(isinstance(s.shape[1], int) and isinstance(s.shape[3], int) for s in caches):
        return caches
    config = pathlib.Path(model.path).parent / "genai_config.json"
    try:
        decoder = json.loads(config.read_text())["model"]["decoder"]
        heads, size = int(decoder["num_key_value_heads"]), int(decoder["head_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return caches
    return tuple(replace(s, shape=(s.shape[0], heads, s.shape[2], size)) for s in caches)
