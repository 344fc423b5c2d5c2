"""SQL of the live view (tether.web): open sessions with their turn state, the events log.

Every query is O(open sessions) or O(page): the open sessions come from the
partial index ``sessions_open_created``, a session's newest turn event from
``events_session`` (one short backward walk per open session). Counts are
grouped in the database, so that only a few rows (per owner and source) reach
Python whatever the number of open sessions.
"""

from __future__ import annotations

# Turn events, written by the gateway around each agent turn (see tether.gateway).
TURN_STARTED = "turn_started"
TURN_ENDED = "turn_ended"

# 1 when the session's newest turn event is a start: a turn is running.
_TURN = f"""CASE WHEN (SELECT e.kind FROM events e
     WHERE e.session_id = s.id AND e.kind IN ('{TURN_STARTED}', '{TURN_ENDED}')
     ORDER BY e.id DESC LIMIT 1) = '{TURN_STARTED}' THEN 1 ELSE 0 END"""

# Open sessions grouped by what decides their state (owner, imported, detached,
# turn running) and by source: the exact counts, in a few rows.
OPEN_COUNTS = f"""
SELECT g.owner_id, g.source, g.imported, g.detached, g.turn, COUNT(*) FROM (
    SELECT s.owner_id, s.source,
        CASE WHEN s.origin IS NULL THEN 0 ELSE 1 END AS imported,
        CASE WHEN s.detached_at IS NULL THEN 0 ELSE 1 END AS detached,
        {_TURN} AS turn
    FROM sessions s WHERE s.ended_at IS NULL
) g
GROUP BY g.owner_id, g.source, g.imported, g.detached, g.turn
"""

# Without the turn: grouped by what else decides a state (a caller that follows
# the events knows the running turns, see tether.web.feed.TurnTracker).
OPEN_COUNTS_NO_TURN = """
SELECT g.owner_id, g.source, g.imported, g.detached, 0, COUNT(*) FROM (
    SELECT s.owner_id, s.source,
        CASE WHEN s.origin IS NULL THEN 0 ELSE 1 END AS imported,
        CASE WHEN s.detached_at IS NULL THEN 0 ELSE 1 END AS detached
    FROM sessions s WHERE s.ended_at IS NULL
) g
GROUP BY g.owner_id, g.source, g.imported, g.detached
"""


def group_keys(n: int) -> str:
    """The state-deciding facts of ``n`` open sessions, by id."""
    return f"""
SELECT s.owner_id, s.source,
    CASE WHEN s.origin IS NULL THEN 0 ELSE 1 END,
    CASE WHEN s.detached_at IS NULL THEN 0 ELSE 1 END
FROM sessions s WHERE s.ended_at IS NULL AND s.id IN ({", ".join("?" * n)})
"""


# Open sessions with a running turn, and the newest event id, in one snapshot.
RUNNING_TURNS = f"SELECT s.id FROM sessions s WHERE s.ended_at IS NULL AND {_TURN} = 1"
MAX_EVENT_ID = "SELECT COALESCE(MAX(id), 0) FROM events"

_PAGE_COLUMNS = """s.id, s.source, s.title, s.root_id, s.origin, s.created_at, s.last_active_at,
    s.owner_id, s.detached_at, s.message_count"""


def _dead(n: int) -> str:
    return f"s.owner_id IN ({', '.join('?' * n)})" if n else "1 = 0"


def _alive(n: int) -> str:
    notin = f" AND s.owner_id NOT IN ({', '.join('?' * n)})" if n else ""
    return "s.owner_id IS NOT NULL" + notin


def _turn(running: int | None, want: bool) -> str:
    """A running turn: the events subquery, or (``running`` ids known) an id list."""
    if running is None:
        return f"{_TURN} = {1 if want else 0}"
    if not running:
        return "1 = 1" if not want else "1 = 0"
    marks = ", ".join("?" * running)
    return f"s.id {'IN' if want else 'NOT IN'} ({marks})"


def state_condition(state: str, n_dead: int, running: int | None = None) -> tuple[str, int, int]:
    """The WHERE condition of one live state: ``n_dead`` dead owner ids, and ``running``
    ids of sessions with a running turn (None: ask the events), are bound as parameters;
    returns the condition and how many times each list is bound (see tether.web.live)."""
    if state == "external":
        return "s.owner_id IS NULL AND s.origin IS NOT NULL", 0, 0
    if state == "orphaned":
        return f"((s.owner_id IS NULL AND s.origin IS NULL) OR {_dead(n_dead)})", 1, 0
    turns = 0 if running is None else 1
    if state == "working":
        return f"{_alive(n_dead)} AND {_turn(running, True)}", 1, turns
    if state == "detached":
        return (
            f"{_alive(n_dead)} AND {_turn(running, False)} AND s.detached_at IS NOT NULL",
            1,
            turns,
        )
    if state == "idle":
        return f"{_alive(n_dead)} AND {_turn(running, False)} AND s.detached_at IS NULL", 1, turns
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
