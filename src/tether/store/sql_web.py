"""SQL of the live view (tether.web): open sessions with their turn state, the events log.

Every query is O(open sessions) or O(page): the open sessions come from the
partial index ``sessions_open_created``, a session's newest turn event from
``events_session`` (one short backward walk per open session). Counts are
grouped in the database, so that only a few rows (per owner and source) reach
Python whatever the number of open sessions.
"""

from __future__ import annotations

from .sql import OWNER_COLUMNS

# Turn events, written by the gateway around each agent turn (see tether.gateway).
TURN_STARTED = "turn_started"
TURN_ENDED = "turn_ended"

# 1 when the session's newest turn event is a start: a turn is running.
_TURN = f"""CASE WHEN (SELECT e.kind FROM events e
     WHERE e.session_id = s.id AND e.kind IN ('{TURN_STARTED}', '{TURN_ENDED}')
     ORDER BY e.id DESC LIMIT 1) = '{TURN_STARTED}' THEN 1 ELSE 0 END"""

# An owners row's columns, as OWNERS_OF_OPEN_SESSIONS reads them (OwnerInfo's order).
_OWNER_FIELDS = ", ".join("o." + c.strip() for c in OWNER_COLUMNS.split(","))


def id_in(column: str, dialect: str, *, negate: bool = False) -> str:
    """``column`` in (``negate``: not in) a set of ids bound as ONE parameter (see
    :func:`tether.store.views.id_set`): the statement's text does not depend on how
    many ids there are (no bind-count limit; PostgreSQL can keep it prepared)."""
    if dialect == "postgresql":
        return f"{column} {'<> ALL' if negate else '= ANY'}(CAST(? AS text[]))"
    return f"{column} {'NOT IN' if negate else 'IN'} (SELECT value FROM json_each(?))"


def open_counts(running_known: bool) -> str:
    """Open sessions grouped by what decides their state (owner, source, imported,
    detached, turn running), each group with its owner's row (NULLs: missing), in one
    pass: the exact counts and every owner to judge, from one snapshot.

    ``running_known``: the turn column is 0 and the caller moves the sessions of
    :func:`running_keys` to their turn-running group; otherwise each open session's
    newest turn event decides (one probe per open session). A set of ids is not
    tested in the grouping itself: PostgreSQL would compare each row with every id
    there (a hashed ``= ANY`` is for WHERE only), 19 ms at 10,000 x 1,000.
    """
    turn = "0" if running_known else _TURN
    return f"""
SELECT g.owner_id, g.source, g.imported, g.detached, g.turn, g.n, {_OWNER_FIELDS} FROM (
    SELECT s.owner_id, s.source,
        CASE WHEN s.origin IS NULL THEN 0 ELSE 1 END AS imported,
        CASE WHEN s.detached_at IS NULL THEN 0 ELSE 1 END AS detached,
        {turn} AS turn, COUNT(*) AS n
    FROM sessions s WHERE s.ended_at IS NULL
    GROUP BY s.owner_id, s.source, imported, detached, turn
) g
LEFT JOIN owners o ON o.id = g.owner_id
"""


def running_keys(dialect: str) -> str:
    """The group keys of :func:`open_counts` of the open sessions among a set of ids
    (one parameter, see :func:`id_in`): found by primary key."""
    return f"""
SELECT s.owner_id, s.source,
    CASE WHEN s.origin IS NULL THEN 0 ELSE 1 END,
    CASE WHEN s.detached_at IS NULL THEN 0 ELSE 1 END
FROM sessions s WHERE s.ended_at IS NULL AND {id_in("s.id", dialect)}
"""


# Open sessions with a running turn, and the newest event id, in one snapshot.
RUNNING_TURNS = f"SELECT s.id FROM sessions s WHERE s.ended_at IS NULL AND {_TURN} = 1"
MAX_EVENT_ID = "SELECT COALESCE(MAX(id), 0) FROM events"

_PAGE_COLUMNS = """s.id, s.source, s.title, s.root_id, s.origin, s.created_at, s.last_active_at,
    s.owner_id, s.detached_at, s.message_count"""


def _turn(dialect: str, running_known: bool, want: bool) -> str:
    """A running turn: the bound ids of running sessions, or the events subquery."""
    if not running_known:
        return f"{_TURN} = {1 if want else 0}"
    return id_in("s.id", dialect, negate=not want)


def state_condition(state: str, dialect: str, running_known: bool) -> tuple[str, tuple[str, ...]]:
    """The WHERE condition of one live state and the id sets it binds, in order:
    ``"dead"`` (the owners judged dead) and ``"running"`` (the sessions with a running
    turn, when ``running_known``; otherwise the events decide); see tether.web.live."""
    dead = id_in("s.owner_id", dialect)
    alive = f"s.owner_id IS NOT NULL AND {id_in('s.owner_id', dialect, negate=True)}"
    turns: tuple[str, ...] = ("running",) if running_known else ()
    if state == "external":
        return "s.owner_id IS NULL AND s.origin IS NOT NULL", ()
    if state == "orphaned":
        return f"((s.owner_id IS NULL AND s.origin IS NULL) OR {dead})", ("dead",)
    if state == "working":
        return f"{alive} AND {_turn(dialect, running_known, True)}", ("dead", *turns)
    if state == "detached":
        cond = f"{alive} AND {_turn(dialect, running_known, False)} AND s.detached_at IS NOT NULL"
        return cond, ("dead", *turns)
    if state == "idle":
        cond = f"{alive} AND {_turn(dialect, running_known, False)} AND s.detached_at IS NULL"
        return cond, ("dead", *turns)
    raise ValueError(state)


def open_page(condition: str | None, by_source: bool, with_turn: bool = True) -> str:
    """One keyset page of open sessions, oldest first, after (created_at, id)."""
    where = ["s.ended_at IS NULL", "(s.created_at > ? OR (s.created_at = ? AND s.id > ?))"]
    if by_source:
        where.append("s.source = ?")
    if condition:
        where.append(condition)
    turn = _TURN if with_turn else "0"
    return f"""
SELECT {_PAGE_COLUMNS}, {turn} FROM sessions s
WHERE {" AND ".join(where)}
ORDER BY s.created_at, s.id LIMIT ?
"""


EVENTS_AFTER = """
SELECT id, at, session_id, kind, data FROM events WHERE id > ? ORDER BY id LIMIT ?
"""

EVENT_BOUNDS = "SELECT MIN(id), MAX(id) FROM events"

# PostgreSQL: the transactions that hold (or wait for) a write lock on the events
# table. A transaction takes it before it draws an event id and keeps it until it
# ends, so an id drawn but not yet committed belongs to one of these (see
# tether.web.feed.Horizon). Read outside the snapshot it is compared with.
EVENT_WRITERS = """
SELECT DISTINCT virtualtransaction FROM pg_locks
WHERE locktype = 'relation' AND relation = 'events'::regclass
  AND mode = 'RowExclusiveLock' AND pid IS DISTINCT FROM pg_backend_pid()
"""
