"""The store's SQL, named, in one place (portable SQL).

Every statement here runs unchanged on SQLite (>= 3.35, for RETURNING) and
PostgreSQL. Where the two must differ, a function taking the ``dialect``
returns the right text (:func:`locking`), or the statement is named for its
backend (``REAP_PG``; SQLite's reap, with a temporary table, lives in
:mod:`tether.store.sqlite.reap`).

Parameters are named (``:name``, with a dict) where a statement has many of
them, so no one counts question marks: the PostgreSQL backend translates
``:name`` to psycopg's ``%(name)s`` as it translates ``?`` to ``%s``. The
append hot path keeps ``?`` (a tuple binds a little faster than a dict, and
those statements have few parameters); one statement never mixes the two.
Column lists come from one place each (:mod:`tether.model` for what is read,
the ``*_FIELDS`` tuples here for what is written).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from ..model import MESSAGE_READ_COLUMNS, MESSAGE_WRITE_COLUMNS, SESSION_COLUMNS


def insert_named(table: str, fields: Sequence[str], constants: Mapping[str, str]) -> str:
    """``INSERT INTO table (...) VALUES (...)`` with ``:field`` for each of ``fields``
    and the SQL text of ``constants`` for the other columns (one list, never two)."""
    columns = [*fields, *constants]
    values = [f":{f}" for f in fields] + list(constants.values())
    return f"INSERT INTO {table} ({', '.join(columns)})\nVALUES ({', '.join(values)})\n"


def params_for(fields: Sequence[str], values: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of a named statement: ``values``, None for fields not given.

    A name that is not a field is refused, so a typo cannot silently write NULL.
    """
    params = dict.fromkeys(fields)
    params.update(values)
    if len(params) != len(fields):  # cheaper than a set difference on every call
        unknown = sorted(set(values) - set(fields))
        raise KeyError(f"not a field of this statement: {', '.join(unknown)}")
    return params


# --- sessions -------------------------------------------------------------------

# What a new session's row is written with (by name: see new_session_params);
# its counts start at zero. A root session carries its chain's summary (tip,
# total messages, activity) so the resumable listing reads one index and one
# row per chain; other members leave chain_tip_id and chain_last_active_at NULL.
NEW_SESSION_FIELDS = (
    "id",
    "source",
    "model",
    "title",
    "cwd",
    "parent_id",
    "root_id",
    "origin",
    "created_at",
    "last_active_at",
    "owner_id",
    "epoch",
    "metadata",
    "chain_tip_id",
    "chain_last_active_at",
)
_ZERO_COUNTS = {"message_count": "0", "chain_message_count": "0"}

INSERT_SESSION = (
    insert_named("sessions", NEW_SESSION_FIELDS, _ZERO_COUNTS) + "ON CONFLICT (id) DO NOTHING\n"
)


def new_session_params(**values: Any) -> dict[str, Any]:
    """The parameters of :data:`INSERT_SESSION` (fields not given are NULL; epoch 0)."""
    values.setdefault("epoch", 0)
    return params_for(NEW_SESSION_FIELDS, values)


# A root session's first write (the common first append): the row goes in with
# its first messages already counted, so the transaction that inserts them
# needs no UPDATE of the row it has just written (what BUMP_ROOT would set: the
# counts, last_active_at, the chain activity). A root is its own chain's root
# and tip. Positional parameters (see root_session_params for their order):
# binding a dict by name costs SQLite a lookup per name, about 2 us of the
# first append (issue 15).
INSERT_ROOT_SESSION = """
INSERT INTO sessions (id, source, model, title, cwd, root_id, origin, created_at,
    last_active_at, owner_id, epoch, metadata, message_count, chain_message_count,
    chain_tip_id, chain_last_active_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO NOTHING
"""


def root_session_params(
    id: str,
    source: str,
    model: str | None,
    title: str | None,
    cwd: str | None,
    origin: str | None,
    created_at: float,
    last_active_at: float,
    owner_id: str,
    metadata: str | None,
    count: int,
    chain_last_active_at: float,
) -> tuple[Any, ...]:
    """The parameters of :data:`INSERT_ROOT_SESSION`, in its order."""
    return (
        id,
        source,
        model,
        title,
        cwd,
        id,
        origin,
        created_at,
        last_active_at,
        owner_id,
        metadata,
        count,
        count,
        id,
        chain_last_active_at,
    )


# PostgreSQL: a Row's nine fields as typed parameters, for the one-statement
# writes below (role, content, tool_calls, tool_call_id, tool_name, created_at,
# idem_key, meta, payload: its exact text kept as a JSON string).
ROW_CASTS = """?::text, ?::text, ?::jsonb, ?::text, ?::text, ?::float8, ?::text,
    ?::jsonb, to_jsonb(?::text)"""

# PostgreSQL: a root session's first write of one message as one statement (one
# round trip instead of five: BEGIN, the row, its created event, the message,
# COMMIT), when this process's owner row need not be written with it. Nothing is
# written if the id is taken (the event and the message come from the inserted
# row), so a row count of 0 sends the writer through the transaction instead.
# Parameters: root_session_params, the event's time and data, then the message's
# nine fields (a Row).
START_ROOT_ONE_STATEMENT = f"""
WITH s AS ({INSERT_ROOT_SESSION.strip()}
    RETURNING id),
e AS (INSERT INTO events (at, session_id, kind, data)
    SELECT ?::float8, id, 'created', ?::jsonb FROM s)
INSERT INTO messages ({MESSAGE_WRITE_COLUMNS})
SELECT id, 1, {ROW_CASTS} FROM s
"""

SELECT_ROOT_OF = "SELECT root_id FROM sessions WHERE id = ?"

# The chain rule: a chain's tip is its newest created member (greatest
# created_at, then id), and its activity the newest of any member's (at the
# listing's resolution). Both only ever move forward, whoever writes: an older
# member still writing moves the activity, never the tip; a late flush of
# older rows moves neither.
_LATER_ACTIVITY = """chain_last_active_at = CASE
    WHEN chain_last_active_at IS NULL OR chain_last_active_at < ? THEN ?
    ELSE chain_last_active_at END"""

# A continuation joins its chain: it becomes the tip (unless a newer member
# already is), and its creation is chain activity.
ADD_CHAIN_MEMBER = f"""
UPDATE sessions SET
    chain_tip_id = CASE
        WHEN chain_tip_id IS NULL OR (?, ?) > (
            SELECT t.created_at, t.id FROM sessions t WHERE t.id = sessions.chain_tip_id)
        THEN ? ELSE chain_tip_id END,
    {_LATER_ACTIVITY}
WHERE id = ?
"""

SELECT_SESSION = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?"

SELECT_CHAIN = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE root_id = ? ORDER BY created_at, id"

SELECT_ID_PREFIX = "SELECT id FROM sessions WHERE id >= ? AND id < ? ORDER BY id LIMIT 5"

SELECT_WRITE_STATE = (
    "SELECT ended_at, end_reason, epoch, message_count, root_id FROM sessions WHERE id = ?"
)


def locking(dialect: str, query: str, of: str | None = None) -> str:
    """``query`` locking the rows it reads (of table alias ``of``) on PostgreSQL.

    For a write that reads a row and then acts on what it read. Writers on
    PostgreSQL run concurrently at READ COMMITTED, so without the lock the row
    can change in between; on SQLite the write transaction already excludes
    every other writer, and the query is unchanged.
    """
    if dialect != "postgresql":
        return query
    return f"{query.rstrip()} FOR UPDATE" + (f" OF {of}" if of else "")


# The append hot path. The writer states the count it expects, so one UPDATE
# checks ownership (epoch), liveness (ended_at) and order (message_count) and
# reports failure through its row count; RETURNING would cost as much again.
# The listing key chain_last_active_at is indexed, so it is only written when
# it moves by ACTIVITY_RESOLUTION (the *_ACTIVE variants).
BUMP_ROOT = """
UPDATE sessions SET message_count = ?, chain_message_count = chain_message_count + ?,
    last_active_at = ?
WHERE id = ? AND epoch = ? AND ended_at IS NULL AND message_count = ?
"""

BUMP_ROOT_ACTIVE = f"""
UPDATE sessions SET message_count = ?, chain_message_count = chain_message_count + ?,
    last_active_at = ?, {_LATER_ACTIVITY}
WHERE id = ? AND epoch = ? AND ended_at IS NULL AND message_count = ?
"""

# PostgreSQL runs the common append as this one statement, atomic on its own
# (autocommit): one round trip instead of BEGIN, UPDATE, INSERT, COMMIT. The
# INSERT reads from the UPDATE, so a stale count, epoch or an ended session
# inserts nothing (row count 0) and the caller takes the slow path.
APPEND_ONE_STATEMENT = f"""
WITH bump AS (
    UPDATE sessions SET message_count = ?, chain_message_count = chain_message_count + 1,
        last_active_at = ?
    WHERE id = ? AND epoch = ? AND ended_at IS NULL AND message_count = ?
    RETURNING id)
INSERT INTO messages (session_id, seq, role, content, tool_calls, tool_call_id, tool_name,
    created_at, idem_key, meta, payload)
SELECT id, ?::integer, {ROW_CASTS} FROM bump
"""


def append_many_statement(n: int) -> str:
    """APPEND_ONE_STATEMENT for ``n`` rows (PostgreSQL): one statement, one round trip.

    Parameters: the UPDATE's (new count, n, now, id, epoch, old count), then per
    row its seq and the nine fields of a ``Row``.
    """
    group = (
        "(?::integer, ?::text, ?::text, ?::jsonb, ?::text, ?::text, ?::float8, ?::text, "
        "?::jsonb, ?::text)"
    )
    return f"""
WITH bump AS (
    UPDATE sessions SET message_count = ?, chain_message_count = chain_message_count + ?,
        last_active_at = ?
    WHERE id = ? AND epoch = ? AND ended_at IS NULL AND message_count = ?
    RETURNING id)
INSERT INTO messages (session_id, seq, role, content, tool_calls, tool_call_id, tool_name,
    created_at, idem_key, meta, payload)
SELECT bump.id, v.seq, v.role, v.content, v.tool_calls, v.tool_call_id, v.tool_name,
    v.created_at, v.idem_key, v.meta, to_jsonb(v.payload)
FROM bump, (VALUES {", ".join([group] * n)}) AS v(seq, role, content, tool_calls,
    tool_call_id, tool_name, created_at, idem_key, meta, payload)
"""


BUMP_CHILD = """
UPDATE sessions SET message_count = ?, last_active_at = ?
WHERE id = ? AND epoch = ? AND ended_at IS NULL AND message_count = ?
"""

BUMP_CHAIN = "UPDATE sessions SET chain_message_count = chain_message_count + ? WHERE id = ?"

BUMP_CHAIN_ACTIVE = f"""
UPDATE sessions SET chain_message_count = chain_message_count + ?, {_LATER_ACTIVITY}
WHERE id = ?
"""

SET_DETACHED = "UPDATE sessions SET detached_at = ? WHERE id = ? AND ended_at IS NULL"

END_SESSION = f"""
UPDATE sessions SET ended_at = ?, end_reason = ?, end_detail = ?
WHERE id = ? AND ended_at IS NULL
RETURNING {SESSION_COLUMNS}
"""

# Ending from the owning handle is fenced like any other write.
END_SESSION_FENCED_QUIETLY = """
UPDATE sessions SET ended_at = ?, end_reason = ?, end_detail = ?
WHERE id = ? AND ended_at IS NULL AND epoch = ?
"""
# PostgreSQL: END_SESSION_FENCED_QUIETLY and its ``ended`` event as one statement,
# one round trip instead of four (BEGIN, UPDATE, INSERT, COMMIT); the event is
# inserted only for the row the UPDATE ended, so the row count says whether this
# statement ended it. Parameters: ended_at, reason, detail, id, epoch, event data.
END_QUIETLY_ONE_STATEMENT = f"""
WITH ended AS ({END_SESSION_FENCED_QUIETLY.strip()}
    RETURNING id, ended_at)
INSERT INTO events (at, session_id, kind, data) SELECT ended_at, id, 'ended', ?::jsonb FROM ended
"""
SELECT_END_WITNESS = "SELECT ended_at, end_reason FROM sessions WHERE id = ?"
# The same, reading the ended row back for the on_session_end hooks. Only then:
# RETURNING every column costs more than the UPDATE itself (SQLite: 25 µs, not 11).
END_SESSION_FENCED = f"""{END_SESSION_FENCED_QUIETLY.rstrip()}
RETURNING {SESSION_COLUMNS}
"""

# --- messages -------------------------------------------------------------------

INSERT_MESSAGE = f"""
INSERT INTO messages ({MESSAGE_WRITE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# PostgreSQL: jsonb keeps values but not key order or spacing, and a payload is a
# foreign framework's exact item. It is stored as a jsonb *string* holding the
# exact JSON text, which readers decode (tether.model._json) back to the very
# item; rows written before as jsonb objects still read as they are.
INSERT_MESSAGE_EXACT_PAYLOAD = f"""
INSERT INTO messages ({MESSAGE_WRITE_COLUMNS})
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, to_jsonb(CAST(? AS text)))
"""


def insert_message(dialect: str) -> str:
    """The message INSERT for ``dialect`` (on PostgreSQL, payload text kept exact)."""
    return INSERT_MESSAGE_EXACT_PAYLOAD if dialect == "postgresql" else INSERT_MESSAGE


# After a commit of unknown outcome: what was stored at a seq, and the session
# row's creation (the writer compares them with what it wrote).
SELECT_MESSAGE_WITNESS = "SELECT role, created_at FROM messages WHERE session_id = ? AND seq = ?"
SELECT_SESSION_WITNESS = "SELECT created_at, owner_id FROM sessions WHERE id = ?"


def select_sessions_by_id(n: int) -> str:
    """Several sessions by id (``n`` of them), in no particular order."""
    return f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id IN ({', '.join('?' * n)})"


def select_idem_keys(n: int) -> str:
    marks = ", ".join("?" * n)
    return f"SELECT idem_key, seq FROM messages WHERE session_id = ? AND idem_key IN ({marks})"


# --- events ---------------------------------------------------------------------

INSERT_EVENT = "INSERT INTO events (at, session_id, kind, data) VALUES (?, ?, ?, ?)"

# An end's event, with the owner id of the process that owes its on_session_end
# hooks (NULL: nothing owed; see tether.store.deliveries).
INSERT_EVENT_HOOKS_DUE = (
    "INSERT INTO events (at, session_id, kind, data, hooks_due_by) VALUES (?, ?, ?, ?, ?)"
)

# --- census ---------------------------------------------------------------------

# Trashed sessions (schema 5) are counted apart (see Census.trashed), not here.

CENSUS_BY_SOURCE = """
SELECT source, COUNT(*),
    SUM(CASE WHEN ended_at IS NULL THEN 1 ELSE 0 END),
    SUM(CASE WHEN message_count = 0 THEN 1 ELSE 0 END),
    SUM(CASE WHEN ended_at IS NULL AND owner_id IS NULL AND origin IS NULL THEN 1 ELSE 0 END),
    SUM(CASE WHEN ended_at IS NULL AND owner_id IS NULL AND origin IS NOT NULL THEN 1 ELSE 0 END)
FROM sessions WHERE trashed_at IS NULL GROUP BY source
"""

CENSUS_REASONS = """
SELECT source, end_reason, COUNT(*) FROM sessions
WHERE ended_at IS NOT NULL AND trashed_at IS NULL GROUP BY source, end_reason
"""

OLDEST_OPEN = f"""
SELECT {SESSION_COLUMNS} FROM sessions WHERE ended_at IS NULL ORDER BY created_at LIMIT 1
"""

# --- owners and liveness ----------------------------------------------------------

# The column order of an owner row, as OwnerInfo takes it after the id. pid_ns
# and lease came with schema 2.
OWNER_COLUMNS = "host, boot_id, pid, pid_start_time, kind, started_at, heartbeat_at, pid_ns, lease"

# Heartbeats upsert, so an owner row deleted by mistake comes back on the next
# beat. On PostgreSQL a NULL heartbeat_at is filled in with the server's now()
# by a trigger (schema 2): owners judged by heartbeat age are judged on one clock.
UPSERT_OWNER = f"""
INSERT INTO owners (id, {OWNER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, lease = excluded.lease
"""

# The database server's clock, in the store's unit (PostgreSQL only).
SERVER_NOW = "SELECT extract(epoch FROM now())::float8"

_OWNER_FIELDS = ", ".join("o." + c.strip() for c in OWNER_COLUMNS.split(","))

# Owners of open sessions with their open counts (an owner whose row is missing
# comes back with NULLs). O(open): it counts the partial index of open sessions
# by owner first, then looks each owner up.
OWNERS_OF_OPEN_SESSIONS = f"""
SELECT g.owner_id, {_OWNER_FIELDS}, g.n
FROM (SELECT owner_id, COUNT(*) AS n FROM sessions
      WHERE ended_at IS NULL AND owner_id IS NOT NULL GROUP BY owner_id) g
LEFT JOIN owners o ON o.id = g.owner_id
"""

SELECT_OWNER = f"SELECT id, {OWNER_COLUMNS} FROM owners WHERE id = ?"

# What a sweep must look at: owners of open sessions that run on a host of this
# name (a pid probe may decide) or whose heartbeat is already older than their
# lease (or the reaper's grace, if longer), plus owners whose row is missing.
# A fresh remote owner cannot be dead: it is skipped here. Parameters: host,
# grace, grace, now. (The NULLs stand in a derived table's select list so
# PostgreSQL types them from the first branch of the UNION; beside DISTINCT
# they would default to text. Each owner is looked up once, after DISTINCT, not
# once per open session.)
SWEEP_CANDIDATES = f"""
SELECT o.id, {OWNER_COLUMNS} FROM owners o
WHERE (o.host = ?
       OR o.heartbeat_at + (CASE WHEN o.lease > ? THEN o.lease ELSE ? END) < ?)
  AND EXISTS (SELECT 1 FROM sessions s WHERE s.owner_id = o.id AND s.ended_at IS NULL)
UNION ALL
SELECT m.owner_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM (
    SELECT DISTINCT s.owner_id FROM sessions s
    WHERE s.ended_at IS NULL AND s.owner_id IS NOT NULL) m
WHERE NOT EXISTS (SELECT 1 FROM owners o WHERE o.id = m.owner_id)
"""

# --- the reap: set-based, one statement per step ---------------------------------------------
#
# A reap ends every open session of the owners a sweep judged dead, in one
# transaction, with statements whose parameters are per owner, never per
# session: each step is one statement over the open-sessions index.
#
# A session is reaped only if its owner is still as the reaper judged it: its
# heartbeat unchanged (an owner that beat in the meantime is spared), or its
# row still missing.

# SQLite: the reap's statements use a keyed temporary table of the writer
# connection, SQLite only (tether.store.sqlite.reap).

# PostgreSQL: the whole reap in one statement (one round trip). Writers run
# concurrently at READ COMMITTED, so a plain comparison with the owner's row
# would read the statement's snapshot and miss a heartbeat that commits while
# the statement runs: the owner rows are locked first and compared under the
# lock (``FOR UPDATE`` re-reads the newest committed row), so a heartbeat either
# committed before (the owner is spared), is in flight (its row is locked:
# skipped, spared) or waits until the reap commits. Owners and sessions are
# claimed with ``SKIP LOCKED``, so reapers on many hosts share the work without
# waiting for (or deadlocking with) each other or with an end in flight, and
# the events (each marked as owing its hooks by ``hooks_due_by``, or NULL) are
# inserted by the same statement, a writable CTE. Parameters: the judged owners
# as one JSON array of {"owner_id", "heartbeat_at" (null: its row was missing),
# "detail"} (psycopg adapts three Python lists element by element, which costs
# more than the reap's own statement; a float's repr reads back exactly in
# float8), ended_at, at, hooks_due_by.
REAP_PG = """
WITH d AS (SELECT * FROM json_to_recordset(?::json)
           AS d(owner_id text, heartbeat_at float8, detail text)),
judged AS (
    SELECT o.id FROM owners o JOIN d ON o.id = d.owner_id
    WHERE o.heartbeat_at = d.heartbeat_at
    FOR UPDATE OF o SKIP LOCKED),
claimed AS (
    SELECT s.id, d.detail FROM sessions s JOIN d ON s.owner_id = d.owner_id
    WHERE s.ended_at IS NULL
      AND (s.owner_id IN (SELECT id FROM judged)
           OR (d.heartbeat_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM owners o WHERE o.id = d.owner_id)))
    FOR UPDATE OF s SKIP LOCKED),
ended AS (
    UPDATE sessions SET ended_at = ?, end_reason = 'reaped', end_detail = claimed.detail
    FROM claimed WHERE sessions.id = claimed.id
    RETURNING sessions.id, sessions.owner_id, sessions.end_detail),
logged AS (
    INSERT INTO events (at, session_id, kind, data, hooks_due_by)
    SELECT ?, id, 'reaped', jsonb_build_object('owner', owner_id, 'detail', end_detail),
        ?::text
    FROM ended)
SELECT id, owner_id, end_detail FROM ended
"""


def delete_idle_owners(n: int) -> str:
    """Drop these owner rows if nothing open refers to them any more."""
    marks = ", ".join("?" * n)
    return f"""
DELETE FROM owners WHERE id IN ({marks})
AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.owner_id = owners.id AND s.ended_at IS NULL)
"""


# Dead owners' rows are not deleted by the sweep that reaps them (it would cost
# a statement per sweep); they go with the rest once idle for OWNER_RETENTION.
PRUNE_OLD_OWNERS = """
DELETE FROM owners WHERE heartbeat_at < ?
AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.owner_id = owners.id AND s.ended_at IS NULL)
"""

SELECT_SESSION_OWNER = f"""
SELECT s.ended_at, s.end_reason, s.epoch, s.owner_id, o.id, {_OWNER_FIELDS}
FROM sessions s LEFT JOIN owners o ON o.id = s.owner_id WHERE s.id = ?
"""

TAKE_OVER = """
UPDATE sessions SET owner_id = ?, epoch = epoch + 1, detached_at = NULL
WHERE id = ? AND epoch = ? AND ended_at IS NULL
"""

# Legacy open rows (no owner, no origin): candidates for `tether doctor --repair`.
# Imported ("external") sessions have an origin: their source ends them, never we.
STALE_UNOWNED = f"""
SELECT {SESSION_COLUMNS} FROM sessions
WHERE ended_at IS NULL AND owner_id IS NULL AND origin IS NULL AND last_active_at < ?
ORDER BY last_active_at
"""

SELECT_STALE_UNOWNED_IDS = """
SELECT id FROM sessions
WHERE ended_at IS NULL AND owner_id IS NULL AND origin IS NULL AND last_active_at < ?
"""

END_STALE_UNOWNED = f"""
UPDATE sessions SET ended_at = ?, end_reason = 'abandoned', end_detail = ?
WHERE id = ? AND ended_at IS NULL AND owner_id IS NULL AND origin IS NULL
    AND last_active_at < ?
RETURNING {SESSION_COLUMNS}
"""

# `tether reap --ttl`: owners of open sessions whose promised lease exceeds a value.
LONGER_LEASES = """
SELECT COUNT(*), MAX(o.lease) FROM owners o WHERE o.lease > ? AND EXISTS
(SELECT 1 FROM sessions s WHERE s.owner_id = o.id AND s.ended_at IS NULL)
"""


# --- data model v2 (schema 4) -------------------------------------------------------


def _in_states(n: int) -> str:
    return "state IN (" + ", ".join("?" * n) + ")"


# SQLite: a column aliased "name [tether_json]" comes back decoded by the driver
# (sqlite3.PARSE_COLNAMES and a converter the SQLite backend registers; NULL stays
# None without a call), so that rows are a Message's fields as they are and a
# read of many messages builds them without a Python loop (tether.model.message_of_row).
JSON_TYPE = "tether_json"
_JSON_COLUMNS = ("tool_calls", "meta", "payload")
MESSAGE_READ_COLUMNS_DECODED = ", ".join(
    f'{c} AS "{c} [{JSON_TYPE}]"' if c in _JSON_COLUMNS else c
    for c in (c.strip() for c in MESSAGE_READ_COLUMNS.split(","))
)


@cache
def select_messages(n_states: int, decoded: bool = False) -> str:
    """Messages after a seq, in order, in any of ``n_states`` states (PK range scan).

    ``decoded`` (SQLite): JSON columns come back decoded (see JSON_TYPE).
    """
    columns = MESSAGE_READ_COLUMNS_DECODED if decoded else MESSAGE_READ_COLUMNS
    return f"""
SELECT {columns} FROM messages
WHERE session_id = ? AND seq > ? AND {_in_states(n_states)} ORDER BY seq LIMIT ?
"""


@cache
def select_last_messages(n_states: int, decoded: bool = False) -> str:
    """The last N messages in these states, oldest first: a backward walk of the
    primary key (session_id, seq) that stops after N rows, then a sort of those N."""
    columns = MESSAGE_READ_COLUMNS_DECODED if decoded else MESSAGE_READ_COLUMNS
    return f"""
SELECT * FROM (
    SELECT {columns} FROM messages
    WHERE session_id = ? AND {_in_states(n_states)} ORDER BY seq DESC LIMIT ?) last_n
ORDER BY seq
"""


# The payloads of the last N active messages, newest first: the same backward walk
# of the primary key as select_last_messages, reading one column.
SELECT_LAST_PAYLOADS = """
SELECT payload FROM messages WHERE session_id = ? AND state = 'active' ORDER BY seq DESC LIMIT ?
"""

# The same within the last seqs (seq > ?): seqs have no gaps, so the last N
# messages are the seqs above count - N, and the bound keeps the read at O(N)
# whatever plan the planner picks (with stale statistics, PostgreSQL's is a
# bitmap scan of the whole session and a sort).
SELECT_LAST_PAYLOADS_AFTER = """
SELECT payload FROM messages WHERE session_id = ? AND seq > ? AND state = 'active'
ORDER BY seq DESC LIMIT ?
"""


# The newest active message, found by a backward walk of the primary key that
# stops at the first active row (O(1) unless many retracted rows end the session).
NEWEST_ACTIVE_SEQ = """
SELECT seq FROM messages WHERE session_id = ? AND state = 'active' ORDER BY seq DESC LIMIT 1
"""

# The same among the last seqs (seq > ?), which bounds the read whatever plan the
# planner picks (with stale statistics PostgreSQL's reads the whole session).
NEWEST_ACTIVE_SEQ_AFTER = """
SELECT seq FROM messages WHERE session_id = ? AND seq > ? AND state = 'active'
ORDER BY seq DESC LIMIT 1
"""

RETRACT_MESSAGE = f"""
UPDATE messages SET state = 'retracted' WHERE session_id = ? AND seq = ? AND state = 'active'
RETURNING {MESSAGE_READ_COLUMNS}
"""

SELECT_BY_ORIGIN = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE origin = ?"

# The newest session of the chain whose root has this origin, with its owner's row
# (NULLs when it has none): two primary-key lookups after the origin's index.
SELECT_CHAIN_TIP_BY_ORIGIN = f"""
SELECT {", ".join("t." + c.strip() for c in SESSION_COLUMNS.split(","))}, o.id, {_OWNER_FIELDS}
FROM sessions r JOIN sessions t ON t.id = r.chain_tip_id
LEFT JOIN owners o ON o.id = t.owner_id
WHERE r.origin = ?
"""

# PostgreSQL: SELECT_CHAIN_TIP_BY_ORIGIN and the tip's last N active payloads
# (seq > message_count - N, as SELECT_LAST_PAYLOADS_AFTER) as one JSON array
# text, oldest first: one statement, so one round trip without a transaction.
# ``#>> '{}'`` is the stored text of a payload (a jsonb string holding the exact
# JSON; an older row's object as jsonb prints it); a missing one reads as null.
# Parameters: N, N, origin.
SELECT_CHAIN_TIP_TAIL_PG = f"""
SELECT {", ".join("t." + c.strip() for c in SESSION_COLUMNS.split(","))}, o.id, {_OWNER_FIELDS},
(SELECT '[' || string_agg(coalesce(x.payload #>> '{{}}', 'null'), ',' ORDER BY x.seq) || ']'
 FROM (SELECT seq, payload FROM messages
       WHERE session_id = t.id AND seq > t.message_count - ? AND state = 'active'
       ORDER BY seq DESC LIMIT ?) x)
FROM sessions r JOIN sessions t ON t.id = r.chain_tip_id
LEFT JOIN owners o ON o.id = t.owner_id
WHERE r.origin = ?
"""

# Imported sessions (see Store.import_session): no owner (external), epoch 0,
# the parameters of new_session_params. ON CONFLICT without a target also
# covers the origin's unique index: of two importers of one origin, the second
# inserts nothing and reads the first one's row.
INSERT_IMPORTED_SESSION = (
    insert_named(
        "sessions",
        [f for f in NEW_SESSION_FIELDS if f not in ("owner_id", "epoch")],
        {**_ZERO_COUNTS, "owner_id": "NULL", "epoch": "0"},
    )
    + "ON CONFLICT DO NOTHING\n"
)

# An import's page of messages: the count and activity move with the rows
# (activity only forward), whether the session ended or not.
IMPORT_BUMP = """
UPDATE sessions SET message_count = message_count + ?,
    last_active_at = CASE WHEN last_active_at < ? THEN ? ELSE last_active_at END
WHERE id = ?
"""


# --- hook deliveries (see tether.store.deliveries) -----------------------------

# Ends whose hooks are owed by another process (the partial index events_hooks_due),
# each with the owing process's owner row (NULLs when it has none).
SELECT_HOOKS_DUE = f"""
SELECT e.id, e.session_id, e.at, e.kind, e.data, e.hooks_due_by, o.id,
    {_OWNER_FIELDS}
FROM events e LEFT JOIN owners o ON o.id = e.hooks_due_by
WHERE e.hooks_due_by IS NOT NULL AND e.hooks_due_by <> ?
ORDER BY e.id LIMIT ?
"""

# Take over a due delivery, only if nobody else took it meanwhile.
CLAIM_HOOKS = "UPDATE events SET hooks_due_by = ? WHERE id = ? AND hooks_due_by = ?"

# The hooks ran: nothing is due for this end any more (a session ends once).
HOOKS_DELIVERED = "UPDATE events SET hooks_due_by = NULL WHERE session_id = ? AND hooks_due_by = ?"
