"""Background threads and fork(): the helpers every layer shares.

:class:`PeriodicThread` is the one loop behind the heartbeat, the reaper loop
and the SQLite checkpointer: a daemon thread that calls a function every
``interval`` seconds (jittered), can be woken early, and stops (joined) when
told; it starts and is joined with termination signals held (:func:`start`,
:func:`join`: Python's own start and join break if a handler's exception cuts
them, see tether.interrupts). :func:`at_fork_in_child` and :func:`abandon` are
the fork-safety rules: a child process re-initialises its per-process state, and never uses or
closes what it inherited (a SQLite connection closed in the child drops the
parent's POSIX locks; a PostgreSQL socket closed there ends the parent's
session), so such objects are kept alive, unused, until the child exits.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Callable

from .interrupts import deferred

log = logging.getLogger("tether.threads")

# Objects inherited across fork(): never used, closed or collected by the child.
_graveyard: list[object] = []


def abandon(*objects: object) -> None:
    """Keep ``objects`` (inherited across fork) alive and untouched in this child."""
    _graveyard.extend(objects)


def at_fork_in_child(fn: Callable[[], None]) -> None:
    """Call ``fn`` in the child after every ``fork()`` (where the OS has fork)."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=fn)


def join(thread: threading.Thread, timeout: float) -> None:
    """Join ``thread`` (up to ``timeout`` s) with signals held: a join cut by a signal
    handler's exception would mark a thread that still runs as stopped."""
    with deferred(block=True):
        thread.join(timeout)


def start(thread: threading.Thread) -> None:
    """Start ``thread`` with signals held (Python's start is not written to be cut)."""
    with deferred(block=True):
        thread.start()


class PeriodicThread(threading.Thread):
    """Calls ``tick`` every ``interval`` seconds (± ``jitter``) until :meth:`stop`.

    ``tick`` returns the delay before its next call, or None for the usual
    one (a failed heartbeat retries sooner). :meth:`wake` makes the next call
    happen at once. An exception from ``tick`` is logged and the loop goes on,
    unless the thread is being stopped (the store is closing under it).
    ``on_start`` runs once on the thread before the first wait; ``on_stop``
    once after the last tick (it may close what ``on_start`` opened).
    """

    def __init__(
        self,
        tick: Callable[[bool], float | None],
        *,
        interval: float,
        jitter: float = 0.1,
        name: str,
        on_start: Callable[[], None] | None = None,
        on_stop: Callable[[], None] | None = None,
        first_at_once: bool = False,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._tick = tick
        self.interval = interval
        self.jitter = jitter
        self._on_start = on_start
        self._on_stop = on_stop
        self._first_at_once = first_at_once
        self._halt = threading.Event()
        self._wake = threading.Event()
        self.ticks = 0

    @property
    def stopping(self) -> bool:
        return self._halt.is_set()

    def next_delay(self) -> float:
        return self.interval * random.uniform(1 - self.jitter, 1 + self.jitter)

    def start(self) -> None:
        """Start the thread; a signal arriving meanwhile waits until it runs (tether.interrupts)."""
        with deferred(block=True):
            super().start()

    def wake(self) -> None:
        """Run the next tick now (``tick`` is told it was woken)."""
        # Event.set() enters a Condition whose __enter__ is Python code: a handler's
        # exception landing there leaves its lock taken for good, and the next
        # set() (this thread, at the next wake or stop) waits on it forever.
        with deferred():
            self._wake.set()

    def stop(self, wait: float = 5.0) -> None:
        """Stop the loop and join the thread (up to ``wait`` seconds)."""
        with deferred(block=True):  # as in wake(); and a cut join is a broken join
            self._halt.set()
            self._wake.set()
            if self is not threading.current_thread() and self.is_alive():
                self.join(wait)

    def run(self) -> None:
        try:
            if self._on_start is not None:
                self._on_start()
            delay = 0.0 if self._first_at_once else self.next_delay()
            while not self._halt.is_set():
                woken = self._wake.wait(delay) if delay > 0 else False
                self._wake.clear()
                if self._halt.is_set():
                    break
                try:
                    wanted = self._tick(woken)
                except Exception:
                    if self._halt.is_set():
                        break
                    log.exception("%s: tick failed", self.name)
                    wanted = None
                self.ticks += 1
                delay = self.next_delay() if wanted is None else wanted
        finally:
            if self._on_stop is not None:
                self._on_stop()
