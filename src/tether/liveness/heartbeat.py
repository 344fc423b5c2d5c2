"""The heartbeat: one daemon thread per owner, one small write per tick.

The cost is per process, not per session: one ``UPDATE owners`` every
``interval`` (with jitter, so a fleet started together does not beat in step),
whatever the number of sessions the process owns. A heartbeat is not activity:
it never touches ``sessions.last_active_at``. A failed beat (busy database,
network blip) is logged and retried soon; it never raises into the host
program. A beat that fails, or is still waiting ``slow_after`` seconds later
(a write lock held by another program), calls ``on_slow`` so the owner can
tell whether its lease is at risk.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

log = logging.getLogger("tether.liveness")


class HeartbeatThread(threading.Thread):
    def __init__(
        self,
        beat: Callable[[], None],
        *,
        interval: float,
        jitter: float = 0.2,
        on_start: Callable[[], None] | None = None,
        on_slow: Callable[[], None] | None = None,
        slow_after: float | None = None,
        name: str = "tether-heartbeat",
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._beat = beat
        self.interval = interval
        self.jitter = jitter
        self._on_start = on_start
        self._on_slow = on_slow
        self.slow_after = slow_after
        self._halt = threading.Event()
        self.beats = 0

    def stop(self, wait: float = 5.0) -> None:
        self._halt.set()
        if self is not threading.current_thread() and self.is_alive():
            self.join(timeout=wait)

    def _next_delay(self) -> float:
        return self.interval * random.uniform(1 - self.jitter, 1 + self.jitter)

    def _slow(self) -> None:
        if self._on_slow is not None and not self._halt.is_set():
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

    def run(self) -> None:
        if self._on_start is not None:
            try:
                self._on_start()
            except Exception:
                log.exception("startup sweep failed")
        delay = self._next_delay()
        while not self._halt.wait(delay):
            watch = self._watch()
            try:
                self._beat()
                self.beats += 1
                delay = self._next_delay()
            except Exception as exc:
                if self._halt.is_set():  # the store is closing under this beat
                    return
                log.warning("heartbeat failed (%s); retrying", exc)
                self._slow()
                delay = min(1.0, self.interval)
            finally:
                if watch is not None:
                    watch.cancel()
                    watch.join()  # at once unless it is checking the lease right now
