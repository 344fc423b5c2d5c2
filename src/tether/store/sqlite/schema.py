"""SQLite schema: versioned, in-place migrations.

``PRAGMA user_version`` holds the schema version and ``PRAGMA application_id``
marks the file as tether's, so tether never adds its tables to another
application's database. Each migration is a list of statements applied in one
``BEGIN IMMEDIATE`` transaction together with the version bump, so a crash
mid-migration leaves the previous version intact.

Timestamps are REAL seconds since the epoch (UTC).
"""

from __future__ import annotations

APPLICATION_ID = 0x54455448  # "TETH"

MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            # One row per process that owns (or owned) open sessions.
            """
            CREATE TABLE owners (
                id TEXT PRIMARY KEY,
                host TEXT NOT NULL,
                boot_id TEXT NOT NULL,
                pid INTEGER NOT NULL,
                pid_start_time INTEGER,
                kind TEXT NOT NULL,
                started_at REAL NOT NULL,
                heartbeat_at REAL NOT NULL
            )
            """,
            """
            CREATE TABLE sessions (
                id TEXT PRIMARY KEY,
                source TEXT NOT NULL,
                model TEXT,
                title TEXT,
                cwd TEXT,
                parent_id TEXT,
                root_id TEXT NOT NULL,
                origin TEXT,
                created_at REAL NOT NULL,
                last_active_at REAL NOT NULL,
                ended_at REAL,
                end_reason TEXT,
                end_detail TEXT,
                message_count INTEGER NOT NULL DEFAULT 0,
                owner_id TEXT,
                epoch INTEGER NOT NULL DEFAULT 0,
                detached_at REAL,
                metadata TEXT,
                -- chain summary, kept on root rows only (root_id = id)
                chain_tip_id TEXT,
                chain_message_count INTEGER NOT NULL DEFAULT 0,
                chain_last_active_at REAL
            )
            """,
            # Resumable listing, O(page): root rows by chain activity (+ filtered variants).
            """
            CREATE INDEX sessions_listing ON sessions (chain_last_active_at, id)
            WHERE root_id = id
            """,
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
            """
            CREATE TABLE messages (
                session_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                role TEXT NOT NULL,
                content TEXT,
                tool_calls TEXT,
                tool_call_id TEXT,
                tool_name TEXT,
                created_at REAL NOT NULL,
                idem_key TEXT,
                PRIMARY KEY (session_id, seq)
            )
            """,
            """
            CREATE UNIQUE INDEX messages_idem ON messages (session_id, idem_key)
            WHERE idem_key IS NOT NULL
            """,
            # Append-only lifecycle log: activity feed, hook delivery, sync cursors.
            """
            CREATE TABLE events (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                at REAL NOT NULL,
                session_id TEXT,
                kind TEXT NOT NULL,
                data TEXT
            )
            """,
            "CREATE INDEX events_session ON events (session_id)",
        ],
    ),
]

SCHEMA_VERSION = MIGRATIONS[-1][0]
