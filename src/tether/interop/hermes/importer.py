"""``tether hermes import``: every Hermes session into tether, incrementally.

How a pass goes (the mirror runs the same pass in a loop):

1. **Messages**, from the store's cursor (the greatest Hermes message id
   imported), one page at a time. One read transaction reads the page, the
   rest of the new messages of every session the page touches, and those
   sessions' rows (and their parents'): a session and its messages come from
   one snapshot, so a concurrent delete can never split them. One tether
   transaction writes the page's sessions, messages, ends and the cursor.
2. **Open sessions** tether holds for this store and that the pass did not
   touch: their row and any new messages, again one snapshot per page; an end
   in Hermes ends them, a row gone from Hermes marks them deleted at the source.
3. **Changes** to rows imported before: titles, message states (compaction,
   rewind) and messages Hermes deleted (``replace_messages``: retracted).
4. (``import`` only) **Deleted rows**: tether's sessions of this store whose
   Hermes row is gone are counted, and recorded once, as deleted at the source.

Sessions enter tether with their first message: a ghost (a row without
messages) is never imported, only counted. Nothing here writes to the Hermes
store: reads are ``mode=ro`` connections and short transactions.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...store import StoreCore
from ...store.imports import ImportItem, decode_position
from .mapping import (
    DEFAULTS,
    M_ID,
    M_SESSION,
    M_TS,
    MESSAGE_FIELDS,
    ORIGIN_PREFIX,
    SESSION_FIELDS,
    SKIPPED_ROLES,
    deleted_item,
    map_row,
    message_key,
    origin_of,
    session_item,
)
from .store import HermesStore, discover, open_readonly, recognise

PAGE_MESSAGES = 5000  # one read transaction at most (the opening rules' page)
PAGE_SESSIONS = 500
_IN_CHUNK = 500  # ids per IN (...) list


def store_key(path: Path) -> str:
    """The key of a store in tether's cursors and sessions' metadata: its real path."""
    return str(path.resolve())


def cursor_key(path: Path) -> str:
    return ORIGIN_PREFIX + store_key(path)


@dataclass(slots=True)
class SyncReport:
    """What one pass over one store did (and found)."""

    path: str
    sessions_created: int = 0
    continuations: int = 0
    messages: int = 0
    ends: int = 0
    titles: int = 0
    # Imported messages whose state the source changed (compaction, rewind), or whose
    # row it deleted (replace_messages: retracted).
    restated: int = 0
    skipped_meta_rows: int = 0
    replaced_surrogates: int = 0
    ghosts: int = 0  # rows without messages: not imported
    deleted_at_source: int = 0  # tether sessions of this store whose Hermes row is gone
    marked_deleted: int = 0  # of which recorded by this pass
    cursor: int = 0
    lags: list[float] = field(default_factory=list)  # per applied message: commit - timestamp

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__ if k != "lags"}

    def add(self, other: SyncReport) -> None:
        for k in self.__slots__:
            if k not in ("path", "cursor", "lags"):
                setattr(self, k, getattr(self, k) + getattr(other, k))


class HermesReader:
    """Reads one Hermes store through a ``mode=ro`` connection, a snapshot per page."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = open_readonly(path, any_thread=True)
        try:
            self.shape: HermesStore = recognise(self.conn, path)
        except BaseException:
            self.conn.close()
            raise
        self._scols = [c for c in SESSION_FIELDS if c in self.shape.session_columns]
        # Every message field in its place, a column this generation lacks as its default.
        self._mcols = [
            c if c in self.shape.message_columns else _literal(DEFAULTS.get(c))
            for c in MESSAGE_FIELDS
        ]
        self._ssel = ", ".join(self._scols)
        self._msel = ", ".join(self._mcols)
        # Defaults of the columns this generation lacks (the opening rules' table).
        self._sdefaults = {k: v for k, v in DEFAULTS.items() if k not in self._scols}

    def close(self) -> None:
        self.conn.close()

    def data_version(self) -> int:
        """SQLite's change counter: moves on every commit by another connection."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def _snapshot(self, fn: Callable[[], Any]) -> Any:
        self.conn.execute("BEGIN")
        try:
            return fn()
        finally:
            self.conn.execute("COMMIT")

    def _sessions(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        ids = list(ids)
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = ids[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for r in self.conn.execute(
                f"SELECT {self._ssel} FROM sessions WHERE id IN ({marks})", chunk
            ):
                row = dict(zip(self._scols, r, strict=True))
                if self._sdefaults:
                    row.update(self._sdefaults)
                out[row["id"]] = row
        return out

    def _messages_of(self, ids: Sequence[str], after: int) -> list[Row]:
        out = []
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = list(ids[i : i + _IN_CHUNK])
            marks = ",".join("?" * len(chunk))
            out.extend(
                self._rows(
                    f"SELECT {self._msel} FROM messages WHERE session_id IN ({marks}) "
                    "AND id > ? ORDER BY id",
                    (*chunk, after),
                )
            )
        out.sort(key=_message_id)
        return out

    def _rows(self, query: str, params: Sequence[Any]) -> list[Row]:
        """Message rows, as tuples in MESSAGE_FIELDS order (see mapping.M_*)."""
        rows: list[Row] = self.conn.execute(query, params).fetchall()
        return rows

    def _with_parents(self, sessions: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        wanted = {
            s["parent_session_id"]
            for s in sessions.values()
            if s.get("parent_session_id") and s["parent_session_id"] not in sessions
        }
        parents = self._sessions(wanted) if wanted else {}
        return {**parents, **sessions}

    def page(self, after: int, limit: int = PAGE_MESSAGES) -> tuple[int, Snapshot]:
        """Messages after ``after`` (at most ``limit``), with the rest of their sessions'
        new messages and the sessions' rows, from one snapshot; and the page's top id."""

        def read() -> tuple[int, Snapshot]:
            rows = self._rows(
                f"SELECT {self._msel} FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            )
            if not rows:
                return after, Snapshot({}, {})
            top = rows[-1][M_ID]
            sids = list(dict.fromkeys(r[M_SESSION] for r in rows))
            rest = self._messages_of(sids, top)
            sessions = self._with_parents(self._sessions(sids))
            by_session: dict[str, list[Row]] = {}
            for m in (*rows, *rest):
                by_session.setdefault(m[M_SESSION], []).append(m)
            return top, Snapshot(sessions, by_session)

        result: tuple[int, Snapshot] = self._snapshot(read)
        return result

    def sessions_since(self, ids: Sequence[str], after: int) -> Snapshot:
        """These sessions' rows and their messages after ``after``, from one snapshot
        (a session missing from it was deleted)."""

        def read() -> Snapshot:
            sessions = self._with_parents(self._sessions(ids))
            by_session: dict[str, list[Row]] = {}
            for m in self._messages_of([i for i in ids if i in sessions], after):
                by_session.setdefault(m[M_SESSION], []).append(m)
            return Snapshot(sessions, by_session)

        result: Snapshot = self._snapshot(read)
        return result

    def fingerprints(self) -> list[tuple[Any, ...]]:
        """Every row's ``(id, title, message_count, rewind_count)`` in id order, a page
        per read transaction: what a rename, an in-place compaction or a rewind moves."""
        cols = ["title", "message_count", "rewind_count"]
        sel = ", ".join(c if c in self.shape.session_columns else "NULL" for c in cols)
        out: list[tuple[Any, ...]] = []
        last = ""
        while True:
            page = self.conn.execute(
                f"SELECT id, {sel} FROM sessions WHERE id > ? ORDER BY id LIMIT ?",
                (last, PAGE_MESSAGES),
            ).fetchall()
            if not page:
                return out
            out.extend(page)
            last = page[-1][0]

    def _flag_sql(self) -> str:
        has = self.shape.message_columns
        active = "active" if "active" in has else "1"
        compacted = "compacted" if "compacted" in has else "0"
        return f"SELECT id, session_id, {active}, {compacted}, role FROM messages"

    def inactive(self, upto: int) -> list[tuple[int, str, str]]:
        """``(id, session_id, state)`` of every message up to ``upto`` that is not
        active, a page per read transaction."""
        if "active" not in self.shape.message_columns:
            return []
        out: list[tuple[int, str, str]] = []
        last = 0
        while True:
            page = self.conn.execute(
                f"{self._flag_sql()} WHERE id > ? AND id <= ? AND active = 0 ORDER BY id LIMIT ?",
                (last, upto, PAGE_MESSAGES),
            ).fetchall()
            if not page:
                return out
            out.extend((r[0], r[1], _state(r[2], r[3])) for r in page)
            last = page[-1][0]

    def flags(
        self,
        *,
        ids: Sequence[int] = (),
        sessions: Sequence[str] = (),
        upto: int,
        counted: dict[str, int] | None = None,
    ) -> list[tuple[int, str, str]]:
        """``(id, session_id, state)`` of these messages, or of these sessions' messages,
        up to ``upto`` (one read transaction per chunk of ids); ``counted`` gets how
        many of each session's rows tether would hold (as :meth:`counts`)."""
        out: list[tuple[int, str, str]] = []
        for column, values in (("id", list(ids)), ("session_id", list(sessions))):
            for i in range(0, len(values), _IN_CHUNK):
                chunk = values[i : i + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                for r in self.conn.execute(
                    f"{self._flag_sql()} WHERE {column} IN ({marks}) AND id <= ?",
                    (*chunk, upto),
                ):
                    out.append((r[0], r[1], _state(r[2], r[3])))
                    if counted is not None and r[4] not in SKIPPED_ROLES:
                        counted[r[1]] = counted.get(r[1], 0) + 1
        return out

    def counts(self, sessions: Sequence[str], upto: int) -> dict[str, int]:
        """How many rows tether would hold of each of these sessions, up to ``upto``
        (every message but the skipped roles), one short read per chunk of ids."""
        out: dict[str, int] = {}
        skipped = ", ".join(f"'{r}'" for r in sorted(SKIPPED_ROLES))
        for i in range(0, len(sessions), _IN_CHUNK):
            chunk = list(sessions[i : i + _IN_CHUNK])
            marks = ",".join("?" * len(chunk))
            out.update(
                self.conn.execute(
                    f"SELECT session_id, COUNT(*) FROM messages WHERE session_id IN ({marks}) "
                    f"AND id <= ? AND role NOT IN ({skipped}) GROUP BY session_id",
                    (*chunk, upto),
                ).fetchall()
            )
        return out

    def ids_of(self, sessions: Sequence[str], upto: int) -> dict[str, set[int]]:
        """The message ids up to ``upto`` of those of these sessions that exist (a
        session missing from the answer was deleted), one snapshot per chunk."""
        out: dict[str, set[int]] = {}
        for i in range(0, len(sessions), _IN_CHUNK):
            chunk = list(sessions[i : i + _IN_CHUNK])
            marks = ",".join("?" * len(chunk))

            def read(chunk: list[str] = chunk, marks: str = marks) -> None:
                for (sid,) in self.conn.execute(
                    f"SELECT id FROM sessions WHERE id IN ({marks})", chunk
                ):
                    out[sid] = set()
                for mid, sid in self.conn.execute(
                    f"SELECT id, session_id FROM messages WHERE session_id IN ({marks}) "
                    "AND id <= ?",
                    (*chunk, upto),
                ):
                    out[sid].add(mid)

            self._snapshot(read)
        return out

    def high_water(self) -> int:
        """The greatest message id Hermes has handed out (0 for an empty store)."""

        def read() -> int:
            try:
                row = self.conn.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'messages'"
                ).fetchone()
            except sqlite3.OperationalError:  # no AUTOINCREMENT table in this generation
                row = None
            top = self.conn.execute("SELECT MAX(id) FROM messages").fetchone()[0] or 0
            return max(int(row[0]) if row else 0, int(top))

        result: int = self._snapshot(read)
        return result

    def ghosts(self) -> int:
        row = self.conn.execute(
            "SELECT COUNT(*) FROM sessions s WHERE NOT EXISTS "
            "(SELECT 1 FROM messages m WHERE m.session_id = s.id)"
        ).fetchone()
        return int(row[0])


Row = tuple[Any, ...]  # a Hermes message row in MESSAGE_FIELDS order


def _message_id(row: Row) -> int:
    return int(row[M_ID])


def _literal(value: Any) -> str:
    """An SQL literal standing in for a column a generation lacks."""
    return "NULL" if value is None else repr(int(value))


def _state(active: Any, compacted: Any) -> str:
    """Hermes' two flags as tether's message state (as :func:`map_message` maps them)."""
    if active is None or active:
        return "active"
    return "compacted" if compacted else "retracted"


@dataclass(slots=True)
class Snapshot:
    """Session rows (parents included) and new messages per session, read together."""

    sessions: dict[str, dict[str, Any]]
    messages: dict[str, list[Row]]  # rows in MESSAGE_FIELDS order


class StoreSync:
    """One Hermes store followed into one tether store: the pass ``import`` runs once
    and ``mirror`` runs in a loop. Not thread-safe: one pass at a time."""

    def __init__(self, store: StoreCore, path: Path, *, page: int = PAGE_MESSAGES) -> None:
        self.store = store
        self.path = Path(path)
        self.key = store_key(self.path)
        self.cursor_key = cursor_key(self.path)
        self.page_size = page
        self.reader = HermesReader(self.path)
        self.cursor = 0
        self.on_batch: Callable[[int], None] | None = None  # test hook: called before each commit
        # What tether holds of this store, loaded by the first pass and kept up to date
        # by every commit: each imported Hermes session's title (its newest member's),
        # and the non-active states of its messages by Hermes message id.
        self._titles: dict[str, str | None] | None = None
        self._inactive: dict[int, str] = {}
        # Per imported Hermes session: tether's members of its family (a reopen splits
        # it), how many keyed messages they hold, and how many of those are known gone
        # from Hermes (deleted by replace_messages, so retracted in tether).
        self._members: dict[str, list[str]] = {}
        self._counts: dict[str, int] = {}
        self._gone: dict[str, int] = {}
        # Each Hermes row's fingerprint at the last pass (see HermesReader.fingerprints).
        self._fingerprints: dict[str, tuple[Any, ...]] = {}
        self._fingerprint_rows: list[tuple[Any, ...]] = []
        self._present: set[str] = set()  # the Hermes ids the last fingerprints found
        self._staged: list[tuple[int, str]] = []  # non-active states of the batch in flight
        self.track_lags = True  # per applied message (the mirror's lag); import turns it off

    def close(self) -> None:
        self.reader.close()

    def _load_cursor(self) -> int:
        position = decode_position(self.store.import_cursor(self.cursor_key))
        cursor = int(position.get("last_message_id", 0))
        if cursor > self.reader.high_water():
            # The file was replaced or restored: read it again from the start
            # (origins and message keys keep the rerun from writing anything twice).
            cursor = 0
        return cursor

    def _items(self, snap: Snapshot, report: SyncReport) -> list[ImportItem]:
        items = []
        staged = self._staged = []  # (Hermes id, state) of the non-active messages
        for sid, msgs in snap.messages.items():
            row = snap.sessions.get(sid)
            if row is None:  # cannot happen within one snapshot (messages need their row)
                continue
            mapped = []
            for m in msgs:
                out, replaced = map_row(m)
                report.replaced_surrogates += replaced
                if out is None:
                    report.skipped_meta_rows += 1
                else:
                    mapped.append(out)
                    if "state" in out:
                        staged.append((m[M_ID], out["state"]))
            parent = snap.sessions.get(row.get("parent_session_id") or "")
            items.append(session_item(row, parent, mapped, self.key))
        return items

    def _apply(
        self, items: list[ImportItem], cursor: int, report: SyncReport, msgs: Sequence[Any]
    ) -> None:
        position = json.dumps({"last_message_id": cursor})
        if self.on_batch is not None:
            self.on_batch(cursor)
        results = self.store.import_batch(items, cursor=(self.cursor_key, position))
        now = time.time()
        for item, r in zip(items, results, strict=True):
            report.sessions_created += int(r.created and not r.continued)
            report.continuations += int(r.continued)
            report.messages += r.written
            report.ends += int(r.ended and not r.marked_deleted and not item.source_deleted)
            report.marked_deleted += int(r.marked_deleted)
            report.titles += int(r.titled)
            report.restated += r.restated
        if self.track_lags:
            report.lags.extend([now - float(m[M_TS]) for m in msgs])
        self.cursor = cursor
        staged, self._staged = self._staged, []
        if self._titles is not None:  # what tether holds now
            self._inactive.update(staged)
            for item, r in zip(items, results, strict=True):
                if item.source_deleted or r.session_id is None:
                    continue
                hid = _hermes_id(item)
                if r.created or r.titled:
                    self._titles[hid] = None if item.clear_title else item.title
                if r.created:
                    self._members.setdefault(hid, []).append(r.session_id)
                self._counts[hid] = self._counts.get(hid, 0) + r.written
                for key, state in item.states.items():
                    mid = int(key.removeprefix("hermes:"))
                    if state == "active":
                        self._inactive.pop(mid, None)
                    else:
                        self._inactive[mid] = state

    def run_pass(self, *, full: bool = False) -> SyncReport:
        """One pass (see the module docstring); ``full`` adds the deleted-rows check."""
        report = SyncReport(str(self.path))
        self.cursor = cursor = self._load_cursor()
        # Before anything is written: every commit then keeps it current.
        held_before = set(self._load_held())
        self._staged = []
        touched: set[str] = set()
        while True:
            top, snap = self.reader.page(cursor, self.page_size)
            if top == cursor:
                break
            items = self._items(snap, report)
            touched.update(snap.messages)
            fresh = [m for ms in snap.messages.values() for m in ms if m[M_ID] > cursor]
            self._apply(items, top, report, fresh)
            cursor = top
        self._follow_open(touched, cursor, report)
        self._follow_changes(touched, cursor, report, full=full, held_before=held_before)
        if full:
            self._deleted_rows(report)
            report.ghosts = self.reader.ghosts()
        report.cursor = self.cursor
        return report

    def _follow_open(self, touched: set[str], cursor: int, report: SyncReport) -> None:
        """Ends, titles, reopened messages and deletes of the sessions tether holds open."""
        held = {
            str(s.metadata["hermes_id"]): s
            for s in self.store.imported_sessions(ORIGIN_PREFIX, open_only=True)
            if s.metadata and s.metadata.get("hermes_store") == self.key
        }
        ids = sorted(set(held) - touched)
        for i in range(0, len(ids), PAGE_SESSIONS):
            page = ids[i : i + PAGE_SESSIONS]
            snap = self.reader.sessions_since(page, cursor)
            items = [deleted_item(sid) for sid in page if sid not in snap.sessions]
            for sid in page:
                if sid in snap.sessions:
                    snap.messages.setdefault(sid, [])
            # Only what changed: a pass over unchanged sessions writes nothing.
            items.extend(
                item
                for item in self._items(snap, report)
                if item.messages
                or item.ended_at is not None
                or (item.title is not None and item.title != held[_hermes_id(item)].title)
            )
            if items:
                fresh = [m for ms in snap.messages.values() for m in ms]
                self._apply(items, cursor, report, fresh)

    def _load_held(self) -> dict[str, str | None]:
        """tether's titles and non-active states of this store's sessions (once)."""
        if self._titles is None:
            newest: dict[str, tuple[int, str | None]] = {}
            for s in self.store.imported_sessions(ORIGIN_PREFIX):
                if not s.metadata or s.metadata.get("hermes_store") != self.key:
                    continue
                assert s.origin is not None
                base, _, n = s.origin.partition("#")
                order = int(n) if n else 1
                hid = base.removeprefix(ORIGIN_PREFIX)
                if hid not in newest or newest[hid][0] < order:
                    newest[hid] = (order, s.title)
                self._members.setdefault(hid, []).append(s.id)
                self._counts[hid] = self._counts.get(hid, 0) + s.message_count
            self._titles = {hid: v[1] for hid, v in newest.items()}
            self._inactive = {
                int(key.removeprefix("hermes:")): state
                for origin, key, state in self.store.imported_states(ORIGIN_PREFIX)
                if origin.split("#", 1)[0].removeprefix(ORIGIN_PREFIX) in self._titles
                and key.startswith("hermes:")
            }
        return self._titles

    def _follow_changes(
        self,
        touched: set[str],
        cursor: int,
        report: SyncReport,
        *,
        full: bool,
        held_before: set[str],
    ) -> None:
        """Changes Hermes makes to rows tether imported before, ended or not: a rename
        (any session, any time), an in-place compaction or a rewind (messages turned
        inactive). A rename moves the row's title; a compaction or a rewind its
        ``message_count`` or ``rewind_count``; so the rows whose fingerprint moved
        since the last pass (and those with new messages) have their message states
        compared with tether's. The first pass of a process and ``full`` passes
        compare every non-active message instead (whatever changed while no
        follower ran, an undone rewind included). Rows Hermes deleted (its destructive
        ``replace_messages``, behind /retry, /undo and /compress; ``clear_messages``)
        are found by count: where tether holds more of a compared session (every
        session in a first or ``full`` pass) than Hermes has and than it knows gone,
        the two sides' ids are compared and each message gone is retracted. Only
        what differs is written: tether's messages keep their content and seq, their
        state follows Hermes'."""
        first = not self._fingerprints  # this process's first pass over this store
        titles = self._load_held()
        rows = self.reader.fingerprints()  # a page per read transaction
        if full:
            self._present = {r[0] for r in rows}
        moved: set[str] = set()
        new_titles: dict[str, str | None] = {}
        fps = self._fingerprints
        # Nothing moved since the last pass (compared at C speed, the common case of a
        # mirror while Hermes appends): tether already has every title.
        if first or full or rows != self._fingerprint_rows:
            old = self._fingerprints
            fps = {r[0]: r[1:] for r in rows}
            moved = {sid for sid, fp in fps.items() if sid in titles and old.get(sid) != fp}
            new_titles = {
                sid: fp[0] for sid, fp in fps.items() if sid in titles and titles[sid] != fp[0]
            }
        restates: dict[str, dict[str, str]] = {}

        def differs(mid: int, sid: str, state: str) -> None:
            if self._inactive.get(mid, "active") != state and sid in titles:
                restates.setdefault(sid, {})[message_key(mid)] = state

        counted: dict[str, int] = {}  # Hermes' rows per session, as tether would hold them
        if first or full:
            seen = set()
            for mid, sid, state in self.reader.inactive(cursor):
                seen.add(mid)
                differs(mid, sid, state)
            # Inactive in tether, active again in Hermes (an undone rewind), or gone.
            back = sorted(mid for mid in self._inactive if mid not in seen and mid <= cursor)
            for mid, sid, state in self.reader.flags(ids=back, upto=cursor):
                differs(mid, sid, state)
            # Counted: the sessions held before this pass. Those it imported came whole
            # from one snapshot each; a later replace moves them, and the next pass
            # (a mirror's, or the next import's count) sees it. A first import of a
            # large store thus skips a read of every message (~1 s per million).
            check = sorted(held_before & {r[0] for r in rows})
            counted = self.reader.counts(check, cursor)
        else:
            check = sorted((moved | touched) & set(titles))
            for mid, sid, state in self.reader.flags(sessions=check, upto=cursor, counted=counted):
                differs(mid, sid, state)
        # Rows Hermes deleted (replace_messages: /retry, /undo, /compress): tether holds
        # more of the session than Hermes has and than it knows gone.
        suspects = [
            sid
            for sid in check
            if self._counts.get(sid, 0) - self._gone.get(sid, 0) > counted.get(sid, 0)
        ]
        gone = self._retract_gone(suspects, cursor, restates)
        changed = sorted(set(new_titles) | set(restates))
        for i in range(0, len(changed), PAGE_SESSIONS):
            items = [
                ImportItem(
                    origin=origin_of(sid),
                    title=new_titles.get(sid),
                    clear_title=sid in new_titles and new_titles[sid] is None,
                    states=restates.get(sid, {}),
                )
                for sid in changed[i : i + PAGE_SESSIONS]
            ]
            self._apply(items, cursor, report, [])
        # Only once applied: after a failed pass the next one compares again.
        self._fingerprints, self._fingerprint_rows = fps, rows
        self._gone.update(gone)

    def _retract_gone(
        self, suspects: Sequence[str], cursor: int, restates: dict[str, dict[str, str]]
    ) -> dict[str, int]:
        """Adds to ``restates`` a retraction of each message tether holds of these
        sessions whose Hermes row is gone (ids are never reused: AUTOINCREMENT); how
        many are gone per session. A session Hermes deleted whole is left alone (it
        is recorded as deleted at the source, its messages as they were)."""
        if not suspects:
            return {}
        hermes = self.reader.ids_of(suspects, cursor)
        owner = {m: sid for sid in hermes for m in self._members.get(sid, ())}
        gone = dict.fromkeys(hermes, 0)
        for member, key, state in self.store.keyed_states(list(owner)):
            number = key.removeprefix(ORIGIN_PREFIX)
            if not number.isdigit() or int(number) > cursor:
                continue  # not Hermes' (cannot be) or read after this pass's cursor
            sid = owner[member]
            if int(number) not in hermes[sid]:
                gone[sid] += 1
                if state != "retracted":
                    restates.setdefault(sid, {})[key] = "retracted"
        return gone

    def _deleted_rows(self, report: SyncReport) -> None:
        """Count (and record once) tether's sessions of this store whose row Hermes deleted."""
        # The rows this pass's fingerprints found (read after every session tether
        # holds was imported) and the sessions tether holds (kept current by _apply).
        present = self._present
        mine = set(self._load_held())
        gone = sorted(mine - present)
        report.deleted_at_source = len(gone)
        # Those recorded before are left alone: a rerun writes nothing.
        marked = self.store.source_deleted_origins(ORIGIN_PREFIX)
        todo = [sid for sid in gone if origin_of(sid) not in marked]
        for i in range(0, len(todo), PAGE_SESSIONS):
            items = [deleted_item(sid) for sid in todo[i : i + PAGE_SESSIONS]]
            self._apply(items, self.cursor, report, [])


def _hermes_id(item: ImportItem) -> str:
    return item.origin.removeprefix(ORIGIN_PREFIX)


def import_stores(
    store: StoreCore, paths: Sequence[str | Path] = (), *, page: int = PAGE_MESSAGES
) -> list[SyncReport]:
    """Import every Hermes store found (see :func:`discover`) into ``store``, once."""
    reports = []
    for path in discover(paths):
        sync = StoreSync(store, path, page=page)
        sync.track_lags = False
        try:
            reports.append(sync.run_pass(full=True))
        finally:
            sync.close()
    return reports
