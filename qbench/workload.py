"""What one timed call runs: a batch of the evaluation data, or, for a decoder LLM with a
key/value cache, the prefill of a prompt or one decode step at a fixed context.

A chat model spends its time in two very different shapes: the prompt goes through once as a
matrix-matrix product (prefill, reported in ms), then every new token is a matrix-vector product
against the cache (decode, reported in tokens/s). Precisions rank differently in each (weight-only
int4 wins decode, loses prefill on AVX2), so they are separate workloads of one model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qbench.data import Dataset, check_fits_in_memory
from qbench.errors import QbenchError
from qbench.model import InputSpec, OnnxModel

KINDS = ("batch", "prefill", "decode")
DEFAULT_CONTEXT = 128


@dataclass(frozen=True)
class Workload:
    kind: str = "batch"
    context: int = 0  # prompt tokens (prefill) or cached tokens (decode)

    @classmethod
    def parse(cls, text: str) -> Workload:
        """``batch``, ``prefill``, ``decode`` or ``prefill:N`` / ``decode:N`` (N tokens, default 128)."""
        kind, _, tokens = text.partition(":")
        if kind not in KINDS or (kind == "batch" and tokens):
            raise QbenchError(f"unknown workload {text!r}: use batch, prefill[:TOKENS] or decode[:CACHED_TOKENS]")
        if kind == "batch":
            return cls()
        try:
            context = int(tokens) if tokens else DEFAULT_CONTEXT
        except ValueError:
            context = 0
        if not 1 <= context <= 32768:
            raise QbenchError(f"workload {text!r}: the token count must be an integer from 1 to 32768")
        return cls(kind, context)

    def __str__(self) -> str:
        return self.kind if self.kind == "batch" else f"{self.kind}:{self.context}"

    @property
    def tokens_per_call(self) -> int | None:
        """New tokens one call processes (None for a plain batch)."""
        return {"batch": None, "prefill": self.context, "decode": 1}[self.kind]

    def memory_bytes(self, caches: list[InputSpec], batch: int) -> int:
        """A floor on the memory one call needs: the key/value cache in and out, and for a
        prefill one layer's attention scores and their softmax (tokens x tokens per head)."""
        if self.kind == "prefill":
            scores = 2 * batch * caches[0].shape[1] * self.context**2 * 4 if caches else 0
            return _kv_bytes(caches, batch, self.context) + scores
        return _kv_bytes(caches, batch, self.context) + _kv_bytes(caches, batch, self.context + 1)

    def feeds(self, model: OnnxModel, data: Dataset, batch_size: int) -> dict[str, np.ndarray]:
        """The inputs of one timed call."""
        if self.kind == "batch":
            return next(data.batches(batch_size))
        tokens, caches = decoder_inputs(model, str(self))
        ids = data.inputs[tokens.name].reshape(-1)
        length = self.context if self.kind == "prefill" else 1
        check_fits_in_memory(self.memory_bytes(caches, batch_size), f"workload {self} at batch {batch_size}")
        feeds = {tokens.name: np.resize(ids, (batch_size, length)).astype(tokens.dtype)}
        cached = 0 if self.kind == "prefill" else self.context
        rng = np.random.default_rng(0)  # attention costs the same whatever the cached values are
        for spec in caches:
            shape = (batch_size, spec.shape[1], cached, spec.shape[3])
            feeds[spec.name] = rng.standard_normal(shape, dtype=np.float32).astype(spec.dtype, copy=False)
        return feeds


BATCH = Workload()


def _kv_bytes(caches: list[InputSpec], batch: int, tokens: int) -> int:
    return sum(batch * s.shape[1] * tokens * s.shape[3] * 4 for s in caches)


def cache_inputs(model: OnnxModel) -> list[InputSpec]:
    """The key/value cache inputs of a decoder: ``past*``, ``[batch, heads, tokens, head_dim]``."""
    return [s for s in model.inputs if s.name.startswith("past") and len(s.shape) == 4]


def decoder_inputs(model: OnnxModel, why: str) -> tuple[InputSpec, list[InputSpec]]:
    """The token-id input and the key/value cache inputs of a decoder; a clear error for any
    other model."""
    tokens = [s for s in model.inputs if s.dtype.startswith("int") and len(s.shape) == 2]
    caches = cache_inputs(model)
    fixed = all(isinstance(s.shape[1], int) and isinstance(s.shape[3], int) for s in caches)
    if len(tokens) != 1 or not caches or not fixed or len(tokens) + len(caches) != len(model.inputs):
        raise QbenchError(
            f"workload {why} needs a decoder with one token-id input [batch, tokens] and key/value cache inputs "
            f"named past* of shape [batch, heads, tokens, head_dim]; {model.name} has "
            + ", ".join(s.describe() for s in model.inputs[:4])
            + (" …" if len(model.inputs) > 4 else "")
        )
    return tokens[0], caches
