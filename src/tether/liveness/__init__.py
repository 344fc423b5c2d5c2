"""Liveness: process owners, heartbeats, and a reaper that ends dead owners' sessions.

Every process that owns an open session has one row in ``owners`` (host, boot
id, PID namespace, pid, pid start time, heartbeat, and the lease it promises).
A reaper ends the open sessions of dead owners with reason ``reaped`` and a
detail that says why; a live owner is never reaped: on its own host, boot and
namespace the pid probe decides (a stopped process is alive), elsewhere its
own lease does. See :mod:`tether.liveness.policy`.
"""

from .identity import Probe, ProcessIdentity, probe_pid
from .policy import OwnerInfo, PauseDetector, Verdict, judge
from .reaper import ReapedSession, Reaper, ReaperLoop, ReapReport

__all__ = [
    "OwnerInfo",
    "PauseDetector",
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
