"""``tether hermes repair`` (dry run): which open Hermes rows are provably dead, and why.

Hermes has no owner columns, so the evidence comes from outside the row
(reference §2.3): the processes on this host that hold the store open (and when
they started), whether the gateway's lock is held, and the row's last activity.
This module only classifies; it never writes. Classes, per open row:

- ``dead`` (P1, proof): a process-owned row, and no process on this host holds the
  store (checked twice, apart, to catch processes that open it per request) and
  ``gateway.lock`` is free.
- ``probably_dead`` (P2, per row): holders exist, but every one started after the
  row's last activity and none names the row on its command line.
- ``live``: a process-owned row that a holder may own (or the gateway's lock is
  held by a process this user cannot see).
- ``parked``: a messaging-platform row (the gateway resumes it after a restart).
- ``by_design``: an ``api_server`` row (Hermes never ends those).
- ``idle`` (H, listed only): open rows idle longer than ``stale_after``, whatever
  their class; idleness alone never ends anything.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .store import open_readonly, recognise

# Hermes' _is_gateway_owned_source: any source not in this set belongs to a gateway.
NOT_GATEWAY = frozenset(
    {
        "cli", "tui", "desktop", "webui", "local", "acp", "oneshot", "test", "cron", "kanban",
        "subagent", "tool", "api_server", "webhook", "msgraph_webhook", "recovered", "unknown",
    }
)  # fmt: skip
# A holder's start time is known to about a second (/proc/stat's btime is whole
# seconds), so "started after the row's last activity" must hold by this margin.
START_SLACK = 1.0
CLASSES = ("dead", "probably_dead", "live", "parked", "by_design")


@dataclass(frozen=True, slots=True)
class Holder:
    """A process on this host with the store open."""

    pid: int
    started_at: float  # epoch seconds
    cmdline: tuple[str, ...]


@dataclass(slots=True)
class RepairPlan:
    """The open rows of one store by class; ``--yes`` would end ``dead`` and ``probably_dead``."""

    path: Path
    holders: list[Holder]
    gateway_lock_held: bool
    classes: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in CLASSES})
    idle: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "holders": [h.pid for h in self.holders],
            "gateway_lock_held": self.gateway_lock_held,
            "classes": {c: list(ids) for c, ids in self.classes.items()},
            "idle": list(self.idle),
        }


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def holders(path: Path) -> list[Holder]:
    """Processes of this host (that we may see) holding ``path``, its -wal or -shm open.

    This process is left out: its own read-only connection is not an owner.
    """
    base = str(path.resolve())
    targets = {base, base + "-wal", base + "-shm"}
    boot, ticks = _boot_time(), os.sysconf("SC_CLK_TCK")
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{entry.name}/fd")
            if not any(os.readlink(f"/proc/{entry.name}/fd/{fd}") in targets for fd in fds):
                continue
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
            # Field 22 (start time in ticks since boot) counted after the command's ")".
            start_ticks = int(stat.rpartition(")")[2].split()[19])
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = tuple(a.decode(errors="replace") for a in f.read().split(b"\0") if a)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # gone meanwhile, or not ours to see
        found.append(Holder(int(entry.name), boot + start_ticks / ticks, argv))
    return found


def gateway_lock_held(home: Path) -> bool:
    """Whether a live gateway holds ``gateway.lock`` (Hermes' own probe, released at once)."""
    try:
        fd = os.open(home / "gateway.lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def open_rows(path: Path) -> list[tuple[str, str, float]]:
    """(id, source, last activity) of every open row, in one short read transaction."""
    conn = open_readonly(path)
    try:
        recognise(conn, path)
        return [
            (sid, source or "", float(last))
            for sid, source, last in conn.execute(
                "SELECT s.id, s.source, MAX(s.started_at, COALESCE("
                "(SELECT MAX(m.timestamp) FROM messages m WHERE m.session_id = s.id), 0))"
                " FROM sessions s WHERE s.ended_at IS NULL ORDER BY s.id"
            )
        ]
    finally:
        conn.close()


def classify(
    path: Path,
    rows: Sequence[tuple[str, str, float]],
    holder_checks: Sequence[Sequence[Holder]],
    gateway_held: bool,
    *,
    now: float,
    stale_after: float | None = None,
) -> RepairPlan:
    """Pure: the plan for ``rows`` given the evidence (every holder scan, the lock)."""
    seen: dict[int, Holder] = {}
    for scan in holder_checks:
        for h in scan:
            seen.setdefault(h.pid, h)
    plan = RepairPlan(path, list(seen.values()), gateway_held)
    for sid, source, last in rows:
        if source == "api_server":
            cls = "by_design"
        elif source not in NOT_GATEWAY:
            cls = "parked"
        elif not seen and not gateway_held:
            cls = "dead"
        elif seen and all(
            h.started_at > last + START_SLACK and sid not in h.cmdline for h in seen.values()
        ):
            # (No holder seen but the lock held: a gateway we cannot see, so no proof.)
            cls = "probably_dead"
        else:
            cls = "live"
        plan.classes[cls].append(sid)
        if stale_after is not None and now - last > stale_after:
            plan.idle.append(sid)
    return plan


def plan_repair(
    path: str | Path,
    *,
    stale_after: float | None = None,
    recheck_after: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> RepairPlan:
    """Classify the open rows of one store (the dry run); the file is not changed."""
    path = Path(path)
    first = holders(path)
    rows = open_rows(path)
    sleep(recheck_after)  # a process that opens the store per request shows only while it works
    second = holders(path)
    held = gateway_lock_held(path.parent)
    return classify(path, rows, [first, second], held, now=clock(), stale_after=stale_after)
