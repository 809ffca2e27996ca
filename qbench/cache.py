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
import re
import shutil
from collections.abc import Callable, Sequence

from qbench.errors import QbenchError


def cache_root() -> pathlib.Path:
    """Where exports and machine measurements persist across runs: ``$QBENCH_CACHE`` or ~/.cache/qbench."""
    return pathlib.Path(os.environ.get("QBENCH_CACHE") or pathlib.Path.home() / ".cache" / "qbench")


#: Built artifacts kept per cache folder before the least recently used go (``$QBENCH_ARTIFACT_CACHE_GB``).
#: One tune of a 135M-parameter LLM built 56 artifacts, 17 GB, that nothing reads again.
DEFAULT_ARTIFACT_CACHE_GB = 10.0


def artifact_cache_limit() -> int:
    """The artifact cache's size limit in bytes; a bad ``$QBENCH_ARTIFACT_CACHE_GB`` is a one-line error."""
    raw = os.environ.get("QBENCH_ARTIFACT_CACHE_GB", "")
    try:
        limit = float(raw) if raw else DEFAULT_ARTIFACT_CACHE_GB
    except ValueError:
        limit = -1.0
    if not limit > 0:
        raise QbenchError(f"$QBENCH_ARTIFACT_CACHE_GB={raw!r} is not a positive number of GB; set e.g. 10 or unset it")
    return int(limit * 2**30)


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


def touch(path: pathlib.Path) -> None:
    """Mark a cache entry as just used, so ``trim_least_recently_used`` keeps it longest."""
    try:
        os.utime(path)
    except OSError:  # removed meanwhile by another process's trim: the next build remakes it
        pass


_ENTRY_KEY = re.compile(r"^(.+-[0-9a-f]{20})[.]")  # name-<content key>.<suffix>[.<more>]


def trim_least_recently_used(folder: pathlib.Path, max_bytes: int, keep: pathlib.Path) -> list[str]:
    """Delete whole entries of ``folder`` (an artifact with its companions and reports, grouped by
    their ``<name>-<key>`` prefix), oldest use first, until the folder holds at most ``max_bytes``;
    never ``keep``'s entry. Return the removed entries' names. An entry open in another process
    stays readable there (POSIX unlink); a later build remakes it."""
    entries: dict[str, list[pathlib.Path]] = {}
    for file in folder.rglob("*"):
        match = _ENTRY_KEY.match(file.name)
        if file.is_file() and match and not file.name.startswith("."):
            entries.setdefault(str(file.parent / match[1]), []).append(file)
    kept = _ENTRY_KEY.match(keep.name)
    kept_key = str(keep.parent / kept[1]) if kept else ""

    def stat(files: list[pathlib.Path]) -> tuple[float, int]:
        stats = [f.stat() for f in files if f.exists()]
        return max((s.st_mtime for s in stats), default=0.0), sum(s.st_size for s in stats)

    sized = {key: stat(files) for key, files in entries.items()}
    total = sum(size for _, size in sized.values())
    removed = []
    for key in sorted(sized, key=lambda k: sized[k][0]):
        if total <= max_bytes:
            break
        if key == kept_key:
            continue
        for file in entries[key]:
            file.unlink(missing_ok=True)
        total -= sized[key][1]
        removed.append(pathlib.Path(key).name)
    return removed
