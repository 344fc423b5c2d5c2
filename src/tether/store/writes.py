"""The write path: sessions' first rows, appends, ends.

These are the store's halves of the lifecycle (public repository methods
``write_messages``, ``append_message``, ``record_end``): a
:class:`~tether.lifecycle.SessionHandle` calls them, users need not. The hot path
(:meth:`MessageWrites.append_message`) is tuned with ``bench/store.py``: one
transaction and two statements on SQLite, one statement on PostgreSQL, no
extra reads. Everything else goes through :meth:`MessageWrites._insert_fresh`,
which checks ownership (epoch), liveness (``ended_at``) and order
(``message_count``) in the UPDATE that bumps the count.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import (
    CommitUnknownError,
    SessionEndedError,
    SessionNotFoundError,
    StaleOwnerError,
    StoreUnavailableError,
)
from ..ids import new_id
from ..model import ImportResult, Session, session_from_row
from . import sql
from .backend import Conn
from .deliveries import INSERT_EVENT_HOOKS_DUE

if TYPE_CHECKING:
    from ..clock import Clock
    from .backend import Backend
    from .owners import OwnerPort


def _is_duplicate_key(exc: BaseException) -> bool:
    """A unique violation (SQLite or PostgreSQL) on the messages' idempotency key."""
    is_unique = isinstance(exc, sqlite3.IntegrityError) or getattr(exc, "sqlstate", None) == "23505"
    return is_unique and "idem" in str(exc)


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1.5 us of every session
class NewSession:
    """What a handle knows before its row exists (written on first content).

    Treated as a value: a handle replaces it (``dataclasses.replace``), never
    changes it in place.
    """

    id: str
    source: str
    model: str | None
    title: str | None
    cwd: str | None
    parent_id: str | None
    branch: bool
    metadata: str | None  # JSON text, already validated
    created_at: float
    origin: str | None = None  # the session's name in another system (unique per store)


@dataclass(frozen=True, slots=True)
class ImportedSession:
    """A session row as an importer hands it over (validated; see Store.import_session)."""

    origin: str
    source: str
    model: str | None
    title: str | None
    cwd: str | None
    parent_id: str | None
    metadata: str | None  # JSON text, already validated
    created_at: float
    last_active_at: float
    branch: bool = False  # with a parent: start a chain of its own instead of joining it


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


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 us of each first append
class WriteResult:
    seqs: list[int]
    count: int | None
    root_id: str | None
    activity_at: float
    owner_written: bool = False  # this transaction wrote the owner row (with a new session)

    def apply(self, w: WriteState) -> None:
        w.count, w.root_id, w.activity_at = self.count, self.root_id, self.activity_at


# Attempts at a write whose commits keep ending with an unknown outcome that
# turns out not applied (each one is checked before the next).
_UNKNOWN_RETRIES = 5

# Rows per one-statement append (append_messages): ten parameters a row, and
# PostgreSQL takes 65,535 a statement; more take the transaction path.
_MANY_MAX = 1000

# The listing's activity key moves at most this often per session (seconds):
# it is indexed, and rewriting index entries on every append would cost more
# than the append itself.
ACTIVITY_RESOLUTION = 1.0


def _first_activity(created: float, last: float) -> float:
    """A new root's listing key: its last message's time, as BUMP_ROOT(_ACTIVE)
    would move it from its creation."""
    return last if last - created >= ACTIVITY_RESOLUTION else created


# A message ready to insert: role, content, tool_calls JSON, tool_call_id,
# tool_name, created_at, idem_key, meta JSON, payload JSON.
Row = tuple[
    str, str | None, str | None, str | None, str | None, float, str | None, str | None, str | None
]


# The events' JSON, compact (json.dumps with separators builds an encoder per call).
_compact_json = json.JSONEncoder(separators=(",", ":")).encode


@functools.lru_cache(maxsize=64)
def _ended_json(reason: str) -> str:
    """An ``ended`` event's data for an end without detail (a few reasons recur)."""
    return _compact_json({"reason": reason, "detail": None})


@functools.lru_cache(maxsize=64)
def _created_json(source: str) -> str:
    """A root session's ``created`` event data (a process has few sources)."""
    return _compact_json({"source": source, "parent_id": None})


def _plan(rows: Sequence[Row], known: dict[str, int]) -> tuple[list[int], list[Row]]:
    """Which of ``rows`` to insert, given the keys ``known`` to be stored (with seqs).

    Returns ``(plan, fresh)``: plan[i] > 0, row i is already stored with that
    seq; plan[i] = -k, row i is the k-th of ``fresh`` (its seq is count + k).
    A key repeated within ``rows`` is one message.
    """
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
    return plan, fresh


class MessageWrites:
    """Writes on behalf of session handles (mixed into :class:`~tether.store.StoreCore`)."""

    backend: Backend
    clock: Clock
    _owner: OwnerPort
    _lock_rows: bool
    _sql_write_state: str
    _sql_insert_message: str
    _append_statement: Callable[[str, Sequence[Any]], int] | None

    def _session_owner(self, c: Conn) -> tuple[str, bool]:
        """The owner id a new session row names, and whether its owner row was
        written now (it is, unless this process wrote it just now)."""
        owner_row = self._owner.row_due(self.clock.now())
        if owner_row is None:
            return self._owner.ensure(), False
        c.execute(sql.UPSERT_OWNER, owner_row)
        return owner_row[0], True

    def _start_root(
        self, c: Conn, s: NewSession, epoch: int, rows: Sequence[Row], check_keys: bool
    ) -> WriteResult:
        """A root session's first write: its row with ``rows`` already counted, then them.

        Statement for statement what :meth:`_insert_session` and
        :meth:`_append_rows` would write, less the UPDATE of the row just
        inserted (the first append's cost, issue 15). A new session holds no
        idempotency key yet: only a key repeated within ``rows`` is one message.
        """
        sid = s.id
        plan: list[int] | None = None
        fresh: Sequence[Row] = rows
        if check_keys:
            plan, fresh = _plan(rows, {})
        n = len(fresh)
        created = s.created_at
        last = fresh[-1][5] if n else created
        activity = _first_activity(created, last)
        owner_id, owner_written = self._session_owner(c)
        params = sql.root_session_params(
            sid, s.source, s.model, s.title, s.cwd, s.origin, created, last, owner_id,
            s.metadata, n, activity,
        )  # fmt: skip
        inserted = c.execute(sql.INSERT_ROOT_SESSION, params).rowcount
        c.execute(sql.INSERT_EVENT, (self.clock.now(), sid, "created", _created_json(s.source)))
        if inserted != 1:
            # The id is taken: write to that row through every check (epoch, end,
            # count), as a first write did before this path existed.
            if not rows:
                return WriteResult([], 0, sid, created, owner_written)
            done = self._append_rows(c, WriteState(sid, epoch, 0, sid, created), rows, check_keys)
            return dataclasses.replace(done, owner_written=owner_written)
        if n == 1:
            c.execute(self._sql_insert_message, (sid, 1, *fresh[0]))
            seqs = [1] if plan is None else [-p for p in plan]
        else:
            if n:
                many = [(sid, k) + r for k, r in enumerate(fresh, 1)]  # noqa: RUF005 (cheaper)
                c.executemany(self._sql_insert_message, many)
            seqs = list(range(1, n + 1)) if plan is None else [-p for p in plan]
        return WriteResult(seqs, n, sid, activity, owner_written)

    def _insert_session(self, c: Conn, s: NewSession) -> tuple[str, bool]:
        """Write a new session row; return its chain's root id, and whether the
        owner row was written too (it is, unless this process wrote it just now)."""
        root_id = s.id
        if s.parent_id is not None:
            parent = c.execute(sql.SELECT_ROOT_OF, (s.parent_id,)).fetchone()
            if parent is None:
                raise SessionNotFoundError(s.parent_id, f"no parent session {s.parent_id!r}")
            if not s.branch:
                root_id = parent[0]
        is_root = root_id == s.id
        owner_id, owner_written = self._session_owner(c)
        c.execute(
            sql.INSERT_SESSION,
            sql.new_session_params(
                id=s.id,
                source=s.source,
                model=s.model,
                title=s.title,
                cwd=s.cwd,
                parent_id=s.parent_id,
                root_id=root_id,
                origin=s.origin,
                created_at=s.created_at,
                last_active_at=s.created_at,
                owner_id=owner_id,
                metadata=s.metadata,
                chain_tip_id=s.id if is_root else None,
                chain_last_active_at=s.created_at if is_root else None,
            ),
        )
        if not is_root:
            at = s.created_at
            c.execute(sql.ADD_CHAIN_MEMBER, (at, s.id, s.id, at, at, root_id))
        self._event(c, s.id, "created", {"source": s.source, "parent_id": s.parent_id})
        return root_id, owner_written

    def _event(self, c: Conn, session_id: str | None, kind: str, data: dict[str, Any]) -> None:
        c.execute(sql.INSERT_EVENT, (self.clock.now(), session_id, kind, _compact_json(data)))

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
        params: tuple[Any, ...]
        for _ in range(2):
            if root_id == sid:
                if active:
                    stmt, params = (
                        sql.BUMP_ROOT_ACTIVE,
                        (count + n, n, now, now, now, sid, w.epoch, count),
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
                c.execute(sql.BUMP_CHAIN_ACTIVE, (n, now, now, root_id))
            else:
                c.execute(sql.BUMP_CHAIN, (n, root_id))
        if n == 1:
            c.execute(self._sql_insert_message, (sid, count + 1, *fresh[0]))
        else:
            # (sid, seq) + row: concatenating is cheaper than unpacking into a new tuple
            many = [(sid, k) + r for k, r in enumerate(fresh, count + 1)]  # noqa: RUF005
            c.executemany(self._sql_insert_message, many)
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
        plan, fresh = _plan(rows, self._known_keys(c, w.session_id, rows))
        if not fresh:
            return WriteResult(plan, w.count, w.root_id, w.activity_at)
        count, root_id, activity = self._insert_fresh(c, w, fresh)
        seqs = [p if p > 0 else count - p for p in plan]
        return WriteResult(seqs, count + len(fresh), root_id, activity)

    def append_message(self, w: WriteState, row: Row) -> int:
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

        planned: list[tuple[int, str, float]] = []  # what tx did, for an unknown commit

        def tx(c: Conn) -> tuple[int, str, float]:
            if (
                common
                and count is not None  # implied by common; says so to the checker
                and c.execute(sql.BUMP_ROOT, (count + 1, 1, row[5], sid, w.epoch, count)).rowcount
                == 1
            ):
                c.execute(self._sql_insert_message, (sid, count + 1, *row))
                planned.append((count, sid, w.activity_at))
            else:
                planned.append(self._insert_fresh(c, w, (row,)))
            return planned[-1]

        for _ in range(_UNKNOWN_RETRIES):
            try:
                before, w.root_id, w.activity_at = self.backend.write(tx)
                break
            except CommitUnknownError:
                if not planned or not self._landed(sid, planned[-1][0] + 1, row):
                    planned.clear()
                    continue  # nothing was applied: writing again cannot double it
                before, w.root_id, w.activity_at = planned[-1]
                break
        else:
            raise self._unresolved(sid)
        w.count = before + 1
        return w.count

    def _unresolved(self, session_id: str) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"session {session_id}: {_UNKNOWN_RETRIES} commits in a row had an unknown "
            "outcome and none was applied; nothing was written"
        )

    def _landed(self, session_id: str, seq: int, row: Row) -> bool:
        """After a commit of unknown outcome: is this very message stored at ``seq``?

        ``created_at`` comes from this writer's clock and ``role`` from the row,
        so a match is this message, not another writer's.
        """
        found = self.backend.read(
            lambda c: c.execute(sql.SELECT_MESSAGE_WITNESS, (session_id, seq)).fetchone()
        )
        return found is not None and found[0] == row[0] and found[1] == row[5]

    def append_messages(self, w: WriteState, rows: Sequence[Row]) -> None:
        """:meth:`write_messages` of new rows (their keys, if any, not stored yet) to a
        session whose state ``w`` holds, updating ``w``.

        The common case (a root session, its state cached, no listing update
        due) is one statement on a backend that offers ``write_statement``
        (PostgreSQL): one round trip instead of four.
        """
        sid = w.session_id
        count = w.count
        n = len(rows)
        if (
            self._append_statement is None
            or not 0 < n <= _MANY_MAX
            or count is None
            or w.root_id != sid
            or rows[-1][5] - w.activity_at >= ACTIVITY_RESOLUTION
        ):
            self.write_messages(None, w, rows, check_keys=False).apply(w)
            return
        params: list[Any] = [count + n, n, rows[-1][5], sid, w.epoch, count]
        for k, row in enumerate(rows, 1):
            params.append(count + k)
            params.extend(row)
        check_keys = False
        try:
            done = self._append_statement(sql.append_many_statement(n), params) == n
        except CommitUnknownError:
            done = self._landed(sid, count + n, rows[-1])  # atomic: the last row decides
            check_keys = True  # not landed: nothing was applied, yet look the keys up
        except Exception as exc:
            if not _is_duplicate_key(exc):
                raise
            done, check_keys = False, True  # stored by an earlier write: find them
        if done:
            w.count = count + n
            return
        # The cached state was off (or nothing landed): the transaction path.
        self.write_messages(None, w, rows, check_keys=check_keys).apply(w)

    def write_messages(
        self,
        new: NewSession | None,
        w: WriteState,
        rows: Sequence[Row],
        *,
        check_keys: bool = True,
    ) -> WriteResult:
        """Persist the session if ``new`` is given, then append ``rows``: one transaction.

        A commit of unknown outcome is resolved here (did it land?), so the
        caller never sees :class:`CommitUnknownError` and a retry never doubles.
        """
        if (
            new is not None
            and new.parent_id is None
            and len(rows) == 1
            and self._append_statement is not None
        ):
            started = self._start_root_statement(new, rows[0])
            if started is not None:
                return started
        planned: list[WriteResult] = []  # what tx did, for an unknown commit

        def tx(c: Conn) -> WriteResult:
            state = w
            owner_written = False
            if new is not None and new.parent_id is None:
                done = self._start_root(c, new, w.epoch, rows, check_keys)
                planned.append(done)
                return done
            if new is not None:
                root_id, owner_written = self._insert_session(c, new)
                state = WriteState(w.session_id, w.epoch, 0, root_id, new.created_at)
            elif self._lock_rows and check_keys and any(r[6] is not None for r in rows):
                # PostgreSQL: lock the session before looking its keys up, or two
                # writers flushing one key could both find it missing.
                count, root_id = self._load_write_state(c, w)
                state = WriteState(w.session_id, w.epoch, count, root_id, w.activity_at)
            if not rows:
                done = WriteResult([], state.count, state.root_id, state.activity_at)
            else:
                done = self._append_rows(c, state, rows, check_keys)
            if owner_written:
                done = dataclasses.replace(done, owner_written=True)
            planned.append(done)
            return done

        for _ in range(_UNKNOWN_RETRIES):
            planned.clear()
            try:
                return self.backend.write(tx)
            except CommitUnknownError:
                if planned and self._all_landed(new, w.session_id, rows, planned[-1]):
                    return planned[-1]
                check_keys = True  # it did not land; look keys up all the same
            except Exception as exc:
                if check_keys or not _is_duplicate_key(exc):
                    raise
                # The caller vouched that no key was stored yet, but an earlier write
                # did commit them (an exception, a signal, landed after its COMMIT):
                # nothing was written by this attempt, so look the keys up this time.
                check_keys = True
        raise self._unresolved(w.session_id)

    def _start_root_statement(self, s: NewSession, row: Row) -> WriteResult | None:
        """:meth:`_start_root` of one message in one statement (PostgreSQL); None
        when it wrote nothing: the owner row is due (it goes in the transaction),
        the id is taken, or a commit of unknown outcome did not land."""
        assert self._append_statement is not None
        if self._owner.row_due(self.clock.now()) is not None:
            return None
        sid = s.id
        created = s.created_at
        last = row[5]
        activity = _first_activity(created, last)
        params = (
            *sql.root_session_params(
                sid, s.source, s.model, s.title, s.cwd, s.origin, created, last,
                self._owner.ensure(), s.metadata, 1, activity,
            ),
            self.clock.now(),
            _created_json(s.source),
            *row,
        )  # fmt: skip
        done = WriteResult([1], 1, sid, activity, False)
        try:
            if self._append_statement(sql.START_ROOT_ONE_STATEMENT, params) == 1:
                return done
        except CommitUnknownError:
            if self._landed(sid, 1, row):
                return done
        return None

    def _all_landed(
        self, new: NewSession | None, session_id: str, rows: Sequence[Row], done: WriteResult
    ) -> bool:
        """After a commit of unknown outcome: did this transaction's writes land?

        It is atomic, so one witness decides: the message stored at the new
        count (the last one it inserted), or else the session row it created.
        """
        for seq, row in zip(done.seqs, rows, strict=True):
            if seq == done.count:
                return self._landed(session_id, seq, row)
        if new is None:
            return True  # it inserted nothing: there is nothing to find
        found = self.backend.read(
            lambda c: c.execute(sql.SELECT_SESSION_WITNESS, (session_id,)).fetchone()
        )
        return found is not None and found[0] == new.created_at and found[1] == self._owner.id

    def record_end(
        self,
        session_id: str,
        reason: str,
        detail: str | None,
        *,
        epoch: int | None,
        hooks_due_by: str | None = None,
        interrupted: bool = True,
    ) -> Session | None:
        """Record the end; return the ended session, or None if it was already ended.

        With ``hooks_due_by`` (an owner id), the ``ended`` event also says that
        this process owes the end's hooks (see :mod:`tether.store.deliveries`).
        """

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
                data: dict[str, Any] = {"reason": reason, "detail": detail}
                if hooks_due_by is None:
                    self._event(c, session_id, "ended", data)
                else:
                    data["interrupted"] = interrupted  # for a deliverer in another process
                    c.execute(
                        INSERT_EVENT_HOOKS_DUE,
                        (now, session_id, "ended", json.dumps(data), hooks_due_by),
                    )
                    # An end from outside (``tether end``) comes from a process that may own
                    # nothing, hence have no owner row: without one, a deliverer could not
                    # probe it and would wait out a whole lease if it died mid-hook.
                    owner_row = self._owner.row_due(now) if epoch is None else None
                    if owner_row is not None:
                        c.execute(sql.UPSERT_OWNER, owner_row)
                return rows[0]
            return None

        row = self.backend.write(tx)
        return None if row is None else session_from_row(row)

    def record_end_quietly(
        self, session_id: str, reason: str, detail: str | None, *, epoch: int
    ) -> bool:
        """:meth:`record_end` (fenced, no hooks owed) for an end nothing observes: no
        ``on_session_end`` hook is implemented, so the row is not read back.
        True if this call ended the session, False if it was already ended."""

        text = (
            _ended_json(reason)
            if detail is None
            else _compact_json({"reason": reason, "detail": detail})
        )
        if self._append_statement is not None:
            # One statement (PostgreSQL). Not ended by it (ended already, taken
            # over, gone), or a commit of unknown outcome that did not land: the
            # transaction below tells those apart, as it always did.
            now = self.clock.now()
            params = (now, reason, detail, session_id, epoch, text)
            try:
                if self._append_statement(sql.END_QUIETLY_ONE_STATEMENT, params) == 1:
                    return True
            except CommitUnknownError:
                if self._ended_at(session_id, now, reason):
                    return True

        def tx(c: Conn) -> bool:
            now = self.clock.now()
            params = (now, reason, detail, session_id, epoch)
            if c.execute(sql.END_SESSION_FENCED_QUIETLY, params).rowcount == 1:
                c.execute(sql.INSERT_EVENT, (now, session_id, "ended", text))
                return True
            err = self._write_state_error(c, session_id, epoch)
            if not isinstance(err, SessionEndedError):
                raise err
            return False

        return self.backend.write(tx)

    def _ended_at(self, session_id: str, at: float, reason: str) -> bool:
        """After a commit of unknown outcome: did this very end land (its time is
        this writer's clock reading, so a match is this end, not another's)?"""
        found = self.backend.read(
            lambda c: c.execute(sql.SELECT_END_WITNESS, (session_id,)).fetchone()
        )
        return found is not None and found[0] == at and found[1] == reason

    def _import(
        self,
        origin: str,
        new: ImportedSession | None,
        rows: Sequence[Row],
        end: tuple[float, str, str | None] | None,
    ) -> ImportResult:
        """One import call in one transaction: the row (if new), a page, the end (if new).

        Idempotent: the session is found by its origin, messages by their keys,
        and an end is recorded only while none is (the first end wins).
        """

        return self.backend.write(lambda c: self._import_tx(c, origin, new, rows, end))

    def _import_tx(
        self,
        c: Conn,
        origin: str,
        new: ImportedSession | None,
        rows: Sequence[Row],
        end: tuple[float, str, str | None] | None,
    ) -> ImportResult:
        """:meth:`_import`'s work inside a transaction (``import_batch`` runs several)."""
        by_origin = sql.locking(self.backend.dialect, sql.SELECT_BY_ORIGIN)
        created = ended = False
        row = c.execute(by_origin, (origin,)).fetchone()
        if row is None and new is not None:
            created = self._insert_imported(c, new)
            row = c.execute(by_origin, (origin,)).fetchone()
        if row is None:
            raise SessionNotFoundError(origin, f"no session imported from {origin!r}")
        session = session_from_row(row)
        written = self._import_rows(c, session, rows) if rows else 0
        if end is not None and session.ended_at is None:
            ended_rows = c.execute(sql.END_SESSION, (end[0], end[1], end[2], session.id)).fetchall()
            if ended_rows:
                ended = True
                self._event(c, session.id, "ended", {"reason": end[1], "detail": end[2]})
        if written or ended:
            row = c.execute(sql.SELECT_SESSION, (session.id,)).fetchone()
            session = session_from_row(row)
        return ImportResult(session, created, ended, written)

    def _insert_imported(self, c: Conn, s: ImportedSession) -> bool:
        """Write an imported session's row (no owner: external); False if one beat us to it."""
        sid = new_id(s.created_at)
        root_id = sid
        if s.parent_id is not None:
            parent = c.execute(sql.SELECT_ROOT_OF, (s.parent_id,)).fetchone()
            if parent is None:
                raise SessionNotFoundError(s.parent_id, f"no parent session {s.parent_id!r}")
            if not s.branch:
                root_id = parent[0]
        is_root = root_id == sid
        inserted = c.execute(
            sql.INSERT_IMPORTED_SESSION,
            sql.new_session_params(
                id=sid,
                source=s.source,
                model=s.model,
                title=s.title,
                cwd=s.cwd,
                parent_id=s.parent_id,
                root_id=root_id,
                origin=s.origin,
                created_at=s.created_at,
                last_active_at=s.last_active_at,
                metadata=s.metadata,
                chain_tip_id=sid if is_root else None,
                chain_last_active_at=s.last_active_at if is_root else None,
            ),
        ).rowcount
        if inserted != 1:
            return False
        if not is_root:
            at = s.created_at
            c.execute(sql.ADD_CHAIN_MEMBER, (at, sid, sid, at, at, root_id))
            c.execute(sql.BUMP_CHAIN_ACTIVE, (0, s.last_active_at, s.last_active_at, root_id))
        self._event(c, sid, "imported", {"source": s.source, "origin": s.origin})
        return True

    def _import_rows(self, c: Conn, session: Session, rows: Sequence[Row]) -> int:
        """Append the rows whose keys this session does not hold yet; return how many."""
        sid = session.id
        # Lock the row (PostgreSQL) so two importers of one page cannot both miss a key.
        state = c.execute(self._sql_write_state, (sid,)).fetchone()
        count, root_id = state[3], state[4]
        known = self._known_keys(c, sid, rows)
        fresh: list[Row] = []
        seen: set[str | None] = set()
        for r in rows:
            if r[6] in known or r[6] in seen:
                continue
            seen.add(r[6])
            fresh.append(r)
        if not fresh:
            return 0
        c.executemany(
            self._sql_insert_message, [(sid, count + 1 + k, *r) for k, r in enumerate(fresh)]
        )
        newest = max(r[5] for r in fresh)
        n = len(fresh)
        c.execute(sql.IMPORT_BUMP, (n, newest, newest, sid))
        c.execute(sql.BUMP_CHAIN_ACTIVE, (n, newest, newest, root_id))
        return n
