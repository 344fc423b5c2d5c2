"""Who a process is, in a way that survives pid reuse and reboots.

A pid alone is not an identity: pids are reused, after a reboot every pid
means something else, and in another PID namespace (a container sharing the
host's name) the same number names another process. A process is (host, boot
id, PID namespace, pid, pid start time); the start time comes from
``/proc/PID/stat`` (clock ticks since boot), the boot id from
``/proc/sys/kernel/random/boot_id``, the namespace from the inode of
``/proc/self/ns/pid``. Two processes can probe each other's pids only when
host, boot id and namespace all match (:meth:`ProcessIdentity.probes`).
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


def read_pid_ns() -> str | None:
    """This process's PID namespace (the inode of ``/proc/self/ns/pid``), None if unknown."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return None


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
    """What a look at a local pid found. A stopped process (state T/t) is ALIVE."""

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
    if fields[0] in ("Z", "X", "x"):  # exited, not yet waited for: it serves nothing
        return Probe.GONE
    # Any other state is a process that can go on: running, sleeping, in disk I/O,
    # or stopped (T: SIGSTOP, Ctrl+Z; t: a debugger), which is not a death.
    if start_time is not None and len(fields) > 19 and fields[19] != str(start_time):
        return Probe.REUSED
    return Probe.ALIVE


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """Who a process is: host, boot id, pid, pid start time and PID namespace."""

    host: str
    boot_id: str
    pid: int
    start_time: int | None
    pid_ns: str | None = None

    @classmethod
    def current(cls) -> ProcessIdentity:
        pid = os.getpid()
        return cls(socket.gethostname(), read_boot_id(), pid, pid_start_time(pid), read_pid_ns())

    def probes(self, host: str, boot_id: str, pid_ns: str | None) -> bool:
        """Can this process probe the pids of a process on ``host``/``boot_id``/``pid_ns``?

        Only on the same host, in the same boot and the same PID namespace: a
        pid number means the same process only there. (Two unknown namespaces,
        on a system without /proc, count as the same.)
        """
        return host == self.host and boot_id == self.boot_id and pid_ns == self.pid_ns

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"
