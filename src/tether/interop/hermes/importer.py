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
3. (``import`` only) **Deleted rows**: tether's sessions of this store whose
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
    MESSAGE_FIELDS,
    ORIGIN_PREFIX,
    SESSION_FIELDS,
    deleted_item,
    map_message,
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
        self._mcols = [c for c in MESSAGE_FIELDS if c in self.shape.message_columns]
        self._ssel = ", ".join(self._scols)
        self._msel = ", ".join(self._mcols)
        # Defaults of the columns this generation lacks (the opening rules' table).
        self._sdefaults = {k: v for k, v in DEFAULTS.items() if k not in self._scols}
        self._mdefaults = {k: v for k, v in DEFAULTS.items() if k not in self._mcols}

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

    def _messages_of(self, ids: Sequence[str], after: int) -> list[dict[str, Any]]:
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
        out.sort(key=lambda m: m["id"])
        return out

    def _rows(self, query: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        cols, defaults = self._mcols, self._mdefaults
        out = [dict(zip(cols, r, strict=True)) for r in self.conn.execute(query, params).fetchall()]
        if defaults:
            for row in out:
                row.update(defaults)
        return out

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
            top = rows[-1]["id"]
            sids = list(dict.fromkeys(r["session_id"] for r in rows))
            rest = self._messages_of(sids, top)
            sessions = self._with_parents(self._sessions(sids))
            by_session: dict[str, list[dict[str, Any]]] = {}
            for m in (*rows, *rest):
                by_session.setdefault(m["session_id"], []).append(m)
            return top, Snapshot(sessions, by_session)

        result: tuple[int, Snapshot] = self._snapshot(read)
        return result

    def sessions_since(self, ids: Sequence[str], after: int) -> Snapshot:
        """These sessions' rows and their messages after ``after``, from one snapshot
        (a session missing from it was deleted)."""

        def read() -> Snapshot:
            sessions = self._with_parents(self._sessions(ids))
            by_session: dict[str, list[dict[str, Any]]] = {}
            for m in self._messages_of([i for i in ids if i in sessions], after):
                by_session.setdefault(m["session_id"], []).append(m)
            return Snapshot(sessions, by_session)

        result: Snapshot = self._snapshot(read)
        return result

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

    def all_ids(self) -> set[str]:
        """Every session id, a page per read transaction."""
        ids: set[str] = set()
        last = ""
        while True:
            page = [
                r[0]
                for r in self.conn.execute(
                    "SELECT id FROM sessions WHERE id > ? ORDER BY id LIMIT ?",
                    (last, PAGE_MESSAGES),
                )
            ]
            if not page:
                return ids
            ids.update(page)
            last = page[-1]


@dataclass(slots=True)
class Snapshot:
    """Session rows (parents included) and new messages per session, read together."""

    sessions: dict[str, dict[str, Any]]
    messages: dict[str, list[dict[str, Any]]]


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
        for sid, msgs in snap.messages.items():
            row = snap.sessions.get(sid)
            if row is None:  # cannot happen within one snapshot (messages need their row)
                continue
            mapped = []
            for m in msgs:
                out, replaced = map_message(m)
                report.replaced_surrogates += replaced
                if out is None:
                    report.skipped_meta_rows += 1
                else:
                    mapped.append(out)
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
        report.lags.extend(now - float(m["timestamp"]) for m in msgs)
        self.cursor = cursor

    def run_pass(self, *, full: bool = False) -> SyncReport:
        """One pass (see the module docstring); ``full`` adds the deleted-rows check."""
        report = SyncReport(str(self.path))
        self.cursor = cursor = self._load_cursor()
        touched: set[str] = set()
        while True:
            top, snap = self.reader.page(cursor, self.page_size)
            if top == cursor:
                break
            items = self._items(snap, report)
            touched.update(snap.messages)
            fresh = [m for ms in snap.messages.values() for m in ms if m["id"] > cursor]
            self._apply(items, top, report, fresh)
            cursor = top
        self._follow_open(touched, cursor, report)
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

    def _deleted_rows(self, report: SyncReport) -> None:
        """Count (and record once) tether's sessions of this store whose row Hermes deleted."""
        present = self.reader.all_ids()
        mine = {
            str(s.metadata["hermes_id"])
            for s in self.store.imported_sessions(ORIGIN_PREFIX)
            if s.metadata and s.metadata.get("hermes_store") == self.key
        }
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
        try:
            reports.append(sync.run_pass(full=True))
        finally:
            sync.close()
    return reports
