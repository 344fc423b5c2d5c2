"""The Store: tether's one contract over every backend.

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import (
    CommitUnknownError,
    InvalidInputError,
    OwnerAliveError,
    SessionEndedError,
    SessionNotFoundError,
    StaleOwnerError,
    StoreError,
)
from ..hooks import Plugins
from ..liveness.policy import OwnerInfo, judge
from ..model import (
    SESSION_COLUMNS,
    Census,
    ListedChain,
    Message,
    Page,
    Session,
    SourceCensus,
    message_from_row,
    session_from_row,
)
from ..validate import check_detail, check_reason, check_source, check_text
from . import listing, sql
from .backend import Backend, Conn

if TYPE_CHECKING:
    from ..lifecycle.handle import SessionHandle
    from .postgres import EventListener

log = logging.getLogger("tether.store")

# Reasons that mean the session did not finish on its owner's terms.
INTERRUPTED_REASONS = frozenset({"error", "signal", "process_exit", "reaped", "abandoned"})


@dataclass(frozen=True, slots=True)
class NewSession:
    """What a handle knows before its row exists (written on first content)."""

    id: str
    source: str
    model: str | None
    title: str | None
    cwd: str | None
    parent_id: str | None
    branch: bool
    metadata: str | None  # JSON text, already validated
    created_at: float
    owner_id: str | None = None


@dataclass(slots=True)
class WriteState:
    """What a session's single writer knows, so the hot path needs no extra reads.

    ``count`` and ``root_id`` are None until known; the UPDATE that bumps the
    count checks the cached value, so a stale cache costs a re-read, never a
    wrong seq.
    """

    session_id: str
    epoch: int
    count: int | None = None
    root_id: str | None = None
    activity_at: float = 0.0  # chain activity last written to the listing index


@dataclass(frozen=True, slots=True)
class WriteResult:
    seqs: list[int]
    count: int | None
    root_id: str | None
    activity_at: float

    def apply(self, w: WriteState) -> None:
        w.count, w.root_id, w.activity_at = self.count, self.root_id, self.activity_at


# The listing's activity key moves at most this often per session (seconds):
# it is indexed, and rewriting index entries on every append would cost more
# than the append itself.
ACTIVITY_RESOLUTION = 1.0

# A message ready to insert: role, content, tool_calls JSON, tool_call_id,
# tool_name, created_at, idem_key.
Row = tuple[str, str | None, str | None, str | None, str | None, float, str | None]


class Store:
    """A session store. Get one with :func:`tether.open_store`."""

    def __init__(
        self,
        backend: Backend,
        *,
        clock: Clock | None = None,
        plugins: Plugins | None = None,
        kind: str = "process",
        heartbeat_interval: float = 10.0,
        owner_ttl: float = 30.0,
        startup_sweep: bool = True,
    ) -> None:
        from ..liveness.owner import ProcessOwner

        if not 0 < heartbeat_interval < owner_ttl:
            raise InvalidInputError("heartbeat_interval must be positive and below owner_ttl")
        self.backend = backend
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.plugins = plugins or Plugins()
        self.owner_ttl = owner_ttl
        # Reads that a write acts on lock their row on PostgreSQL (see sql.locking).
        dialect = backend.dialect
        self._lock_rows = dialect == "postgresql"
        self._sql_write_state = sql.locking(dialect, sql.SELECT_WRITE_STATE)
        self._sql_session_owner = sql.locking(dialect, sql.SELECT_SESSION_OWNER, of="s")
        # A backend that can run one statement atomically on its own (PostgreSQL)
        # takes the common append in a single round trip.
        self._append_statement = getattr(backend, "write_statement", None)
        self._owner = ProcessOwner(
            self,
            kind=check_source(kind),
            heartbeat_interval=heartbeat_interval,
            startup_sweep=startup_sweep,
        )
        self._closed = False

    @property
    def owner_id(self) -> str | None:
        """This process's owner id in this store (None until it owned a session)."""
        return self._owner.id

    # --- lifecycle entry points ----------------------------------------------------

    def session(
        self,
        source: str,
        model: str | None = None,
        title: str | None = None,
        cwd: str | None = None,
        parent_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        branch: bool = False,
    ) -> SessionHandle:
        """Start a session and return its handle. Nothing is written yet.

        The row is written with the first message (or :meth:`SessionHandle.persist`),
        so a session that ends without content leaves no trace. ``parent_id``
        continues an earlier session (after compression, say): the two form one
        chain, listed once. With ``branch=True`` the new session starts a chain
        of its own that still points at its parent.
        """
        from ..lifecycle.handle import SessionHandle

        return SessionHandle._new(
            self,
            source=source,
            model=model,
            title=title,
            cwd=cwd,
            parent_id=parent_id,
            metadata=metadata,
            branch=branch,
        )

    def attach(self, session_id: str) -> SessionHandle:
        """A second writer on an open session, cooperating with its owner.

        For processes of one application that share a session (a gateway
        writing user messages while a worker writes replies, say). Writes
        through it are serialized with the owner's and get exact, gap-free
        seqs; it writes at the session's current epoch, so it is fenced out by a
        takeover like the owner. It does not own the session: ending or
        dropping it flushes its buffer but never ends the session.
        """
        from ..lifecycle.handle import SessionHandle

        session = self.get_session(session_id)
        if session.ended_at is not None:
            raise SessionEndedError(session_id, session.end_reason)
        return SessionHandle._existing(self, session, owns=False)

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
        reason = check_reason(reason)
        detail = check_detail(detail)
        ended = self._end(session_id, reason, detail, epoch=None)
        if ended is None:
            self.get_session(session_id)  # raises SessionNotFoundError if unknown
            return False
        self._fire_end(ended, reason, interrupted)
        return True

    def resume(self, session_id: str, *, force: bool = False) -> SessionHandle:
        """Take over an open session in this process and return its handle.

        If the session's owner is dead (or it has none), ownership moves here
        and the epoch goes up by one: from then on every write of the previous
        owner (or of anyone holding the old epoch) is refused with
        :class:`StaleOwnerError`, and nothing it wrote before is lost. If the
        owner is alive, :class:`OwnerAliveError` unless ``force=True``. An ended
        session raises :class:`SessionEndedError` (continue it instead:
        ``store.session(..., parent_id=session_id)``).
        """
        from ..lifecycle.handle import SessionHandle
        from ..liveness import Reaper

        reaper = Reaper(self)
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
                    alive = judge(
                        info,
                        host=reaper.identity.host,
                        boot_id=reaper.identity.boot_id,
                        now=self.clock.now(),
                        ttl=self.owner_ttl,
                        probe=reaper.probe,
                    ).alive
                if alive and not force:
                    raise OwnerAliveError(session_id, previous)
            now = self.clock.now()
            c.execute(sql.UPSERT_OWNER, me.row(now))
            if c.execute(sql.TAKE_OVER, (me.id, session_id, epoch)).rowcount != 1:
                raise OwnerAliveError(session_id, "another process that took it over just now")
            self._event(
                c,
                session_id,
                "taken_over",
                {"from": owner_id, "to": me.id, "epoch": epoch + 1, "forced": force},
            )
            return c.execute(sql.SELECT_SESSION, (session_id,)).fetchone()

        session = session_from_row(self.backend.write(tx))
        handle = SessionHandle._existing(self, session, owns=True)
        me.acquire(session.id)
        return handle

    def repair_unowned(self, stale_after: float, *, apply: bool = False) -> list[Session]:
        """Open sessions without owner, idle for ``stale_after`` seconds.

        Rows written before owners existed (or imported) are never reaped: no
        process can be judged for them. This lists them, and with
        ``apply=True`` ends them with reason ``abandoned``; returns what it
        found (or ended).
        """
        if stale_after < 0:
            raise InvalidInputError("stale_after must not be negative")
        now = self.clock.now()
        cutoff = now - stale_after
        if not apply:
            rows = self.backend.read(lambda c: c.execute(sql.STALE_UNOWNED, (cutoff,)).fetchall())
            return [session_from_row(r) for r in rows]
        detail = f"no owner, idle for more than {stale_after:.0f} s"

        def tx(c: Conn) -> list[Any]:
            ended = []
            for (sid,) in c.execute(
                "SELECT id FROM sessions WHERE ended_at IS NULL AND owner_id IS NULL"
                " AND last_active_at < ?",
                (cutoff,),
            ).fetchall():
                rows = c.execute(sql.END_STALE_UNOWNED, (now, detail, sid, cutoff)).fetchall()
                if rows:
                    self._event(c, sid, "ended", {"reason": "abandoned", "detail": detail})
                    ended.append(rows[0])
            return ended

        sessions = [session_from_row(r) for r in self.backend.write(tx)]
        for session in sessions:
            self._fire_end(session, "abandoned", True)
        return sessions

    # --- liveness plumbing (used by tether.liveness) -----------------------------------

    def _beat(self, owner_row: tuple[Any, ...]) -> None:
        self.backend.write(lambda c: c.execute(sql.UPSERT_OWNER, owner_row))

    def _drop_owner(self, owner_id: str) -> None:
        self.backend.write(lambda c: c.execute(sql.delete_idle_owners(1), (owner_id,)))

    def _sweep_candidates(
        self, host: str, stale_before: float
    ) -> list[tuple[str, OwnerInfo | None]]:
        rows = self.backend.read(
            lambda c: c.execute(sql.SWEEP_CANDIDATES, (host, stale_before)).fetchall()
        )
        return [(r[0], OwnerInfo(*r) if r[1] is not None else None) for r in rows]

    def _owners_of_open_sessions(self) -> list[tuple[str, OwnerInfo | None, int]]:
        rows = self.backend.read(lambda c: c.execute(sql.OWNERS_OF_OPEN_SESSIONS).fetchall())
        out = []
        for owner_id, *fields, count in rows:
            info = OwnerInfo(owner_id, *fields) if fields[0] is not None else None
            out.append((owner_id, info, int(count)))
        return out

    def _reap(
        self, dead: list[tuple[str, float | None, str]], *, prune_before: float
    ) -> list[tuple[Any, ...]]:
        """End the open sessions of dead owners (owner id, judged heartbeat, detail)."""

        def tx(c: Conn) -> list[tuple[str, str, Any]]:
            now = self.clock.now()
            ended = []
            logged = False
            for i in range(0, len(dead), sql.REAP_BATCH):
                batch = dead[i : i + sql.REAP_BATCH]
                query, params, logged = sql.reap_owners(self.backend.dialect, batch, now)
                ended += c.execute(query, params).fetchall()
            if ended and not logged:
                # One event per reaped session; the payload is the same for an owner's sessions.
                payloads: dict[tuple[str, str], str] = {}
                events = []
                for row in ended:
                    key = (row[1], row[2])  # owner_id, end_detail
                    if key not in payloads:
                        payloads[key] = json.dumps(
                            {"owner": key[0], "detail": key[1]}, separators=(",", ":")
                        )
                    events.append((now, row[0], "reaped", payloads[key]))
                c.executemany(sql.INSERT_EVENT, events)
            c.execute(sql.PRUNE_OLD_OWNERS, (prune_before,))
            return ended

        return self.backend.write(tx)  # (id, owner_id, end_detail) of each ended session

    def _sessions(self, ids: list[str]) -> list[Session]:
        """Several sessions by id (in no particular order)."""
        out: list[Session] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ", ".join("?" * len(chunk))
            query = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id IN ({marks})"
            rows = self.backend.read(lambda c, q=query, p=chunk: c.execute(q, p).fetchall())
            out += [session_from_row(r) for r in rows]
        return out

    def mark_detached(self, session_id: str, at: float | None) -> bool:
        """Record that no client is attached since ``at`` (None: attached again).

        Kept in the database so that what is detached survives a gateway
        restart. Returns False if the session is unknown or already ended.
        """

        def tx(c: Conn) -> bool:
            return c.execute(sql.SET_DETACHED, (at, session_id)).rowcount == 1

        return self.backend.write(tx)

    # --- reads -----------------------------------------------------------------------

    def get_session(self, session_id: str) -> Session:
        """The session with this id; :class:`SessionNotFoundError` if there is none."""
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
        self, session_id: str, after_seq: int | None = None, limit: int | None = None
    ) -> list[Message]:
        """Messages of one session in order, those after ``after_seq`` (at most ``limit``)."""
        after = 0 if after_seq is None else int(after_seq)
        if limit is not None and limit < 0:
            raise InvalidInputError("limit must not be negative")
        cap = 2**62 if limit is None else int(limit)

        def run(c: Conn) -> list[Any]:
            rows = c.execute(sql.SELECT_MESSAGES, (session_id, after, cap)).fetchall()
            if not rows and c.execute(sql.SELECT_WRITE_STATE, (session_id,)).fetchone() is None:
                raise SessionNotFoundError(session_id)
            return rows

        return [message_from_row(r) for r in self.backend.read(run)]

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
        rows = self.backend.read(lambda c: c.execute(query, params).fetchall())
        items = [
            ListedChain(session_from_row(r[:18]), r[18], r[19], r[20], r[21]) for r in rows[:limit]
        ]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = listing.encode_cursor(last.chain_last_active_at, last.root_id)
        return Page(items, next_cursor)

    def census(self) -> Census:
        """Totals for ``tether doctor``: open, ended, ghosts, end reasons per source."""

        def run(c: Conn) -> tuple[list[Any], list[Any], Any]:
            return (
                c.execute(sql.CENSUS_BY_SOURCE).fetchall(),
                c.execute(sql.CENSUS_REASONS).fetchall(),
                c.execute(sql.OLDEST_OPEN).fetchone(),
            )

        by_source_rows, reason_rows, oldest = self.backend.read(run)
        reasons: dict[str, dict[str, int]] = defaultdict(dict)
        overall: dict[str, int] = defaultdict(int)
        for source, reason, n in reason_rows:
            key = reason or "(none)"
            reasons[source][key] = int(n)
            overall[key] += int(n)
        by_source: dict[str, SourceCensus] = {}
        total = open_ = ghosts = 0
        unowned = 0
        for source, n, n_open, n_ghost, n_unowned in sorted(by_source_rows, key=lambda r: r[0]):
            n, n_open, n_ghost = int(n), int(n_open or 0), int(n_ghost or 0)
            unowned += int(n_unowned or 0)
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
        )

    def resolve_id(self, prefix: str) -> str:
        """Expand a unique id prefix (as typed on a command line) to a full id."""
        prefix = check_text(prefix, "session id", required=True) or ""
        if not prefix:
            raise InvalidInputError("session id must not be empty")

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

    # --- writes used by handles --------------------------------------------------------

    def _insert_session(self, c: Conn, s: NewSession) -> str:
        """Write a new session row; return its chain's root id."""
        root_id = s.id
        if s.parent_id is not None:
            parent = c.execute(sql.SELECT_ROOT_OF, (s.parent_id,)).fetchone()
            if parent is None:
                raise SessionNotFoundError(s.parent_id, f"no parent session {s.parent_id!r}")
            if not s.branch:
                root_id = parent[0]
        is_root = root_id == s.id
        owner_row = self._owner.row(self.clock.now())
        c.execute(sql.UPSERT_OWNER, owner_row)
        c.execute(
            sql.INSERT_SESSION,
            (
                s.id,
                s.source,
                s.model,
                s.title,
                s.cwd,
                s.parent_id,
                root_id,
                None,
                s.created_at,
                s.created_at,
                owner_row[0],
                0,
                s.metadata,
                s.id if is_root else None,
                s.created_at if is_root else None,
            ),
        )
        if not is_root:
            c.execute(sql.SET_CHAIN_TIP, (s.id, root_id))
        self._event(c, s.id, "created", {"source": s.source, "parent_id": s.parent_id})
        return root_id

    def _event(self, c: Conn, session_id: str | None, kind: str, data: dict[str, Any]) -> None:
        c.execute(
            sql.INSERT_EVENT,
            (self.clock.now(), session_id, kind, json.dumps(data, separators=(",", ":"))),
        )

    def _write_state_error(self, c: Conn, session_id: str, epoch: int) -> Exception:
        row = c.execute(sql.SELECT_WRITE_STATE, (session_id,)).fetchone()
        if row is None:
            return SessionNotFoundError(session_id)
        ended_at, reason, current = row[:3]
        if ended_at is not None:
            return SessionEndedError(session_id, reason)
        return StaleOwnerError(session_id, epoch, current)

    def _load_write_state(self, c: Conn, w: WriteState) -> tuple[int, str]:
        """Read the count and root the writer must know; refuse if it may not write.

        On PostgreSQL this locks the session row until the transaction ends, so
        what was read stays true while the transaction acts on it.
        """
        row = c.execute(self._sql_write_state, (w.session_id,)).fetchone()
        if row is None:
            raise SessionNotFoundError(w.session_id)
        ended_at, reason, epoch, count, root_id = row
        if ended_at is not None:
            raise SessionEndedError(w.session_id, reason)
        if epoch != w.epoch:
            raise StaleOwnerError(w.session_id, w.epoch, epoch)
        return count, root_id

    def _known_keys(self, c: Conn, session_id: str, rows: Sequence[Row]) -> dict[str, int]:
        """Idempotency keys of ``rows`` already stored, with their seqs."""
        if len(rows) == 1:
            if rows[0][6] is None:
                return {}
            keys = [rows[0][6]]
        else:
            keys = [r[6] for r in rows if r[6] is not None]
            if not keys:
                return {}
        return dict(c.execute(sql.select_idem_keys(len(keys)), (session_id, *keys)).fetchall())

    def _insert_fresh(self, c: Conn, w: WriteState, fresh: Sequence[Row]) -> tuple[int, str, float]:
        """Bump the session's counters and insert ``fresh`` (all new) rows.

        Returns the count before the bump (the first new seq is one more), the
        chain root and the chain activity now stored in the listing index.
        """
        sid = w.session_id
        count, root_id = w.count, w.root_id
        if count is None or root_id is None:
            count, root_id = self._load_write_state(c, w)
        n = len(fresh)
        now = fresh[-1][5]
        active = now - w.activity_at >= ACTIVITY_RESOLUTION
        for _ in range(2):
            if root_id == sid:
                if active:
                    stmt, params = (
                        sql.BUMP_ROOT_ACTIVE,
                        (count + n, n, now, now, sid, w.epoch, count),
                    )
                else:
                    stmt, params = sql.BUMP_ROOT, (count + n, n, now, sid, w.epoch, count)
            else:
                stmt, params = sql.BUMP_CHILD, (count + n, now, sid, w.epoch, count)
            if c.execute(stmt, params).rowcount == 1:
                break
            # The cached count was stale (or the session moved on): re-read, retry once.
            count, root_id = self._load_write_state(c, w)
        else:  # pragma: no cover - after the re-read the UPDATE matches
            raise self._write_state_error(c, sid, w.epoch)
        if root_id != sid:
            if active:
                c.execute(sql.BUMP_CHAIN_ACTIVE, (n, now, sid, root_id))
            else:
                c.execute(sql.BUMP_CHAIN, (n, root_id))
        if n == 1:
            c.execute(sql.INSERT_MESSAGE, (sid, count + 1, *fresh[0]))
        else:
            c.executemany(
                sql.INSERT_MESSAGE, [(sid, count + 1 + k, *r) for k, r in enumerate(fresh)]
            )
        return count, root_id, now if active else w.activity_at

    def _append_rows(
        self, c: Conn, w: WriteState, rows: Sequence[Row], check_keys: bool = True
    ) -> WriteResult:
        """Insert ``rows`` inside a write transaction; return their seqs and the new state.

        With ``check_keys``, rows whose idempotency key is already stored (or
        repeated in ``rows``) are not written again; they get the stored seq.
        Without, the caller vouches that no key of ``rows`` can be stored yet.
        ``w`` is only read: the caller applies the result once the transaction
        has committed.
        """
        if not check_keys:
            count, root_id, activity = self._insert_fresh(c, w, rows)
            n = len(rows)
            return WriteResult(list(range(count + 1, count + 1 + n)), count + n, root_id, activity)
        known = self._known_keys(c, w.session_id, rows)
        # plan[i] > 0: row i is already stored with that seq;
        # plan[i] = -k: row i is the k-th fresh row (its seq is count + k).
        plan: list[int] = []
        fresh: list[Row] = []
        slot: dict[str, int] = {}
        for r in rows:
            key = r[6]
            if key is not None:
                if key in known:
                    plan.append(known[key])
                    continue
                if key in slot:  # the same key twice in one batch: one message
                    plan.append(slot[key])
                    continue
            fresh.append(r)
            plan.append(-len(fresh))
            if key is not None:
                slot[key] = -len(fresh)
        if not fresh:
            return WriteResult(plan, w.count, w.root_id, w.activity_at)
        count, root_id, activity = self._insert_fresh(c, w, fresh)
        seqs = [p if p > 0 else count - p for p in plan]
        return WriteResult(seqs, count + len(fresh), root_id, activity)

    def _append_one(self, w: WriteState, row: Row) -> int:
        """The hot path: one message without idempotency key; returns its seq.

        The common case (a root session, its state cached, no listing update
        due) runs two statements in a transaction, or one atomic statement on a
        backend that offers ``write_statement`` (PostgreSQL); anything else
        takes :meth:`_insert_fresh`.
        """
        sid = w.session_id
        count = w.count
        common = (
            count is not None and w.root_id == sid and row[5] - w.activity_at < ACTIVITY_RESOLUTION
        )
        if common and self._append_statement is not None:
            assert count is not None
            params = (count + 1, row[5], sid, w.epoch, count, count + 1, *row)
            try:
                done = self._append_statement(sql.APPEND_ONE_STATEMENT, params) == 1
            except CommitUnknownError:
                done = self._landed(sid, count + 1, row)  # find out instead of guessing
            if done:
                w.count = count + 1
                return w.count
            common = False  # the cached state was off (or it did not land): the slow path

        def tx(c: Conn) -> tuple[int, str, float]:
            if (
                common
                and c.execute(sql.BUMP_ROOT, (count + 1, 1, row[5], sid, w.epoch, count)).rowcount
                == 1
            ):
                c.execute(sql.INSERT_MESSAGE, (sid, count + 1, *row))
                return count, sid, w.activity_at
            return self._insert_fresh(c, w, (row,))

        before, w.root_id, w.activity_at = self.backend.write(tx)
        w.count = before + 1
        return w.count

    def _landed(self, session_id: str, seq: int, row: Row) -> bool:
        """After a commit of unknown outcome: is this very message stored at ``seq``?

        ``created_at`` comes from this writer's clock and ``role`` from the row,
        so a match is this message, not another writer's.
        """
        found = self.backend.read(
            lambda c: c.execute(
                "SELECT role, created_at FROM messages WHERE session_id = ? AND seq = ?",
                (session_id, seq),
            ).fetchone()
        )
        return found is not None and found[0] == row[0] and found[1] == row[5]

    def _write_messages(
        self,
        new: NewSession | None,
        w: WriteState,
        rows: Sequence[Row],
        *,
        check_keys: bool = True,
    ) -> WriteResult:
        """Persist the session if ``new`` is given, then append ``rows``: one transaction."""

        def tx(c: Conn) -> WriteResult:
            state = w
            if new is not None:
                root_id = self._insert_session(c, new)
                state = WriteState(w.session_id, w.epoch, 0, root_id, new.created_at)
            elif self._lock_rows and check_keys and any(r[6] is not None for r in rows):
                # PostgreSQL: lock the session before looking its keys up, or two
                # writers flushing one key could both find it missing.
                count, root_id = self._load_write_state(c, w)
                state = WriteState(w.session_id, w.epoch, count, root_id, w.activity_at)
            if not rows:
                return WriteResult([], state.count, state.root_id, state.activity_at)
            return self._append_rows(c, state, rows, check_keys)

        return self.backend.write(tx)

    def _end(
        self, session_id: str, reason: str, detail: str | None, *, epoch: int | None
    ) -> Session | None:
        """Record the end; return the ended session, or None if it was already ended."""

        def tx(c: Conn) -> Any:
            now = self.clock.now()
            if epoch is None:
                rows = c.execute(sql.END_SESSION, (now, reason, detail, session_id)).fetchall()
            else:
                rows = c.execute(
                    sql.END_SESSION_FENCED, (now, reason, detail, session_id, epoch)
                ).fetchall()
                if not rows:
                    err = self._write_state_error(c, session_id, epoch)
                    if not isinstance(err, SessionEndedError):
                        raise err
            if rows:
                self._event(c, session_id, "ended", {"reason": reason, "detail": detail})
                return rows[0]
            return None

        row = self.backend.write(tx)
        return None if row is None else session_from_row(row)

    def _fire_end(self, session: Session, reason: str, interrupted: bool) -> None:
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
        """End this store's open handles (reason ``process_exit``) and close connections."""
        if self._closed:
            return
        from ..lifecycle import exits

        exits.end_handles_of(self, "process_exit", "store closed")
        self._owner.close()
        self._closed = True
        self.backend.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<tether.Store {self.backend.dialect}:{self.backend.url}>"
