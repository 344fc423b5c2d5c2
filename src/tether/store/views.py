"""Read-only views for the live view (:mod:`tether.web`): open sessions' facts, the events log.

Plain functions over a :class:`~tether.store.core.StoreCore`: they read, never write.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..validate import check_int
from . import sql_web
from .backend import Conn
from .core import StoreCore

_CHUNK = 500  # ids per IN list

__all__ = [
    "EventRow",
    "LiveFacts",
    "OpenGroup",
    "event_bounds",
    "event_writers",
    "events_after",
    "events_and_writers",
    "open_groups",
    "open_page",
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


def open_groups(store: StoreCore, running: frozenset[str] | None = None) -> list[OpenGroup]:
    """Every open session counted by owner, source, imported, detached and turn running.

    ``running``: the ids of sessions with a running turn, when the caller follows
    the events (None: the database works it out, one probe per open session).
    """
    if running is None:
        rows = store.backend.read(lambda c: c.execute(sql_web.OPEN_COUNTS).fetchall())
        return [OpenGroup(r[0], r[1], bool(r[2]), bool(r[3]), bool(r[4]), int(r[5])) for r in rows]
    ids = sorted(running)

    def run(c: Conn) -> tuple[list[Any], list[Any]]:
        groups = c.execute(sql_web.OPEN_COUNTS_NO_TURN).fetchall()
        keys: list[Any] = []
        for k in range(0, len(ids), _CHUNK):
            chunk = ids[k : k + _CHUNK]
            keys += c.execute(sql_web.group_keys(len(chunk)), chunk).fetchall()
        return groups, keys

    groups, keys = store.backend.read(run)
    counted: dict[tuple[Any, ...], list[int]] = {}
    for owner, source, imported, detached, _, n in groups:
        counted[(owner, source, bool(imported), bool(detached))] = [int(n), 0]
    for owner, source, imported, detached in keys:
        cell = counted.get((owner, source, bool(imported), bool(detached)))
        if cell is not None and cell[0] > 0:  # moved from "no turn" to "turn running"
            cell[0] -= 1
            cell[1] += 1
    out = []
    for (owner, source, imported, detached), (idle, busy) in counted.items():
        if idle:
            out.append(OpenGroup(owner, source, imported, detached, False, idle))
        if busy:
            out.append(OpenGroup(owner, source, imported, detached, True, busy))
    return out


def running_turns(store: StoreCore) -> tuple[int, frozenset[str]]:
    """The newest event id and the open sessions with a running turn, in one snapshot."""

    def run(c: Conn) -> tuple[int, list[Any]]:
        newest = int(c.execute(sql_web.MAX_EVENT_ID).fetchone()[0])
        return newest, c.execute(sql_web.RUNNING_TURNS).fetchall()

    newest, rows = store.backend.read(run)
    return newest, frozenset(r[0] for r in rows)


def open_page(
    store: StoreCore,
    *,
    after: tuple[float, str] | None = None,
    limit: int = 100,
    source: str | None = None,
    state: str | None = None,
    dead_owners: Sequence[str] = (),
    running: frozenset[str] | None = None,
) -> list[LiveFacts]:
    """Open sessions oldest first, after the keyset ``after`` (created_at, id), at most
    ``limit``; only ``source``, and only ``state`` (``dead_owners`` decides which
    owners are dead: see :mod:`tether.web.live`; ``running`` as for :func:`open_groups`)."""
    limit = check_int(limit, "limit", minimum=1)
    ids = sorted(running) if running is not None else None
    if state:
        condition, dead_binds, turn_binds = sql_web.state_condition(
            state, len(dead_owners), None if ids is None else len(ids)
        )
    else:
        condition, dead_binds, turn_binds = None, 0, 0
    query = sql_web.open_page(condition, source is not None, with_turn=ids is None)
    at, sid = after if after is not None else (-1.0, "")
    params: list[Any] = [at, at, sid]
    if source is not None:
        params.append(source)
    params += list(dead_owners) * dead_binds
    params += (ids or []) * turn_binds
    params.append(limit)
    rows = store.backend.read(lambda c: c.execute(query, params).fetchall())
    return [
        LiveFacts(  # type: ignore[call-arg]
            *r[:9], int(r[9]), bool(r[10]) if running is None else r[0] in running
        )
        for r in rows
    ]


def events_after(store: StoreCore, after: int, limit: int = 500) -> list[EventRow]:
    """Events with an id above ``after``, in id order, at most ``limit``."""
    after = check_int(after, "after")
    limit = check_int(limit, "limit", minimum=1)
    rows = store.backend.read(lambda c: c.execute(sql_web.EVENTS_AFTER, (after, limit)).fetchall())
    return [EventRow(int(r[0]), float(r[1]), r[2], r[3], _data(r[4])) for r in rows]


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
    events = [EventRow(int(r[0]), float(r[1]), r[2], r[3], _data(r[4])) for r in rows]
    return events, frozenset(str(w[0]) for w in writers)
