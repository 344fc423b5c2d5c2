"""SQL of the live view (tether.web): open sessions with their turn state, the events log.

Every query is O(open sessions) or O(page): the open sessions come from the
partial indexes ``sessions_open_owner`` and ``sessions_open_created``, a
session's newest turn event from ``events_session`` (one short backward walk per
open session, when the caller does not follow the turns). Counts are grouped in
the database, and the owners that cannot be dead (another host, a heartbeat
within the lease) are settled there too: a few rows per host and source reach
Python, plus one per owner that needs judging (this host's, stale, missing).
tether.store.views.live_read runs them in one read transaction.
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


# PostgreSQL: plan each statement with its id sets' values. psycopg prepares a
# statement run often; PostgreSQL then switches to a generic plan, where a bound
# array is compared element by element (hashed only when its value is known):
# the idle page went from 0.4 ms to 250 ms at 10,000 open x 1,000 running.
CUSTOM_PLANS = "SET LOCAL plan_cache_mode = force_custom_plan"


def id_in(column: str, dialect: str, *, negate: bool = False) -> str:
    """``column`` in (``negate``: not in) a set of ids bound as ONE parameter (see
    :func:`tether.store.views.id_set`): the statement's text does not depend on how
    many ids there are (no bind-count limit; PostgreSQL can keep it prepared)."""
    if dialect == "postgresql":
        return f"{column} {'<> ALL' if negate else '= ANY'}(CAST(? AS text[]))"
    return f"{column} {'NOT IN' if negate else 'IN'} (SELECT value FROM json_each(?))"


# An owner that cannot be dead: on another host (it cannot be probed from here) with
# a heartbeat within its lease, or the judge's grace if longer. Parameters: the
# judge's host, grace, grace, now (on the heartbeats' clock). The reaper's sweep
# skips the same owners (sql.SWEEP_CANDIDATES); tether.liveness.policy.judge
# finds every one of them alive. NULL (a missing row) is not fresh.
_FRESH_REMOTE = """(o.host <> ?
    AND o.heartbeat_at + (CASE WHEN o.lease > ? THEN o.lease ELSE ? END) >= ?)"""

_OWNER_COLUMN_NAMES = [c.strip() for c in OWNER_COLUMNS.split(",")]


def open_counts(running_known: bool) -> str:
    """Open sessions counted by what decides their state, in one statement.

    Sessions whose owner cannot be dead (``_FRESH_REMOTE``) are counted by that
    owner's host, source, imported, detached and turn running: no per-owner row
    reaches Python (:data:`FRESH_OWNERS` counts those owners). Every other session
    (no owner, a missing owner row, an owner on this host, or whose heartbeat is
    older than its lease) is counted by owner, with the owner's row for the
    caller to judge.

    Columns: owner id (NULL: fresh, or no owner), fresh (0/1), the fresh owners'
    host, source, imported, detached, turn, count, then the owner row's columns
    (OWNER_COLUMNS; meaningless in a fresh group). Parameters: those of
    ``_FRESH_REMOTE``.

    ``running_known``: the turn column is 0 and the caller moves the sessions of
    :func:`running_keys` to their turn-running group; otherwise each open session's
    newest turn event decides (one probe per open session). A set of ids is not
    tested in the grouping itself: PostgreSQL would compare each row with every id
    there (a hashed ``= ANY`` is for WHERE only), 19 ms at 10,000 x 1,000.
    """
    turn = "0" if running_known else _TURN
    # "host" is renamed inside: the fresh groups' host is a column of its own.
    names = ["owner_host" if c == "host" else c for c in _OWNER_COLUMN_NAMES]
    owner_cols = ", ".join(f"o.{c} AS {n}" for c, n in zip(_OWNER_COLUMN_NAMES, names, strict=True))
    picked = ", ".join(f"MIN(x.{n})" for n in names)
    return f"""
SELECT CASE WHEN x.fresh = 1 THEN NULL ELSE x.owner_id END AS judged, x.fresh,
    CASE WHEN x.fresh = 1 THEN x.owner_host END AS fresh_host,
    x.source, x.imported, x.detached, x.turn, SUM(x.n), {picked}
FROM (
    SELECT g.owner_id, g.source, g.imported, g.detached, g.turn, g.n,
        {owner_cols},
        CASE WHEN {_FRESH_REMOTE} THEN 1 ELSE 0 END AS fresh
    FROM (
        SELECT s.owner_id, s.source,
            CASE WHEN s.origin IS NULL THEN 0 ELSE 1 END AS imported,
            CASE WHEN s.detached_at IS NULL THEN 0 ELSE 1 END AS detached,
            {turn} AS turn, COUNT(*) AS n
        FROM sessions s WHERE s.ended_at IS NULL
        GROUP BY s.owner_id, s.source, imported, detached, turn
    ) g
    LEFT JOIN owners o ON o.id = g.owner_id
) x
GROUP BY judged, x.fresh, fresh_host, x.source, x.imported, x.detached, x.turn
"""


# How many owners of open sessions cannot be dead, and the oldest heartbeat among
# them (the owners open_counts counts by host). Parameters: those of _FRESH_REMOTE.
FRESH_OWNERS = f"""
SELECT COUNT(*), MIN(o.heartbeat_at) FROM owners o
WHERE {_FRESH_REMOTE}
  AND EXISTS (SELECT 1 FROM sessions s WHERE s.owner_id = o.id AND s.ended_at IS NULL)
"""


def running_keys(dialect: str) -> str:
    """What decides the group in :func:`open_counts` of each open session among a set
    of ids, found by primary key: owner, source, imported, detached, the owner's
    host, fresh (0/1). Parameters: those of ``_FRESH_REMOTE``, then the ids (one
    parameter, see :func:`id_in`)."""
    return f"""
SELECT s.owner_id, s.source,
    CASE WHEN s.origin IS NULL THEN 0 ELSE 1 END,
    CASE WHEN s.detached_at IS NULL THEN 0 ELSE 1 END,
    o.host, CASE WHEN {_FRESH_REMOTE} THEN 1 ELSE 0 END
FROM sessions s LEFT JOIN owners o ON o.id = s.owner_id
WHERE s.ended_at IS NULL AND {id_in("s.id", dialect)}
"""


# Open sessions with a running turn, and the newest event id, in one snapshot.
RUNNING_TURNS = f"SELECT s.id FROM sessions s WHERE s.ended_at IS NULL AND {_TURN} = 1"
MAX_EVENT_ID = "SELECT COALESCE(MAX(id), 0) FROM events"

_PAGE_COLUMNS = """s.id, s.source, s.title, s.root_id, s.origin, s.created_at, s.last_active_at,
    s.owner_id, s.detached_at, s.message_count"""
# After the turn column: the owner's row (NULLs: none, or missing).
_PAGE_OWNER = ", ".join(f"o.{c}" for c in _OWNER_COLUMN_NAMES)


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
SELECT {_PAGE_COLUMNS}, {turn}, {_PAGE_OWNER}
FROM sessions s LEFT JOIN owners o ON o.id = s.owner_id
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
