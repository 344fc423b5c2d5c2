"""Importers' batches: many sessions' pages, their ends and the importer's cursor in
one transaction, so an importer killed at any moment resumes exactly once.

:meth:`ImportBatches.import_batch` is what a follower of another system (the
Hermes mirror) calls; :meth:`~tether.store.StoreCore.import_session` is the
one-session form. Everything stays idempotent (origins, message keys), so a
rerun from an older cursor writes nothing twice.

Two things a follower meets that a one-shot import does not:

* **Reopens.** A source may reopen a session that tether has recorded as
  ended (Hermes' resume does). tether ends a session exactly once, so the
  messages that come after the end go to a *continuation* imported from
  ``origin#2`` (then ``#3``...), in the same chain; the source's next end ends
  that one.
* **Deletes at the source.** A session the source deleted stays in tether; the
  importer records it (an event ``source_deleted``, and the end
  ``source_deleted`` if it was open), once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError
from ..ids import new_id
from ..model import ImportResult, Session, session_from_row
from ..validate import (
    check_detail,
    check_id,
    check_import_message,
    check_metadata,
    check_origin,
    check_reason,
    check_source,
    check_text,
    check_timestamp,
)
from . import sql, sql_imports
from .backend import Conn
from .writes import ImportedSession, Row

if TYPE_CHECKING:
    from ..clock import Clock
    from .backend import Backend

SOURCE_DELETED = "source_deleted"
_STATES = ("active", "compacted", "retracted")


@dataclass(frozen=True, slots=True)
class ImportItem:
    """One session's part of a batch: its row (the first time), a page, its end.

    ``messages`` are dicts as :meth:`~tether.store.StoreCore.import_session`
    takes them, plus an optional ``state`` (``active``, ``compacted``,
    ``retracted``). ``parent_origin`` names the parent by origin (its newest
    continuation is taken); a parent never imported makes this a root.
    ``source_deleted`` records that the source deleted the session (nothing
    else of the item is used). ``states`` (key -> state) are the source's
    current states of messages imported before (an in-place compaction marks
    them ``compacted``): applied to whichever member of the family holds the
    key, content and seq untouched. ``clear_title``: the source cleared the
    title (``title`` None otherwise means "not given").
    """

    origin: str
    source: str = "import"
    created_at: float = 0.0
    model: str | None = None
    title: str | None = None
    cwd: str | None = None
    parent_origin: str | None = None
    branch: bool = False
    metadata: dict[str, Any] | None = None
    messages: Sequence[dict[str, Any]] = ()
    ended_at: float | None = None
    end_reason: str | None = None
    end_detail: str | None = None
    source_deleted: bool = False
    states: Mapping[str, str] = field(default_factory=dict)
    clear_title: bool = False


@dataclass(slots=True)
class ItemResult:
    """What the batch did for one item."""

    origin: str  # the origin written to (``origin#n`` for a continuation)
    session_id: str | None
    created: bool = False
    continued: bool = False  # a continuation was started after a reopen
    written: int = 0
    ended: bool = False
    marked_deleted: bool = False
    titled: bool = False  # the title was updated to the source's
    restated: int = 0  # messages imported before whose state changed to the source's


@dataclass(slots=True)
class _Checked:
    item: ImportItem
    new: ImportedSession
    rows: list[Row]
    states: dict[str, str] = field(default_factory=dict)  # key -> non-active state
    end: tuple[float, str, str | None] | None = None


def family_bounds(origin: str) -> tuple[str, str]:
    """The origin range holding ``origin`` and its continuations (``origin#n``)."""
    return origin, origin + "$"  # '$' sorts right after '#'


def _in_family(origin: str | None, base: str) -> bool:
    return origin == base or (origin is not None and origin.startswith(base + "#"))


def _family_order(s: Session, base: str) -> int:
    assert s.origin is not None
    return 1 if s.origin == base else int(s.origin[len(base) + 1 :] or 0)


def _check(item: ImportItem) -> _Checked:
    origin = check_origin(item.origin)
    if "#" in origin:
        raise InvalidInputError(f"origin {origin!r}: '#' is kept for continuations")
    created = check_timestamp(item.created_at, "created_at")
    new = ImportedSession(
        origin=origin,
        source=check_source(item.source),
        model=check_text(item.model, "model"),
        title=check_text(item.title, "title"),
        cwd=check_text(item.cwd, "cwd"),
        parent_id=None,
        metadata=check_metadata(item.metadata),
        created_at=created,
        last_active_at=created,
        branch=bool(item.branch),
    )
    rows: list[Row] = []
    states: dict[str, str] = {}
    for m in item.messages:
        if "state" in m:
            m = dict(m)
            state = m.pop("state")
            if state not in _STATES:
                raise InvalidInputError(f"invalid message state {state!r}")
            if state != "active":
                states[str(m.get("key"))] = state
        rows.append(check_import_message(m))
    end = None
    if item.ended_at is not None or item.end_reason is not None:
        if item.ended_at is None or item.end_reason is None:
            raise InvalidInputError("an imported end needs both ended_at and end_reason")
        end = (
            check_timestamp(item.ended_at, "ended_at"),
            check_reason(item.end_reason),
            check_detail(item.end_detail),
        )
    for key, state in item.states.items():
        if state not in _STATES:
            raise InvalidInputError(f"invalid message state {state!r}")
        check_text(key, "message key", required=True)
    return _Checked(item, new, rows, states, end)


class ImportBatches:
    """Batches and cursors (mixed into :class:`~tether.store.StoreCore`)."""

    backend: Backend
    clock: Clock

    if TYPE_CHECKING:  # provided by MessageWrites, in the same store class

        def _import_tx(
            self,
            c: Conn,
            origin: str,
            new: ImportedSession | None,
            rows: Sequence[Row],
            end: tuple[float, str, str | None] | None,
        ) -> ImportResult: ...

        def _known_keys(self, c: Conn, session_id: str, rows: Sequence[Row]) -> dict[str, int]: ...

        def _event(
            self, c: Conn, session_id: str | None, kind: str, data: dict[str, Any]
        ) -> None: ...

    def import_batch(
        self, items: Sequence[ImportItem], *, cursor: tuple[str, str] | None = None
    ) -> list[ItemResult]:
        """Apply ``items`` and move ``cursor`` (``(source_key, position)``) in ONE transaction.

        Each item is applied as :meth:`import_session` would, with two
        additions for followers: messages arriving after tether recorded the
        session's end go to a continuation (``origin#n``), and a title that
        changed at the source is updated. All or nothing: a crash leaves the
        previous cursor and none of the batch.
        """
        checked = [_check(i) for i in items]
        if cursor is not None:
            key, position = check_text(cursor[0], "cursor key", required=True), cursor[1]
            if not isinstance(position, str):
                raise InvalidInputError("a cursor position must be text")

        def tx(c: Conn) -> list[ItemResult]:
            # New sessions' messages are inserted together, after their rows: one
            # statement for the page instead of one per session.
            pending: list[tuple[Any, ...]] = []
            states: list[tuple[str, dict[str, str]]] = []
            # Which origins tether holds, for the whole batch in a few statements: an
            # origin it does not hold has no family (a continuation needs its base),
            # so a first import skips one family lookup per session.
            present = self._origins_present(c, [ch.new.origin for ch in checked])
            out = [self._apply_item(c, ch, pending, states, present) for ch in checked]
            if pending:
                c.executemany(sql.INSERT_MESSAGE, pending)
            for sid, st in states:
                self._set_states(c, sid, st)
            if cursor is not None:
                c.execute(sql_imports.UPSERT_CURSOR, (key, position, self.clock.now()))
            return out

        return self.backend.write(tx)

    def _origins_present(self, c: Conn, origins: Sequence[str]) -> set[str]:
        present: set[str] = set()
        for i in range(0, len(origins), 500):
            chunk = list(origins[i : i + 500])
            rows = c.execute(sql_imports.select_origins(len(chunk)), chunk).fetchall()
            present.update(r[0] for r in rows)
        return present

    def _family(self, c: Conn, base: str) -> list[Session]:
        rows = c.execute(sql_imports.SELECT_ORIGIN_FAMILY, family_bounds(base)).fetchall()
        members = [session_from_row(r) for r in rows if _in_family(r[7], base)]
        return sorted(members, key=lambda s: _family_order(s, base))

    def _apply_item(
        self,
        c: Conn,
        ch: _Checked,
        pending: list[tuple[Any, ...]],
        states: list[tuple[str, dict[str, str]]],
        present: set[str],
    ) -> ItemResult:
        base = ch.new.origin
        family = self._family(c, base) if base in present else []
        present.add(base)  # from here on, the batch's next item for it looks it up
        if ch.item.source_deleted:
            return self._mark_deleted(c, base, family)
        rows = ch.rows
        if not family:
            parent_id = None
            if ch.item.parent_origin is not None:
                parents = self._family(c, check_origin(ch.item.parent_origin))
                parent_id = parents[-1].id if parents else None
            created = min([r[5] for r in rows], default=ch.new.created_at)
            new = dataclasses.replace(
                ch.new, parent_id=parent_id, created_at=min(created, ch.new.created_at)
            )
            fast = self._insert_new(c, new, rows, ch.end, pending)
            if fast is not None:
                if ch.states:
                    states.append((fast.session_id or "", ch.states))
                return fast
            r = self._import_tx(c, base, new, rows, ch.end)
            result = ItemResult(base, r.session.id, r.created, False, r.written, r.ended)
            self._set_states(c, r.session.id, ch.states)
            return result
        latest = family[-1]
        if len(family) > 1 and rows:
            # Keys held by earlier members (imported before a reopen) are not fresh.
            held: set[str] = set()
            for member in family[:-1]:
                held.update(self._known_keys(c, member.id, rows))
            rows = [r for r in rows if r[6] not in held]
        if latest.ended_at is not None and rows:
            known = self._known_keys(c, latest.id, rows)
            rows = [r for r in rows if r[6] not in known]
        if latest.ended_at is not None and rows:
            # Reopened at the source after tether recorded its one end: continue.
            origin = f"{base}#{_family_order(latest, base) + 1}"
            first = min(r[5] for r in rows)
            new = dataclasses.replace(
                ch.new, origin=origin, parent_id=latest.id, created_at=first, branch=False
            )
            r = self._import_tx(c, origin, new, rows, ch.end)
            self._set_states(c, r.session.id, ch.states)
            cont = ItemResult(origin, r.session.id, r.created, True, r.written, r.ended)
            if ch.item.states:
                cont.restated = self._restate(c, family, ch.item.states)
            return cont
        assert latest.origin is not None
        r = self._import_tx(c, latest.origin, None, rows, ch.end)
        self._set_states(c, r.session.id, ch.states)
        result = ItemResult(latest.origin, r.session.id, False, False, r.written, r.ended)
        title = None if ch.item.clear_title else ch.new.title
        if (title is not None or ch.item.clear_title) and r.session.title != title:
            c.execute(sql_imports.SET_IMPORTED_TITLE, (title, r.session.id))
            result.titled = True
        if ch.item.states:
            result.restated = self._restate(c, family, ch.item.states)
        return result

    def _restate(self, c: Conn, family: list[Session], states: Mapping[str, str]) -> int:
        """The source's states of messages imported before, on whichever family member
        holds each key (a reopen splits a source session over several); how many
        rows changed."""
        changed = 0
        for key, state in states.items():
            for member in reversed(family):
                n = c.execute(sql_imports.RESTATE_MESSAGE, (state, member.id, key, state)).rowcount
                if n:
                    changed += n
                    break
        return changed

    def _insert_new(
        self,
        c: Conn,
        new: ImportedSession,
        rows: Sequence[Row],
        end: tuple[float, str, str | None] | None,
        pending: list[tuple[Any, ...]],
    ) -> ItemResult | None:
        """A session new to this store, row and first page in a few statements (the
        bulk of a first import); its messages are added to ``pending``. None if
        another importer wrote the origin first."""
        sid = new_id(new.created_at)
        root_id = sid
        if new.parent_id is not None:
            parent = c.execute(sql.SELECT_ROOT_OF, (new.parent_id,)).fetchone()
            if parent is not None and not new.branch:
                root_id = parent[0]
        is_root = root_id == sid
        fresh: list[Row] = []
        seen: set[str | None] = set()
        for r in rows:
            if r[6] not in seen:
                seen.add(r[6])
                fresh.append(r)
        n = len(fresh)
        last = max([new.last_active_at, *(r[5] for r in fresh)])
        ended_at, reason, detail = end if end is not None else (None, None, None)
        inserted = c.execute(
            sql_imports.INSERT_NEW_IMPORTED,
            (
                sid,
                new.source,
                new.model,
                new.title,
                new.cwd,
                new.parent_id,
                root_id,
                new.origin,
                new.created_at,
                last,
                ended_at,
                reason,
                detail,
                n,
                new.metadata,
                sid if is_root else None,
                n if is_root else 0,
                last if is_root else None,
            ),
        ).rowcount
        if inserted != 1:
            return None
        if not is_root:
            at = new.created_at
            c.execute(sql.ADD_CHAIN_MEMBER, (at, sid, sid, at, at, root_id))
            c.execute(sql.BUMP_CHAIN_ACTIVE, (n, last, last, root_id))
        self._event(c, sid, "imported", {"source": new.source, "origin": new.origin})
        pending.extend((sid, k + 1, *r) for k, r in enumerate(fresh))
        if end is not None:
            self._event(c, sid, "ended", {"reason": reason, "detail": detail})
        return ItemResult(new.origin, sid, True, False, n, end is not None)

    def _set_states(self, c: Conn, session_id: str, states: dict[str, str]) -> None:
        if states:
            c.executemany(
                sql_imports.SET_MESSAGE_STATE,
                [(state, session_id, key) for key, state in states.items()],
            )

    def _mark_deleted(self, c: Conn, base: str, family: list[Session]) -> ItemResult:
        if not family:
            return ItemResult(base, None)
        latest = family[-1]
        assert latest.origin is not None
        result = ItemResult(latest.origin, latest.id)
        if c.execute(sql_imports.HAS_EVENT, (latest.id, SOURCE_DELETED)).fetchone() is None:
            self._event(c, latest.id, SOURCE_DELETED, {"origin": base})
            result.marked_deleted = True
        if latest.ended_at is None:
            now = self.clock.now()
            detail = "deleted at the source"
            if c.execute(sql.END_SESSION, (now, SOURCE_DELETED, detail, latest.id)).fetchall():
                self._event(c, latest.id, "ended", {"reason": SOURCE_DELETED, "detail": detail})
                result.ended = True
        return result

    # --- reads ------------------------------------------------------------------------

    def import_cursor(self, source_key: str) -> str | None:
        """The position an importer stored for ``source_key`` (None: never ran)."""
        row = self.backend.read(
            lambda c: c.execute(sql_imports.SELECT_CURSOR, (source_key,)).fetchone()
        )
        return None if row is None else str(row[0])

    def imported_sessions(self, prefix: str, *, open_only: bool = False) -> list[Session]:
        """Sessions whose origin starts with ``prefix`` (``"hermes:"``), or the open ones."""
        query = sql_imports.SELECT_OPEN_IMPORTED if open_only else sql_imports.SELECT_IMPORTED
        bounds = _prefix_bounds(prefix)
        rows = self.backend.read(lambda c: c.execute(query, bounds).fetchall())
        return [session_from_row(r) for r in rows]

    def imported_states(self, prefix: str) -> list[tuple[str, str, str]]:
        """``(origin, key, state)`` of every non-active message of the sessions imported
        from ``prefix`` (what a follower compares with its source's states)."""
        bounds = _prefix_bounds(prefix)
        rows = self.backend.read(
            lambda c: c.execute(sql_imports.SELECT_IMPORTED_STATES, bounds).fetchall()
        )
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    def origin_family(self, origin: str) -> list[Session]:
        """The session imported from ``origin`` and its continuations, in order."""
        origin = check_origin(origin)
        return self.backend.read(lambda c: self._family(c, origin))

    def imported_keys(self, session_id: str) -> set[str]:
        """Every message key a session holds."""
        session_id = check_id(session_id)
        rows = self.backend.read(
            lambda c: c.execute(sql_imports.SELECT_KEYS_OF, (session_id,)).fetchall()
        )
        return {r[0] for r in rows}

    def keyed_states(self, session_ids: Sequence[str]) -> list[tuple[str, str, str]]:
        """``(session_id, key, state)`` of every keyed message of these sessions, one
        query per 500 ids: what a follower compares with the rows its source still
        has (a source that deletes rows, as Hermes' ``replace_messages`` does)."""
        ids = [check_id(i) for i in session_ids]

        def read(c: Conn) -> list[tuple[str, str, str]]:
            out: list[tuple[str, str, str]] = []
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                query = sql_imports.select_keyed_states(len(chunk))
                for r in c.execute(query, chunk).fetchall():
                    out.append((str(r[0]), str(r[1]), str(r[2])))
            return out

        return self.backend.read(read)

    def source_deleted_origins(self, prefix: str) -> set[str]:
        """The origins (without ``#n``) imported from ``prefix`` that were recorded as
        deleted at the source."""
        params = (SOURCE_DELETED, *_prefix_bounds(prefix))
        rows = self.backend.read(
            lambda c: c.execute(sql_imports.SELECT_EVENT_ORIGINS, params).fetchall()
        )
        return {str(r[0]).split("#", 1)[0] for r in rows}


def _prefix_bounds(prefix: str) -> tuple[str, str]:
    if not prefix:
        raise InvalidInputError("an origin prefix must not be empty")
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def decode_position(position: str | None) -> dict[str, Any]:
    """A cursor position stored as JSON text (an empty dict if there is none)."""
    if position is None:
        return {}
    value = json.loads(position)
    return value if isinstance(value, dict) else {}
