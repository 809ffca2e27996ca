"""One way to cache a file (or folder) on disk: build it next to its place, then rename it in.

Every cache in qbench (built artifacts, calibrations, realized precisions, sensitivity reports,
prepared models, zoo exports) goes through ``atomic_cached``, so two processes filling one cache
at once (suite workers of a farm, tune workers sharing a study) never read a half-written entry:
a name exists only once its content is complete, and a crash leaves at most a stray temporary
behind. Each entry is written with the SHA-256 of its content beside it (``<name>.sha256``) and
checked before it is served (once per process): a damaged, replaced or unverifiable entry is
rebuilt, and the run says so.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence

from qbench.errors import QbenchError

log = logging.getLogger(__name__)
_verified: set[tuple] = set()  # entries checked in this process, by their files' (name, mtime, size)


#: File names stay far below the 255-byte limit of common file systems once a key and suffix are added.
MAX_STEM_BYTES = 64


def short_stem(name: str, limit: int = MAX_STEM_BYTES) -> str:
    """``name`` for use in a file name: unchanged when it fits in ``limit`` bytes, else its start and
    a hash of the whole, so two long names that share a start still get different files."""
    if len(name.encode()) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    start = name.encode()[: limit - len(digest) - 1].decode(errors="ignore")
    return f"{start}-{digest}"


def cache_root() -> pathlib.Path:
    """Where zoo exports and this machine's measurements persist across runs and results
    folders: ``$QBENCH_CACHE`` (an absolute path) or ~/.cache/qbench (docs/security.md lists
    every file qbench writes)."""
    given = os.environ.get("QBENCH_CACHE", "")
    if given and not os.path.isabs(given):
        raise QbenchError(f"$QBENCH_CACHE={given!r} is not an absolute path: set it to one, or unset it")
    return pathlib.Path(given or pathlib.Path.home() / ".cache" / "qbench")


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
    if not 0 < limit < 2**33:  # also refuses nan and inf (int(inf) overflows)
        raise QbenchError(
            f"$QBENCH_ARTIFACT_CACHE_GB={raw!r} is not a finite positive number of GB; "
            "set e.g. 10 (or 1e6 for no practical limit) or unset it"
        )
    return int(limit * 2**30)


def content_key(*parts: str) -> str:
    """A short, stable hash of the parts: the cache key of anything built from them."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def companion_paths(path: pathlib.Path, companions: Sequence[str]) -> list[pathlib.Path]:
    """The companions of the entry at ``path`` that are there: some are written only for some
    entries (an ONNX model's external weights, only over protobuf's 2 GiB limit)."""
    return [part for suffix in companions if (part := path.with_suffix(suffix)).exists()]


def _parts(path: pathlib.Path, companions: Sequence[str]) -> list[pathlib.Path]:
    return [path, *companion_paths(path, companions)]


def _files(part: pathlib.Path) -> list[pathlib.Path]:
    return sorted(f for f in part.rglob("*") if f.is_file()) if part.is_dir() else [part]


def _digest(parts: Sequence[pathlib.Path]) -> str:
    """SHA-256 of the files (a folder: each file under it, with its relative name) in order."""
    digest = hashlib.sha256()
    for part in parts:
        for file in _files(part):
            digest.update(str(file.relative_to(part)).encode() if part.is_dir() else b"\0")
            with file.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()


def hash_file(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".sha256")


def intact(path: pathlib.Path, companions: Sequence[str] = ()) -> bool:
    """Whether the entry at ``path`` (with its companions) matches the hash written with it."""
    try:  # what a change to any file would change: its size and modification time
        files = [file for part in _parts(path, companions) for file in _files(part)] + [hash_file(path)]
        stamp = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
        if stamp in _verified:
            return True
        ok = _digest(_parts(path, companions)) == hash_file(path).read_text().strip()
    except OSError:  # a part or the hash is missing or unreadable
        return False
    if ok:
        _verified.add(stamp)
    return ok


def _discard(path: pathlib.Path, companions: Sequence[str]) -> None:
    for part in (*_parts(path, companions), hash_file(path)):
        _remove(part)


def atomic_cached(path: pathlib.Path, produce: Callable[[pathlib.Path], None], companions: Sequence[str] = ()) -> bool:
    """Make ``path`` unless an intact entry is there; return whether one was (a cache hit).

    ``produce(tmp)`` writes the entry to ``tmp``, a path with the entry's own name in a private
    folder beside it (tools that pick a format from the suffix, or that name side files after the
    file, as ONNX external data does, keep working once it moves in), as a file or a folder.
    ``companions`` are suffixes of files it may write beside it (an OpenVINO IR's ``.bin`` next
    to its ``.xml``); they and the content hash move in first, so ``path`` appears last and its
    existence means the whole entry is there.
    """
    if path.exists():
        if intact(path, companions):
            return True
        log.warning(
            "cache entry %s does not match the content hash written with it (damaged, replaced, or written by an "
            "older qbench); rebuilding it",
            path,
        )
        _discard(path, companions)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp = scratch / path.name
    try:
        produce(tmp)
        parts = _parts(tmp, companions)
        hash_file(tmp).write_text(_digest(parts) + "\n")
        for part in parts[1:]:
            part.replace(path.with_name(part.name))
        hash_file(tmp).replace(hash_file(path))
        try:
            os.replace(tmp, path)
        except OSError:  # a folder another process moved in first: theirs is as good
            if not path.exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
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
        hidden = any(part.startswith(".") for part in file.relative_to(folder).parts)  # a build under way
        if file.is_file() and match and not hidden:
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
