"""Who a process is, in a way that survives pid reuse and reboots.

A pid alone is not an identity: pids are reused, and after a reboot every pid
means something else. A process is (host, boot id, pid, pid start time); the
start time comes from ``/proc/PID/stat`` (clock ticks since boot), the boot id
from ``/proc/sys/kernel/random/boot_id``.
"""

from __future__ import annotations

import enum
import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path

_BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


def read_boot_id() -> str:
    """This boot's id; on systems without /proc, the boot time stands in."""
    try:
        return _BOOT_ID_FILE.read_text().strip()
    except OSError:
        pass
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return "btime-" + line.split()[1]
    except OSError:
        pass
    return "unknown"


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` from the state on (field 3 is index 0)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    return raw[raw.rfind(")") + 2 :].split()


def pid_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if unknown/gone."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None  # field 22 overall
    except (IndexError, ValueError):
        return None


class Probe(enum.Enum):
    ALIVE = "alive"
    GONE = "gone"
    REUSED = "reused"


def probe_pid(pid: int, start_time: int | None) -> Probe:
    """Is the process with this pid and start time still running on this host?"""
    if pid <= 0:
        return Probe.GONE
    try:
        os.kill(pid, 0)
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return Probe.GONE
        # EPERM: it exists but belongs to another user; the start time still tells.
    fields = _stat_fields(pid)
    if not fields:
        return Probe.ALIVE  # no /proc here: the signal probe is all we have
    if fields[0] in ("Z", "X"):  # exited, not yet waited for: it serves nothing
        return Probe.GONE
    if start_time is not None and len(fields) > 19 and fields[19] != str(start_time):
        return Probe.REUSED
    return Probe.ALIVE


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    host: str
    boot_id: str
    pid: int
    start_time: int | None

    @classmethod
    def current(cls) -> ProcessIdentity:
        pid = os.getpid()
        return cls(socket.gethostname(), read_boot_id(), pid, pid_start_time(pid))

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"
