"""Every exit path ends the session.

Open handles are tracked here. On the first one, tether registers an
``atexit`` hook and, from the main thread, handlers for SIGTERM, SIGHUP and
SIGINT that chain to whatever was installed before.

Signals are turned into unwinding, never into database work inside the signal
handler: the handler may interrupt the main thread in the middle of a write
transaction, so ending sessions right there could deadlock on the store's
writer lock. Instead:

* a signal whose previous disposition was "terminate" (SIG_DFL) raises
  ``SystemExit(128 + signum)``; ``with`` blocks end their sessions as the stack
  unwinds and the ``atexit`` hook ends the rest, with reason ``signal``;
* SIGINT keeps Python's behaviour (``KeyboardInterrupt``), so a program can
  still catch Ctrl+C to interrupt a turn; if it escapes, the sessions end with
  reason ``signal`` / ``SIGINT``;
* a previous Python handler is simply called; an ignored signal stays ignored.

While sessions are being finalized on the main thread, incoming SIGINT,
SIGTERM and SIGHUP are deferred until the end is recorded and its
``on_session_end`` hooks ran, so a second Ctrl+C cannot leave a session
half-ended or its hooks unfired; they are delivered afterwards.

Threads. Python lets only the main thread install signal handlers, so they
are installed when a store is opened there (:func:`prepare`), not only when
the first session starts: a program whose sessions are all created by worker
threads still ends them on SIGTERM/SIGHUP. (A store opened on a worker thread
cannot do this; its sessions then end at a normal exit or by the reaper.)
And Python joins non-daemon threads *before* it runs ``atexit`` hooks, so a
program whose own ``atexit`` hook stops its worker thread would hang forever
once a signal turned into ``SystemExit``, the session open and its owner
heartbeating. So when a signal is taking the process down, tether runs the
``atexit`` hooks (its own, which end the sessions, and the program's) first,
gives the remaining non-daemon threads :data:`THREAD_GRACE` seconds to finish,
and then exits with status 128 + signal number, as the default disposition
would have terminated the process anyway.

Processes killed by SIGKILL, OOM or power loss run none of this; the liveness
reaper ends their sessions.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import interrupts
from ..errors import MessagesLostError, TetherError
from ..threads import at_fork_in_child

if TYPE_CHECKING:
    from ..store import StoreCore
    from .handle import SessionHandle

log = logging.getLogger("tether.lifecycle")

SIGNALS = interrupts.SIGNALS

_lock = threading.Lock()
_handles: dict[int, SessionHandle] = {}
_atexit_installed = False
_signals_installed = False
_previous: dict[int, Any] = {}
_exit_signal: int | None = None  # a signal that is taking the process down
_uncaught: BaseException | None = None  # what escaped the main module, if anything
_exiting = False


def track(handle: SessionHandle) -> None:
    with _lock:
        _handles[id(handle)] = handle
    if not (_atexit_installed and _signals_installed):
        _install()


def untrack(handle: SessionHandle) -> None:
    with _lock:
        _handles.pop(id(handle), None)


def open_handles() -> list[SessionHandle]:
    with _lock:
        return list(_handles.values())


def prepare() -> None:
    """Install the exit paths now, signal handlers included if this is the main thread.

    Called when a store is opened, so that sessions started later by worker
    threads (which cannot install signal handlers) are covered too.
    """
    if not (_atexit_installed and _signals_installed):
        _install()


def _install() -> None:
    global _atexit_installed, _signals_installed
    with _lock:
        if not _atexit_installed:
            atexit.register(_at_exit)
            register_before_join = getattr(threading, "_register_atexit", None)
            if register_before_join is not None:  # CPython 3.9+; without it, Python's order
                with contextlib.suppress(RuntimeError):  # already shutting down
                    register_before_join(_before_joining_threads)
            previous_hook = sys.excepthook

            def excepthook(tp: Any, value: BaseException, tb: Any) -> None:
                global _uncaught
                _uncaught = value
                previous_hook(tp, value, tb)

            sys.excepthook = excepthook
            _atexit_installed = True
        if _signals_installed or threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            previous = signal.getsignal(sig)
            if previous is None:  # installed by C code we cannot chain to: leave it alone
                continue
            _previous[sig] = previous
            signal.signal(sig, _on_signal)
        _signals_installed = True


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _on_signal(signum: int, frame: Any) -> Any:
    global _exit_signal
    if interrupts.active():
        # A step that must not be cut is under way on this very thread (an end
        # being recorded, a thread starting): finish it first (tether.interrupts).
        interrupts.hold(signum)
        return None
    previous = _previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        return previous(signum, frame)
    if previous == signal.SIG_IGN:
        return None
    # The signal would have terminated the process: unwind so every exit path runs.
    _exit_signal = signum
    raise SystemExit(128 + signum)


def _deliver_held(signum: int) -> None:
    if not _exiting:  # the exit paths already run: nothing more to unwind
        _on_signal(signum, None)


interrupts.on_delivery(_deliver_held)


def finalizing() -> contextlib.AbstractContextManager[None]:
    """Defer termination signals on the main thread while an end is recorded."""
    return interrupts.deferred()


def reason_for_exception(exc: BaseException | None) -> tuple[str, str | None]:
    """The end reason and detail for a ``with`` block left by ``exc``."""
    if exc is None:
        return "completed", None
    if isinstance(exc, KeyboardInterrupt):
        return "signal", "SIGINT"
    if isinstance(exc, SystemExit):
        if _exit_signal is not None:
            return "signal", signal_name(_exit_signal)
        return "process_exit", f"SystemExit({exc.code!r})"
    return "error", f"{type(exc).__name__}: {exc}"


def _exit_reason() -> tuple[str, str]:
    if _exit_signal is not None:
        return "signal", signal_name(_exit_signal)
    if isinstance(_uncaught, KeyboardInterrupt):
        return "signal", "SIGINT"
    if _uncaught is not None:
        return "error", f"uncaught {type(_uncaught).__name__}: {_uncaught}"
    return "process_exit", "the process exited without ending the session"


def _end_all(handles: list[SessionHandle], reason: str, detail: str | None) -> None:
    for handle in handles:
        try:
            handle.end(reason, detail, interrupted=True)
        except MessagesLostError as exc:  # ended (as "error"), but not with everything
            log.error("%s", exc)
        except TetherError as exc:  # the store is gone or unreachable: the reaper will end it
            log.error("could not end session %s (%s): %s", handle.id, reason, exc)
        except Exception:
            log.exception("could not end session %s (%s)", handle.id, reason)


_after_handles: list[Callable[[], None]] = []


def after_handles(fn: Callable[[], None]) -> None:
    """Run ``fn`` at exit once every open handle has been ended (e.g. drop the owner row)."""
    if fn not in _after_handles:
        _after_handles.append(fn)
    if not _atexit_installed:
        _install()


def _at_exit() -> None:
    global _exiting
    _exiting = True
    reason, detail = _exit_reason()
    _end_all(open_handles(), reason, detail)
    for fn in list(_after_handles):
        try:
            fn()
        except Exception:
            log.exception("exit hook %r failed", fn)


# Seconds that non-daemon threads get to finish when a signal takes the process
# down, once the atexit hooks ran (without tether it would be killed at once).
THREAD_GRACE = 5.0


def _before_joining_threads() -> None:
    """First step of Python's shutdown, before it joins non-daemon threads, then runs atexit."""
    if _exit_signal is None:
        return  # an ordinary exit keeps Python's order
    # A terminating signal: end the sessions and let the program's own atexit
    # clean-up stop its threads now, or the join below could wait forever.
    atexit._run_exitfuncs()
    deadline = time.monotonic() + THREAD_GRACE
    me = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not me and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threading.enumerate() if t is not me and not t.daemon and t.is_alive()]
    if stuck:
        log.warning(
            "%s: threads %s still running after %.0f s; exiting without them",
            signal_name(_exit_signal),
            ", ".join(stuck),
            THREAD_GRACE,
        )
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(128 + _exit_signal)


def end_handles_of(store: StoreCore, reason: str, detail: str | None) -> None:
    """End every open handle of ``store`` (used when the store is closed)."""
    _end_all([h for h in open_handles() if h.store is store], reason, detail)


def _after_fork_in_child() -> None:
    # The child does not own its parent's sessions: never end them from here.
    global _lock
    _lock = threading.Lock()
    _handles.clear()
    _after_handles.clear()
    interrupts.reset_after_fork()


at_fork_in_child(_after_fork_in_child)
