"""Clocks: the only place tether reads the time.

Pure logic (reaper policy, gateway registry) takes a clock instead of calling
``time`` so tests can move time by hand instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time in seconds since the epoch (stored in the database)."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds, for intervals that must not jump with the wall clock."""
        ...


class SystemClock:
    """The real clock."""

    now = staticmethod(time.time)
    monotonic = staticmethod(time.monotonic)


class ManualClock:
    """A clock that only moves when told to; thread-safe."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._t = start
        self._m = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._t

    def monotonic(self) -> float:
        with self._lock:
            return self._m

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._t += seconds
            self._m += seconds


SYSTEM_CLOCK = SystemClock()
