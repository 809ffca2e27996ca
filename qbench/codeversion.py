"""The code version stamped on every row: the package version plus a hash of the sources.

A nightly suite skips a job it has already measured with this exact code on this machine; the
hash (of qbench, qbench.backends and qbench.search) changes with any edit, released or not.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import pathlib

from qbench import __version__

PACKAGES = ("qbench", "qbench.backends", "qbench.search")


@functools.cache
def code_version() -> str:
    digest = hashlib.sha256()
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            continue
        root = pathlib.Path(spec.origin).parent
        for source in sorted(root.rglob("*.py")):
            digest.update(source.relative_to(root.parent).as_posix().encode())
            digest.update(source.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"
