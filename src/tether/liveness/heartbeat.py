"""The heartbeat: one daemon thread per owner, one small write per tick.

The cost is per process, not per session: one ``UPDATE owners`` every
``interval`` (with jitter, so a fleet started together does not beat in step),
whatever the number of sessions the process owns. A heartbeat is not activity:
it never touches ``sessions.last_active_at``. A failed beat (busy database,
network blip) is logged and retried soon; it never raises into the host
program.
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
        name: str = "tether-heartbeat",
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._beat = beat
        self.interval = interval
        self.jitter = jitter
        self._on_start = on_start
        self._halt = threading.Event()
        self.beats = 0

    def stop(self, wait: float = 5.0) -> None:
        self._halt.set()
        if self is not threading.current_thread() and self.is_alive():
            self.join(timeout=wait)

    def _next_delay(self) -> float:
        return self.interval * random.uniform(1 - self.jitter, 1 + self.jitter)

    def run(self) -> None:
        if self._on_start is not None:
            try:
                self._on_start()
            except Exception:
                log.exception("startup sweep failed")
        delay = self._next_delay()
        while not self._halt.wait(delay):
            try:
                self._beat()
                self.beats += 1
                delay = self._next_delay()
            except Exception as exc:
                log.warning("heartbeat failed (%s); retrying", exc)
                delay = min(1.0, self.interval)
