"""Read-only views for the live view (:mod:`tether.web`): open sessions' facts, the events log.

Plain functions over a :class:`~tether.store.core.StoreCore`: they read, never write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..validate import check_int
from . import sql_web
from .core import StoreCore

__all__ = ["EventRow", "LiveFacts", "event_bounds", "events_after", "open_session_facts"]


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


def open_session_facts(store: StoreCore) -> list[LiveFacts]:
    """Every open session, oldest first, with whether a turn is running in it."""
    rows = store.backend.read(lambda c: c.execute(sql_web.OPEN_SESSIONS_LIVE).fetchall())
    return [
        LiveFacts(*r[:9], int(r[9]), r[10] == sql_web.TURN_STARTED)  # type: ignore[call-arg]
        for r in rows
    ]


def events_after(store: StoreCore, after: int, limit: int = 500) -> list[EventRow]:
    """Events with an id above ``after``, in id order, at most ``limit``."""
    after = check_int(after, "after")
    limit = check_int(limit, "limit", minimum=1)
    rows = store.backend.read(lambda c: c.execute(sql_web.EVENTS_AFTER, (after, limit)).fetchall())
    return [EventRow(int(r[0]), float(r[1]), r[2], r[3], _data(r[4])) for r in rows]


def event_bounds(store: StoreCore) -> tuple[int, int]:
    """The smallest and largest event id (0, 0 when there is none)."""
    lo, hi = store.backend.read(lambda c: c.execute(sql_web.EVENT_BOUNDS).fetchone())
    return int(lo or 0), int(hi or 0)
