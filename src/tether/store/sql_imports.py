"""SQL of importers' batches and cursors (see :mod:`tether.store.imports`)."""

from __future__ import annotations

from ..model import SESSION_COLUMNS

# An origin's family: the session imported from it and its continuations
# (``origin#2``, ``origin#3``... after the source reopened an ended session).
# A range on the unique origin index; the caller keeps exact matches only.
SELECT_ORIGIN_FAMILY = f"""
SELECT {SESSION_COLUMNS} FROM sessions
WHERE origin >= ? AND origin < ?
ORDER BY created_at, id
"""

# Open sessions imported from a source (origin prefix range): owner-less and
# open, so the partial index of open sessions by owner serves it in O(open).
SELECT_OPEN_IMPORTED = f"""
SELECT {SESSION_COLUMNS} FROM sessions
WHERE ended_at IS NULL AND owner_id IS NULL AND origin >= ? AND origin < ?
"""


def select_origins(n: int) -> str:
    """Which of ``n`` origins are held (the unique origin index, one probe each)."""
    return f"SELECT origin FROM sessions WHERE origin IN ({', '.join('?' * n)})"


SELECT_IMPORTED = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE origin >= ? AND origin < ?"

SET_IMPORTED_TITLE = """
UPDATE sessions SET title = ? WHERE id = ? AND owner_id IS NULL AND origin IS NOT NULL
"""

SET_MESSAGE_STATE = "UPDATE messages SET state = ? WHERE session_id = ? AND idem_key = ?"

# A state the source changed after the import (an in-place compaction, a rewind):
# only a row whose state differs is written, so a rerun writes nothing.
RESTATE_MESSAGE = """
UPDATE messages SET state = ? WHERE session_id = ? AND idem_key = ? AND state <> ?
"""

# The keys and non-active states of imported sessions' messages (origin prefix range).
SELECT_IMPORTED_STATES = """
SELECT s.origin, m.idem_key, m.state FROM messages m JOIN sessions s ON s.id = m.session_id
WHERE s.origin >= ? AND s.origin < ? AND m.state <> 'active' AND m.idem_key IS NOT NULL
"""


def select_keyed_states(n: int) -> str:
    """Every keyed message of ``n`` sessions: ``(session_id, key, state)``."""
    marks = ", ".join("?" * n)
    return (
        "SELECT session_id, idem_key, state FROM messages "
        f"WHERE session_id IN ({marks}) AND idem_key IS NOT NULL"
    )


SELECT_KEYS_OF = "SELECT idem_key FROM messages WHERE session_id = ? AND idem_key IS NOT NULL"

HAS_EVENT = "SELECT 1 FROM events WHERE session_id = ? AND kind = ? LIMIT 1"

SELECT_EVENT_ORIGINS = """
SELECT DISTINCT s.origin FROM events e JOIN sessions s ON s.id = e.session_id
WHERE e.kind = ? AND s.origin >= ? AND s.origin < ?
"""

SELECT_CURSOR = "SELECT position FROM import_cursors WHERE source_key = ?"

UPSERT_CURSOR = """
INSERT INTO import_cursors (source_key, position, updated_at) VALUES (?, ?, ?)
ON CONFLICT (source_key) DO UPDATE SET position = excluded.position,
    updated_at = excluded.updated_at
"""

# A new imported session written whole: its row already holds its first page's
# count and activity (and its end), so no UPDATE follows the messages. ON
# CONFLICT without a target covers the origin's unique index (another importer
# got there first: the caller takes the general path).
INSERT_NEW_IMPORTED = """
INSERT INTO sessions (id, source, model, title, cwd, parent_id, root_id, origin,
    created_at, last_active_at, ended_at, end_reason, end_detail, message_count, owner_id,
    epoch, metadata, chain_tip_id, chain_message_count, chain_last_active_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 0, ?, ?, ?, ?)
ON CONFLICT DO NOTHING
"""
