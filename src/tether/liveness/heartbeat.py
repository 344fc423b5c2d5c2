"""The heartbeat: one daemon thread per owner, one small write per tick.

The cost is per process, not per session: one ``UPDATE owners`` every
``interval`` (with jitter, so a fleet started together does not beat in step),
whatever the number of sessions the process owns. A heartbeat is not activity:
it never touches ``sessions.last_active_at``. A failed beat (busy database,
network blip) is logged and retried soon; it never raises into the host
program. A beat that fails, or is still waiting ``slow_after`` seconds later
(a write lock held by another program), calls ``on_slow`` so the owner can
tell whether its lease is at risk.

The thread outlives the sessions it beats for: while ``active()`` is False
(the process owns no open session) a tick writes nothing. Starting and joining
a thread per session cost about 350 µs, a third of a short session's store
time, for a process that runs one session after another.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..threads import PeriodicThread

log = logging.getLogger("tether.liveness")


class HeartbeatThread(PeriodicThread):
    def __init__(
        self,
        beat: Callable[[], None],
        *,
        interval: float,
        jitter: float = 0.2,
        on_start: Callable[[], None] | None = None,
        on_slow: Callable[[], None] | None = None,
        slow_after: float | None = None,
        active: Callable[[], bool] | None = None,
        name: str = "tether-heartbeat",
    ) -> None:
        super().__init__(
            self._tick, interval=interval, jitter=jitter, name=name, on_start=self._start
        )
        self._beat = beat
        self._startup = on_start
        self._on_slow = on_slow
        self._active = active
        self.slow_after = slow_after
        self.beats = 0

    def _start(self) -> None:
        if self._startup is not None:
            try:
                self._startup()
            except Exception:
                log.exception("startup sweep failed")

    def _slow(self) -> None:
        if self._on_slow is not None and not self.stopping:
            try:
                self._on_slow()
            except Exception:
                log.debug("lease check failed", exc_info=True)

    def _watch(self) -> threading.Timer | None:
        """A timer that checks the lease if this beat is still running ``slow_after`` later."""
        if self._on_slow is None or self.slow_after is None:
            return None
        timer = threading.Timer(self.slow_after, self._slow)
        timer.name = f"{self.name}-watch"
        timer.daemon = True
        timer.start()
        return timer

    def _tick(self, woken: bool) -> float | None:
        if self._active is not None and not self._active():
            return None  # nothing owned right now: nothing to keep alive
        watch = self._watch()
        try:
            self._beat()
            self.beats += 1
            return None
        except Exception as exc:
            if self.stopping:  # the store is closing under this beat
                raise
            log.warning("heartbeat failed (%s); retrying", exc)
            self._slow()
            return min(1.0, self.interval)
        finally:
            if watch is not None:
                watch.cancel()
                watch.join()  # at once unless it is checking the lease right now
