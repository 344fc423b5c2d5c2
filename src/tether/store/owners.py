"""Ownership in the store: takeover with fencing, legacy repair, and the reaper's SQL.

The policy (who is dead) lives in :mod:`tether.liveness`; this module holds
the transactions it needs, mixed into :class:`~tether.store.StoreCore`, and
the shapes both sides share (:class:`OwnerInfo`, an ``owners`` row, and
:class:`OwnerPort`, what the store asks of this process's owner). It imports
nothing above the store: liveness passes its verdicts in as callables.

Heartbeat times: on PostgreSQL, a store on the system clock has its
heartbeats stamped by the server (``now()``) and judged against the server's
clock, so hosts whose clocks disagree cannot reap each other. A store given a
clock of its own (tests, simulations) uses that clock everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..clock import SystemClock
from ..errors import InvalidInputError, OwnerAliveError, SessionEndedError, SessionNotFoundError
from ..model import Session, session_from_row
from . import sql
from .backend import Conn

if TYPE_CHECKING:
    from ..clock import Clock
    from ..hooks import Plugins
    from .backend import Backend

# Default lease of owner rows written before leases were stored (schema 1).
DEFAULT_LEASE = 30.0


@dataclass(frozen=True, slots=True)
class OwnerInfo:
    """An ``owners`` row."""

    id: str
    host: str
    boot_id: str
    pid: int
    pid_start_time: int | None
    kind: str
    started_at: float
    heartbeat_at: float
    pid_ns: str | None = None
    lease: float = DEFAULT_LEASE

    def describe(self) -> str:
        return f"{self.kind} pid {self.pid} on {self.host}"


class OwnerPort(Protocol):
    """What the store asks of this process's owner (:class:`tether.liveness.ProcessOwner`).

    The store writes the owner's row in the transactions that need it (a new
    session, a takeover, an end owing hooks); the owner itself (heartbeat,
    lease, identity) lives above, in liveness.
    """

    @property
    def id(self) -> str | None:
        """This process's owner id, None until first made."""
        ...

    def ensure(self) -> str:
        """This process's owner id, made on first use."""
        ...

    def row(self, now: float) -> tuple[Any, ...]:
        """The owner row to upsert (id, then ``sql.OWNER_COLUMNS``), heartbeat ``now``."""
        ...

    def row_due(self, now: float) -> tuple[Any, ...] | None:
        """:meth:`row` for a transaction that starts a session, or None when this
        process wrote it so recently that it need not be written again."""
        ...


# Decides, inside a takeover, whether a session's current owner is alive: its
# row and now on the heartbeats' clock. Liveness supplies it (the store has no policy).
OwnerJudge = Callable[[OwnerInfo, float], bool]


class Ownership:
    """Takeover, repair and reaping transactions (mixed into :class:`~tether.store.StoreCore`)."""

    backend: Backend
    clock: Clock
    plugins: Plugins
    owner_ttl: float
    _owner: OwnerPort
    _sql_session_owner: str

    if TYPE_CHECKING:  # provided by MessageWrites, HookDeliveries and Store

        def _event(
            self, c: Conn, session_id: str | None, kind: str, data: dict[str, Any]
        ) -> None: ...

        def fire_end(self, session: Session, reason: str, interrupted: bool) -> None: ...

        def hooks_due_by(self) -> str | None: ...

        def _owe_hooks(self, c: Conn, now: float) -> None: ...

        def mark_hooks_delivered(self, session_id: str, owner_id: str | None) -> None: ...

    @property
    def server_clock(self) -> bool:
        """Are heartbeats stamped and judged on the database server's clock?"""
        return self.backend.dialect == "postgresql" and isinstance(self.clock, SystemClock)

    def _liveness_now(self, c: Conn) -> float:
        """Now, on the clock heartbeats are stamped with (see the module docstring)."""
        if self.server_clock:
            return float(c.execute(sql.SERVER_NOW).fetchone()[0])
        return self.clock.now()

    def take_over(self, session_id: str, judge: OwnerJudge, *, force: bool = False) -> Session:
        """Move an open session to this process's owner, bumping its epoch; return it.

        The repository half of ``store.resume`` (which builds the handle). The
        current owner, if any and not this process, is judged by ``judge`` in
        the transaction; a live one raises :class:`OwnerAliveError` unless
        ``force``. From then on every write holding the old epoch is refused
        with :class:`StaleOwnerError`. An ended session raises
        :class:`SessionEndedError`, an unknown one :class:`SessionNotFoundError`.
        """
        me = self._owner

        def tx(c: Conn) -> Any:
            row = c.execute(self._sql_session_owner, (session_id,)).fetchone()
            if row is None:
                raise SessionNotFoundError(session_id)
            ended_at, reason, epoch, owner_id, found, *fields = row
            if ended_at is not None:
                raise SessionEndedError(session_id, reason)
            previous = None
            if owner_id is not None:
                info = OwnerInfo(owner_id, *fields) if found is not None else None
                previous = info.describe() if info else owner_id
                if owner_id == me.id:
                    alive = True
                    previous = "this process"
                elif info is None:
                    alive = False
                else:
                    alive = judge(info, self._liveness_now(c))
                if alive and not force:
                    raise OwnerAliveError(session_id, previous)
            now = self.clock.now()
            owner_row = me.row(now)
            c.execute(sql.UPSERT_OWNER, owner_row)
            if c.execute(sql.TAKE_OVER, (owner_row[0], session_id, epoch)).rowcount != 1:
                raise OwnerAliveError(session_id, "another process that took it over just now")
            self._event(
                c,
                session_id,
                "taken_over",
                {"from": owner_id, "to": owner_row[0], "epoch": epoch + 1, "forced": force},
            )
            return c.execute(sql.SELECT_SESSION, (session_id,)).fetchone()

        return session_from_row(self.backend.write(tx))

    def repair_unowned(self, stale_after: float, *, apply: bool = False) -> list[Session]:
        """Open sessions without owner, idle for ``stale_after`` seconds.

        Rows written before owners existed (or imported) are never reaped: no
        process can be judged for them. This lists them, and with
        ``apply=True`` ends them with reason ``abandoned``; returns what it
        found (or ended).
        """
        # NaN compares false and infinity or a huge int is not below 1e15: all refused.
        if isinstance(stale_after, bool) or not isinstance(stale_after, int | float):
            raise InvalidInputError("stale_after must be a number of seconds")
        if not 0 <= stale_after < 1e15:
            raise InvalidInputError(f"stale_after must be finite and >= 0, not {stale_after!r}")
        now = self.clock.now()
        cutoff = now - stale_after
        if not apply:
            rows = self.backend.read(lambda c: c.execute(sql.STALE_UNOWNED, (cutoff,)).fetchall())
            return [session_from_row(r) for r in rows]
        detail = f"no owner, idle for more than {stale_after:.0f} s"
        due_by = self.hooks_due_by()
        data = json.dumps(
            {"reason": "abandoned", "detail": detail, "interrupted": True}, separators=(",", ":")
        )

        def tx(c: Conn) -> list[Any]:
            ended = []
            for (sid,) in c.execute(sql.SELECT_STALE_UNOWNED_IDS, (cutoff,)).fetchall():
                rows = c.execute(sql.END_STALE_UNOWNED, (now, detail, sid, cutoff)).fetchall()
                if rows:
                    # Marked as owing its hooks in the same transaction (see deliveries).
                    c.execute(sql.INSERT_EVENT_HOOKS_DUE, (now, sid, "ended", data, due_by))
                    ended.append(rows[0])
            if ended and due_by is not None:
                self._owe_hooks(c, now)
            return ended

        sessions = [session_from_row(r) for r in self.backend.write(tx)]
        for session in sessions:
            self.fire_end(session, "abandoned", True)
            self.mark_hooks_delivered(session.id, due_by)
        return sessions

    def beat(self, owner_row: tuple[Any, ...]) -> None:
        """Write (upsert) an owner row: a heartbeat. One statement."""
        self.backend.write(lambda c: c.execute(sql.UPSERT_OWNER, owner_row))

    def drop_owner(self, owner_id: str) -> None:
        """Delete an owner row, unless an open session still refers to it."""
        self.backend.write(lambda c: c.execute(sql.delete_idle_owners(1), (owner_id,)))

    def sweep_candidates(
        self, host: str, grace: float, now: float | None
    ) -> tuple[float, list[tuple[str, OwnerInfo | None]]]:
        """Now (the server's if ``now`` is None) and the owners a sweep must judge."""

        def run(c: Conn) -> tuple[float, list[Any]]:
            at = self._liveness_now(c) if now is None else now
            return at, c.execute(sql.SWEEP_CANDIDATES, (host, grace, grace, at)).fetchall()

        at, rows = self.backend.read(run)
        return at, [(r[0], OwnerInfo(*r) if r[1] is not None else None) for r in rows]

    def owners_of_open_sessions(
        self, *, server_time: bool = False
    ) -> tuple[float | None, list[tuple[str, OwnerInfo | None, int]]]:
        """Every owner of open sessions with its open count, and the server's now if asked."""

        def run(c: Conn) -> tuple[float | None, list[Any]]:
            at = self._liveness_now(c) if server_time else None
            return at, c.execute(sql.OWNERS_OF_OPEN_SESSIONS).fetchall()

        at, rows = self.backend.read(run)
        out = []
        for owner_id, *fields, count in rows:
            info = OwnerInfo(owner_id, *fields) if fields[0] is not None else None
            out.append((owner_id, info, int(count)))
        return at, out

    def reap(
        self,
        dead: list[tuple[str, float | None, str]],
        *,
        prune_before: float | None,
        hooks_due_by: str | None = None,
    ) -> list[tuple[Any, ...]]:
        """End the open sessions of dead owners (owner id, judged heartbeat, detail).

        One write transaction; returns (id, owner id, detail) of each session
        it ended. An owner whose heartbeat is no longer the judged one (or
        whose row came back) is spared. With ``hooks_due_by`` (this process's
        owner id, from :meth:`hooks_due_by`), each ``reaped`` event is marked
        as owing its hooks, in the same transaction; the caller clears each
        mark once its hooks ran. Owner rows idle since ``prune_before`` are
        deleted too (None: not in this transaction).
        """
        if self.backend.dialect == "postgresql":
            judged = json.dumps(
                [{"owner_id": o, "heartbeat_at": h, "detail": d} for o, h, d in dead]
            )

            def run(c: Conn, now: float) -> list[Any]:
                params = [judged, now, now, hooks_due_by]
                return c.execute(sql.REAP_PG, params).fetchall() if dead else []

        else:
            # Here, not at the top: a PostgreSQL-only process never loads SQLite's code.
            from .sqlite.reap import reap as sqlite_reap

            def run(c: Conn, now: float) -> list[Any]:
                return sqlite_reap(c, dead, now, hooks_due_by)

        def tx(c: Conn) -> list[tuple[str, str, Any]]:
            now = self.clock.now()
            ended = run(c, now)
            if ended and hooks_due_by is not None:
                self._owe_hooks(c, now)
            if prune_before is not None:
                c.execute(sql.PRUNE_OLD_OWNERS, (prune_before,))
            return ended

        return self.backend.write(tx)

    def sessions_by_id(self, ids: list[str]) -> list[Session]:
        """Several sessions by id (in no particular order)."""
        out: list[Session] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            query = sql.select_sessions_by_id(len(chunk))

            def fetch(c: Conn, q: str = query, p: list[str] = chunk) -> list[Any]:
                return c.execute(q, p).fetchall()

            rows = self.backend.read(fetch)
            out += [session_from_row(r) for r in rows]
        return out

    def longest_owner_lease(self, above: float) -> tuple[int, float]:
        """How many owners of open sessions promised a lease longer than ``above``
        seconds, and the longest such lease (``(0, 0.0)`` when none).

        A reaper's ``ttl`` only ever lengthens an owner's lease, so ``tether reap
        --ttl`` uses this to say which owners its shorter value cannot speed up.
        """
        row = self.backend.read(lambda c: c.execute(sql.LONGER_LEASES, (above,)).fetchone())
        n, longest = row if row is not None else (0, None)
        return int(n or 0), float(longest or 0.0)
