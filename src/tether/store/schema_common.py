"""Schema pieces both backends share, so their indexes can never drift apart.

The tables differ in types (REAL vs double precision, TEXT vs jsonb...) and
live with each backend; the indexes are the same statements on both.
"""

from __future__ import annotations

SESSION_INDEXES = [
    # Resumable listing, O(page): root rows by chain activity (+ filtered variants).
    "CREATE INDEX sessions_listing ON sessions (chain_last_active_at, id) WHERE root_id = id",
    """
    CREATE INDEX sessions_listing_source ON sessions (source, chain_last_active_at, id)
    WHERE root_id = id
    """,
    """
    CREATE INDEX sessions_listing_cwd ON sessions (cwd, chain_last_active_at, id)
    WHERE root_id = id
    """,
    # Open sessions only: the reaper, census and the open listing are O(open).
    "CREATE INDEX sessions_open_owner ON sessions (owner_id) WHERE ended_at IS NULL",
    "CREATE INDEX sessions_open_created ON sessions (created_at) WHERE ended_at IS NULL",
    "CREATE INDEX sessions_root ON sessions (root_id)",
    "CREATE UNIQUE INDEX sessions_origin ON sessions (origin) WHERE origin IS NOT NULL",
]

MESSAGE_INDEXES = [
    # Idempotent flushes: a key names one message of a session.
    """
    CREATE UNIQUE INDEX messages_idem ON messages (session_id, idem_key)
    WHERE idem_key IS NOT NULL
    """,
]

EVENT_INDEXES = ["CREATE INDEX events_session ON events (session_id)"]

# Migration 3, the same on both backends. ``events.hooks_due_by`` is set, in the
# transaction that records an end, to the owner id of the process that must
# run the on_session_end hooks, and cleared once they ran: a crash in between
# leaves it set, and another process delivers them. Rows written before (or by
# a process without hooks) stay NULL: nothing is due. The partial index holds
# only the few ends whose hooks are due, so looking for them is O(due).
HOOK_DELIVERY = [
    "ALTER TABLE events ADD COLUMN hooks_due_by TEXT",
    "CREATE INDEX events_hooks_due ON events (id) WHERE hooks_due_by IS NOT NULL",
]


# Migration 6, the same on both backends but for the timestamp's type: where
# each importer has got to in each of its sources (a Hermes state.db, say).
# ``position`` is the importer's own JSON text (text on both backends: only the
# importer reads it); it is written in the same transaction as the data it
# covers, so an importer killed at any moment resumes exactly once.
def import_cursors(timestamp_type: str) -> list[str]:
    """Migration 6's statements, with the backend's type for a timestamp."""
    return [
        f"""
        CREATE TABLE import_cursors (
            source_key TEXT PRIMARY KEY,
            position TEXT NOT NULL,
            updated_at {timestamp_type} NOT NULL
        )
        """
    ]


# Migration 5 (retention, issue 14): the indexes both backends share. Trashed
# sessions are few next to the rest: a partial index finds them in O(trash).
# Claims are looked up by session (the primary key) and expired by time.
def retention_tables(timestamp_type: str) -> list[str]:
    """Migration 5's statements, with the backend's type for a timestamp.

    A reader's lease on a session (``claims``: prune and purge skip it until it
    expires) and store-wide settings (``settings``: the retention policy, JSON
    text by key). Additive: older code never names them, nor ``trashed_at``.
    """
    return [
        f"ALTER TABLE sessions ADD COLUMN trashed_at {timestamp_type}",
        f"""
        CREATE TABLE claims (
            session_id TEXT NOT NULL,
            holder TEXT NOT NULL,
            expires_at {timestamp_type} NOT NULL,
            PRIMARY KEY (session_id, holder)
        )
        """,
        """
        CREATE TABLE settings (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )
        """,
        *RETENTION_INDEXES,
    ]


RETENTION_INDEXES = [
    "CREATE INDEX sessions_trashed ON sessions (trashed_at) WHERE trashed_at IS NOT NULL",
    "CREATE INDEX claims_expiry ON claims (expires_at)",
]
