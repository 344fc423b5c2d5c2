"""The store's SQL, named, in one place (``?`` placeholders, portable SQL).

Every statement here runs unchanged on SQLite (>= 3.35, for RETURNING) and
PostgreSQL. Statements that must differ live with their backend.
"""

from __future__ import annotations

from ..model import MESSAGE_COLUMNS, SESSION_COLUMNS

# --- sessions -------------------------------------------------------------------

# A root session carries its chain's summary (tip, total messages, activity) so
# the resumable listing reads one index and one row per chain.
INSERT_SESSION = """
INSERT INTO sessions (id, source, model, title, cwd, parent_id, root_id, origin,
    created_at, last_active_at, message_count, owner_id, epoch, metadata,
    chain_tip_id, chain_message_count, chain_last_active_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, 0, ?)
ON CONFLICT (id) DO NOTHING
"""

SELECT_ROOT_OF = "SELECT root_id FROM sessions WHERE id = ?"

SET_CHAIN_TIP = "UPDATE sessions SET chain_tip_id = ? WHERE id = ?"

SELECT_SESSION = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?"

SELECT_CHAIN = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE root_id = ? ORDER BY created_at, id"

SELECT_ID_PREFIX = "SELECT id FROM sessions WHERE id >= ? AND id < ? ORDER BY id LIMIT 5"

SELECT_WRITE_STATE = (
    "SELECT ended_at, end_reason, epoch, message_count, root_id FROM sessions WHERE id = ?"
)

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

BUMP_ROOT_ACTIVE = """
UPDATE sessions SET message_count = ?, chain_message_count = chain_message_count + ?,
    last_active_at = ?, chain_last_active_at = ?, chain_tip_id = id
WHERE id = ? AND epoch = ? AND ended_at IS NULL AND message_count = ?
"""

BUMP_CHILD = """
UPDATE sessions SET message_count = ?, last_active_at = ?
WHERE id = ? AND epoch = ? AND ended_at IS NULL AND message_count = ?
"""

BUMP_CHAIN = "UPDATE sessions SET chain_message_count = chain_message_count + ? WHERE id = ?"

BUMP_CHAIN_ACTIVE = """
UPDATE sessions SET chain_message_count = chain_message_count + ?,
    chain_last_active_at = ?, chain_tip_id = ?
WHERE id = ?
"""

SET_DETACHED = "UPDATE sessions SET detached_at = ? WHERE id = ? AND ended_at IS NULL"

END_SESSION = f"""
UPDATE sessions SET ended_at = ?, end_reason = ?, end_detail = ?
WHERE id = ? AND ended_at IS NULL
RETURNING {SESSION_COLUMNS}
"""

# Ending from the owning handle is fenced like any other write.
END_SESSION_FENCED = f"""
UPDATE sessions SET ended_at = ?, end_reason = ?, end_detail = ?
WHERE id = ? AND ended_at IS NULL AND epoch = ?
RETURNING {SESSION_COLUMNS}
"""

# --- messages -------------------------------------------------------------------

INSERT_MESSAGE = f"""
INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

SELECT_MESSAGES = f"""
SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?
"""


def select_idem_keys(n: int) -> str:
    marks = ", ".join("?" * n)
    return f"SELECT idem_key, seq FROM messages WHERE session_id = ? AND idem_key IN ({marks})"


# --- events ---------------------------------------------------------------------

INSERT_EVENT = "INSERT INTO events (at, session_id, kind, data) VALUES (?, ?, ?, ?)"

# --- census ---------------------------------------------------------------------

CENSUS_BY_SOURCE = """
SELECT source, COUNT(*),
    SUM(CASE WHEN ended_at IS NULL THEN 1 ELSE 0 END),
    SUM(CASE WHEN message_count = 0 THEN 1 ELSE 0 END)
FROM sessions GROUP BY source
"""

CENSUS_REASONS = """
SELECT source, end_reason, COUNT(*) FROM sessions
WHERE ended_at IS NOT NULL GROUP BY source, end_reason
"""

OLDEST_OPEN = f"""
SELECT {SESSION_COLUMNS} FROM sessions WHERE ended_at IS NULL ORDER BY created_at LIMIT 1
"""
