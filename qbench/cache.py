"""One way to cache a file (or folder) on disk: build it next to its place, then rename it in.

Every cache in qbench (built artifacts, calibrations, realized precisions, sensitivity reports,
zoo exports) goes through ``atomic_cached``, so two processes filling one cache at once (suite
workers of a farm, tune workers sharing a study) never read a half-written entry: a name exists
only once its content is complete, and a crash leaves at most a stray temporary behind.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
from collections.abc import Callable, Sequence


def cache_root() -> pathlib.Path:
    """Where exports and machine measurements persist across runs: ``$QBENCH_CACHE`` or ~/.cache/qbench."""
    return pathlib.Path(os.environ.get("QBENCH_CACHE") or pathlib.Path.home() / ".cache" / "qbench")


def content_key(*parts: str) -> str:
    """A short, stable hash of the parts: the cache key of anything built from them."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_cached(path: pathlib.Path, produce: Callable[[pathlib.Path], None], companions: Sequence[str] = ()) -> bool:
    """Make ``path`` unless it exists; return whether it already did (a cache hit).

    ``produce(tmp)`` writes the entry to ``tmp``, a sibling with the same suffix (tools that
    pick a format from it keep working), as a file or a folder. ``companions`` are suffixes of
    files written beside it (an OpenVINO IR's ``.bin`` next to its ``.xml``); they move in
    first, so ``path`` appears last and its existence means the whole entry is there.
    """
    if path.exists():
        return True
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        produce(tmp)
        for suffix in companions:
            tmp.with_suffix(suffix).replace(path.with_suffix(suffix))
        try:
            os.replace(tmp, path)
        except OSError:  # a folder another process moved in first: theirs is as good
            if not path.exists():
                raise
    finally:
        _remove(tmp)
        for suffix in companions:
            tmp.with_suffix(suffix).unlink(missing_ok=True)
    return False
