"""PostgreSQL schema: the same tables as SQLite's, versioned and migrated in place.

``tether_migrations`` holds one row per applied step (the schema version, and
the oldest version that can still use the schema: see
:mod:`tether.store.migrations`). ``tether_schema`` is the legacy record: its
greatest ``version`` is that compatible-with version, which tethers from before
rolling upgrades read as the schema version, so they open compatible schemas and
refuse the others. It also marks a schema as tether's: a schema with a
``sessions`` table but no ``tether_schema`` belongs to another application and
is left alone. Each migration runs in one transaction together with its version row, under a
transaction-scoped advisory lock (released at commit, so it is safe behind a
transaction-mode pooler), and re-reads the version once it holds the lock, so
processes starting at once migrate exactly once. No statement here needs to run
outside a transaction (no ``CREATE INDEX CONCURRENTLY``): the tables are created
empty, so plain index builds cost nothing.

Differences from SQLite, and why:

* timestamps are ``double precision`` seconds since the epoch, as SQLite's REAL,
  so both backends share every statement and the injected clock;
* ``metadata``, ``tool_calls`` and ``events.data`` are ``jsonb`` (returned
  decoded; :mod:`tether.model` accepts both forms);
* ids and the filter columns use ``COLLATE "C"``: byte order, as SQLite's
  BINARY, so keyset cursors order the same on both, whatever the database's
  collation, and comparisons are cheaper;
* a trigger on ``events`` publishes every lifecycle event with ``pg_notify``
  in the transaction that writes it (see :mod:`tether.store.postgres.listen`):
  once per statement since schema 7, one notification per inserted row.
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

# Advisory lock key (first half): "TETH"; the second half hashes the schema name.
LOCK_CLASS = 0x54455448
VERSION_TABLE = "tether_schema"
EVENTS_CHANNEL = "tether_events"
NOTIFY_DATA_LIMIT = 4000  # bytes of event data sent inline (NOTIFY payloads stop at 8000)

_ID = 'text COLLATE "C"'

# The record of applied steps (see tether.store.migrations); created by the
# migration runner, not by a step, so that schemas from before it get it too.
CREATE_MIGRATIONS_TABLE = f"""
CREATE TABLE {MIGRATIONS_TABLE} (
    version integer PRIMARY KEY,
    compatible_with integer NOT NULL,
    applied_at double precision NOT NULL
)
"""
RECORD_STEP = (
    f"INSERT INTO {MIGRATIONS_TABLE} (version, compatible_with, applied_at) VALUES (%s, %s, %s)"
)
# The legacy record says the compatible-with version (see tether.store.migrations):
# rows above it can only come from builds that predate the record; they go.
LEGACY_TRIM = f"DELETE FROM {VERSION_TABLE} WHERE version > %s"
LEGACY_RECORD = f"""
INSERT INTO {VERSION_TABLE} (version) SELECT %s
WHERE NOT EXISTS (SELECT 1 FROM {VERSION_TABLE} WHERE version = %s)
"""


def _notify(row: str) -> str:
    """The ``pg_notify`` call that publishes one event (``row``: the trigger's NEW, or
    an alias of a row of its inserted rows). The channel carries the schema name
    unless it is "public", so that several tether schemas in one database do not
    hear each other; data too large for a notification is left out."""
    return f"""pg_notify(
                    CASE WHEN TG_TABLE_SCHEMA = 'public' THEN '{EVENTS_CHANNEL}'
                         ELSE '{EVENTS_CHANNEL}.' || TG_TABLE_SCHEMA END,
                    json_build_object(
                        'id', {row}.id, 'at', {row}.at, 'kind', {row}.kind,
                        'session_id', {row}.session_id,
                        'data', CASE WHEN octet_length({row}.data::text) <= {NOTIFY_DATA_LIMIT}
                                     THEN {row}.data END
                    )::text)"""


# Each step declares the oldest schema version whose code still works after it:
# additive steps keep the previous one (see docs/data-model.md, "Upgrades").
# Migration 1 creates the legacy record (tether_schema) too.
MIGRATIONS: list[Migration] = [
    Migration(
        1,
        [
            f"""
            CREATE TABLE {VERSION_TABLE} (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            # One row per process that owns (or owned) open sessions.
            f"""
            CREATE TABLE owners (
                id {_ID} PRIMARY KEY,
                host text NOT NULL,
                boot_id text NOT NULL,
                pid integer NOT NULL,
                pid_start_time bigint,
                kind text NOT NULL,
                started_at double precision NOT NULL,
                heartbeat_at double precision NOT NULL
            )
            """,
            f"""
            CREATE TABLE sessions (
                id {_ID} PRIMARY KEY,
                source {_ID} NOT NULL,
                model text,
                title text,
                cwd {_ID},
                parent_id {_ID},
                root_id {_ID} NOT NULL,
                origin text,
                created_at double precision NOT NULL,
                last_active_at double precision NOT NULL,
                ended_at double precision,
                end_reason text,
                end_detail text,
                message_count integer NOT NULL DEFAULT 0,
                owner_id {_ID},
                epoch integer NOT NULL DEFAULT 0,
                detached_at double precision,
                metadata jsonb,
                chain_tip_id {_ID},
                chain_message_count integer NOT NULL DEFAULT 0,
                chain_last_active_at double precision
            )
            """,
            *SESSION_INDEXES,
            f"""
            CREATE TABLE messages (
                session_id {_ID} NOT NULL,
                seq integer NOT NULL,
                role text NOT NULL,
                content text,
                tool_calls jsonb,
                tool_call_id text,
                tool_name text,
                created_at double precision NOT NULL,
                idem_key text,
                PRIMARY KEY (session_id, seq)
            )
            """,
            *MESSAGE_INDEXES,
            f"""
            CREATE TABLE events (
                id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                at double precision NOT NULL,
                session_id {_ID},
                kind text NOT NULL,
                data jsonb
            )
            """,
            *EVENT_INDEXES,
            # Every lifecycle event is published in the transaction that writes
            # it (delivered at commit, dropped on rollback). The channel carries
            # the schema name unless it is "public", so that several tether
            # schemas in one database do not hear each other.
            f"""
            CREATE FUNCTION tether_notify_event() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM {_notify("NEW")};
                RETURN NULL;
            END
            $$
            """,
            """
            CREATE TRIGGER events_notify AFTER INSERT ON events
            FOR EACH ROW EXECUTE FUNCTION tether_notify_event()
            """,
        ],
        compatible_with=1,
    ),
    Migration(
        2,
        [
            # Liveness identity and promise (additive: older rows and older
            # processes keep working). pid_ns: the owner's PID namespace (NULL:
            # written before schema 2, judged by its heartbeat). lease: the
            # seconds without heartbeat after which the owner says it is dead.
            "ALTER TABLE owners ADD COLUMN pid_ns text",
            "ALTER TABLE owners ADD COLUMN lease double precision NOT NULL DEFAULT 30.0",
            # Heartbeats on the server's clock: an owner writes heartbeat_at NULL
            # and the server stamps it with now(), so owners on hosts whose clocks
            # disagree are still judged on one clock. (Explicit values are kept:
            # tests and imports write their own.) NOT NULL is checked after this.
            """
            CREATE FUNCTION tether_owner_heartbeat() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.heartbeat_at IS NULL THEN
                    NEW.heartbeat_at := extract(epoch FROM now());
                END IF;
                RETURN NEW;
            END
            $$
            """,
            """
            CREATE TRIGGER owners_heartbeat BEFORE INSERT OR UPDATE ON owners
            FOR EACH ROW EXECUTE FUNCTION tether_owner_heartbeat()
            """,
        ],
        compatible_with=1,
    ),
    # 3: on_session_end hooks survive a crash between the recorded end and its
    # hooks (see tether.store.deliveries). Self-contained: it only adds to events.
    Migration(3, HOOK_DELIVERY, compatible_with=1),
    # 4: data model v2 (see docs/data-model.md). Additive: older code never names
    # these columns, and the state default keeps every row it writes active. A
    # constant default makes each ADD COLUMN a catalog change, not a rewrite.
    Migration(
        4,
        [
            "ALTER TABLE messages ADD COLUMN meta jsonb",
            """
            ALTER TABLE messages ADD COLUMN state text NOT NULL DEFAULT 'active'
            CHECK (state IN ('active', 'compacted', 'retracted'))
            """,
            "ALTER TABLE messages ADD COLUMN payload jsonb",
        ],
        compatible_with=1,
    ),
    # 5: retention with consent (issue 14, see tether.store.retention). Additive;
    # a nullable column without default is a catalog change, not a rewrite.
    Migration(5, retention_tables("double precision"), compatible_with=1),
    # 6: importers' cursors (see tether.store.imports). Additive: a new table.
    Migration(6, import_cursors("double precision"), compatible_with=1),
    # 7: the NOTIFY trigger runs once per statement over its inserted rows (a
    # transition table) instead of once per row: a reap that logs 10,000 events
    # called the per-row trigger 10,000 times, about a fifth of the server's
    # work for the reap. Each event is still published on its own, in id order,
    # with the same payload, so listeners of any version hear the same thing.
    # Additive for older code (it never names the trigger); one transaction, so
    # no insert ever runs between the two triggers. Written to run again over a
    # schema that has it already (tests undo later steps by hand).
    Migration(
        7,
        [
            f"""
            CREATE OR REPLACE FUNCTION tether_notify_events() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM {_notify("n")}
                FROM (SELECT * FROM inserted ORDER BY id) n;
                RETURN NULL;
            END
            $$
            """,
            "DROP TRIGGER IF EXISTS events_notify ON events",
            """
            CREATE TRIGGER events_notify AFTER INSERT ON events
            REFERENCING NEW TABLE AS inserted
            FOR EACH STATEMENT EXECUTE FUNCTION tether_notify_events()
            """,
            "DROP FUNCTION IF EXISTS tether_notify_event()",
        ],
        compatible_with=1,
    ),
]
check_steps(MIGRATIONS)

SCHEMA_VERSION = MIGRATIONS[-1].version


def events_channel(schema: str) -> str:
    """The NOTIFY channel of the tether tables in ``schema`` (see the trigger)."""
    return EVENTS_CHANNEL if schema == "public" else f"{EVENTS_CHANNEL}.{schema}"
