"""Durable delivery of ``on_session_end`` hooks: the store's half (the records).

An end is recorded in one transaction together with its event (``ended``, or
``reaped`` for the reaper's ends). When the ending process has
``on_session_end`` hooks, that event also names the process that must run
them (``events.hooks_due_by``: its owner id), and that process's owner row is
written if it had none, so that others can tell when it dies; once the hooks
ran, the mark is cleared (one small UPDATE). This holds for every end: by a
handle, by ``end_session``, by the reaper (``reaped``) and by the legacy
repair (``abandoned``). A process killed in between (SIGKILL, OOM, power
loss) leaves the mark set, and another process delivers those hooks later.

This module holds only the repository methods: which ends are owed by other
processes (with the owing process's owner row), claiming one (a
compare-and-set of the mark, so two deliverers never both run it) and
clearing a mark. Judging whether the owing process is dead and running the
hooks is liveness' work (:mod:`tether.liveness.deliveries`);
``store.deliver_due_hooks()`` (:mod:`tether.compose`) is the public entry point.

This is at least once, not exactly once: a process killed after its hooks ran
but before the mark was cleared has them run again elsewhere, so hooks must be
idempotent (key their effects by ``session.id``). Within one living process an
end fires its hooks exactly once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import TetherError
from . import sql
from .backend import Conn

if TYPE_CHECKING:
    from ..clock import Clock
    from ..hooks import Plugins
    from .backend import Backend
    from .owners import OwnerPort

log = logging.getLogger("tether.hooks")

# Kept importable from here (the write path marks its ends with it).
INSERT_EVENT_HOOKS_DUE = sql.INSERT_EVENT_HOOKS_DUE

# Kept importable from here too; the statements live in sql.py.
SELECT_HOOKS_DUE = sql.SELECT_HOOKS_DUE
CLAIM_HOOKS = sql.CLAIM_HOOKS
HOOKS_DELIVERED = sql.HOOKS_DELIVERED


@dataclass(frozen=True, slots=True)
class DueEnd:
    """An end whose ``on_session_end`` hooks another process owes (or owed, if it died)."""

    event_id: int
    session_id: str
    ended_at: float  # when the end was recorded, on the ending process's clock
    reason: str
    interrupted: bool
    due_by: str  # the owner id of the process that owes the hooks
    # That process's owners row (id, then sql.OWNER_COLUMNS); None if it has none.
    owner: tuple[Any, ...] | None


def _due_end(row: Any) -> DueEnd:
    event_id, session_id, at, kind, data, due_by, found, *fields = row
    info = data if isinstance(data, dict) else json.loads(data or "{}")
    # A reaper's event says why, not the reason: that is its kind. Every other
    # event marked as owing hooks says whether the end was interrupted; a reaped
    # (or any unmarked) end is.
    reason = info.get("reason") or ("reaped" if kind == "reaped" else "unknown")
    interrupted = info.get("interrupted")
    return DueEnd(
        event_id=int(event_id),
        session_id=session_id,
        ended_at=float(at),
        reason=str(reason),
        interrupted=True if interrupted is None else bool(interrupted),
        due_by=due_by,
        owner=None if found is None else (found, *fields),
    )


class HookDeliveries:
    """The durable half of ``on_session_end`` (mixed into :class:`~tether.store.StoreCore`)."""

    backend: Backend
    clock: Clock
    plugins: Plugins
    owner_ttl: float
    _owner: OwnerPort

    if TYPE_CHECKING:  # provided by Ownership

        def _liveness_now(self, c: Conn) -> float: ...

    def hooks_due_by(self) -> str | None:
        """The owner id this process marks its new ends with (they owe its hooks).

        None when no plugin implements ``on_session_end``: such ends owe nothing.
        """
        if not self.plugins.implemented("on_session_end"):
            return None
        return self._owner.ensure()

    def _owe_hooks(self, c: Conn, now: float) -> None:
        """In the transaction marking ends as owed by this process: write its owner row.

        A process that owns no session (a ``tether reap``, a deliverer) has
        none; with it, others can probe the process and deliver its hooks as
        soon as it dies instead of waiting for a lease. Its heartbeat only
        runs while it owns sessions: another host judges it by its lease.
        """
        c.execute(sql.UPSERT_OWNER, self._owner.row(now))

    def mark_hooks_delivered(self, session_id: str, owner_id: str | None) -> None:
        """Clear the mark of an end whose hooks ``owner_id`` (this process) just ran.

        Nothing to do without a mark (``owner_id`` None). A failure is logged,
        not raised: the end stays due and is delivered again elsewhere (at
        least once).
        """
        if owner_id is None:
            return

        def tx(c: Conn) -> None:
            c.execute(HOOKS_DELIVERED, (session_id, owner_id))

        # A mark lost to a server crash only has the hooks run again (at least
        # once): on PostgreSQL its commit need not wait for the WAL flush, which was
        # most of the ~1.8 ms each of a mass reap's ends paid for it.
        write = getattr(self.backend, "write_unflushed", self.backend.write)
        try:
            write(tx)
        except TetherError as exc:
            log.warning("could not mark the hooks of session %s delivered: %s", session_id, exc)

    def due_hook_ends(self, limit: int = 100) -> tuple[float, list[DueEnd]]:
        """Ends whose hooks other processes owe, oldest first, at most ``limit``.

        Returns them with the time now on the clock heartbeats are stamped
        with (the database server's on PostgreSQL), to judge the owing
        processes' heartbeats by. Reads only the partial index of owed ends.
        """
        me = self._owner.ensure()

        def run(c: Conn) -> tuple[float, list[Any]]:
            return self._liveness_now(c), c.execute(SELECT_HOOKS_DUE, (me, limit)).fetchall()

        now, rows = self.backend.read(run)
        return now, [_due_end(r) for r in rows]

    def claim_hook_delivery(self, end: DueEnd) -> bool:
        """Take over the hooks of ``end`` for this process; False if another took them.

        The mark moves to this process (compare-and-set on the owner it was
        read with), and this process's owner row is written in the same
        transaction: a deliverer that dies mid-way is judged like any other.
        """
        me = self._owner.ensure()

        def claim(c: Conn) -> bool:
            if c.execute(CLAIM_HOOKS, (me, end.event_id, end.due_by)).rowcount != 1:
                return False
            self._owe_hooks(c, self.clock.now())
            return True

        return self.backend.write(claim)
