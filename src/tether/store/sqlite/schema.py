"""SQLite schema: versioned, in-place migrations.

``PRAGMA user_version`` holds the schema version and ``PRAGMA application_id``
marks the file as tether's, so tether never adds its tables to another
application's database. Each migration is a list of statements applied in one
``BEGIN IMMEDIATE`` transaction together with the version bump, so a crash
mid-migration leaves the previous version intact.

Timestamps are REAL seconds since the epoch (UTC).
"""

from __future__ import annotations

from ..schema_common import EVENT_INDEXES, HOOK_DELIVERY, MESSAGE_INDEXES, SESSION_INDEXES

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
            *SESSION_INDEXES,
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
            *MESSAGE_INDEXES,
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
            *EVENT_INDEXES,
        ],
    ),
    (
        2,
        [
            # Liveness identity and promise (additive: older rows keep working).
            # pid_ns: the owner's PID namespace; its pid can be probed only from
            # the same host, boot and namespace (NULL: written before schema 2,
            # judged by its heartbeat). lease: the seconds without heartbeat
            # after which the owner itself says it is dead; every reaper judges
            # it by this, not by its own setting.
            "ALTER TABLE owners ADD COLUMN pid_ns TEXT",
            "ALTER TABLE owners ADD COLUMN lease REAL NOT NULL DEFAULT 30.0",
        ],
    ),
    # 3: on_session_end hooks survive a crash between the recorded end and its
    # hooks (see tether.store.deliveries). Self-contained: it only adds to events.
    (3, HOOK_DELIVERY),
]

SCHEMA_VERSION = MIGRATIONS[-1][0]
