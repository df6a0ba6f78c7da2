"""The reason a run failed, as the last thing the user reads.

A bundle step that fails deep inside a config expression reaches the user through MONAI's
``ConfigExpression``, which re-raises every error as ``RuntimeError: Failed to evaluate ...`` *from* it: Python
then prints the real error (the file a datalist check named, say) in the middle of a long traceback, and the
wrapper last. :func:`root_cause` finds the real error; :func:`report_root_cause`, called by the bundles'
``initialize``, installs a ``sys.excepthook`` (Python's hook for exactly this) that prints the traceback as
usual and then the root cause as its last line.
"""

from __future__ import annotations

import sys
from types import TracebackType

__all__ = ["root_cause", "report_root_cause"]


def root_cause(error: BaseException) -> str:
    """``"Type: message"``, on one line, of the innermost exception ``error`` was raised from (its
    ``__cause__`` chain, else the exception it was raised while handling), e.g. the mask a datalist check
    named, not the bundle's ``RuntimeError: Failed to evaluate ConfigExpression`` around it."""
    seen = {id(error)}
    while True:
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None or id(inner) in seen:
            # one line: a job's output is read from its last lines, and a datalist error lists a problem a line
            lines = (line.strip() for line in str(error).splitlines())
            return f"{type(error).__name__}: " + "; ".join(line for line in lines if line)
        seen.add(id(inner))
        error = inner


def _hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    sys.__excepthook__(kind, error, tb)
    if error.__cause__ is not None or error.__context__ is not None:
        print(f"\nmonai-pixelcam: the run failed: {root_cause(error)}", file=sys.stderr, flush=True)


def report_root_cause() -> None:
    """Make an uncaught error end with its root cause (module docstring). Idempotent; returns None, so that a
    bundle's ``initialize`` can list it."""
    sys.excepthook = _hook
