"""qbench: hardware-aware quantization benchmarking and auto-tuning.

``qbench.bench`` and ``qbench.tune`` (``qbench.api``) run what the command line runs; the rest
is the core's public surface. The backends live in the ``backends`` package and the tuner in
``search``. Everything is loaded on first use, so ``import qbench`` stays light.
"""

__version__ = "0.1.0"

from qbench.errors import QbenchError  # noqa: E402

# Loaded on first use, so that `import qbench` (and every `qbench` command's start, its errors
# included) does not wait for numpy, onnx, scipy and pandas.
_LAZY = {
    "Dataset": "qbench.data",
    "load_npz": "qbench.data",
    "TimingProtocol": "qbench.measure",
    "measure": "qbench.measure",
    "measure_interleaved": "qbench.measure",
    "get_metric": "qbench.metrics",
    "OnnxModel": "qbench.model",
    "PlanOptions": "qbench.plan",
    "PrecisionPlan": "qbench.plan",
    "RunSpec": "qbench.runspec",
    "Subject": "qbench.runspec",
    "Target": "qbench.runspec",
    "Timing": "qbench.runspec",
    "LatencyStats": "qbench.statistics",
    "Speedup": "qbench.statistics",
    "speedup": "qbench.statistics",
    "Leaderboard": "qbench.store",
    "bench": "qbench.api",  # the API sits above the backends and the tuner, which import the core
    "tune": "qbench.api",
}

__all__ = [
    "Dataset",
    "LatencyStats",
    "Leaderboard",
    "OnnxModel",
    "PlanOptions",
    "PrecisionPlan",
    "TimingProtocol",
    "QbenchError",
    "RunSpec",
    "Subject",
    "Target",
    "Timing",
    "bench",
    "tune",
    "Speedup",
    "__version__",
    "get_metric",
    "leaderboard",
    "load_npz",
    "measure",
    "measure_interleaved",
    "speedup",
]


def leaderboard(url: str | None = None, results_dir: str = "results"):
    """The leaderboard as a pandas DataFrame (one row per measured plan, raw samples included)."""
    import pathlib

    from qbench.store import Leaderboard, default_url

    board = Leaderboard(url or default_url(pathlib.Path(results_dir)))
    try:
        return board.frame(samples=True)
    finally:
        board.close()


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qbench' has no attribute {name!r}")
