"""The resumable listing: a pure SQL builder and its keyset cursor.

One row per chain (a root session and its continuations), newest activity
first. The cost is O(page): the main query walks the ``sessions_listing``
index (``chain_last_active_at, id`` over root rows) backwards from the cursor
and joins each row to its tip by primary key. Listing only open chains goes
through the open-sessions partial index instead, which is O(open).
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, fields
from typing import Any

from ..errors import InvalidInputError
from ..model import SESSION_FIELDS, ListedChain, session_from_row
from ..validate import BAD_TEXT_SEARCH, check_text

STATES = ("all", "open", "ended")
MAX_LIMIT = 1000
_MAX_CURSOR = 1000  # characters: ours are about 60

_TIP_COLUMNS = ", ".join(f"t.{c}" for c in SESSION_FIELDS)
# What a listing row holds after the tip's SESSION_COLUMNS, by name: the chain
# root's columns, read into ListedChain's fields of the same names.
_ROOT_COLUMNS = {
    "root_id": "r.id",
    "chain_message_count": "r.chain_message_count",
    "chain_last_active_at": "r.chain_last_active_at",
    "root_title": "r.title",
}
_SELECT = f"SELECT {_TIP_COLUMNS}, {', '.join(_ROOT_COLUMNS.values())}"
_TIP = len(SESSION_FIELDS)
assert [f.name for f in fields(ListedChain)][1:] == list(_ROOT_COLUMNS), "ListedChain's order"


def listed_chain(row: Any) -> ListedChain:
    """A listing row (the tip's columns, then the root's) as a ListedChain."""
    return ListedChain(session_from_row(row), *row[_TIP:])


@dataclass(frozen=True, slots=True)
class ListQuery:
    state: str = "all"
    source: str | None = None
    cwd: str | None = None
    include_empty: bool = False
    limit: int = 50
    cursor: str | None = None


def encode_cursor(last_active_at: float, session_id: str) -> str:
    raw = json.dumps([last_active_at, session_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The (activity, root id) a cursor points after; InvalidInputError for anything else.

    A cursor comes back from clients, so it is checked like input: a NaN or
    infinite time would compare false with every row and silently end the
    listing; a number beyond a float, or an id that is not storable text,
    would fail in the driver instead of saying the cursor is bad.
    """
    try:
        if not isinstance(cursor, str) or len(cursor) > _MAX_CURSOR:
            raise ValueError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts, sid = json.loads(raw)
        if not isinstance(sid, str) or BAD_TEXT_SEARCH(sid) or isinstance(ts, bool):
            raise ValueError
        if not isinstance(ts, int | float):
            raise ValueError
        value = float(ts)  # OverflowError for an int beyond float's range
        if not math.isfinite(value):
            raise ValueError
        return value, sid
    except (ValueError, TypeError, OverflowError, RecursionError):
        shown = repr(cursor) if len(repr(cursor)) <= 80 else repr(cursor)[:77] + "..."
        raise InvalidInputError(f"invalid listing cursor {shown}") from None


def check_query(q: ListQuery) -> ListQuery:
    if q.state not in STATES:
        raise InvalidInputError(f"invalid state {q.state!r}: expected one of {', '.join(STATES)}")
    if type(q.limit) is not int or not 1 <= q.limit <= MAX_LIMIT:
        raise InvalidInputError(f"limit must be between 1 and {MAX_LIMIT}")
    check_text(q.source, "source")
    check_text(q.cwd, "cwd")
    return q


def build(q: ListQuery) -> tuple[str, list[object]]:
    """Return ``(sql, params)`` for one page of the listing (one extra row to detect more)."""
    check_query(q)
    # Trashed chains (schema 5) leave every listing until restored.
    where: list[str] = ["r.root_id = r.id", "r.trashed_at IS NULL"]
    params: list[object] = []
    if q.state == "open":
        # Start from the (few) open sessions; each must be its chain's tip.
        source = "FROM sessions t CROSS JOIN sessions r"
        where = ["t.ended_at IS NULL", "r.id = t.root_id", "r.chain_tip_id = t.id", *where]
    else:
        # Walk the listing index of root rows; join each to its tip by primary key.
        source = "FROM sessions r CROSS JOIN sessions t"
        where.append("t.id = r.chain_tip_id")
        if q.state == "ended":
            where.append("t.ended_at IS NOT NULL")
    if not q.include_empty:
        where.append("r.chain_message_count > 0")
    if q.source is not None:
        where.append("r.source = ?")
        params.append(q.source)
    if q.cwd is not None:
        where.append("r.cwd = ?")
        params.append(q.cwd)
    if q.cursor is not None:
        ts, sid = decode_cursor(q.cursor)
        # A row-value comparison is a range seek on the index (an OR form is not).
        where.append("(r.chain_last_active_at, r.id) < (?, ?)")
        params += [ts, sid]
    sql = (
        f"{_SELECT} {source} WHERE {' AND '.join(where)} "
        "ORDER BY r.chain_last_active_at DESC, r.id DESC LIMIT ?"
    )
    params.append(q.limit + 1)
    return sql, params
