"""Progress on stderr: a bar for counted work, step lines otherwise; silent when quiet or not a TTY."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from tqdm import tqdm


def enabled(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def step_printer(quiet: bool) -> Callable[[str], None]:
    """A callback that prints ``[  1.2s] message`` lines to stderr while work goes on."""
    if not enabled(quiet):
        return lambda _msg: None
    start = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)

    return say


def bar(total: int, description: str, quiet: bool) -> tqdm:
    return tqdm(total=total, desc=description, file=sys.stderr, disable=not enabled(quiet), leave=False)
