"""What one timed call runs: a batch of the evaluation data, or, for a decoder LLM with a
key/value cache, the prefill of a prompt or one decode step at a fixed context.

A chat model spends its time in two very different shapes: the prompt goes through once as a
matrix-matrix product (prefill, reported in ms), then every new token is a matrix-vector product
against the cache (decode, reported in tokens/s). Precisions rank differently in each (weight-only
int4 wins decode, loses prefill on AVX2), so they are separate workloads of one model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from qbench.errors import QbenchError

if TYPE_CHECKING:  # parsing a workload (every command's arguments) imports none of them
    import numpy as np

    from qbench.data import Dataset
    from qbench.decoder import DecoderInputs
    from qbench.model import OnnxModel

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

    def memory_bytes(self, decoder: DecoderInputs, batch: int) -> int:
        """A floor on the memory one call needs: the key/value cache in and out, and for a
        prefill one layer's attention scores and their softmax (tokens x tokens per head)."""
        per_token = decoder.kv_bytes_per_token(batch)
        if self.kind == "prefill":
            return per_token * self.context + 2 * batch * decoder.caches[0].shape[1] * self.context**2 * 4
        return per_token * (2 * self.context + 1)

    def feeds(self, model: OnnxModel, data: Dataset, batch_size: int) -> dict[str, np.ndarray]:
        """The inputs of one timed call."""
        import numpy as np

        from qbench.data import check_fits_in_memory

        if self.kind == "batch":
            return next(data.batches(batch_size))
        decoder = decoder_inputs(model, str(self))
        ids = data.inputs[decoder.tokens.name].reshape(-1)
        length = self.context if self.kind == "prefill" else 1
        check_fits_in_memory(self.memory_bytes(decoder, batch_size), f"workload {self} at batch {batch_size}")
        cached = 0 if self.kind == "prefill" else self.context
        return decoder.feeds(np.resize(ids, (batch_size, length)), cached, np.random.default_rng(0))


BATCH = Workload()
MAX_WORKLOADS = 16  # `bench --workload a,b,…` times each in turn: a long list is a mistake, not a plan


def parse_workloads(text: str) -> tuple[Workload, ...]:
    """A comma-separated list of workloads, each once, at most ``MAX_WORKLOADS``."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise QbenchError("name a workload, e.g. decode:128")
    if len(parts) > MAX_WORKLOADS:
        raise QbenchError(f"{len(parts)} workloads listed; time at most {MAX_WORKLOADS} in one run")
    workloads = tuple(Workload.parse(part) for part in parts)
    repeated = next((str(w) for i, w in enumerate(workloads) if w in workloads[:i]), None)
    if repeated is not None:
        raise QbenchError(f"workload {repeated} is listed twice; list each once")
    return workloads


def decoder_inputs(model: OnnxModel, why: str) -> DecoderInputs:
    """The decoder roles of ``model``'s inputs; a clear error for any other model."""
    from qbench.decoder import DecoderInputs

    decoder = DecoderInputs.of(model)
    if decoder is None:
        raise QbenchError(
            f"workload {why} needs a decoder with one token-id input [batch, tokens] and key/value cache inputs "
            f"named past* of shape [batch, heads, tokens, head_dim]; {model.name} has "
            + ", ".join(s.describe() for s in model.inputs[:4])
            + (" …" if len(model.inputs) > 4 else "")
        )
    return decoder
