"""Delivering the ``on_session_end`` hooks that dead processes owed.

The store keeps the records (:mod:`tether.store.deliveries`: which ends owe
hooks, and by whom); this module decides when another process may run them,
and runs them:

* who: a process with ``on_session_end`` hooks, once per store, in the
  background, the first time it writes a session of its own, or whenever it
  calls ``store.deliver_due_hooks()``. Read-only work (``tether ls``,
  ``show``, ``doctor``) never runs other processes' hooks;
* when: as soon as the process that owed them is known to be dead, judged as
  the reaper judges owners (:meth:`tether.liveness.Reaper.verdict`: on the
  same host its pid is gone or reused; elsewhere its heartbeat is older than
  its lease), or, when it has no owner row to judge (a row already pruned;
  even ``tether end``, which owns nothing, writes one with the end), once the
  deliverer's lease (``owner_ttl``) has passed since the end;
* how: the deliverer claims the end (the store moves the mark to it, only if
  nobody else did), runs the hooks with the session as it is now, then clears
  the mark. A deliverer that dies mid-way is itself judged dead in turn.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from ..errors import SessionNotFoundError, TetherError
from .policy import OwnerInfo
from .reaper import Reaper

if TYPE_CHECKING:
    from ..store import StoreCore
    from ..store.deliveries import DueEnd

log = logging.getLogger("tether.hooks")


def owing_process_alive(
    end: DueEnd, reaper: Reaper, *, heartbeat_now: float, now: float, lease: float
) -> bool:
    """May the process that owes ``end``'s hooks still run them?

    ``heartbeat_now`` is now on the clock heartbeats are stamped with (the
    database server's on PostgreSQL), ``now`` on the clock the end was
    stamped with; ``lease`` is how long to wait after an end whose process
    has no owner row to judge.
    """
    if end.owner is None:  # nothing to probe: a lease since the end decides
        return now - end.ended_at <= lease
    info = OwnerInfo(*end.owner)
    # No pause detection in a one-off judgement: it weighs nothing (quiet since ever).
    return reaper.verdict(end.due_by, info, heartbeat_now, math.inf).alive


def deliver_due_hooks(store: StoreCore, limit: int = 100, *, reaper: Reaper | None = None) -> int:
    """Run the hooks of up to ``limit`` ends that dead processes owed; how many ends.

    See the module docstring for who, when and how. Does nothing (and reads
    nothing) without ``on_session_end`` hooks.
    """
    if not store.plugins.implemented("on_session_end"):
        return 0
    heartbeat_now, ends = store.due_hook_ends(limit)
    if not ends:
        return 0
    reaper = reaper or Reaper(store)
    me = store.owner_id
    delivered = 0
    for end in ends:
        now = store.clock.now()
        if owing_process_alive(
            end, reaper, heartbeat_now=heartbeat_now, now=now, lease=store.owner_ttl
        ):
            continue
        if not store.claim_hook_delivery(end):
            continue  # another process took it
        try:
            session = store.get_session(end.session_id)
        except SessionNotFoundError:  # deleted since: no hook to run for it any more
            store.mark_hooks_delivered(end.session_id, me)
            continue
        except TetherError as exc:  # stays claimed by this process: retried after it dies
            log.warning("cannot deliver the hooks of session %s: %s", end.session_id, exc)
            continue
        log.info(
            "delivering the on_session_end hooks of %s (owed by %s)", end.session_id, end.due_by
        )
        store.plugins.call(
            "on_session_end", session=session, reason=end.reason, interrupted=end.interrupted
        )
        store.mark_hooks_delivered(end.session_id, me)
        delivered += 1
    return delivered
