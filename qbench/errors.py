"""The one exception type for expected user errors."""


class QbenchError(Exception):
    """Bad input or an unusable environment, caused by the user rather than a bug.

    The CLI prints it as one line and exits with status 2; anything else keeps its traceback.
    The message names what is wrong and how to fix it.
    """
