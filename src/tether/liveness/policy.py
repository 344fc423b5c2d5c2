"""When is an owner dead? Pure logic: no I/O except through the ``probe`` it is given.

An owner is judged in one of two ways, never both:

1. **It can be probed** (same host, same boot id, same PID namespace as the
   judge): the probe decides, whatever its heartbeat says. Its pid is gone,
   or now belongs to another process (another start time) → dead at once.
   Found (running, sleeping, or stopped by SIGSTOP, Ctrl+Z or a debugger) →
   alive; if its heartbeat is older than its lease as well it is *hung*,
   which ``tether doctor`` reports and no reaper acts on.
2. **It cannot be probed** (another host, another boot of a host with the
   same name, another PID namespace): its heartbeat decides, against the
   lease the owner itself promised (stored in its row). A reaper may ask
   for a longer grace (``ttl``), never a shorter one. A reaper that paused
   (its wall clock and monotonic clock drifted apart: suspend, clock step)
   gives no heartbeat verdict until a full lease has passed since.

A live process keeps its heartbeat fresh from a daemon thread, so a long tool
call in its main thread never makes it look dead anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..store.owners import DEFAULT_LEASE, OwnerInfo
from .identity import Probe

__all__ = ["ALIVE", "DEFAULT_LEASE", "OwnerInfo", "PauseDetector", "Verdict", "judge"]

# Wall and monotonic clocks may drift apart this much between two sweeps before
# the reaper counts it as its own pause (NTP slews far slower than this).
PAUSE_TOLERANCE = 2.0


@dataclass(frozen=True, slots=True)
class Verdict:
    alive: bool
    detail: str  # why it is dead (or "alive")
    by_heartbeat: bool = False  # decided by the heartbeat's age alone
    hung: bool = False  # alive by the probe, but its heartbeat is older than its lease


ALIVE = Verdict(True, "alive")


def judge(
    owner: OwnerInfo,
    *,
    host: str,
    boot_id: str,
    now: float,
    probe: Callable[[int, int | None], Probe],
    pid_ns: str | None = None,
    ttl: float | None = None,
    quiet_for: float = math.inf,
) -> Verdict:
    """Decide whether ``owner`` is alive, as seen from ``host``/``boot_id``/``pid_ns``.

    ``now`` is on the clock the heartbeat was written with (the database
    server's on PostgreSQL). ``ttl`` is the judge's own grace: the owner's
    lease counts if it is longer. ``quiet_for`` is how long ago the judge
    last noticed a pause of its own (see :class:`PauseDetector`).
    """
    lease = owner.lease if ttl is None else max(owner.lease, ttl)
    age = now - owner.heartbeat_at
    if owner.host == host and owner.boot_id == boot_id and owner.pid_ns == pid_ns:
        result = probe(owner.pid, owner.pid_start_time)
        if result is Probe.GONE:
            return Verdict(False, f"pid {owner.pid} gone")
        if result is Probe.REUSED:
            return Verdict(False, f"pid {owner.pid} reused")
        if age > lease:
            return Verdict(True, f"alive, no heartbeat for {age:.0f} s", hung=True)
        return ALIVE
    if age > lease and quiet_for >= lease:
        return Verdict(False, f"heartbeat stale {age:.0f} s", by_heartbeat=True)
    return ALIVE


class PauseDetector:
    """Notices that its process paused: the wall clock moved unlike the monotonic one.

    A suspended laptop, an NTP step or a stopped VM moves the wall clock
    (which heartbeats are written with) without moving the monotonic clock
    the same way; every heartbeat then looks older (or newer) than it is.
    :meth:`observe` is called once per sweep and returns how many seconds
    have passed since the last pause it noticed (infinity if none).
    """

    def __init__(self, tolerance: float = PAUSE_TOLERANCE) -> None:
        self.tolerance = tolerance
        self._last: tuple[float, float] | None = None
        self._paused_at: float | None = None  # monotonic time of the last pause seen

    def observe(self, *, wall: float, mono: float) -> float:
        if self._last is not None:
            wall0, mono0 = self._last
            if abs((wall - wall0) - (mono - mono0)) > self.tolerance:
                self._paused_at = mono
        self._last = (wall, mono)
        return math.inf if self._paused_at is None else mono - self._paused_at
