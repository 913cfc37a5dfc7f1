"""Signals that end a run (SIGTERM, SIGHUP, Ctrl-C), held back during the few steps
that must not be cut in two.

The command line turns SIGTERM and SIGHUP into ``SystemExit(128 + N)`` and
Ctrl-C into ``KeyboardInterrupt``, so the run unwinds and removes its
temporaries. Python runs a signal handler between any two bytecodes of the
main thread, including inside ``os.fork()``'s at-fork callbacks (where an
exception is printed and *ignored*: the run would go on and commit) and
between creating a temporary file and recording it (which would then be
left behind). Inside :func:`held` a signal is noted and raised when the
block ends.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

_depth = 0
_pending: int | None = None


def on_signal(signum: int, frame) -> None:
    """The handler the command line installs for SIGTERM, SIGHUP and SIGINT."""
    global _pending
    if _depth:
        _pending = signum
        return
    _raise(signum)


def _raise(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


@contextmanager
def held():
    """Hold back the run-ending signals until the block is over (main thread only)."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            signum, _pending = _pending, None
            _raise(signum)
