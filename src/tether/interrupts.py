"""Steps that a signal handler's exception must not cut in two.

A Python signal handler runs on the main thread between two bytecodes, and a
handler that raises (Ctrl+C's ``KeyboardInterrupt``, a program's own
exception, tether's ``SystemExit`` for SIGTERM) lands wherever the main thread
is. Most code is written for that; some is not:

* Python's own ``Thread.start()`` and ``Thread.join()``: a start cut inside its
  wait leaves a condition's lock released twice (``RuntimeError('release
  unlocked lock')`` escaped a program's write loop in CI), and a join cut after
  its lock was taken marks a thread that still runs as stopped;
* recording a session's end, which must not stop half-way (lifecycle.exits).

Such steps run inside :func:`deferred`. On the main thread, tether's handler
(lifecycle.exits) holds a SIGINT, SIGTERM or SIGHUP that arrives meanwhile and
delivers it when the outermost step is done, so the exception surfaces after
the step, never inside it. With ``block=True`` the signals are also blocked at
the OS level for the step: a handler installed over tether's then waits too,
and a thread started inside inherits the mask (signals go to the main thread).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable

SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, name)
)
_CAN_MASK = hasattr(signal, "pthread_sigmask")

_depth = 0  # deferring steps in progress on the main thread
_held: list[int] = []
_deliver: Callable[[int], None] | None = None


def active() -> bool:
    """Whether a step is in progress on the main thread (a signal must wait)."""
    return _depth > 0


def hold(signum: int) -> None:
    """Keep ``signum`` for delivery at the end of the current step."""
    _held.append(signum)


def on_delivery(fn: Callable[[int], None]) -> None:
    """Set what delivers a held signal once the steps are done (tether's handler)."""
    global _deliver
    _deliver = fn


def deferred(*, block: bool = False) -> contextlib.AbstractContextManager[None]:
    """Run the block with termination signals held (see the module's docstring)."""
    return _Deferred(block)


class _Deferred:
    """:func:`deferred`'s step. A class, not a generator context manager: every
    session's end runs one, and the generator's machinery cost 3 to 5 µs of it."""

    __slots__ = ("_block", "_main", "_mask")

    def __init__(self, block: bool) -> None:
        self._block = block
        self._main = False
        self._mask: set[int | signal.Signals] | None = None

    def __enter__(self) -> None:
        global _depth
        self._main = threading.current_thread() is threading.main_thread()
        if self._main:
            # From here on tether's handler holds signals: nothing below is cut (the
            # increment and the return to the ``with`` have no check for pending
            # signals between them).
            _depth += 1
        if self._block and _CAN_MASK:
            try:
                self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
            except BaseException:
                self._leave()
                raise

    def __exit__(self, *exc: object) -> None:
        self._leave()

    def _leave(self) -> None:
        global _depth
        mask, self._mask = self._mask, None
        try:
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        finally:
            if self._main:
                _depth -= 1
                if _depth == 0 and _held:
                    held = list(_held)
                    _held.clear()
                    if _deliver is not None:
                        for signum in held:
                            _deliver(signum)


def reset_after_fork() -> None:
    """A forked child holds nothing of its parent's steps."""
    global _depth
    _depth = 0
    _held.clear()
