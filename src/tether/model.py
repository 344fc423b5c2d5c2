"""Plain data returned by the store: sessions, messages, listing pages, census.

These are immutable snapshots; they never talk to the database. ``to_dict()``
gives the stable JSON shape the CLI prints with ``--json`` (times as ISO 8601
UTC strings), documented in the README.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple, cast

# The last second spelled by iso(), and its spelling up to the milliseconds.
_second: tuple[int, str] = (-1, "")
_LAST_SECOND = 253402300799  # 9999-12-31T23:59:59Z


def iso(ts: float | None) -> str | None:
    """Seconds since the epoch -> ``2026-11-21T10:34:00.123Z`` (None stays None).

    Exactly what ``datetime.fromtimestamp(ts, UTC)`` spells (microseconds
    rounded half to even, as it does), four times faster: every message view
    and listing row spells its times, and the times of a turn share their second.
    """
    global _second
    if ts is None:
        return None
    if not 0 <= ts < _LAST_SECOND:  # before 1970 or past 9999: datetime's own answer
        dt = datetime.fromtimestamp(ts, tz=UTC)
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    fraction, whole = math.modf(ts)
    micros = round(fraction * 1e6)
    second = int(whole)
    if micros >= 1_000_000:  # rounded up into the next second
        second += 1
        micros -= 1_000_000
    known = _second
    if known[0] != second:
        known = _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second)))
    return f"{known[1]}{micros // 1000:03d}Z"


def _json(value: Any) -> Any:
    # SQLite hands back JSON as text; PostgreSQL's jsonb arrives decoded.
    if value is None or not isinstance(value, str):
        return value
    return json.loads(value)


@dataclass(frozen=True, slots=True)
class Session:
    """One session row."""

    id: str
    source: str
    model: str | None
    title: str | None
    cwd: str | None
    parent_id: str | None
    root_id: str
    origin: str | None
    created_at: float
    last_active_at: float
    ended_at: float | None
    end_reason: str | None
    end_detail: str | None
    message_count: int
    owner_id: str | None
    epoch: int
    detached_at: float | None
    metadata: dict[str, Any] | None

    @property
    def is_open(self) -> bool:
        return self.ended_at is None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: every field by name, times (``*_at``) as ISO 8601 strings."""
        return {
            name: iso(getattr(self, name)) if name in _TIME_FIELDS else getattr(self, name)
            for name in SESSION_FIELDS
        }


# The one source of a session's columns: the dataclass above. Every SELECT that
# builds a Session names SESSION_COLUMNS (see store/sql.py), in this order.
SESSION_FIELDS = tuple(f.name for f in fields(Session))
SESSION_COLUMNS = ", ".join(SESSION_FIELDS)
_TIME_FIELDS = frozenset(name for name in SESSION_FIELDS if name.endswith("_at"))
# Read by position for speed, positions derived by name: metadata (JSON) is last.
_SESSION_JSON = SESSION_FIELDS.index("metadata")
assert len(SESSION_FIELDS) - 1 == _SESSION_JSON, "session_from_row decodes the last column"


def session_from_row(row: Any) -> Session:
    """A Session from a row of SESSION_COLUMNS (extra columns after them are ignored)."""
    # The checker counts a starred slice as any number of arguments.
    return Session(*row[:_SESSION_JSON], _json(row[_SESSION_JSON]))  # type: ignore[call-arg]


class Message(NamedTuple):
    """One stored message; ``seq`` counts from 1 within its session, without gaps.

    Frozen, with attributes as named below; equal only to another Message with
    the same values. It is a tuple underneath so that reading a session back
    builds each one in C (``tuple.__new__``), not in a generated ``__init__``:
    about half of tether's own time reading 1,000 messages was building them.
    """

    session_id: str
    seq: int
    role: str
    content: str | None
    tool_calls: list[Any] | None
    tool_call_id: str | None
    tool_name: str | None
    created_at: float
    idem_key: str | None = None
    # Data model v2 (schema 4): facts that are not columns (the gateway's turn id,
    # an importer's source message id...), the message's state (see
    # MESSAGE_STATES), and a foreign framework's exact item, returned unchanged.
    meta: dict[str, Any] | None = None
    state: str = "active"
    payload: dict[str, Any] | list[Any] | None = None

    # A tuple compares equal to any tuple of the same values; a Message (as when
    # it was a dataclass) only to a Message. Other tuples get a plain answer (not
    # NotImplemented: the tuple's own comparison would then say equal); other
    # objects may still decide (as ``unittest.mock.ANY`` does).
    def __eq__(self, other: object) -> bool:
        if type(other) is Message:
            return tuple.__eq__(self, other)
        return False if isinstance(other, tuple) else NotImplemented

    def __ne__(self, other: object) -> bool:
        if type(other) is Message:
            return tuple.__ne__(self, other)
        return True if isinstance(other, tuple) else NotImplemented

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "role": self.role,
            "content": self.content,
            "tool_calls": self.tool_calls,
            "tool_call_id": self.tool_call_id,
            "tool_name": self.tool_name,
            "created_at": iso(self.created_at),
            "meta": self.meta,
            "state": self.state,
            "payload": self.payload,
        }


# Message(*row) without the generated __new__'s Python frame: for rows that are
# the Message's fields exactly, in order (``list(map(message_of_row, rows))``).
message_of_row = cast(Callable[[Sequence[Any]], Message], partial(tuple.__new__, Message))


# What a message can be: active (the transcript), compacted (replaced by a
# summary) or retracted (taken back); the last two keep their seq.
MESSAGE_STATES = ("active", "compacted", "retracted")

# The one source of a message's columns: the dataclass. Every SELECT that builds
# a Message names MESSAGE_READ_COLUMNS, in this order; a writer fills in all
# but state (its default is 'active'); MESSAGE_COLUMNS are those before data
# model v2 (schema 4), which a raw baseline inserts.
MESSAGE_FIELDS: tuple[str, ...] = Message._fields
MESSAGE_READ_COLUMNS = ", ".join(MESSAGE_FIELDS)
MESSAGE_WRITE_COLUMNS = ", ".join(f for f in MESSAGE_FIELDS if f != "state")
MESSAGE_COLUMNS = ", ".join(MESSAGE_FIELDS[: MESSAGE_FIELDS.index("idem_key") + 1])


def message_from_row(row: Any) -> Message:
    return Message(
        row[0],
        row[1],
        row[2],
        row[3],
        _json(row[4]),
        row[5],
        row[6],
        row[7],
        row[8],
        _json(row[9]),
        row[10],
        _json(row[11]),
    )


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What one import call did: the session as stored now, and what it wrote."""

    session: Session
    created: bool  # this call wrote the session row
    ended: bool  # this call recorded the session's end
    written: int  # messages this call wrote (already imported ones are not counted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "session": self.session.to_dict(),
            "created": self.created,
            "ended": self.ended,
            "written": self.written,
        }


@dataclass(frozen=True, slots=True)
class ListedChain:
    """One row of the resumable listing: a chain of sessions shown once.

    ``session`` is the chain's newest tip (the session to resume); the counts
    and activity cover the whole chain from its root.
    """

    session: Session
    root_id: str
    chain_message_count: int
    chain_last_active_at: float
    root_title: str | None = None

    @property
    def title(self) -> str | None:
        """The tip's title, else the chain's first title."""
        return self.session.title or self.root_title

    def to_dict(self) -> dict[str, Any]:
        d = self.session.to_dict()
        d["title"] = self.title
        d["root_id"] = self.root_id
        d["chain_message_count"] = self.chain_message_count
        d["chain_last_active_at"] = iso(self.chain_last_active_at)
        return d


@dataclass(frozen=True, slots=True)
class Page:
    """A page of a keyset-paginated listing; pass ``next_cursor`` to get the next one."""

    items: list[ListedChain]
    next_cursor: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"items": [i.to_dict() for i in self.items], "next_cursor": self.next_cursor}


@dataclass(frozen=True, slots=True)
class SourceCensus:
    total: int = 0
    open: int = 0
    ended: int = 0
    ghosts: int = 0
    end_reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "open": self.open,
            "ended": self.ended,
            "ghosts": self.ghosts,
            "end_reasons": dict(self.end_reasons),
        }


@dataclass(frozen=True, slots=True)
class Census:
    """What ``tether doctor`` reports: the health of the whole store."""

    total: int
    open: int
    ended: int
    ghosts: int
    end_reasons: dict[str, int]
    by_source: dict[str, SourceCensus]
    oldest_open: Session | None
    # Liveness breakdown of the open sessions (filled in once owners exist).
    open_live_owner: int = 0
    open_dead_owner: int = 0
    open_no_owner: int = 0
    # Open imported sessions (an origin and no owner): their lifecycle belongs to
    # their source; counted apart from open_no_owner, never reaped or repaired.
    open_external: int = 0
    # Sessions in the trash (schema 5) and their messages: not in the counts above.
    trashed: int = 0
    trashed_messages: int = 0

    def to_dict(self) -> dict[str, Any]:
        oldest = self.oldest_open
        return {
            "total": self.total,
            "open": self.open,
            "ended": self.ended,
            "ghosts": self.ghosts,
            "end_reasons": dict(self.end_reasons),
            "by_source": {k: v.to_dict() for k, v in self.by_source.items()},
            "oldest_open": None
            if oldest is None
            else {
                "id": oldest.id,
                "source": oldest.source,
                "created_at": iso(oldest.created_at),
                "last_active_at": iso(oldest.last_active_at),
                "owner_id": oldest.owner_id,
            },
            "open_live_owner": self.open_live_owner,
            "open_dead_owner": self.open_dead_owner,
            "open_no_owner": self.open_no_owner,
            "open_external": self.open_external,
            "trashed": self.trashed,
            "trashed_messages": self.trashed_messages,
        }
