"""SQLite schema: versioned, in-place migrations.

The ``tether_migrations`` table holds one row per applied step (the schema
version, and the oldest version that can still use the file: see
:mod:`tether.store.migrations`). ``PRAGMA user_version`` holds that
compatible-with version, which tethers from before rolling upgrades read as
the schema version, so they open compatible files and refuse the others.
``PRAGMA application_id`` marks the file as tether's, so tether never adds its
tables to another application's database. The missing steps are applied in
one ``BEGIN IMMEDIATE`` transaction together with their rows, so a crash
mid-migration leaves the previous version intact.

Timestamps are REAL seconds since the epoch (UTC).
"""

from __future__ import annotations

from ..migrations import MIGRATIONS_TABLE, Migration, check_steps
from ..schema_common import (
    EVENT_INDEXES,
    HOOK_DELIVERY,
    MESSAGE_INDEXES,
    SESSION_INDEXES,
    import_cursors,
    retention_tables,
)

APPLICATION_ID = 0x54455448  # "TETH"

# The record of applied steps (see tether.store.migrations); created by the
# migration runner, not by a step, so that stores from before it get it too.
CREATE_MIGRATIONS_TABLE = f"""
CREATE TABLE {MIGRATIONS_TABLE} (
    version INTEGER PRIMARY KEY,
    compatible_with INTEGER NOT NULL,
    applied_at REAL NOT NULL
)
"""
RECORD_STEP = (
    f"INSERT INTO {MIGRATIONS_TABLE} (version, compatible_with, applied_at) VALUES (?, ?, ?)"
)
# Compatible-with only rises (checked below), so its maximum is the current one.
READ_STATE = (
    f"SELECT coalesce(max(version), 0), coalesce(max(compatible_with), 0) FROM {MIGRATIONS_TABLE}"
)

# Each step declares the oldest schema version whose code still works after it:
# additive steps keep the previous one (see docs/data-model.md, "Upgrades").
MIGRATIONS: list[Migration] = [
    Migration(
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
        compatible_with=1,
    ),
    Migration(
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
        compatible_with=1,
    ),
    # 3: on_session_end hooks survive a crash between the recorded end and its
    # hooks (see tether.store.deliveries). Self-contained: it only adds to events.
    Migration(3, HOOK_DELIVERY, compatible_with=1),
    # 4: data model v2 (see docs/data-model.md). Additive: older code never names
    # these columns, and the state default keeps every row it writes active.
    Migration(
        4,
        [
            "ALTER TABLE messages ADD COLUMN meta TEXT",
            """
            ALTER TABLE messages ADD COLUMN state TEXT NOT NULL DEFAULT 'active'
            CHECK (state IN ('active', 'compacted', 'retracted'))
            """,
            "ALTER TABLE messages ADD COLUMN payload TEXT",
        ],
        compatible_with=1,
    ),
    # 5: retention with consent (issue 14, see tether.store.retention). Additive:
    # older code never names trashed_at (it lists trashed sessions, which is
    # all it can get wrong), claims or settings.
    Migration(5, retention_tables("REAL"), compatible_with=1),
    # 6: importers' cursors (see tether.store.imports). Additive: a new table.
    Migration(6, import_cursors("REAL"), compatible_with=1),
    # 7: PostgreSQL's NOTIFY trigger per statement instead of per row. SQLite has
    # no trigger to change: an empty step keeps both backends' versions in step.
    Migration(7, [], compatible_with=1),
]
check_steps(MIGRATIONS)

SCHEMA_VERSION = MIGRATIONS[-1].version
