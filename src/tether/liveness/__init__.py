"""Liveness: process owners, heartbeats, and a reaper that ends dead owners' sessions.

Every process that owns an open session has one row in ``owners`` (host, boot
id, PID namespace, pid, pid start time, heartbeat, and the lease it promises).
A reaper ends the open sessions of dead owners with reason ``reaped`` and a
detail that says why; a live owner is never reaped: on its own host, boot and
namespace the pid probe decides (a stopped process is alive), elsewhere its
own lease does. See :mod:`tether.liveness.policy`.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .identity import Probe, ProcessIdentity, probe_pid
    from .policy import OwnerInfo, PauseDetector, Verdict, judge
    from .reaper import ReapedSession, Reaper, ReaperLoop, ReapReport

# Loaded on first use (PEP 562): the store imports the policy and the owner, and a
# store that only reads (`tether ls`) never needs the reaper.
_WHERE = {
    "Probe": ".identity",
    "ProcessIdentity": ".identity",
    "probe_pid": ".identity",
    "OwnerInfo": ".policy",
    "PauseDetector": ".policy",
    "Verdict": ".policy",
    "judge": ".policy",
    "ReapedSession": ".reaper",
    "Reaper": ".reaper",
    "ReaperLoop": ".reaper",
    "ReapReport": ".reaper",
}


def __getattr__(name: str) -> object:
    import importlib

    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


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
