"""How the long-running servers (``tether serve``, ``tether web``) run Python's cyclic collector.

CPython's defaults suit short scripts: a young collection every 700 net
container allocations, and a full collection, walking every tracked object,
each time the old generation has grown by a quarter. In a server, "every
object" is mostly what start-up built (modules, classes, the ASGI stack), and
it never becomes garbage. Measured in the gateway at 50 connections
(``python -m bench gateway``'s load): each full collection paused the event
loop for 13 to 17 ms, delaying every turn in flight, which made most of the
prompt latency's p99; the collector took about 5% of the CPU.

:func:`tune_for_server` collects once, then freezes what exists (it is never
walked again: :func:`gc.freeze`) and collects young objects every ``YOUNG``
allocations instead of 700. Garbage cycles are still freed, in fewer, larger
collections; the frozen objects stay for the life of the process, as they
would anyway. :class:`GcMeter` counts collections and their longest pause,
for ``gateway.info`` and ``/metrics``.
"""

from __future__ import annotations

import gc
import time
from typing import Any

# Net container allocations between young collections (CPython's default: 700).
YOUNG = 10_000

_meter: GcMeter | None = None


class GcMeter:
    """Counts this process's collections and the longest pause (a ``gc.callbacks`` hook)."""

    def __init__(self) -> None:
        self.collections = 0
        self.pause_max = 0.0  # seconds
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.collections += 1
        self.pause_max = max(self.pause_max, time.perf_counter() - self._started)

    def stats(self) -> dict[str, float]:
        return {
            "gc_collections": self.collections,
            "gc_pause_max_ms": round(self.pause_max * 1000, 2),
            "gc_frozen_objects": gc.get_freeze_count(),
        }


def tune_for_server() -> GcMeter:
    """Freeze what start-up built and collect young objects every ``YOUNG``
    allocations; call once, when the server's code is imported (idempotent)."""
    global _meter
    if _meter is None:
        _meter = GcMeter()  # counting from the collection below
        gc.collect()  # garbage left by start-up would otherwise be frozen for good
        gc.freeze()
        _, middle, old = gc.get_threshold()
        gc.set_threshold(YOUNG, middle, old)
    return _meter


def stats() -> dict[str, float]:
    """The collector's figures since :func:`tune_for_server` ({} if it was not called)."""
    return {} if _meter is None else _meter.stats()
