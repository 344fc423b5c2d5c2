"""``tether hermes repair``: which open Hermes rows are provably dead, and ending them.

Hermes has no owner columns, so the evidence comes from outside the row
(reference §2.3): the processes on this host that hold the store open (and when
they started), whether the gateway's lock is held, and the row's last activity.
:func:`plan_repair` only reads (the dry run: the file stays byte-identical);
:func:`apply_repair` ends what a plan allows, in short write transactions. Classes,
per open row:

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

What ``--yes`` ends (:attr:`RepairPlan.to_end`): every ``dead`` and ``probably_dead``
row; ``parked`` rows only with ``include_gateway`` and evidence G (the gateway's
lock free, the process ``gateway.pid`` names gone or recycled) on top of the owner
evidence above; ``by_design`` rows only with ``include_api``, that same owner
evidence and idleness beyond ``stale_after`` (an API client may come back to the
same derived id after a restart, so a dead server alone is not the end of it).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import StoreBusyError, StoreError
from .store import open_readonly, open_readwrite, recognise

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
# Why --yes ends a row: the owner evidence, or the flag that opted a class in.
END_GROUNDS = ("dead", "probably_dead", "gateway_dead", "api_idle")
REASON = "reaped"  # the 001 report's own proposal; Hermes has no detail column
BATCH = 50  # rows per write transaction: each one stays a few milliseconds


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
    gateway_pid_alive: bool = False
    classes: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in CLASSES})
    idle: list[str] = field(default_factory=list)
    # What --yes would end, by ground (END_GROUNDS), and each row's last activity as
    # read: the write re-checks it, so a row that moved since is left alone.
    to_end: dict[str, list[str]] = field(default_factory=lambda: {g: [] for g in END_GROUNDS})
    last_activity: dict[str, float] = field(default_factory=dict)

    @property
    def gateway_dead(self) -> bool:
        """Evidence G: the gateway's lock is free and its recorded process is gone."""
        return not self.gateway_lock_held and not self.gateway_pid_alive

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "holders": [h.pid for h in self.holders],
            "gateway_lock_held": self.gateway_lock_held,
            "gateway_pid_alive": self.gateway_pid_alive,
            "classes": {c: list(ids) for c, ids in self.classes.items()},
            "idle": list(self.idle),
            "would_end": {g: list(ids) for g, ids in self.to_end.items()},
        }


@dataclass(slots=True)
class RepairResult:
    """What :func:`apply_repair` did to one store."""

    path: Path
    ended: dict[str, list[str]] = field(default_factory=lambda: {g: [] for g in END_GROUNDS})
    # Planned but not ended: ended by Hermes meanwhile, or active again since the plan.
    skipped: list[str] = field(default_factory=list)
    transactions: int = 0
    longest_transaction: float = 0.0  # seconds, lock wait included

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "ended": {g: list(ids) for g, ids in self.ended.items()},
            "skipped": list(self.skipped),
            "transactions": self.transactions,
            "longest_transaction_ms": round(self.longest_transaction * 1000, 3),
        }


class HoldersChangedError(StoreBusyError):
    """A process opened the store between the plan and the write: nothing was ended."""


def _start_ticks(pid: int) -> int:
    """Field 22 of ``/proc/<pid>/stat`` (start time in ticks since boot)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # Counted after the command's ")": the command itself may hold spaces and parentheses.
    return int(stat.rpartition(")")[2].split()[19])


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
            start_ticks = _start_ticks(int(entry.name))
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


def gateway_pid_alive(home: Path) -> bool:
    """Whether the process ``gateway.pid`` records still runs (same pid, same start time).

    No file: no gateway recorded here. A file that cannot be read as Hermes writes
    it counts as alive: without evidence the gateway is gone, nothing is ended.
    """
    try:
        record = json.loads((home / "gateway.pid").read_text())
        pid, started = int(record["pid"]), record.get("start_time")
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError):
        return True
    try:
        ticks = _start_ticks(pid)
    except (FileNotFoundError, ProcessLookupError):
        return False  # gone
    except (OSError, ValueError, IndexError):
        return True
    return started is None or int(started) == ticks  # a different start time: pid recycled


def _last_activity_sql(session_columns: frozenset[str]) -> str:
    """A row's last activity: its start, its newest message, and (git-main generations
    after 0.19) its own ``last_activity_at``, whichever is latest."""
    parts = ["s.started_at", "COALESCE((SELECT MAX(m.timestamp) FROM messages m"
             " WHERE m.session_id = s.id), 0)"]  # fmt: skip
    if "last_activity_at" in session_columns:
        parts.append("COALESCE(s.last_activity_at, 0)")
    return f"MAX({', '.join(parts)})"


def open_rows(path: Path) -> list[tuple[str, str, float]]:
    """(id, source, last activity) of every open row, in one short read transaction."""
    conn = open_readonly(path)
    try:
        store = recognise(conn, path)
        return [
            (sid, source or "", float(last))
            for sid, source, last in conn.execute(
                f"SELECT s.id, s.source, {_last_activity_sql(store.session_columns)}"
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
    gateway_alive: bool = False,
    include_gateway: bool = False,
    include_api: bool = False,
) -> RepairPlan:
    """Pure: the plan for ``rows`` given the evidence (every holder scan, the lock,
    whether ``gateway.pid``'s process runs) and the classes opted in."""
    seen: dict[int, Holder] = {}
    for scan in holder_checks:
        for h in scan:
            seen.setdefault(h.pid, h)
    plan = RepairPlan(path, list(seen.values()), gateway_held, gateway_alive)
    for sid, source, last in rows:
        if not seen and not gateway_held:
            owner = "dead"
        elif seen and all(
            h.started_at > last + START_SLACK and sid not in h.cmdline for h in seen.values()
        ):
            # (No holder seen but the lock held: a gateway we cannot see, so no proof.)
            owner = "probably_dead"
        else:
            owner = "live"
        idle = stale_after is not None and now - last > stale_after
        ground: str | None = None
        if source == "api_server":
            cls = "by_design"
            if include_api and idle and owner != "live":
                ground = "api_idle"
        elif source not in NOT_GATEWAY:
            cls = "parked"
            if include_gateway and plan.gateway_dead and owner != "live":
                ground = "gateway_dead"
        else:
            cls = ground = owner
            if owner == "live":
                ground = None
        plan.classes[cls].append(sid)
        if idle:
            plan.idle.append(sid)
        if ground is not None:
            plan.to_end[ground].append(sid)
            plan.last_activity[sid] = last
    return plan


def plan_repair(
    path: str | Path,
    *,
    stale_after: float | None = None,
    include_gateway: bool = False,
    include_api: bool = False,
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
    return classify(
        path,
        rows,
        [first, second],
        held,
        now=clock(),
        stale_after=stale_after,
        gateway_alive=gateway_pid_alive(path.parent),
        include_gateway=include_gateway,
        include_api=include_api,
    )


# First reason wins (Hermes' own rule): only a row still open, and with no activity
# since the plan read it, is ended. ``ended_at`` is never before its last activity.
END_SQL = (
    "UPDATE sessions SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL"
    " AND started_at <= ?"
    " AND NOT EXISTS (SELECT 1 FROM messages WHERE session_id = ? AND timestamp > ?)"
)


def apply_repair(
    plan: RepairPlan,
    *,
    clock: Callable[[], float] = time.time,
    batch: int = BATCH,
) -> RepairResult:
    """End the rows ``plan.to_end`` names with reason ``reaped``; what was ended.

    The holders are scanned again first: a process that opened the store since the
    plan may own a row, so nothing is written (:class:`HoldersChangedError`). Each
    write transaction is one ``BEGIN IMMEDIATE``, at most ``batch`` single-row
    updates and ``COMMIT``: milliseconds, while a live Hermes waits up to ~16 s.
    """
    path = plan.path
    planned = [(g, sid) for g in END_GROUNDS for sid in plan.to_end[g]]
    result = RepairResult(path)
    if not planned:
        return result
    known = {h.pid for h in plan.holders}
    new = [h.pid for h in holders(path) if h.pid not in known]
    if new or (gateway_lock_held(path.parent) and not plan.gateway_lock_held):
        what = f"process {', '.join(map(str, new))}" if new else "a gateway"
        raise HoldersChangedError(
            f"{str(path)!r}: {what} opened the store since it was examined; nothing ended, "
            "run repair again"
        )
    with open_readwrite(path) as conn:
        extra = ""
        store = recognise(conn, path)
        if "last_activity_at" in store.session_columns:
            extra = " AND COALESCE(last_activity_at, 0) <= ?"
        for start in range(0, len(planned), batch):
            chunk = planned[start : start + batch]
            began = time.monotonic()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for ground, sid in chunk:
                        last = plan.last_activity[sid]
                        args: tuple[Any, ...] = (max(clock(), last), REASON, sid, last, sid, last)
                        cur = conn.execute(END_SQL + extra, args + ((last,) if extra else ()))
                        if cur.rowcount == 1:
                            result.ended[ground].append(sid)
                        else:
                            result.skipped.append(sid)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                done = sum(len(ids) for ids in result.ended.values())
                raise StoreError(
                    f"{str(path)!r}: could not end rows ({done} ended before): {exc}"
                ) from exc
            result.transactions += 1
            result.longest_transaction = max(result.longest_transaction, time.monotonic() - began)
    return result
