"""Durable delivery of ``on_session_end`` hooks: at least once, even across a crash.

An end is recorded in one transaction together with its ``ended`` event. When
the ending process has ``on_session_end`` hooks, that event also names the
process that must run them (``events.hooks_due_by``: its owner id); once they
ran, the mark is cleared (one small UPDATE). A process killed in between
(SIGKILL, OOM, power loss) leaves the mark set, and another process delivers
those hooks later:

* who: a process with ``on_session_end`` hooks, once per store, in the
  background, the first time it writes a session of its own, or whenever it
  calls :meth:`HookDeliveries.deliver_due_hooks`. Read-only work (``tether ls``,
  ``show``, ``doctor``) never runs other processes' hooks;
* when: as soon as the process that owed them is known to be dead (same host:
  its pid is gone or reused, judged like the reaper does), or, when it cannot
  be probed (another host, or no owner row, as for ``tether end``), once its
  lease (``owner_ttl``) has passed since the end;
* how: the deliverer first claims the event (compare-and-set of the mark to
  its own owner id), so two deliverers do not both run it, and clears the mark
  after the hooks ran. A deliverer that dies mid-way is itself judged dead.

This is at least once, not exactly once: a process killed after its hooks ran
but before the mark was cleared has them run again elsewhere, so hooks must be
idempotent (key their effects by ``session.id``). Within one living process an
end fires its hooks exactly once. Reaper ends (``reaped``) are fired by the
reaping process and are not tracked here.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from typing import TYPE_CHECKING, Any

from ..errors import TetherError
from ..model import Session
from . import sql
from .backend import Conn

if TYPE_CHECKING:
    from ..clock import Clock
    from ..hooks import Plugins
    from ..liveness.owner import ProcessOwner
    from .backend import Backend

log = logging.getLogger("tether.hooks")

_starting = threading.Lock()

# The end's event, with the owner id of the process that owes its hooks.
INSERT_EVENT_HOOKS_DUE = (
    "INSERT INTO events (at, session_id, kind, data, hooks_due_by) VALUES (?, ?, ?, ?, ?)"
)

# Ends whose hooks are owed by another process (the partial index events_hooks_due).
SELECT_HOOKS_DUE = f"""
SELECT e.id, e.session_id, e.at, e.data, e.hooks_due_by, o.id,
    {", ".join("o." + c.strip() for c in sql.OWNER_COLUMNS.split(","))}
FROM events e LEFT JOIN owners o ON o.id = e.hooks_due_by
WHERE e.hooks_due_by IS NOT NULL AND e.hooks_due_by <> ?
ORDER BY e.id LIMIT ?
"""

# Take over a due delivery, only if nobody else took it meanwhile.
CLAIM_HOOKS = "UPDATE events SET hooks_due_by = ? WHERE id = ? AND hooks_due_by = ?"

# The hooks ran: nothing is due for this end any more (a session ends once).
HOOKS_DELIVERED = "UPDATE events SET hooks_due_by = NULL WHERE session_id = ? AND hooks_due_by = ?"


class HookDeliveries:
    """The durable half of ``on_session_end`` (mixed into :class:`~tether.store.Store`)."""

    backend: Backend
    clock: Clock
    plugins: Plugins
    owner_ttl: float
    _owner: ProcessOwner
    _delivery_thread: threading.Thread | None = None

    if TYPE_CHECKING:  # provided by Store

        def get_session(self, session_id: str) -> Session: ...

        def _fire_end(self, session: Session, reason: str, interrupted: bool) -> None: ...

    def _hooks_due_by(self) -> str | None:
        """The owner id to mark a new end with, or None when no hook wants ends."""
        if not self.plugins.implemented("on_session_end"):
            return None
        return self._owner.ensure()

    def _hooks_delivered(self, session_id: str, owner_id: str | None) -> None:
        """Clear the mark of an end whose hooks just ran in this process."""
        if owner_id is None:
            return
        try:
            self.backend.write(lambda c: c.execute(HOOKS_DELIVERED, (session_id, owner_id)))
        except TetherError as exc:  # it stays due: delivered again elsewhere (at least once)
            log.warning("could not mark the hooks of session %s delivered: %s", session_id, exc)

    def deliver_due_hooks(self, limit: int = 100) -> int:
        """Run the ``on_session_end`` hooks that dead processes owed; return how many ends.

        Ends recorded by a process that died before its hooks ran (see
        :mod:`tether.store.deliveries`) are delivered here, each with the
        session as it is now and the reason it ended with. Ends still owed by
        a live process, or by one that cannot be probed and whose lease has
        not passed, are left to it. Does nothing without ``on_session_end``
        hooks.
        """
        if not self.plugins.implemented("on_session_end"):
            return 0
        from ..liveness import Reaper
        from ..liveness.policy import OwnerInfo

        me = self._owner.ensure()
        rows = self.backend.read(lambda c: c.execute(SELECT_HOOKS_DUE, (me, limit)).fetchall())
        if not rows:
            return 0
        reaper = Reaper(self)  # type: ignore[arg-type]  # a Store, of which this is a part
        delivered = 0
        for event_id, session_id, at, data, due_by, found, *fields in rows:
            now = self.clock.now()
            if found is not None:
                info = OwnerInfo(found, *fields)
                alive = reaper._verdict(due_by, info, now, math.inf).alive
            else:  # nothing to probe: its lease decides
                alive = now - at <= self.owner_ttl
            if alive:
                continue

            def claim(c: Conn, event_id: Any = event_id, due_by: str = due_by) -> bool:
                return c.execute(CLAIM_HOOKS, (me, event_id, due_by)).rowcount == 1

            if not self.backend.write(claim):
                continue  # another process took it
            end = data if isinstance(data, dict) else json.loads(data or "{}")
            reason = end.get("reason") or "unknown"
            interrupted = end.get("interrupted")
            if interrupted is None:
                from .core import INTERRUPTED_REASONS

                interrupted = reason in INTERRUPTED_REASONS
            try:
                session = self.get_session(session_id)
            except TetherError as exc:
                log.warning("cannot deliver the hooks of session %s: %s", session_id, exc)
                continue
            log.info("delivering the on_session_end hooks of %s (owed by %s)", session_id, due_by)
            self._fire_end(session, reason, bool(interrupted))
            self._hooks_delivered(session_id, me)
            delivered += 1
        return delivered

    def _deliver_due_hooks_soon(self) -> None:
        """Once per store, in the background: deliver what dead processes owed."""
        if self._delivery_thread is not None or not self.plugins.implemented("on_session_end"):
            return
        with _starting:  # two threads writing their first sessions at once start one
            if self._delivery_thread is not None:
                return
            thread = threading.Thread(
                target=self._deliver_in_background, name="tether-hook-delivery", daemon=True
            )
            self._delivery_thread = thread
        thread.start()

    def _deliver_in_background(self) -> None:
        try:
            n = self.deliver_due_hooks()
        except TetherError as exc:
            log.warning("could not deliver due on_session_end hooks: %s", exc)
        except Exception:
            log.exception("could not deliver due on_session_end hooks")
        else:
            if n:
                log.info("delivered the on_session_end hooks of %d ends owed by dead processes", n)

    def _stop_delivery(self, timeout: float = 5.0) -> None:
        thread = self._delivery_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
