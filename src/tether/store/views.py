"""Read-only views for the live view (:mod:`tether.web`): open sessions' facts, the events log.

Plain functions over a :class:`~tether.store.core.StoreCore`: they read, never write.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..validate import check_int
from . import sql_web
from .backend import Conn
from .core import StoreCore
from .owners import OwnerInfo

__all__ = [
    "EventRow",
    "LiveFacts",
    "LiveRead",
    "OpenGroup",
    "OwnerRow",
    "event_bounds",
    "event_writers",
    "events_after",
    "events_and_writers",
    "id_set",
    "live_read",
    "running_turns",
]


@dataclass(frozen=True, slots=True)
class LiveFacts:
    """What the store knows of one open session (its owner is judged by the caller)."""

    id: str
    source: str
    title: str | None
    root_id: str
    origin: str | None
    created_at: float
    last_active_at: float
    owner_id: str | None
    detached_at: float | None
    message_count: int
    turn_running: bool  # the newest turn event is a start


@dataclass(frozen=True, slots=True)
class EventRow:
    """One row of the ``events`` log."""

    id: int
    at: float
    session_id: str | None
    kind: str
    data: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "kind": self.kind,
            "session_id": self.session_id,
            "data": self.data,
        }


def _data(value: Any) -> dict[str, Any] | None:
    if isinstance(value, str):  # SQLite: text; PostgreSQL's jsonb arrives decoded
        value = json.loads(value)
    return value if isinstance(value, dict) else None


@dataclass(frozen=True, slots=True)
class OpenGroup:
    """Open sessions that share what decides their state, and how many they are."""

    owner_id: str | None
    source: str
    imported: bool
    detached: bool
    turn_running: bool
    count: int


OwnerRow = tuple[str, OwnerInfo | None, int]
"""An owner of open sessions: its id, its row (None: missing), its open-session count."""


@dataclass(frozen=True, slots=True)
class LiveRead:
    """The live view's facts from one snapshot (see :func:`live_read`)."""

    server_now: float | None  # now on the database server's clock, when asked
    groups: list[OpenGroup]
    owners: list[OwnerRow]
    page: list[LiveFacts]


def id_set(dialect: str, ids: Iterable[str]) -> Any:
    """A set of ids as the one parameter of :func:`tether.store.sql_web.id_in`."""
    ordered = sorted(ids)
    return ordered if dialect == "postgresql" else json.dumps(ordered)


def _event(r: Sequence[Any]) -> EventRow:
    return EventRow(int(r[0]), float(r[1]), r[2], r[3], _data(r[4]))


def live_read(
    store: StoreCore,
    judge: Callable[[float | None, list[OwnerRow]], Collection[str]],
    *,
    followed: tuple[frozenset[str], int] | None = None,
    advance: Callable[[frozenset[str], EventRow], frozenset[str]] | None = None,
    catch_up: int = 1000,
    server_time: bool = False,
    after: tuple[float, str] | None = None,
    limit: int = 100,
    source: str | None = None,
    state: str | None = None,
) -> LiveRead:
    """Every open session counted by what decides its state, the owners of open
    sessions, and one page of them, in ONE read transaction: one snapshot, and few
    round trips (the live view answers at 10,000 open sessions within its budget).

    ``judge(server_now, owners)`` returns the ids of the owners judged dead. It runs
    inside the read, between the counts and the page, so that the page is filtered
    by the verdicts the counts are judged with (``server_now``: the server's clock
    when ``server_time``, else None).

    ``followed``: the ids of the sessions with a running turn and the event id they
    are as of (tether.web.feed.TurnTracker), moved here by ``advance`` over the
    events committed since; more than ``catch_up`` of them, or None: the database
    works the running turns out (one probe per open session).

    The page: open sessions oldest first after the keyset ``after`` (created_at,
    id), at most ``limit``; only ``source``; only ``state`` (see tether.web.live).
    """
    limit = check_int(limit, "limit", minimum=1)
    dialect = store.backend.dialect
    at, sid = after if after is not None else (-1.0, "")

    def run(c: Conn) -> LiveRead:
        running: frozenset[str] | None = None
        if followed is not None and advance is not None:
            rows = c.execute(sql_web.EVENTS_AFTER, (followed[1], catch_up)).fetchall()
            if len(rows) < catch_up:  # else far behind: the database decides
                running = followed[0]
                for r in rows:
                    running = advance(running, _event(r))
        running_ids = id_set(dialect, running) if running is not None else None
        server_now = store._liveness_now(c) if server_time else None

        counts_query = sql_web.open_counts(running is not None)
        # (owner, source, imported, detached) -> [no turn running, turn running]
        groups: dict[tuple[str | None, str, bool, bool], list[int]] = {}
        owners: dict[str, tuple[OwnerInfo | None, int]] = {}
        for r in c.execute(counts_query).fetchall():
            owner_id, n = r[0], int(r[5])
            groups.setdefault((owner_id, r[1], bool(r[2]), bool(r[3])), [0, 0])[int(r[4])] += n
            if owner_id is not None:
                seen = owners.get(owner_id)
                if seen is not None:
                    owners[owner_id] = (seen[0], seen[1] + n)
                else:  # a missing owner row comes back as NULLs
                    info = OwnerInfo(owner_id, *r[6:]) if r[6] is not None else None
                    owners[owner_id] = (info, n)
        if running:  # move each running session from its group's "no turn" count
            for owner_id, src, imported, detached in c.execute(
                sql_web.running_keys(dialect), [running_ids]
            ).fetchall():
                cell = groups.get((owner_id, src, bool(imported), bool(detached)))
                if cell is not None and cell[0] > 0:
                    cell[0] -= 1
                    cell[1] += 1
        open_groups = [
            OpenGroup(owner, src, imported, detached, bool(turn), n)
            for (owner, src, imported, detached), cell in groups.items()
            for turn, n in enumerate(cell)
            if n
        ]
        owner_rows = [(k, info, n) for k, (info, n) in owners.items()]
        dead = judge(server_now, owner_rows)

        condition, binds = (
            sql_web.state_condition(state, dialect, running is not None) if state else (None, ())
        )
        sets = {"dead": id_set(dialect, dead), "running": running_ids}
        params: list[Any] = [at, at, sid]
        if source is not None:
            params.append(source)
        params += [sets[b] for b in binds]
        params.append(limit)
        query = sql_web.open_page(condition, source is not None, with_turn=running is None)
        page = [
            LiveFacts(  # type: ignore[call-arg]
                *r[:9], int(r[9]), bool(r[10]) if running is None else r[0] in running
            )
            for r in c.execute(query, params).fetchall()
        ]
        return LiveRead(server_now, open_groups, owner_rows, page)

    return store.backend.read(run)


def running_turns(store: StoreCore) -> tuple[int, frozenset[str]]:
    """The newest event id and the open sessions with a running turn, in one snapshot."""

    def run(c: Conn) -> tuple[int, list[Any]]:
        newest = int(c.execute(sql_web.MAX_EVENT_ID).fetchone()[0])
        return newest, c.execute(sql_web.RUNNING_TURNS).fetchall()

    newest, rows = store.backend.read(run)
    return newest, frozenset(r[0] for r in rows)


def events_after(store: StoreCore, after: int, limit: int = 500) -> list[EventRow]:
    """Events with an id above ``after``, in id order, at most ``limit``."""
    after = check_int(after, "after")
    limit = check_int(limit, "limit", minimum=1)
    rows = store.backend.read(lambda c: c.execute(sql_web.EVENTS_AFTER, (after, limit)).fetchall())
    return [_event(r) for r in rows]


def event_bounds(store: StoreCore) -> tuple[int, int]:
    """The oldest event id a cursor can resume from and the newest id (0, 0: none).

    The oldest is past what a purge compacted away (``compacted_through``), not
    only the smallest id kept: an older event of a kept session does not make a
    cursor whole when events after it went with purged sessions.
    """
    lo, hi = store.backend.read(lambda c: c.execute(sql_web.EVENT_BOUNDS).fetchone())
    lo, hi = int(lo or 0), int(hi or 0)
    compacted = store.compacted_through()
    if compacted and lo:
        lo = max(lo, compacted + 1)
    return lo, hi


def event_writers(store: StoreCore) -> frozenset[str]:
    """PostgreSQL: the transactions that may still commit an event (``sql_web.EVENT_WRITERS``)."""
    rows = store.backend.read(lambda c: c.execute(sql_web.EVENT_WRITERS).fetchall())
    return frozenset(str(r[0]) for r in rows)


def events_and_writers(
    store: StoreCore, after: int, limit: int = 500
) -> tuple[list[EventRow], frozenset[str]]:
    """PostgreSQL: :func:`events_after`, then the transactions that may still commit
    an event, read after that snapshot was taken (one read transaction)."""
    after = check_int(after, "after")
    limit = check_int(limit, "limit", minimum=1)

    def run(c: Conn) -> tuple[list[Any], list[Any]]:
        rows = c.execute(sql_web.EVENTS_AFTER, (after, limit)).fetchall()
        return rows, c.execute(sql_web.EVENT_WRITERS).fetchall()

    rows, writers = store.backend.read(run)
    events = [_event(r) for r in rows]
    return events, frozenset(str(w[0]) for w in writers)
