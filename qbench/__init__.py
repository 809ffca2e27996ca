"""qbench: hardware-aware quantization benchmarking and auto-tuning.

``qbench.bench`` and ``qbench.tune`` (``qbench.api``) run what the command line runs; the rest
is the core's public surface. The backends live in the ``backends`` package and the tuner in
``search``; the API is loaded on first use, so ``import qbench`` stays light.
"""

__version__ = "0.1.0"

from qbench.data import Dataset, load_npz  # noqa: E402
from qbench.errors import QbenchError  # noqa: E402
from qbench.measure import TimingProtocol, measure, measure_interleaved  # noqa: E402
from qbench.metrics import get_metric  # noqa: E402
from qbench.model import OnnxModel  # noqa: E402
from qbench.plan import PlanOptions, PrecisionPlan  # noqa: E402
from qbench.runspec import RunSpec, Subject, Target, Timing  # noqa: E402
from qbench.statistics import LatencyStats, Speedup, speedup  # noqa: E402
from qbench.store import Leaderboard  # noqa: E402

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

    from qbench.store import default_url

    board = Leaderboard(url or default_url(pathlib.Path(results_dir)))
    try:
        return board.frame(samples=True)
    finally:
        board.close()


def __getattr__(name: str):
    """``qbench.bench`` and ``qbench.tune``, loaded on first use: the API sits above the
    backends and the tuner, which import the core (and so this package) themselves."""
    if name in ("bench", "tune"):
        import importlib

        return getattr(importlib.import_module("qbench.api"), name)
    raise AttributeError(f"module 'qbench' has no attribute {name!r}")
