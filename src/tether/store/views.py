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
    "OwnerJudging",
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
    """Open sessions that share what decides their state, and how many they are.

    ``alive_on``: the sessions of owners on that host that cannot be dead (another
    host than the judge's, a heartbeat within the lease), counted together in the
    database; ``owner_id`` is None then.
    """

    owner_id: str | None
    source: str
    imported: bool
    detached: bool
    turn_running: bool
    count: int
    alive_on: str | None = None


OwnerRow = tuple[str, OwnerInfo | None, int]
"""An owner of open sessions: its id, its row (None: missing), its open-session count."""


@dataclass(frozen=True, slots=True)
class OwnerJudging:
    """How the caller judges owners (tether.web.service, from its reaper's identity
    and policy): owners on another host than ``host`` whose heartbeat is within
    their lease (or ``grace``, if longer) are alive, and counted in the database;
    every other owner of an open session is given to ``judge``."""

    host: str
    grace: float  # the judge's own minimum lease (0: each owner's)
    server_time: bool  # heartbeats are on the database server's clock
    now: Callable[[], float]  # the judge's clock, when not the server's
    judge: Callable[[float, list[OwnerRow]], Collection[str]]  # -> the dead owners' ids


@dataclass(frozen=True, slots=True)
class LiveRead:
    """The live view's facts from one snapshot (see :func:`live_read`)."""

    now: float  # what the owners were judged at (the heartbeats' clock)
    groups: list[OpenGroup]
    owners: list[OwnerRow]  # the owners given to the judge
    alive_owners: int  # the owners counted alive in the database (not in ``owners``)
    oldest_alive_heartbeat: float | None  # among those
    page: list[LiveFacts]
    page_owners: dict[str, OwnerInfo]  # the rows of the page's owners


def id_set(dialect: str, ids: Iterable[str]) -> Any:
    """A set of ids as the one parameter of :func:`tether.store.sql_web.id_in`."""
    ordered = sorted(ids)
    return ordered if dialect == "postgresql" else json.dumps(ordered)


def _event(r: Sequence[Any]) -> EventRow:
    return EventRow(int(r[0]), float(r[1]), r[2], r[3], _data(r[4]))


def live_read(
    store: StoreCore,
    judging: OwnerJudging,
    *,
    followed: tuple[frozenset[str], int] | None = None,
    advance: Callable[[frozenset[str], EventRow], frozenset[str]] | None = None,
    catch_up: int = 1000,
    after: tuple[float, str] | None = None,
    limit: int = 100,
    source: str | None = None,
    state: str | None = None,
) -> LiveRead:
    """Every open session counted by what decides its state, the owners of open
    sessions judged, and one page of them, in ONE read transaction: one snapshot,
    a few round trips, and per-owner work in Python only for the owners the
    database cannot settle (see :class:`OwnerJudging`).

    ``judging.judge(now, owners)`` returns the ids of the owners judged dead. It
    runs inside the read, between the counts and the page, so that the page is
    filtered by the verdicts the counts are judged with.

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
        if dialect == "postgresql":
            c.execute(sql_web.CUSTOM_PLANS)
        running: frozenset[str] | None = None
        if followed is not None and advance is not None:
            rows = c.execute(sql_web.EVENTS_AFTER, (followed[1], catch_up)).fetchall()
            if len(rows) < catch_up:  # else far behind: the database decides
                running = followed[0]
                for r in rows:
                    running = advance(running, _event(r))
        running_ids = id_set(dialect, running) if running is not None else None
        now = store._liveness_now(c) if judging.server_time else judging.now()

        # (owner, alive_on, source, imported, detached) -> [no turn running, running]
        groups: dict[tuple[str | None, str | None, str, bool, bool], list[int]] = {}
        owners: dict[str, tuple[OwnerInfo | None, int]] = {}
        fresh = (judging.host, judging.grace, judging.grace, now)
        for r in c.execute(sql_web.open_counts(running is not None), fresh).fetchall():
            owner_id, alive_on, n = r[0], r[2], int(r[7])
            key = (owner_id, alive_on, r[3], bool(r[4]), bool(r[5]))
            groups.setdefault(key, [0, 0])[int(r[6])] += n
            if owner_id is not None:  # judged one by one (fresh owners come as NULL)
                seen = owners.get(owner_id)
                if seen is not None:
                    owners[owner_id] = (seen[0], seen[1] + n)
                else:  # a missing owner row comes back as NULLs
                    info = OwnerInfo(owner_id, *r[8:]) if r[8] is not None else None
                    owners[owner_id] = (info, n)
        alive_owners, oldest = c.execute(sql_web.FRESH_OWNERS, fresh).fetchone()
        if running:  # move each running session from its group's "no turn" count
            for owner_id, src, imported, detached, host, is_fresh in c.execute(
                sql_web.running_keys(dialect), [*fresh, running_ids]
            ).fetchall():
                key = (None, host, src, bool(imported), bool(detached))
                if not is_fresh:
                    key = (owner_id, None, src, bool(imported), bool(detached))
                cell = groups.get(key)
                if cell is not None and cell[0] > 0:
                    cell[0] -= 1
                    cell[1] += 1
        open_groups = [
            OpenGroup(owner, src, imported, detached, bool(turn), n, alive_on)
            for (owner, alive_on, src, imported, detached), cell in groups.items()
            for turn, n in enumerate(cell)
            if n
        ]
        owner_rows = [(k, info, n) for k, (info, n) in owners.items()]
        dead = judging.judge(now, owner_rows)

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
        page, page_owners = [], {}
        for r in c.execute(query, params).fetchall():
            turn = bool(r[10]) if running is None else r[0] in running
            page.append(LiveFacts(*r[:9], int(r[9]), turn))  # type: ignore[call-arg]
            if r[7] is not None and r[11] is not None:
                page_owners[r[7]] = OwnerInfo(r[7], *r[11:])
        return LiveRead(
            now,
            open_groups,
            owner_rows,
            int(alive_owners),
            None if oldest is None else float(oldest),
            page,
            page_owners,
        )

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
