"""The SQL of retention, claims, tool-call repair and transfer (schema 5), named.

``?`` placeholders as everywhere in the store; where the dialects differ a
function taking the ``dialect`` returns the right text. Lists of ids are
spelled out as ``IN (?, ?, ...)`` of at most one batch.
"""

from __future__ import annotations

import json
from typing import Any

from ..model import MESSAGE_READ_COLUMNS, MESSAGE_STATES
from ..validate import ROLES


def marks(n: int) -> str:
    """``?, ?, ?`` for an ``IN`` list of ``n`` values."""
    return ", ".join("?" * n)


# --- candidates -------------------------------------------------------------------


# A claim is looked up by its session (the primary key), never by its expiry:
# ``expires_at + 0`` keeps the planner off claims_expiry, which would have it
# read every live claim, and every released one not yet vacuumed (an export
# claims and releases thousands), once per candidate: 0.67 s a purge batch
# after four exports of 10,000 sessions, where the key takes a millisecond.
# On PostgreSQL claims.session_id has the database's collation and sessions.id
# "C" (migration 5 made it plain TEXT): compared as they are, the two have no
# common collation, the primary key cannot serve the comparison, and every
# claim is read (hashed) once per candidate; so the id is compared in the
# key's collation.
def _claimed(dialect: str, session: str) -> str:
    """A live claim on the session whose id is ``session`` (parameter: now)."""
    same = f'{session} COLLATE "default"' if dialect == "postgresql" else session
    return f"EXISTS (SELECT 1 FROM claims k WHERE k.session_id = {same} AND k.expires_at + 0 > ?)"


# A chain may go to the trash only when every member ended before the cutoff,
# none is claimed by a reader (an unexpired lease) and none belongs to another
# process that is still alive by its own promise (heartbeat within its lease).
# The pruning process's own sessions are its to judge (`tether serve` applying
# the policy owns every session its gateway ended). Parameters: cutoff, now
# (claims), the pruner's owner id, now (owners).
def _chain_untouchable(dialect: str) -> str:
    return f"""EXISTS (SELECT 1 FROM sessions m WHERE m.root_id = r.id AND (
    m.ended_at IS NULL OR m.ended_at > ?
    OR {_claimed(dialect, "m.id")}
    OR EXISTS (SELECT 1 FROM owners o WHERE o.id = m.owner_id AND o.id <> ?
               AND o.heartbeat_at + o.lease > ?)))"""


def _prunable(dialect: str, *, source: bool, reason: bool) -> list[str]:
    """The rules a chain's root row meets to be pruned (parameters: cutoff, cutoff,
    now, own owner id, now, then the source and reason if asked)."""
    where = [
        "r.root_id = r.id",
        "r.trashed_at IS NULL",
        "r.chain_last_active_at <= ?",
        f"NOT {_chain_untouchable(dialect)}",
    ]
    if source:
        where.append("r.source = ?")
    if reason:
        where.append(
            "EXISTS (SELECT 1 FROM sessions t WHERE t.id = r.chain_tip_id AND t.end_reason = ?)"
        )
    return where


def prune_candidates(dialect: str, *, source: bool, reason: bool) -> str:
    """Root ids of chains that may go to the trash, oldest activity first.

    Walks the listing index (root rows by chain activity) from a keyset
    position, so a run of batches never rescans what it passed. Parameters:
    cutoff (activity), after activity, after id, cutoff, now, own owner id,
    now, then the source and reason if asked, the limit.
    """
    where = _prunable(dialect, source=source, reason=reason)
    where.insert(3, "(r.chain_last_active_at, r.id) > (?, ?)")
    return f"""
SELECT r.id, r.chain_last_active_at FROM sessions r
WHERE {" AND ".join(where)}
ORDER BY r.chain_last_active_at, r.id LIMIT ?
"""


def prune_recheck(dialect: str, *, source: bool, reason: bool, ids: int) -> str:
    """Those of these chains that may still go (a batch's recheck under its locks).

    Looked up by id, in no order and with no limit: with an ORDER BY and a
    LIMIT the planner could walk the listing index from its start, past every
    chain trashed so far (trashed roots stay in it), and a prepared statement's
    generic plan did (78 ms a batch late in a prune of 100,000 chains).
    Parameters: on PostgreSQL the ids first (:func:`ids_param`), then cutoff
    (activity), cutoff, now, own owner id, now, the source and reason if asked;
    on SQLite the ids last.
    """
    where = _prunable(dialect, source=source, reason=reason)
    if dialect == "postgresql":
        # Each chain by its key, whatever the estimates: with ``r.id = ANY(?)``, or a
        # join on the array, the planner walked the listing index instead (it
        # prices its predicate, root_id = id, as very selective), reading every
        # root: 6-20 ms a batch on 10,000. The LIMIT keeps the subquery per id.
        return f"""
SELECT found.id FROM unnest(?::text[]) AS k(id) CROSS JOIN LATERAL (
    SELECT r.id FROM sessions r
    WHERE r.id = k.id COLLATE "C" AND {" AND ".join(where)} LIMIT 1
) found
"""
    where.append(ids_in(dialect, "r.id", ids))
    return f"SELECT r.id FROM sessions r WHERE {' AND '.join(where)}"


def lock_members(dialect: str, n_roots: int) -> str:
    """The members of these chains, locked on PostgreSQL (skipping rows a claim holds).

    A claim takes its sessions ``FOR SHARE``: a prune that meets one skips
    the chain; a claim that meets a prune waits for it and then finds the
    session trashed. Either way the two never both win. In no order: a lock
    that skips what is locked never waits, so its order cannot deadlock; and
    purge runs with sorts priced out, where ``ORDER BY id`` made the planner
    walk every session by primary key (47 ms a chain at 100,000 sessions).
    """
    query = f"SELECT id, root_id FROM sessions WHERE root_id IN ({marks(n_roots)})"
    if dialect == "postgresql":
        return query + " FOR UPDATE SKIP LOCKED"
    return query


def members_total(n_roots: int) -> str:
    """How many members these chains have (to see whether every one was locked)."""
    return (
        f"SELECT root_id, COUNT(*) FROM sessions WHERE root_id IN ({marks(n_roots)})"
        " GROUP BY root_id"
    )


def trash_chains(n_roots: int) -> str:
    return (
        f"UPDATE sessions SET trashed_at = ? WHERE root_id IN ({marks(n_roots)})"
        " AND trashed_at IS NULL"
    )


def message_bytes(dialect: str) -> str:
    """The bytes of one message's text and JSON (what a dry run reports as its size)."""
    if dialect == "postgresql":
        return (
            "coalesce(octet_length(content), 0) + coalesce(octet_length(tool_calls::text), 0)"
            " + coalesce(octet_length(meta::text), 0) + coalesce(octet_length(payload::text), 0)"
        )
    return (
        "coalesce(length(CAST(content AS BLOB)), 0) + coalesce(length(CAST(tool_calls AS BLOB)), 0)"
        " + coalesce(length(CAST(meta AS BLOB)), 0) + coalesce(length(CAST(payload AS BLOB)), 0)"
    )


def chains_size(dialect: str, n_roots: int) -> str:
    """Sessions, messages and bytes of these chains (parameters: :func:`chains_size_params`).

    On PostgreSQL each session's messages are summed in a LATERAL subquery, which
    the planner cannot turn into a join: it reads them through the primary key.
    The plain join was hash-joined against a scan of every message once a batch
    had a few hundred sessions (4x the time of a batch of 100 on 100,000
    messages, and growing with the table), inside prune's write transaction.
    """
    if dialect == "postgresql":
        return f"""
SELECT COUNT(*), coalesce(SUM(m.n), 0), coalesce(SUM(m.bytes), 0)
FROM sessions s CROSS JOIN LATERAL (
    SELECT COUNT(*) AS n, SUM({message_bytes(dialect)}) AS bytes
    FROM messages WHERE session_id = s.id
) m
WHERE {ids_in(dialect, "s.root_id", n_roots)}
"""
    return f"""
SELECT (SELECT COUNT(*) FROM sessions WHERE root_id IN ({marks(n_roots)})),
       COUNT(*), coalesce(SUM({message_bytes(dialect)}), 0)
FROM messages WHERE session_id IN (SELECT id FROM sessions WHERE root_id IN ({marks(n_roots)}))
"""


def chains_size_params(dialect: str, roots: list[str]) -> list[Any]:
    """The parameters of :func:`chains_size`."""
    return ids_param(dialect, roots) if dialect == "postgresql" else [*roots, *roots]


# --- the trash --------------------------------------------------------------------


def purge_candidates(dialect: str) -> str:
    """Trashed chains by their roots, oldest trash first, from a keyset position:
    cutoff, after trashed_at, after id, now (claims), limit."""
    return f"""
SELECT r.id, r.trashed_at FROM sessions r
WHERE r.trashed_at IS NOT NULL AND r.root_id = r.id AND r.trashed_at <= ?
  AND (r.trashed_at, r.id) > (?, ?)
  AND NOT EXISTS (SELECT 1 FROM sessions m WHERE m.root_id = r.id AND {_claimed(dialect, "m.id")})
ORDER BY r.trashed_at, r.id LIMIT ?
"""


TRASHED_ROOTS = """
SELECT r.id, r.trashed_at FROM sessions r
WHERE r.trashed_at IS NOT NULL AND r.root_id = r.id AND (r.trashed_at, r.id) > (?, ?)
ORDER BY r.trashed_at, r.id LIMIT ?
"""


def restore_chains(n_roots: int) -> str:
    return (
        f"UPDATE sessions SET trashed_at = NULL WHERE root_id IN ({marks(n_roots)})"
        " AND trashed_at IS NOT NULL"
    )


def delete_messages(n: int) -> str:
    return f"DELETE FROM messages WHERE session_id IN ({marks(n)})"


def delete_claims(n: int) -> str:
    return f"DELETE FROM claims WHERE session_id IN ({marks(n)})"


def delete_sessions(n: int) -> str:
    return f"DELETE FROM sessions WHERE id IN ({marks(n)})"


def max_event_of(n: int) -> str:
    return f"SELECT max(id) FROM events WHERE session_id IN ({marks(n)})"


def delete_events(n: int) -> str:
    return f"DELETE FROM events WHERE session_id IN ({marks(n)})"


CENSUS_TRASH = """
SELECT COUNT(*), coalesce(SUM(message_count), 0) FROM sessions WHERE trashed_at IS NOT NULL
"""

OLDEST_EVENT = "SELECT min(id) FROM events"

# --- claims -----------------------------------------------------------------------


def claim_rows(dialect: str, n: int) -> str:
    """Claim those of these sessions outside the trash in one statement (the ids
    as :func:`ids_json_param` gives them, then holder and expires); returns the ids
    claimed. On PostgreSQL the rows are locked for share first, so a prune
    deciding at the same time (it locks them for update) waits for this claim
    or is waited for."""
    lock = " ORDER BY id FOR SHARE" if dialect == "postgresql" else ""
    return f"""
WITH got AS (
    SELECT id FROM sessions WHERE {ids_in_json(dialect, "id", n)} AND trashed_at IS NULL{lock}
)
INSERT INTO claims (session_id, holder, expires_at)
SELECT id, ?, ? FROM got WHERE true
ON CONFLICT (session_id, holder) DO UPDATE SET expires_at = excluded.expires_at
RETURNING session_id
"""


RELEASE_CLAIMS = "DELETE FROM claims WHERE holder = ?"


def release_some(dialect: str, n: int) -> str:
    """Drop a holder's claims on these sessions (the holder, then the ids as
    :func:`ids_json_param` gives them): an export's pages once written."""
    return f"DELETE FROM claims WHERE holder = ? AND {ids_in_json(dialect, 'session_id', n)}"


DELETE_EXPIRED_CLAIMS = "DELETE FROM claims WHERE expires_at <= ?"

COUNT_LIVE_CLAIMS = "SELECT COUNT(*) FROM claims WHERE expires_at > ?"

# --- settings ---------------------------------------------------------------------

GET_SETTING = "SELECT value FROM settings WHERE key = ?"

PUT_SETTING = """
INSERT INTO settings (key, value) VALUES (?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""

DELETE_SETTING = "DELETE FROM settings WHERE key = ?"

# --- tool-call repair -------------------------------------------------------------

# The last active assistant message, and every active message after it.
LAST_ASSISTANT = f"""
SELECT {MESSAGE_READ_COLUMNS} FROM messages
WHERE session_id = ? AND role = 'assistant' AND state = 'active' ORDER BY seq DESC LIMIT 1
"""

AFTER_SEQ = f"""
SELECT {MESSAGE_READ_COLUMNS} FROM messages
WHERE session_id = ? AND seq > ? AND state = 'active' ORDER BY seq
"""

REPAIR_BUMP = """
UPDATE sessions SET message_count = message_count + ?,
    last_active_at = CASE WHEN last_active_at < ? THEN ? ELSE last_active_at END
WHERE id = ?
"""


# Every tool call (with an id) of an active assistant message that no active tool
# message answers in the run of tool messages right after it; ``nxt`` is the seq
# of the first active message after it that is not a tool result (NULL: the
# calls end the conversation, its "tail"). The same rule as toolrepair.scan.
# Elements of a tool_calls value that is not an array of objects are skipped
# (validate.check_tool_calls stores lists; imports may carry anything).
_CALL_ID = {
    "sqlite": """CASE WHEN c.type = 'object' THEN COALESCE(
        NULLIF(CASE WHEN json_type(c.value, '$.id') = 'text'
                    THEN json_extract(c.value, '$.id') END, ''),
        NULLIF(CASE WHEN json_type(c.value, '$.call_id') = 'text'
                    THEN json_extract(c.value, '$.call_id') END, '')) END""",
    "postgresql": """CASE WHEN jsonb_typeof(c.v) = 'object' THEN COALESCE(
        NULLIF(CASE WHEN jsonb_typeof(c.v -> 'id') = 'string' THEN c.v ->> 'id' END, ''),
        NULLIF(CASE WHEN jsonb_typeof(c.v -> 'call_id') = 'string'
                    THEN c.v ->> 'call_id' END, '')) END""",
}
_ELEMENTS = {
    "sqlite": "JOIN json_each(CASE WHEN json_type(d.tool_calls) = 'array' "
    "THEN d.tool_calls ELSE '[]' END) c",
    "postgresql": "CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(d.tool_calls) "
    "= 'array' THEN d.tool_calls ELSE '[]'::jsonb END) AS c(v)",
}


# Keeps the database from flattening the subquery into the join with the calls
# (it would compute each assistant message's ``nxt`` once per call, twice). The
# answer is looked up by a scalar subquery, not NOT EXISTS: PostgreSQL turns
# that into an anti join, which with stale statistics (after a bulk import) it
# ran as a nested loop over every tool message (15 minutes on 250k messages);
# the subquery is always a short walk of the primary key within the run.
_FENCE = {"sqlite": "LIMIT -1 OFFSET 0", "postgresql": "OFFSET 0"}


# The assistant messages whose calls are checked, with ``nxt``: every one (either
# kind), or per session only its last message that is not a tool result, when
# that is an assistant's (the tail: a walk back of the primary key per session,
# as cheap as before the middle was counted).
_EVERY_ASSISTANT = """
    SELECT a.session_id, a.seq, a.tool_calls,
        (SELECT n.seq FROM messages n WHERE n.session_id = a.session_id AND n.seq > a.seq
         AND n.state = 'active' AND n.role <> 'tool' ORDER BY n.seq LIMIT 1) AS nxt
    FROM messages a JOIN sessions s ON s.id = a.session_id
    WHERE s.trashed_at IS NULL AND a.role = 'assistant' AND a.state = 'active'
      AND a.tool_calls IS NOT NULL"""
_TAIL_ASSISTANT = """
    SELECT a.session_id, a.seq, a.tool_calls, CAST(NULL AS BIGINT) AS nxt
    FROM sessions s JOIN messages a ON a.session_id = s.id AND a.seq = (
        SELECT n.seq FROM messages n WHERE n.session_id = s.id AND n.state = 'active'
        AND n.role <> 'tool' ORDER BY n.seq DESC LIMIT 1)
    WHERE s.trashed_at IS NULL AND a.role = 'assistant' AND a.tool_calls IS NOT NULL"""


def _dangling_calls(dialect: str, kind: str = "") -> str:
    """Rows (session_id, nxt) of the unanswered calls (sessions outside the trash);
    ``kind``: ``tail``, ``middle`` or either (``""``)."""
    cid = _CALL_ID[dialect]
    source = _TAIL_ASSISTANT if kind == "tail" else _EVERY_ASSISTANT
    where = "d.nxt IS NOT NULL" if kind == "middle" else "TRUE"
    return f"""
SELECT d.session_id, d.nxt FROM ({source}
    {_FENCE[dialect]}
) d {_ELEMENTS[dialect]}
WHERE {where} AND {cid} IS NOT NULL AND (
    SELECT 1 FROM messages t WHERE t.session_id = d.session_id AND t.seq > d.seq
    AND t.seq < COALESCE(d.nxt, 9223372036854775807) AND t.state = 'active' AND t.role = 'tool'
    AND t.tool_call_id = {cid} LIMIT 1) IS NULL
"""


def dangling_count(dialect: str, *, middle: bool = False) -> str:
    """How many sessions end in unanswered tool calls (``middle``: have some in the
    middle of their conversation, followed by other messages)."""
    kind = "middle" if middle else "tail"
    return f"SELECT COUNT(DISTINCT session_id) FROM ({_dangling_calls(dialect, kind)}) x"


def dangling_sessions(dialect: str) -> str:
    """The ids of sessions with unanswered calls of either kind, by id from a keyset
    position (after id, limit)."""
    return f"""
SELECT DISTINCT session_id FROM ({_dangling_calls(dialect)}) x
WHERE session_id > ? ORDER BY session_id LIMIT ?
"""


# --- transfer (export / import) ---------------------------------------------------

# Sessions to export, by id (time-sortable: parents before their continuations),
# from a keyset position: after id, since (activity), limit. Ids and counts only:
# the rows themselves are read again with their messages, in one snapshot.
EXPORT_PAGE = """
SELECT id, message_count FROM sessions
WHERE id > ? AND last_active_at >= ? AND trashed_at IS NULL ORDER BY id LIMIT ?
"""


def export_page_by_id(n: int) -> str:
    """These sessions' ids and counts, by id (since: a last parameter)."""
    return f"""
SELECT id, message_count FROM sessions
WHERE id IN ({marks(n)}) AND last_active_at >= ? AND trashed_at IS NULL ORDER BY id
"""


# Export lines built by the database (issue 14: Python spent about 10 us a line).
# The line of a row is canonical JSON: keys sorted, compact, UTF-8. Strings are
# escaped by the database (SQLite's json_quote/json_object and PostgreSQL's
# to_json escape exactly what Python's encoder does: '"', '\\', and the
# control characters, as \b \f \n \r \t or a lowercase \u00XX); numbers
# that are floats (the times) are left to Python's repr, which neither database
# reproduces (SQLite prints 15 digits), and so are nested JSON columns (their
# keys must be sorted, and they are stored as written). The Python side splices
# these into the text: see transfer.MESSAGE_TEMPLATE and SESSION_TEMPLATE. A
# test compares every line with the canonical encoder's.


# Columns of a few plain words (``words:`` in :func:`_members`): roles (checked on
# every write) and states (a CHECK constraint). Other values still export right.
WORDS = {"m.role": tuple(sorted(ROLES)), "m.state": MESSAGE_STATES}


def _quote(dialect: str, expr: str) -> str:
    """A JSON string (or null) of a text column, as the database spells it."""
    if dialect == "postgresql":
        return f"coalesce(to_json({expr})::text, 'null')"
    return f"json_quote({expr})"


def _words(column: str, words: tuple[str, ...]) -> str:
    """PostgreSQL: a text column whose values are nearly always one of ``words``
    (plain words: nothing to escape) as a JSON string, each known word a
    literal; any other value through to_json. A third cheaper than to_json
    on every row (measured on the export's messages)."""
    cases = " ".join(f"WHEN '{w}' THEN '\"{w}\"'" for w in words)
    return f"CASE {column} {cases} ELSE {_quote('postgresql', column)} END"


def _members(
    dialect: str, pairs: list[tuple[str, str]], *, brace: bool = False, lead: str = ""
) -> str:
    """``"k1":v1,...,"kn":vn}`` of these keys and values (``{`` first if ``brace``;
    on PostgreSQL, ``lead`` first):
    a text column, ``int:column`` (an integer column or literal), ``null``,
    ``str:literal`` or ``words:column`` (a column of ``WORDS[column]``, see
    :func:`_words`)."""
    if dialect == "sqlite":
        args = []
        for key, value in pairs:
            kind, _, what = value.rpartition(":")
            sql = "NULL" if value == "null" else f"'{what}'" if kind == "str" else what
            args.append(f"'{key}', {sql}")
        # json_object is one C call; joining pieces with || costs SQLite more.
        whole = f"json_object({', '.join(args)})"
        return whole if brace else f"substr({whole}, 2)"
    # On PostgreSQL each || is a call on every row: the constants between two
    # columns make one literal ("'a' || 'b'" is not folded after a column).
    pieces: list[str] = []  # SQL expressions, between them literal text
    text = lead + ("{" if brace else "")
    for i, (key, value) in enumerate(pairs):
        kind, _, what = value.rpartition(":")
        text += f'{"," if i else ""}"{key}":'
        if value == "null":
            text += "null"
        elif kind == "str":
            text += f'"{what}"'
        else:
            pieces += [f"'{text}'", _pg_value(kind, what)]
            text = ""
    return " || ".join([*pieces, f"'{text}}}'"])


def _pg_value(kind: str, what: str) -> str:
    """PostgreSQL: the JSON text of a column (see :func:`_members`)."""
    if kind == "int":
        return f"{what}::text"
    if kind == "words":
        return _words(what, WORDS[what])
    return _quote("postgresql", what)


def ids_in(dialect: str, column: str, n: int) -> str:
    """``column`` is one of ``n`` ids: ``IN (?, ...)``, or on PostgreSQL ``= ANY(?)``
    of one array (pass ``[ids]``): one statement text whatever ``n``, so psycopg
    parses it once and the server prepares it (the parse of a long ``IN`` list
    cost the export about a fifth of its client time)."""
    if dialect == "postgresql":
        return f"{column} = ANY(?)"
    return f"{column} IN ({marks(n)})"


def ids_param(dialect: str, ids: list[str]) -> list[Any]:
    """The parameters of one :func:`ids_in`."""
    return [ids] if dialect == "postgresql" else ids


# On PostgreSQL, a long list of ids as one JSON text: psycopg dumps a list as an
# array element by element (2.9 ms a statement with 600 ids, 1.1 as JSON: more
# than an export's query of them took), json.dumps in C. An initplan unpacks it
# once, then the key's index is walked as with an array; only where the column
# is a key (the planner knows no size for the array, so only a key's index is
# sure to be chosen): an export's and its claims' sessions, by id.
_JSON_IDS = "ANY(ARRAY(SELECT json_array_elements_text(CAST(? AS json))))"


def ids_in_json(dialect: str, column: str, n: int) -> str:
    """:func:`ids_in` of a key, the ids passed by :func:`ids_json_param`."""
    return f"{column} = {_JSON_IDS}" if dialect == "postgresql" else ids_in(dialect, column, n)


def ids_json_param(dialect: str, ids: list[str]) -> list[Any]:
    """The parameters of one :func:`ids_in_json`."""
    return [json.dumps(ids)] if dialect == "postgresql" else ids


def _session_rest(dialect: str) -> str:
    return _members(
        dialect,
        [
            ("model", "s.model"),
            ("origin", "s.origin"),
            ("parent_id", "s.parent_id"),
            ("root_id", "s.root_id"),
            ("source", "s.source"),
            ("title", "s.title"),
            ("type", "str:session"),
        ],
    )


def export_session_pieces(dialect: str, n: int) -> str:
    """These sessions (outside the trash), by id, as the pieces of their lines:
    created_at, cwd, end_detail, end_reason, ended_at, id, last_active_at,
    message_count, metadata, then the rest of the line (model to type), for
    transfer.session_piece_lines, which spells the times and makes the metadata
    canonical (SQLite: 'null' when NULL; PostgreSQL: decoded by the driver,
    None when NULL). The ids as :func:`ids_json_param` gives them."""
    q = _quote
    meta = "coalesce(s.metadata, 'null')" if dialect == "sqlite" else "s.metadata"
    return f"""
SELECT s.created_at, {q(dialect, "s.cwd")}, {q(dialect, "s.end_detail")},
    {q(dialect, "s.end_reason")}, s.ended_at, {q(dialect, "s.id")},
    s.last_active_at, s.message_count, {meta}, {_session_rest(dialect)}
FROM sessions s WHERE {ids_in_json(dialect, "s.id", n)} AND s.trashed_at IS NULL ORDER BY s.id
"""


_PLAIN = "m.tool_calls IS NULL AND m.meta IS NULL AND m.payload IS NULL"
# The sessions' messages up to their counts (appends after the snapshot's row are
# not this export's); the sessions are those of export_session_pieces.
_MESSAGES_OF = """FROM sessions s
JOIN messages m ON m.session_id = s.id AND m.seq <= s.message_count
WHERE {ids} AND s.trashed_at IS NULL"""


_MESSAGE_REST = [
    ("idem_key", "m.idem_key"),
    ("meta", "null"),
    ("payload", "null"),
    ("role", "words:m.role"),
    ("seq", "int:m.seq"),
    ("session_id", "m.session_id"),
    ("state", "words:m.state"),
    ("tool_call_id", "m.tool_call_id"),
    ("tool_calls", "null"),
    ("tool_name", "m.tool_name"),
    ("type", "str:message"),
]


def _message_parts(dialect: str, *, lead: str = "") -> tuple[str, str]:
    """The SQL of a message line's content and of its rest (NULL: nested JSON)."""
    rest = _members(dialect, _MESSAGE_REST, lead=lead)
    # The rest is NULL for a message with nested JSON: see export_nested_messages.
    return _quote(dialect, "m.content"), f"CASE WHEN {_PLAIN} THEN {rest} END"


def _message_pieces(dialect: str) -> str:
    content, rest = _message_parts(dialect)
    return f"{content}, m.created_at, {rest}"


def export_message_lines(dialect: str, n: int) -> str:
    """The messages of these sessions, by session and seq, as the pieces of their
    lines: content, created_at, the rest (NULL for messages with nested JSON)."""
    where = _MESSAGES_OF.format(ids=ids_in(dialect, "s.id", n))
    return f"SELECT {_message_pieces(dialect)}\n{where}\nORDER BY s.id, m.seq"


# SQLite: a "plain" message (most of a conversation) is one whose line differs
# from its session's others only by content, time, role and seq: no nested JSON,
# no idem key, no tool call id or name, state active, a role of ROLES (a plain
# word: nothing to escape). Python spells its line with one % of its session's
# template (transfer.plain_template); SQLite builds no JSON for it, which was
# two thirds of the export's SQL time (measured on 100,000 messages).
_PLAIN_BUT_ROLE = (
    f"{_PLAIN} AND m.idem_key IS NULL AND m.tool_call_id IS NULL AND m.tool_name IS NULL "
    "AND m.state = 'active'"
)
_SIMPLE = f"{_PLAIN_BUT_ROLE} AND m.role IN ({', '.join(repr(r) for r in sorted(ROLES))})"


def export_plain_messages(n: int) -> str:
    """SQLite: the messages of these sessions, by session and seq, as content (its
    text: Python's encoder spells it, mapped in C), created_at, role and seq.
    The role is NULL when the message is not plain but for its role; a role
    outside ROLES makes it not plain either, which Python checks (a set's
    superset test, in C: the ``IN`` cost SQLite a tenth of the export's SQL
    time). Either way see export_odd_messages."""
    where = _MESSAGES_OF.format(ids=ids_in("sqlite", "s.id", n))
    return (
        "SELECT m.content, m.created_at, "
        f"CASE WHEN {_PLAIN_BUT_ROLE} THEN m.role END, m.seq\n{where}\nORDER BY s.id, m.seq"
    )


def export_odd_messages(n: int, *, nested: bool = False) -> str:
    """SQLite: the messages export_plain_messages leaves out (NULL or another
    role), in the same order, as export_message_lines does (``nested``: as rows of
    MESSAGE_READ_COLUMNS, those whose nested JSON Python makes canonical)."""
    where = _MESSAGES_OF.format(ids=ids_in("sqlite", "s.id", n))
    if nested:
        return f"SELECT {_MESSAGE_ROWS}\n{where} AND NOT ({_PLAIN})\nORDER BY s.id, m.seq"
    pieces = _message_pieces("sqlite")
    return f"SELECT {pieces}\n{where} AND NOT ({_SIMPLE})\nORDER BY s.id, m.seq"


_MESSAGE_ROWS = ", ".join(f"m.{c.strip()}" for c in MESSAGE_READ_COLUMNS.split(","))


# --- message lines on PostgreSQL -------------------------------------------------
# PostgreSQL (12 and later, extra_float_digits >= 1: the transaction sets it)
# prints a float8 with the shortest digits that read back to the same value,
# as Python's repr does; the two spell them alike in positional notation,
# which both use from 1e-4 up to 1e15 (Python's repr also adds ".0" to an
# integral value). So there the server builds a message's whole line; any
# other time, and nested JSON, make the line NULL: Python writes it (checked
# on 700,000 values, 100,000 of them in a test; another compares every line
# with ``canonical``). Every other piece of a line is never NULL
# (coalesce(..., 'null')). Session lines are Python's (transfer.SESSION_TEMPLATE):
# a tenth of the lines, and one float format call per group for their times.


def _pg_float(expr: str) -> str:
    """A float8 as Python's repr spells it, or NULL outside the range where the two agree."""
    return (
        f"CASE WHEN abs({expr}) >= 1e-4 AND abs({expr}) < 1e15 THEN CASE WHEN {expr} = "
        f"trunc({expr}) THEN {expr}::text || '.0' ELSE {expr}::text END END"
    )


def _message_line() -> str:
    """A message's whole line (PostgreSQL), NULL when Python must write it. A plain
    one (see _SIMPLE: most of a conversation) takes the constants of its line as
    one literal between five values, the others every column's JSON."""
    content, rest = _message_parts("postgresql", lead=",")
    at = _pg_float("m.created_at")
    plain = (
        f"""'{{"content":' || {content} || ',"created_at":' || {at} || """
        """',"idem_key":null,"meta":null,"payload":null,"role":"' || m.role || '","seq":' """
        """|| m.seq::text || ',"session_id":' || to_json(m.session_id)::text || """
        """',"state":"active","tool_call_id":null,"tool_calls":null,"tool_name":null,"""
        """"type":"message"}'"""
    )
    other = f"""'{{"content":' || {content} || ',"created_at":' || {at} || {rest}"""
    return f"CASE WHEN {_SIMPLE} THEN {plain} ELSE {other} END"


# A placeholder for a line Python writes: a control character, which no line can
# hold (the JSON encoders escape every one).
MESSAGE_HOLE = "\x03"

# PostgreSQL: the lines of these sessions' messages (ids_json_param of the group's
# sessions outside the trash), by session and seq, each built by the server or
# MESSAGE_HOLE where Python writes it (EXPORT_HOLE_MESSAGES). One index range in
# key order, no join, no sort, no aggregate: a per-session string_agg sorted each
# session's ten messages and cost the server a fifth more (a join, more yet). The
# counts are those of the sessions read in the same snapshot (transfer checks).
EXPORT_MESSAGE_ROWS = f"""
SELECT coalesce({_message_line()}, chr(3)) FROM messages m
WHERE m.session_id = {_JSON_IDS} ORDER BY m.session_id, m.seq
"""

# Their rows (MESSAGE_READ_COLUMNS) where EXPORT_MESSAGE_ROWS left a hole, in order.
EXPORT_HOLE_MESSAGES = f"""
SELECT {_MESSAGE_ROWS} FROM messages m
WHERE m.session_id = {_JSON_IDS} AND ({_message_line()}) IS NULL
ORDER BY m.session_id, m.seq
"""


def export_message_page(dialect: str) -> str:
    """A page of a large session's messages as export_message_lines does:
    session id, after seq, up to seq."""
    return f"""
SELECT {_message_pieces(dialect)} FROM messages m
WHERE m.session_id = ? AND m.seq > ? AND m.seq <= ? ORDER BY m.seq
"""


# The rows of that page that have nested JSON (same parameters, same order).
EXPORT_NESTED_PAGE = f"""
SELECT {_MESSAGE_ROWS} FROM messages m
WHERE m.session_id = ? AND m.seq > ? AND m.seq <= ? AND NOT ({_PLAIN}) ORDER BY m.seq
"""

# A page of one session's messages as rows (the openai format).
EXPORT_MESSAGES = f"""
SELECT {MESSAGE_READ_COLUMNS} FROM messages WHERE session_id = ? AND seq > ? AND seq <= ?
ORDER BY seq
"""

# An exported session, inserted with its own id, times and end (no owner: the
# process that owned it is another machine's). Its chain summary is set
# afterwards (CHAIN_SUMMARY), once every member is in.
INSERT_TRANSFERRED_SESSION = """
INSERT INTO sessions (id, source, model, title, cwd, parent_id, root_id, origin,
    created_at, last_active_at, ended_at, end_reason, end_detail, message_count,
    owner_id, epoch, metadata, chain_tip_id, chain_message_count, chain_last_active_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 0, ?, NULL, 0, NULL)
ON CONFLICT DO NOTHING
"""

INSERT_TRANSFERRED_MESSAGE = """
INSERT INTO messages (session_id, seq, role, content, tool_calls, tool_call_id, tool_name,
    created_at, idem_key, meta, state, payload)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# A chain's summary on its root, from its members: the tip is the newest
# created member, the counts and activity cover them all.
CHAIN_SUMMARY = """
UPDATE sessions SET
    chain_tip_id = (SELECT m.id FROM sessions m WHERE m.root_id = sessions.id
                    ORDER BY m.created_at DESC, m.id DESC LIMIT 1),
    chain_message_count = (SELECT coalesce(SUM(m.message_count), 0) FROM sessions m
                           WHERE m.root_id = sessions.id),
    chain_last_active_at = (SELECT max(m.last_active_at) FROM sessions m
                            WHERE m.root_id = sessions.id)
WHERE id = ?
"""


def chain_members(n: int) -> str:
    """Every session of ``n`` chains, by their roots' ids."""
    return f"SELECT id FROM sessions WHERE root_id IN ({marks(n)})"
