"""What one timed call runs: a batch of the evaluation data, or, for a decoder LLM with a
key/value cache, the prefill of a prompt, one decode step at a fixed context, or a whole greedy
generation of M tokens after an N-token prompt (``generate:N:M``: the prefill, then M - 1 steps,
each on the cache the step before returned, as a chat reply is produced).

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

KINDS = ("batch", "prefill", "decode", "generate")
DEFAULT_CONTEXT = 128
DEFAULT_NEW_TOKENS = 32
MAX_TOKENS = 32768
MAX_NEW_TOKENS = 4096


@dataclass(frozen=True)
class Workload:
    kind: str = "batch"
    context: int = 0  # prompt tokens (prefill, generate) or cached tokens (decode)
    new_tokens: int = 0  # tokens a generation produces (generate)

    @classmethod
    def parse(cls, text: str) -> Workload:
        """``batch``, ``prefill[:N]``, ``decode[:N]`` (N tokens, default 128) or
        ``generate[:N[:M]]`` (M new tokens after an N-token prompt, default 128 and 32)."""
        if not isinstance(text, str):
            raise QbenchError(f"a workload is text such as decode:128, but got {text!r}")
        kind, *numbers = text.split(":")
        most = 2 if kind == "generate" else (0 if kind == "batch" else 1)
        if kind not in KINDS or len(numbers) > most:
            raise QbenchError(
                f"unknown workload {text!r}: use batch, prefill[:TOKENS], decode[:CACHED_TOKENS] "
                "or generate[:PROMPT_TOKENS[:NEW_TOKENS]]"
            )
        if kind == "batch":
            return cls()
        context = _count(text, numbers[0] if numbers else "", DEFAULT_CONTEXT, MAX_TOKENS, "token count")
        if kind != "generate":
            return cls(kind, context)
        new = _count(text, numbers[1] if len(numbers) > 1 else "", DEFAULT_NEW_TOKENS, MAX_NEW_TOKENS, "new tokens")
        if context + new > MAX_TOKENS:
            raise QbenchError(f"workload {text!r}: prompt and new tokens add up to more than {MAX_TOKENS}")
        return cls(kind, context, new)

    def __str__(self) -> str:
        if self.kind == "generate":
            return f"generate:{self.context}:{self.new_tokens}"
        return self.kind if self.kind == "batch" else f"{self.kind}:{self.context}"

    @property
    def tokens_per_call(self) -> int | None:
        """New tokens one call processes or produces (None for a plain batch)."""
        return {"batch": None, "prefill": self.context, "decode": 1, "generate": self.new_tokens}[self.kind]

    def memory_bytes(self, decoder: DecoderInputs, batch: int) -> int:
        """A floor on the memory one call needs: the key/value cache in and out, and for a
        prefill one layer's attention scores and their softmax (tokens x tokens per head)."""
        per_token = decoder.kv_bytes_per_token(batch)
        scores = 2 * batch * decoder.caches[0].shape[1] * self.context**2 * 4
        if self.kind == "prefill":
            return per_token * self.context + scores
        if self.kind == "generate":  # the last step's cache in and out, or the prompt's scores
            return per_token * 2 * (self.context + self.new_tokens) + scores
        return per_token * (2 * self.context + 1)

    def feeds(self, model: OnnxModel, data: Dataset, batch_size: int) -> dict[str, np.ndarray]:
        """The inputs of one timed call."""
        import numpy as np

        from qbench.data import check_fits_in_memory
        from qbench.decoder import GenerateFeeds

        if self.kind == "batch":
            return next(data.batches(batch_size))
        decoder = decoder_inputs(model, str(self))
        ids = data.inputs[decoder.tokens.name].reshape(-1)
        length = 1 if self.kind == "decode" else self.context
        check_fits_in_memory(self.memory_bytes(decoder, batch_size), f"workload {self} at batch {batch_size}")
        if self.kind == "generate":
            return GenerateFeeds.of(model, decoder, np.resize(ids, (batch_size, length)), self.new_tokens)
        cached = 0 if self.kind == "prefill" else self.context
        return decoder.feeds(np.resize(ids, (batch_size, length)), cached, np.random.default_rng(0))


def _count(text: str, given: str, default: int, most: int, what: str) -> int:
    try:
        value = int(given) if given else default
    except ValueError:
        value = 0
    if not 1 <= value <= most:
        raise QbenchError(f"workload {text!r}: the {what} must be an integer from 1 to {most}")
    return value


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
