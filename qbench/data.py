"""Calibration and evaluation data: ``.npz`` files of arrays keyed by model input name.

For a decoder LLM the file may hold its token ids alone: the cache and the bookkeeping inputs of
a prefill (attention mask, positions, sequence lengths) are written per batch (``qbench.decoder``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import pathlib
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from qbench.decoder import DecoderInputs
from qbench.errors import QbenchError
from qbench.model import OnnxModel

LABELS_KEY = "labels"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """Model inputs (axis 0 indexes samples) and optional labels, checked against one model.

    A model input whose first dimension is fixed at ``b`` is fed batches of exactly ``b``
    samples; a dynamic first dimension takes any batch size.
    """

    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    #: Completes each batch into a model call (a decoder's token ids into a prefill), or None.
    complete: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    @cached_property
    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for name in sorted(self.inputs):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(self.inputs[name]).tobytes())
        if self.labels is not None:
            digest.update(np.ascontiguousarray(self.labels).tobytes())
        return digest.hexdigest()[:16]

    def take(self, start: int, stop: int) -> Dataset:
        labels = None if self.labels is None else self.labels[start:stop]
        inputs = {k: v[start:stop] for k, v in self.inputs.items()}
        return replace(self, inputs=inputs, labels=labels, source=f"{self.source}[{start}:{stop}]")

    def shuffled(self, seed: int = 0) -> Dataset:
        """The samples in a fixed random order, so every prefix is a random subset (files are
        often sorted by class or source)."""
        order = np.random.default_rng(seed).permutation(len(self))
        labels = None if self.labels is None else self.labels[order]
        inputs = {k: v[order] for k, v in self.inputs.items()}
        return replace(self, inputs=inputs, labels=labels, source=f"{self.source} (shuffled)")

    def batches(self, batch_size: int, keep_tail: bool = True) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive feeds of ``batch_size`` samples, then the shorter tail unless ``keep_tail``
        is off (for models whose batch dimension is fixed)."""
        n = len(self)
        stop = n if keep_tail else n - n % batch_size
        for start in range(0, stop, batch_size):
            feeds = {k: v[start : min(start + batch_size, stop)] for k, v in self.inputs.items()}
            yield self.complete(feeds) if self.complete else feeds


def fixed_batch_size(model: OnnxModel) -> int | None:
    """The batch size every input fixes in its first dimension, or None when it is dynamic."""
    sizes = {spec.shape[0] for spec in model.inputs if spec.shape and isinstance(spec.shape[0], int)}
    if len(sizes) > 1:
        raise QbenchError(f"model inputs disagree on the batch dimension: {sorted(sizes)}")
    return sizes.pop() if sizes else None


def load_npz(path: str | pathlib.Path, model: OnnxModel) -> Dataset:
    """Read and validate a data file against ``model``'s inputs (names, dtypes, shapes, labels)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise QbenchError(f"data file not found: {path} (pass an .npz with one array per model input)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise QbenchError(f"{path} is not a readable .npz file ({exc}); save data with numpy.savez") from exc
    return dataset_from_arrays(arrays, model, str(path))


def load_data(path: str | pathlib.Path, model: OnnxModel) -> Dataset:
    """An ``.npz`` of arrays, or for a decoder plain text (``qbench.text``: a ``.txt``, a
    ``.jsonl`` or a folder of them) tokenized with the tokenizer beside the model."""
    from qbench import text

    if not text.is_text(path):
        return load_npz(path, model)
    decoder = DecoderInputs.of(model)
    if decoder is None:
        raise QbenchError(f"{path}: text data is for decoder LLMs; {model.name} takes arrays, pass an .npz")
    ids, labels = text.token_windows(text.load_tokenizer(model.path), text.documents(pathlib.Path(path)))
    return dataset_from_arrays({decoder.tokens.name: ids, LABELS_KEY: labels}, model, str(path))


def dataset_from_arrays(arrays: Mapping[str, np.ndarray], model: OnnxModel, source: str) -> Dataset:
    arrays = dict(arrays)
    labels = arrays.pop(LABELS_KEY, None)
    decoder = DecoderInputs.of(model)
    fed, complete = model.inputs, None
    if decoder is not None and set(arrays) == {decoder.tokens.name}:
        fed, complete = [decoder.tokens], decoder.complete  # token ids alone: each batch becomes a prefill
    n = _sample_count(arrays, fed, source)
    inputs = {spec.name: _checked_input(arrays[spec.name], spec, source) for spec in fed}
    batch = fixed_batch_size(model)
    if batch is not None and n < batch:
        raise QbenchError(f"{source}: {n} samples, but the model's fixed batch size is {batch}")
    if labels is not None:
        labels = _checked_labels(np.asarray(labels), n, source)
    data = Dataset(inputs, labels, source, complete)
    if batch is not None and n % batch:
        # A fixed batch dimension cannot take a short last batch; score the same samples everywhere.
        log.warning(
            "%s: using %d of %d samples, a multiple of the model's fixed batch size %d", source, n - n % batch, n, batch
        )
        data = data.take(0, n - n % batch)
    return data


def _sample_count(arrays: Mapping[str, np.ndarray], specs, source: str) -> int:
    """The samples every input array holds (axis 0), after checking the arrays name exactly the
    inputs ``specs``."""
    expected = [spec.name for spec in specs]
    missing = [name for name in expected if name not in arrays]
    extra = [name for name in arrays if name not in expected]
    if missing or extra:
        raise QbenchError(
            f"{source}: arrays {sorted(arrays)} do not match the model's inputs {expected}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {extra}; only '{LABELS_KEY}' may be added)" if extra else "")
        )
    counts = {name: len(arrays[name]) if arrays[name].ndim else 0 for name in expected}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise QbenchError(f"{source}: every input needs the same number of samples on axis 0, got {counts}")
    return next(iter(counts.values()))


def _checked_input(array: np.ndarray, spec, source: str) -> np.ndarray:
    """``array`` as the model input ``spec`` takes it: its rank and fixed dimensions, its dtype
    (values kept), and finite values."""
    if array.ndim != len(spec.shape):
        raise QbenchError(
            f"{source}: array {spec.name!r} has shape {list(array.shape)}, but the model input is "
            f"{spec.describe()} (axis 0 of the array indexes samples and feeds the batch dimension)"
        )
    for axis, (want, have) in enumerate(zip(spec.shape[1:], array.shape[1:], strict=True), start=1):
        if isinstance(want, int) and want != have:
            raise QbenchError(
                f"{source}: array {spec.name!r} has shape {list(array.shape)}, but the model input is "
                f"{spec.describe()} (axis {axis} differs); resize the data or pass --shape"
            )
    if array.dtype != np.dtype(spec.dtype):
        array = _cast(array, np.dtype(spec.dtype), spec.name, spec.describe(), source)
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        first = int(np.argwhere(~np.isfinite(array))[0][0])
        raise QbenchError(
            f"{source}: array {spec.name!r} holds {bad} NaN or infinite value(s) (first in sample {first}); "
            "they would poison calibration ranges and scores: clean the data"
        )
    return np.ascontiguousarray(array)


def _checked_labels(labels: np.ndarray, n: int, source: str) -> np.ndarray:
    if labels.dtype.kind in "OV":
        raise QbenchError(f"{source}: '{LABELS_KEY}' must be a plain numeric or string array, not {labels.dtype}")
    if labels.ndim == 0 or len(labels) != n:
        got = "a scalar" if labels.ndim == 0 else f"{len(labels)}"
        raise QbenchError(f"{source}: '{LABELS_KEY}' has {got} entries, but the inputs hold {n} samples")
    return labels


def _cast(array: np.ndarray, want: np.dtype, name: str, describe: str, source: str) -> np.ndarray:
    """Only casts that keep every value: float to float (float64 data for a float32 input),
    or integers to a wider or equal integer type or one that holds their range. Anything else
    (integers for a float input: often labels or ids saved under the wrong name) is an error."""
    if array.dtype.kind == want.kind == "f":
        log.info("%s: casting %r from %s to %s", source, name, array.dtype, want)
        return array.astype(want)
    if array.dtype.kind in "iu" and want.kind in "iu":
        info = np.iinfo(want)
        if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
            return array.astype(want)
    raise QbenchError(
        f"{source}: array {name!r} is {array.dtype}, but the model input is {describe}; "
        f"save it as {want} (numpy: array.astype({str(want)!r}))"
    )


def split_for_calibration(data: Dataset, fraction: float = 0.2, most: int = 256) -> tuple[Dataset, Dataset]:
    """Calibrate on the first part of the data and evaluate on the rest, so neither sees the other."""
    n_calib = max(1, min(most, int(len(data) * fraction)))
    if len(data) - n_calib < 1:
        raise QbenchError(f"{data.source}: {len(data)} samples are too few to split; pass --calib-data as well")
    return data.take(0, n_calib), data.take(n_calib, len(data))


SYNTHETIC_SAMPLES = 64
SYNTHETIC_TOKENS = 32  # prompt length of a decoder's synthetic samples
#: Share of the memory available now that one array qbench makes may take: the model, its
#: sessions and the runtime's activations need the rest.
MEMORY_SHARE = 0.5


def check_fits_in_memory(nbytes: int, what: str) -> None:
    """Refuse, before allocating, an array that cannot fit: numpy would fail after minutes, or
    the machine would swap."""
    import psutil

    available = psutil.virtual_memory().available
    if nbytes > MEMORY_SHARE * available:
        raise QbenchError(
            f"{what} needs {nbytes / 2**30:.1f} GiB, more than half the {available / 2**30:.1f} GiB of memory "
            "available; use a smaller --shape or --batch, or pass --data"
        )


def synthetic_dataset(model: OnnxModel, samples: int = SYNTHETIC_SAMPLES, seed: int = 0) -> Dataset:
    """Inputs built from the model's input spec, for timing without data (as ``benchmark_app``
    and ``trtexec`` do): float inputs get standard normal noise; integer inputs get valid ids
    (below the row count of the embedding table a ``Gather`` reads with them) or, with no such
    table, ones (attention masks); bool inputs are true. Every dimension but the batch must be
    fixed (``--shape`` fixes dynamic ones). Accuracy on it is fidelity to fp32, not task accuracy."""
    rng = np.random.default_rng(seed)
    tables = {init.name: init.dims[0] for init in model.proto.graph.initializer if init.dims}
    id_limits = {
        node.input[1]: tables[node.input[0]]
        for node in model.proto.graph.node
        if node.op_type in ("Gather", "GatherBlockQuantized") and len(node.input) > 1 and node.input[0] in tables
    }
    batch = fixed_batch_size(model)
    count = samples if batch is None else max(batch, samples - samples % batch)
    decoder = DecoderInputs.of(model)
    if decoder is not None:  # token ids of a short prompt; the cache and bookkeeping follow from them
        name = decoder.tokens.name
        ids = rng.integers(0, id_limits.get(name, 2), size=(count, SYNTHETIC_TOKENS)).astype(decoder.tokens.dtype)
        return Dataset({name: ids}, None, "synthetic token ids (no --data)", decoder.complete)
    arrays = {}
    for spec in model.inputs:
        rest = spec.shape[1:]
        dynamic = [i + 1 for i, d in enumerate(rest) if not isinstance(d, int)]
        if dynamic:
            raise QbenchError(
                f"input {spec.name!r} has a dynamic dimension ({spec.describe()}); without --data, fix it with "
                f"--shape {spec.name}=" + ",".join(str(d) if isinstance(d, int) else "N" for d in spec.shape)
            )
        shape = (count, *rest)
        check_fits_in_memory(
            math.prod(shape) * np.dtype(spec.dtype).itemsize, f"synthetic input {spec.name!r} of shape {list(shape)}"
        )
        if spec.dtype.startswith("float"):
            arrays[spec.name] = rng.standard_normal(shape, dtype=np.float32).astype(spec.dtype, copy=False)
        elif spec.dtype == "bool":
            arrays[spec.name] = np.ones(shape, dtype=bool)
        elif spec.name in id_limits:
            arrays[spec.name] = rng.integers(0, id_limits[spec.name], size=shape).astype(spec.dtype)
        else:
            arrays[spec.name] = np.ones(shape, dtype=spec.dtype)
    return Dataset(arrays, None, "synthetic inputs (no --data)")
