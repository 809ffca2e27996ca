"""The one exception type for expected user errors."""


class QbenchError(Exception):
    """Bad input or an unusable environment, caused by the user rather than a bug.

    The CLI prints it as one line and exits with status 2; anything else keeps its traceback.
    The message names what is wrong and how to fix it.
    """


class Terminated(BaseException):
    """SIGTERM or SIGHUP reached qbench (``timeout``, a scheduler, a closed terminal). Raised in the
    main thread like KeyboardInterrupt, and like it not an ``Exception``, so no handler of a plan's
    failure swallows it: the run unwinds, its worker processes are ended, and qbench exits 143."""


def one_line(message: str) -> str:
    """``message`` safe to print as one line: line breaks and other control or direction
    characters (from a file name or a key a user gave) shown as escapes, never interpreted."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or "" when it has none (runtimes' messages
    often run to many lines of context)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def describe(exc: BaseException) -> str:
    """``Type: first line``, for recording a failure in a row or a trial."""
    message = first_line(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
