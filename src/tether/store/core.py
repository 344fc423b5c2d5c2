"""The store's repository: tether's one contract over every backend.

:class:`StoreCore` offers public repository methods (sessions, messages,
owners, events) and knows nothing of handles, threads or exit paths: it
imports nothing above :mod:`tether.store`. What ``tether.open_store`` returns
is :class:`tether.compose.Store`, this class plus the lifecycle and liveness
entry points (``session``, ``resume``, ``attach``, the heartbeat).

Invariants kept here, in SQL:

* Exactly one end: ``UPDATE ... WHERE ended_at IS NULL`` and the first reason wins.
* Acknowledged means durable, exactly once: a message is committed before
  ``append`` returns; ``UNIQUE(session_id, seq)`` and idempotency keys make a
  re-flush a no-op, never a duplicate; ``message_count`` moves in the same
  transaction as the rows.
* One writer per session: every write names the epoch it holds and is refused
  when the session has moved on (fencing).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import (
    InvalidInputError,
    SessionNotFoundError,
    StoreError,
)
from ..hooks import Plugins
from ..model import (
    SESSION_COLUMNS,
    Census,
    ImportResult,
    Message,
    Page,
    Session,
    SourceCensus,
    message_from_row,
    message_of_row,
    session_from_row,
)
from ..validate import (
    INT64_MAX,
    check_detail,
    check_id,
    check_import_message,
    check_int,
    check_metadata,
    check_origin,
    check_reason,
    check_source,
    check_states,
    check_text,
    check_timestamp,
)
from . import listing, sql, sql_retention
from .backend import Backend, Conn
from .deliveries import HookDeliveries
from .imports import ImportBatches
from .owners import OwnerInfo, OwnerPort, Ownership
from .retention import Retention
from .toolrepair import ToolRepair
from .transfer import Transfer
from .writes import ImportedSession, MessageWrites

if TYPE_CHECKING:
    from .postgres import EventListener

log = logging.getLogger("tether.store")

# Where a session row (SESSION_COLUMNS) holds message_count.
_MESSAGE_COUNT = [c.strip() for c in SESSION_COLUMNS.split(",")].index("message_count")

# retract_last looks for the newest active message among this many last seqs first.
_NEWEST_WINDOW = 64

# Reasons that mean the session did not finish on its owner's terms.
INTERRUPTED_REASONS = frozenset({"error", "signal", "process_exit", "reaped", "abandoned"})


def _messages(rows: list[Any]) -> list[Message]:
    """Messages from rows read in MESSAGE_READ_COLUMNS order, JSON as the driver
    gave it (PostgreSQL: jsonb decoded, the payload a JSON string to decode).

    A row without JSON (tool_calls, meta, payload all NULL: most messages) is
    the Message's fields as they are: ``message_from_row``'s three decoding
    calls per row cost several times the Message itself (measured: 0.8 against
    0.12 ms per 1,000 rows).
    """
    return [
        message_of_row(r)
        if r[4] is None and r[9] is None and r[11] is None
        else message_from_row(r)
        for r in rows
    ]


class StoreCore(
    HookDeliveries, Ownership, MessageWrites, ImportBatches, Retention, ToolRepair, Transfer
):
    """The repository over one backend. ``tether.open_store`` returns a subclass
    (:class:`tether.compose.Store`) that adds sessions' handles and liveness.

    ``owner`` makes this process's owner for the store (called once, here):
    the store writes its row in the transactions that need it.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        owner: Callable[[StoreCore], OwnerPort],
        clock: Clock | None = None,
        plugins: Plugins | None = None,
        owner_ttl: float = 30.0,
    ) -> None:
        self.backend = backend
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.plugins = plugins or Plugins()
        self.owner_ttl = owner_ttl
        # Reads that a write acts on lock their row on PostgreSQL (see sql.locking).
        dialect = backend.dialect
        self._lock_rows = dialect == "postgresql"
        self._sql_write_state = sql.locking(dialect, sql.SELECT_WRITE_STATE)
        self._sql_session_owner = sql.locking(dialect, sql.SELECT_SESSION_OWNER, of="s")
        self._sql_insert_message = sql.insert_message(dialect)
        # A backend that can run one statement atomically on its own (PostgreSQL)
        # takes the common append in a single round trip.
        self._append_statement = getattr(backend, "write_statement", None)
        # And one that can run one read statement on its own reads a chain's tail in one.
        self._read_statement = getattr(backend, "read_statement", None)
        self._closed = False
        self._owner = owner(self)

    @property
    def owner_id(self) -> str | None:
        """This process's owner id in this store (None until it owned a session)."""
        return self._owner.id

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran: connections are gone."""
        return self._closed

    def end_session(
        self,
        session_id: str,
        reason: str,
        detail: str | None = None,
        *,
        interrupted: bool = True,
    ) -> bool:
        """End a session from outside its owner. True only for the call that ended it.

        The first reason wins and is never overwritten; ending an ended session
        returns False. Raises :class:`SessionNotFoundError` for an unknown id.
        """
        session_id = check_id(session_id)
        reason = check_reason(reason)
        detail = check_detail(detail)
        due_by = self.hooks_due_by()
        ended = self.record_end(
            session_id, reason, detail, epoch=None, hooks_due_by=due_by, interrupted=interrupted
        )
        if ended is not None:
            self.fire_end(ended, reason, interrupted)
            self.mark_hooks_delivered(session_id, due_by)
            return True
        self.get_session(session_id)  # raises SessionNotFoundError if unknown
        return False

    def mark_detached(self, session_id: str, at: float | None) -> bool:
        """Record that no client is attached since ``at`` (None: attached again).

        Kept in the database so that what is detached survives a gateway
        restart. Returns False if the session is unknown or already ended.
        """

        session_id = check_id(session_id)
        if at is not None:
            at = check_timestamp(at, "detached at")

        def tx(c: Conn) -> bool:
            if c.execute(sql.SET_DETACHED, (at, session_id)).rowcount != 1:
                return False
            # In the same transaction: the live view's feed hears it exactly when it holds.
            self._event(c, session_id, "attached" if at is None else "detached", {})
            return True

        return self.backend.write(tx)

    def record_event(self, session_id: str, kind: str, data: dict[str, Any]) -> None:
        """Append one lifecycle event (``turn_started``, ``turn_ended``...) to the events log.

        The log feeds the live view (``tether web``) and every process that
        follows the store; the event says what happened, never changes a session.
        """
        session_id = check_id(session_id)
        check_text(kind, "event kind", required=True)

        def tx(c: Conn) -> None:
            self._event(c, session_id, kind, data)

        self.backend.write(tx)

    # --- reads -----------------------------------------------------------------------

    def get_session(self, session_id: str) -> Session:
        """The session with this id; :class:`SessionNotFoundError` if there is none."""
        session_id = check_id(session_id)
        row = self.backend.read(lambda c: c.execute(sql.SELECT_SESSION, (session_id,)).fetchone())
        if row is None:
            raise SessionNotFoundError(session_id)
        return session_from_row(row)

    def get_chain(self, session_id: str) -> list[Session]:
        """Every session of ``session_id``'s chain, oldest first (root to newest tip)."""
        session = self.get_session(session_id)
        rows = self.backend.read(
            lambda c: c.execute(sql.SELECT_CHAIN, (session.root_id,)).fetchall()
        )
        return [session_from_row(r) for r in rows]

    def get_messages(
        self,
        session_id: str,
        after_seq: int | None = None,
        limit: int | None = None,
        *,
        states: Sequence[str] = ("active",),
    ) -> list[Message]:
        """Messages of one session in order, those after ``after_seq`` (at most ``limit``).

        Only messages in one of ``states`` (``active``, ``compacted``,
        ``retracted``) are returned; by default the active transcript.
        """
        session_id = check_id(session_id)
        after = 0 if after_seq is None else check_int(after_seq, "after_seq")
        cap = INT64_MAX if limit is None else check_int(limit, "limit", minimum=0)
        wanted = check_states(states)
        decoded = self.backend.dialect == "sqlite"
        query = sql.select_messages(len(wanted), decoded)

        def run(c: Conn) -> list[Any]:
            rows = c.execute(query, (session_id, after, *wanted, cap)).fetchall()
            if not rows and c.execute(sql.SELECT_WRITE_STATE, (session_id,)).fetchone() is None:
                raise SessionNotFoundError(session_id)
            return rows

        rows = self.backend.read(run)
        return list(map(message_of_row, rows)) if decoded else _messages(rows)

    def list_sessions(
        self,
        *,
        source: str | None = None,
        cwd: str | None = None,
        state: str = "all",
        limit: int = 50,
        cursor: str | None = None,
        include_empty: bool = False,
    ) -> Page:
        """The resumable listing: one row per chain, newest activity first.

        ``state`` is ``"all"``, ``"open"`` or ``"ended"`` (of the chain's tip).
        Sessions without messages are left out unless ``include_empty``. Pass
        the returned ``next_cursor`` back to get the next page.
        """
        q = listing.ListQuery(
            state=state,
            source=source,
            cwd=cwd,
            include_empty=include_empty,
            limit=limit,
            cursor=cursor,
        )
        query, params = listing.build(q)
        rows = self._list_reader(state)(lambda c: c.execute(query, params).fetchall())
        items = [listing.listed_chain(r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = listing.encode_cursor(last.chain_last_active_at, last.root_id)
        return Page(items, next_cursor)

    def _list_reader(self, state: str) -> Any:
        """How a listing query is read: in index order where the backend can insist.

        Every state but ``open`` walks the listing index; a backend whose
        planner could prefer a sort (PostgreSQL without statistics) offers
        ``read_ordered``. The open listing sorts the few open sessions.
        """
        ordered = getattr(self.backend, "read_ordered", None)
        return ordered if ordered is not None and state != "open" else self.backend.read

    def census(self) -> Census:
        """Totals for ``tether doctor``: open, ended, ghosts, end reasons per source."""

        def run(c: Conn) -> tuple[list[Any], list[Any], Any, Any]:
            return (
                c.execute(sql.CENSUS_BY_SOURCE).fetchall(),
                c.execute(sql.CENSUS_REASONS).fetchall(),
                c.execute(sql.OLDEST_OPEN).fetchone(),
                c.execute(sql_retention.CENSUS_TRASH).fetchone(),
            )

        by_source_rows, reason_rows, oldest, trash = self.backend.read(run)
        reasons: dict[str, dict[str, int]] = defaultdict(dict)
        overall: dict[str, int] = defaultdict(int)
        for source, reason, n in reason_rows:
            key = reason or "(none)"
            reasons[source][key] = int(n)
            overall[key] += int(n)
        by_source: dict[str, SourceCensus] = {}
        total = open_ = ghosts = 0
        unowned = external = 0
        for source, n, n_open, n_ghost, n_unowned, n_external in sorted(
            by_source_rows, key=lambda r: r[0]
        ):
            n, n_open, n_ghost = int(n), int(n_open or 0), int(n_ghost or 0)
            unowned += int(n_unowned or 0)
            external += int(n_external or 0)
            by_source[source] = SourceCensus(
                total=n,
                open=n_open,
                ended=n - n_open,
                ghosts=n_ghost,
                end_reasons=dict(sorted(reasons[source].items(), key=lambda kv: -kv[1])),
            )
            total += n
            open_ += n_open
            ghosts += n_ghost
        return Census(
            total=total,
            open=open_,
            ended=total - open_,
            ghosts=ghosts,
            end_reasons=dict(sorted(overall.items(), key=lambda kv: -kv[1])),
            by_source=by_source,
            oldest_open=None if oldest is None else session_from_row(oldest),
            open_no_owner=unowned,
            open_external=external,
            trashed=int(trash[0]),
            trashed_messages=int(trash[1]),
        )

    def resolve_id(self, prefix: str) -> str:
        """Expand a unique id prefix (as typed on a command line) to a full id."""
        prefix = check_id(prefix)

        def run(c: Conn) -> list[Any]:
            exact = c.execute(sql.SELECT_WRITE_STATE, (prefix,)).fetchone()
            if exact is not None:
                return [(prefix,)]
            upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            return c.execute(sql.SELECT_ID_PREFIX, (prefix, upper)).fetchall()

        rows = self.backend.read(run)
        if not rows:
            raise SessionNotFoundError(prefix)
        if len(rows) > 1:
            ids = ", ".join(r[0] for r in rows)
            raise SessionNotFoundError(prefix, f"session id prefix {prefix!r} is ambiguous: {ids}")
        return rows[0][0]

    def fire_end(self, session: Session, reason: str, interrupted: bool) -> None:
        """Run the ``on_session_end`` hooks of an end just recorded (a failing hook is logged)."""
        self.plugins.call("on_session_end", session=session, reason=reason, interrupted=interrupted)

    # --- following events ----------------------------------------------------------------

    def listen(self) -> EventListener:
        """Follow this store's lifecycle events live, from every process and host.

        PostgreSQL only (LISTEN/NOTIFY): returns a connected
        :class:`~tether.store.postgres.EventListener`; iterate
        ``listener.events(timeout=..., limit=...)`` and close it when done (it
        is a context manager). Raises :class:`StoreError` on SQLite.
        """
        listen = getattr(self.backend, "listen", None)
        if listen is None:
            raise StoreError(
                f"following events live is not supported on {self.backend.dialect}: "
                "it needs PostgreSQL (LISTEN/NOTIFY); read the events table instead"
            )
        return listen()

    # --- closing ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the backend's connections (the subclass ends handles first)."""
        if self._closed:
            return
        self._closed = True
        self.backend.close()

    def __enter__(self) -> StoreCore:
        return self

    # --- data model v2 (schema 4) ------------------------------------------------------

    def get_last_messages(
        self, session_id: str, n: int, *, states: Sequence[str] = ("active",)
    ) -> list[Message]:
        """The last ``n`` messages of a session in ``states``, oldest first.

        O(n): a backward walk of the primary key that stops after ``n`` rows.
        """
        session_id = check_id(session_id)
        cap = check_int(n, "n", minimum=0)
        wanted = check_states(states)
        decoded = self.backend.dialect == "sqlite"
        query = sql.select_last_messages(len(wanted), decoded)

        def run(c: Conn) -> list[Any]:
            rows = c.execute(query, (session_id, *wanted, cap)).fetchall()
            if not rows and c.execute(sql.SELECT_WRITE_STATE, (session_id,)).fetchone() is None:
                raise SessionNotFoundError(session_id)
            return rows

        rows = self.backend.read(run)
        return list(map(message_of_row, rows)) if decoded else _messages(rows)

    def retract_last(self, session_id: str, *, epoch: int | None = None) -> Message | None:
        """Mark the newest active message ``retracted``; return it (None: none is active).

        The message keeps its seq and stays stored (``message_count`` still
        counts it); readers leave it out unless they ask for retracted ones.
        O(1): the newest active row is found by a backward walk of the primary
        key. With ``epoch`` (what a session handle passes) the write is fenced
        like an append: refused with :class:`StaleOwnerError` once the session
        was taken over and :class:`SessionEndedError` once it ended. Without,
        it works on any existing session, ended or not.
        """
        session_id = check_id(session_id)
        if epoch is not None:
            epoch = check_int(epoch, "epoch", minimum=0)

        def tx(c: Conn) -> Any:
            # Lock the session row first (PostgreSQL), so two retracts at once take
            # two messages instead of racing for the same one.
            state = c.execute(self._sql_write_state, (session_id,)).fetchone()
            if state is None:
                raise SessionNotFoundError(session_id)
            if epoch is not None and (state[0] is not None or state[2] != epoch):
                raise self._write_state_error(c, session_id, epoch)
            # Usually among the last few seqs (only earlier retracts sit above it).
            after = state[3] - _NEWEST_WINDOW
            newest = c.execute(sql.NEWEST_ACTIVE_SEQ_AFTER, (session_id, after)).fetchone()
            if newest is None and after > 0:
                newest = c.execute(sql.NEWEST_ACTIVE_SEQ, (session_id,)).fetchone()
            if newest is None:
                return None
            row = c.execute(sql.RETRACT_MESSAGE, (session_id, newest[0])).fetchone()
            self._event(c, session_id, "retracted", {"seq": newest[0]})
            return row

        row = self.backend.write(tx)
        return None if row is None else message_from_row(row)

    def import_session(
        self,
        origin: str,
        *,
        source: str,
        created_at: float,
        last_active_at: float | None = None,
        model: str | None = None,
        title: str | None = None,
        cwd: str | None = None,
        parent_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        ended_at: float | None = None,
        end_reason: str | None = None,
        end_detail: str | None = None,
        messages: Sequence[dict[str, Any]] = (),
    ) -> ImportResult:
        """Import a session from another system, idempotently, in one transaction.

        ``origin`` names it in its source (``"hermes:<id>"``, say; unique per
        store). The first call writes the row with the historical times given,
        no owner (an *external* session: its lifecycle belongs to its source,
        so it is never reaped, never repaired as abandoned, and counted apart
        by the census) and ``parent_id`` (a session of this store, by id).
        Later calls find it by origin and leave its row as it is. Each call
        may add a page of ``messages`` (dicts with ``key``, the source's
        message id, and ``role``, ``created_at``, and optionally ``content``,
        ``tool_calls``, ``tool_call_id``, ``tool_name``, ``meta``,
        ``payload``): messages whose key the session holds are skipped, so a
        re-import writes nothing. ``ended_at`` with ``end_reason`` records the
        end once (the first end wins). No hook runs: nothing ended here.
        """
        origin = check_origin(origin)
        created = check_timestamp(created_at, "created_at")
        last = (
            created if last_active_at is None else check_timestamp(last_active_at, "last_active_at")
        )
        new = ImportedSession(
            origin=origin,
            source=check_source(source),
            model=check_text(model, "model"),
            title=check_text(title, "title"),
            cwd=check_text(cwd, "cwd"),
            parent_id=None if parent_id is None else check_id(parent_id, "parent id"),
            metadata=check_metadata(metadata),
            created_at=created,
            last_active_at=max(created, last),
        )
        end = None
        if ended_at is not None or end_reason is not None:
            if ended_at is None or end_reason is None:
                raise InvalidInputError("an imported end needs both ended_at and end_reason")
            end = (
                check_timestamp(ended_at, "ended_at"),
                check_reason(end_reason),
                check_detail(end_detail),
            )
        elif end_detail is not None:
            raise InvalidInputError("end_detail needs ended_at and end_reason")
        rows = [check_import_message(m) for m in messages]
        return self._import(origin, new, rows, end)

    def import_messages(self, origin: str, messages: Sequence[dict[str, Any]]) -> ImportResult:
        """Add a page of messages to the session imported from ``origin``, idempotently.

        As :meth:`import_session` does with its ``messages``; raises
        :class:`SessionNotFoundError` if nothing was imported from ``origin``.
        """
        origin = check_origin(origin)
        rows = [check_import_message(m) for m in messages]
        return self._import(origin, None, rows, None)

    def find_by_origin(self, origin: str) -> Session | None:
        """The session imported from ``origin`` (unique per store), or None."""
        origin = check_origin(origin)
        row = self.backend.read(lambda c: c.execute(sql.SELECT_BY_ORIGIN, (origin,)).fetchone())
        return None if row is None else session_from_row(row)

    def chain_tip_by_origin(self, origin: str) -> tuple[Session, OwnerInfo | None] | None:
        """The newest session of the chain whose root has ``origin``, with its owner's row.

        None if no session has that origin; the owner is None for a session
        without one (imported) or whose owner row is gone. O(1): one read of
        the root's chain summary, however long the chain.
        """
        origin = check_origin(origin)
        row = self.backend.read(
            lambda c: c.execute(sql.SELECT_CHAIN_TIP_BY_ORIGIN, (origin,)).fetchone()
        )
        if row is None:
            return None
        n = len(SESSION_COLUMNS.split(","))
        row = tuple(row)
        owner = OwnerInfo(*row[n:]) if row[n] is not None else None
        return session_from_row(row[:n]), owner

    def chain_tip_tail(
        self, origin: str, n: int
    ) -> tuple[Session, OwnerInfo | None, list[Any]] | None:
        """:meth:`chain_tip_by_origin` and the payloads of the tip's last ``n`` active
        messages (oldest first), in one read. O(n), however long the chain or the tip."""
        origin = check_origin(origin)
        cap = check_int(n, "n", minimum=0)
        width = len(SESSION_COLUMNS.split(","))

        if self._read_statement is not None:
            row = self._read_statement(sql.SELECT_CHAIN_TIP_TAIL_PG, (cap, cap, origin))
            if row is None:
                return None
            items = [] if row[-1] is None else json.loads(row[-1])
            if len(items) == cap or row[_MESSAGE_COUNT] <= cap:
                row = tuple(row)
                owner = OwnerInfo(*row[width:-1]) if row[width] is not None else None
                return session_from_row(row[:width]), owner, items
            # Retracted ones among the last seqs: the general read below.

        def run(c: Conn) -> tuple[Any, list[Any]] | None:
            row = c.execute(sql.SELECT_CHAIN_TIP_BY_ORIGIN, (origin,)).fetchone()
            if row is None:
                return None
            after = row[_MESSAGE_COUNT] - cap
            rows = c.execute(sql.SELECT_LAST_PAYLOADS_AFTER, (row[0], after, cap)).fetchall()
            if len(rows) < cap and after > 0:  # retracted ones among the last seqs
                rows = c.execute(sql.SELECT_LAST_PAYLOADS, (row[0], cap)).fetchall()
            return row, rows

        found = self.backend.read(run)
        if found is None:
            return None
        row, payloads = tuple(found[0]), found[1]
        owner = OwnerInfo(*row[width:]) if row[width] is not None else None
        # SQLite returns the JSON text, PostgreSQL a decoded jsonb (the exact text as a
        # string since payloads are stored exactly, or an object from older rows). Texts
        # are decoded as one array: one json.loads instead of one per item (-60%).
        payloads.reverse()
        if all(isinstance(p, str) for (p,) in payloads):
            items = json.loads("[" + ",".join([p for (p,) in payloads]) + "]")
        else:
            items = [json.loads(p) if isinstance(p, str) else p for (p,) in payloads]
        return session_from_row(row[:width]), owner, items

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<tether.Store {self.backend.dialect}:{self.backend.url}>"
