"""When is an owner dead? Pure logic: no I/O except through the ``probe`` it is given.

An owner is dead when

1. it ran on this host in this boot and its pid is gone, or the pid now
   belongs to another process (another start time);
2. it ran on a host of this name but in another boot (the host rebooted);
3. anywhere, its heartbeat is older than ``ttl``.

Rule 3 is the only one that applies to other hosts: a reaper never judges a
remote process by anything but its heartbeat. A live process keeps its
heartbeat fresh from a daemon thread, so a long tool call in its main thread
never makes it look dead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .identity import Probe


@dataclass(frozen=True, slots=True)
class OwnerInfo:
    """An ``owners`` row."""

    id: str
    host: str
    boot_id: str
    pid: int
    pid_start_time: int | None
    kind: str
    started_at: float
    heartbeat_at: float

    def describe(self) -> str:
        return f"{self.kind} pid {self.pid} on {self.host}"


@dataclass(frozen=True, slots=True)
class Verdict:
    alive: bool
    detail: str  # why it is dead (or "alive")
    by_heartbeat: bool = False  # decided by the heartbeat's age alone


ALIVE = Verdict(True, "alive")


def judge(
    owner: OwnerInfo,
    *,
    host: str,
    boot_id: str,
    now: float,
    ttl: float,
    probe: Callable[[int, int | None], Probe],
) -> Verdict:
    """Decide whether ``owner`` is alive, as seen from a process on ``host``/``boot_id``."""
    if owner.host == host:
        if owner.boot_id != boot_id:
            return Verdict(False, "host rebooted")
        result = probe(owner.pid, owner.pid_start_time)
        if result is Probe.GONE:
            return Verdict(False, f"pid {owner.pid} gone")
        if result is Probe.REUSED:
            return Verdict(False, f"pid {owner.pid} reused")
    age = now - owner.heartbeat_at
    if age > ttl:
        return Verdict(False, f"heartbeat stale {age:.0f} s", by_heartbeat=True)
    return ALIVE
