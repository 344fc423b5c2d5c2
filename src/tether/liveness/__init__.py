"""Liveness: process owners, heartbeats, and a reaper that ends dead owners' sessions.

Every process that owns an open session has one row in ``owners`` (host, boot
id, pid, pid start time, heartbeat). A reaper ends the open sessions of dead
owners with reason ``reaped`` and a detail that says why; a live owner is
never reaped, however long its turn runs.
"""

from .identity import Probe, ProcessIdentity, probe_pid
from .policy import OwnerInfo, Verdict, judge
from .reaper import ReapedSession, Reaper, ReaperLoop, ReapReport

__all__ = [
    "OwnerInfo",
    "Probe",
    "ProcessIdentity",
    "ReapReport",
    "ReapedSession",
    "Reaper",
    "ReaperLoop",
    "Verdict",
    "judge",
    "probe_pid",
]
