"""PostgreSQL specifics: migrations, plans, bad input, poolers, LISTEN/NOTIFY, dropped connections.

The store contract itself runs on PostgreSQL through the ``backend`` fixture
(see conftest.py); these tests cover what only PostgreSQL has.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.liveness import ProcessIdentity, Reaper
from tether.store import listing
from tether.store.postgres import backend as pg_backend
from tether.store.postgres import url as pg_url
from tether.store.postgres.schema import LOCK_CLASS, MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE

from .conftest import (
    PG_URL,
    child_env,
    drop_schemas,
    pg_admin,
    pg_connect,
    run_cli,
    with_params,
)
from .test_errors import assert_one_clear_line
from .test_liveness import owned_sessions

pytestmark = pytest.mark.postgres
SRC = Path(__file__).resolve().parent.parent / "src" / "tether"


@pytest.fixture
def backend() -> str:
    return "postgres"


@pytest.fixture
def schema(db_url: str) -> str:
    """The (not yet created) schema of ``db_url``."""
    return db_url.rsplit("schema=", 1)[1]


def tables(schema: str) -> set[str]:
    with pg_admin() as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
        ).fetchall()
    return {r[0] for r in rows}


# --- migrations -----------------------------------------------------------------------


def test_a_new_schema_is_created_versioned_and_migrated(db_url: str, schema: str) -> None:
    s = tether.open_store(db_url, load_plugins=False)
    assert s.backend.schema == schema
    assert {"sessions", "messages", "owners", "events", VERSION_TABLE} <= tables(schema)
    with pg_admin() as conn:
        versions = conn.execute(
            f'SELECT version FROM "{schema}".tether_migrations ORDER BY version'
        ).fetchall()
        legacy = conn.execute(f'SELECT version FROM "{schema}".{VERSION_TABLE}').fetchall()
    assert versions == [(m.version,) for m in MIGRATIONS]  # one row per applied migration
    assert legacy == [(1,)]  # the compatible-with version (see tests/test_upgrades.py)
    s.close()


def test_reopening_an_up_to_date_schema_runs_no_ddl(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tether.open_store(db_url, load_plugins=False).close()

    def no_migration(*args: object) -> None:
        raise AssertionError("an up-to-date schema was migrated again")

    monkeypatch.setattr(pg_backend.PostgresBackend, "_migrate", no_migration)
    tether.open_store(db_url, load_plugins=False).close()


def test_migrations_wait_for_the_transaction_scoped_advisory_lock(db_url: str, schema: str) -> None:
    """A first open waits while another transaction holds the migration lock."""
    holder = pg_admin()
    holder.execute("BEGIN")
    holder.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS, schema))
    opened = threading.Event()
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            tether.open_store(db_url, load_plugins=False).close()
        except BaseException as exc:
            errors.append(exc)
        opened.set()

    t = threading.Thread(target=open_it)
    t.start()
    try:
        assert not opened.wait(1.0)  # blocked on the lock
        assert VERSION_TABLE not in tables(schema)
    finally:
        holder.execute("COMMIT")  # transaction-scoped: released here
        holder.close()
    assert opened.wait(30) and not errors, errors
    t.join()
    assert VERSION_TABLE in tables(schema)


def test_no_session_level_advisory_locks_or_temp_tables_in_the_source() -> None:
    """Pooler safety, by grep: nothing may hold session state across transactions.

    A temporary table lives as long as its connection: behind a transaction-mode
    pooler the next transaction may run on another server connection, which
    does not have it. SQLite has no pooler (its connections are the store's
    own), so its backend's code (store/sqlite/: the reaper's keyed table of
    judged owners) may use one; shared and PostgreSQL code may not.
    """
    sqlite_only = SRC / "store" / "sqlite"
    files = {p: p.read_text() for p in SRC.rglob("*.py")}
    code = "\n".join(files.values())
    shared = "\n".join(text for p, text in files.items() if sqlite_only not in p.parents)
    assert "pg_advisory_xact_lock" in code
    for forbidden in (
        r"pg_advisory_lock\b",
        r"pg_try_advisory_lock\b",
        r"pg_advisory_lock_shared",
        r"\bSET\s+SESSION\b",
    ):
        assert not re.search(forbidden, code, re.IGNORECASE), forbidden
    temp_table = r"CREATE\s+TEMP(ORARY)?\s+TABLE"
    assert not re.search(temp_table, shared, re.IGNORECASE)
    assert re.search(temp_table, code, re.IGNORECASE)  # the grep still sees SQLite's


def test_a_newer_schema_is_refused(db_url: str, schema: str) -> None:
    tether.open_store(db_url, load_plugins=False).close()
    with pg_admin() as conn:
        # A step of a newer tether that older code cannot survive (see tests/test_upgrades.py).
        conn.execute(
            f'INSERT INTO "{schema}".tether_migrations VALUES (%s, %s, 0)',
            (SCHEMA_VERSION + 5, SCHEMA_VERSION + 5),
        )
    with pytest.raises(tether.SchemaTooNewError, match="newer tether"):
        tether.open_store(db_url, load_plugins=False)
    assert_one_clear_line(run_cli("ls", "--db", db_url), "newer tether")


def test_another_applications_schema_is_refused(db_url: str, schema: str) -> None:
    with pg_admin() as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".sessions (id text PRIMARY KEY, source text)')
    with pytest.raises(tether.ForeignDatabaseError, match="another application"):
        tether.open_store(db_url, load_plugins=False)
    assert_one_clear_line(run_cli("doctor", "--db", db_url), "another application")
    assert tables(schema) == {"sessions"}  # left untouched


# --- bad input: one clear line, nothing half-migrated ---------------------------------------


@pytest.mark.parametrize(
    ("url", "error", "needle"),
    [
        (
            "postgresql://postgres@127.0.0.1:1/test",
            tether.StoreUnavailableError,
            "Connection refused",
        ),
        (
            "postgresql://postgres@127.0.0.1:notaport/test",
            tether.StoreUnavailableError,
            "invalid integer value",
        ),
        (
            "postgresql://no_such_role_tether@127.0.0.1:5432/test",
            tether.StoreUnavailableError,
            'role "no_such_role_tether" does not exist',
        ),
        (
            "postgresql://postgres@127.0.0.1:5432/no_such_db_tether",
            tether.StoreUnavailableError,
            'database "no_such_db_tether" does not exist',
        ),
        ("postgresql://postgres@127.0.0.1/test?sslmode=sometimes", tether.StoreError, "sslmode"),
        ("postgresql://postgres@127.0.0.1/test?schema=Bad-Name", tether.StoreOpenError, "schema"),
        (
            "postgresql://postgres@127.0.0.1/test?prepare_threshold=lots",
            tether.StoreOpenError,
            "prepare_threshold",
        ),
    ],
)
def test_bad_urls_and_servers_fail_with_one_clear_line(
    pg_server: str, url: str, error: type[Exception], needle: str
) -> None:
    with pytest.raises(error) as info:
        tether.open_store(url, load_plugins=False)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert_one_clear_line(run_cli("ls", "--db", url), needle)
    assert_one_clear_line(run_cli("doctor", "--json", env={"TETHER_DB": url}), needle)


def test_a_password_never_appears_in_messages(pg_server: str) -> None:
    url = "postgresql://postgres:s3cret-pw@127.0.0.1:1/test?password=other-secret"
    with pytest.raises(tether.StoreUnavailableError) as info:
        tether.open_store(url, load_plugins=False)
    assert "s3cret" not in str(info.value) and "other-secret" not in str(info.value)
    assert "postgres@127.0.0.1:1/test" in str(info.value)


@pytest.fixture
def weak_role(pg_server: str) -> Iterator[tuple[str, str]]:
    """A role that may connect and use one schema, but create nothing; dropped afterwards."""
    role = f"tether_weak_{uuid.uuid4().hex[:10]}"
    schema = f"tether_test_weak_{uuid.uuid4().hex[:10]}"
    with pg_admin() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    try:
        yield role, schema
    finally:
        drop_schemas(schema)
        with pg_admin() as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_no_permission_to_create_tables(weak_role: tuple[str, str]) -> None:
    role, schema = weak_role
    base = PG_URL.replace("postgres@", f"{role}@", 1)
    url = with_params(base, schema=schema)
    with pytest.raises(tether.StoreOpenError, match="no permission to create tether's tables"):
        tether.open_store(url, load_plugins=False)
    assert_one_clear_line(run_cli("ls", "--db", url), "permission denied")
    assert tables(schema) == set()  # nothing half-migrated
    missing = with_params(base, schema=f"{schema}_new")
    with pytest.raises(tether.StoreOpenError, match="may not create it"):
        tether.open_store(missing, load_plugins=False)
    assert_one_clear_line(run_cli("ls", "--db", missing), "may not create it")


# --- query plans --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_store(pg_server: str) -> Iterator[tether.Store]:
    """100,000 chains, analyzed, so the planner picks what it would in production.

    (The planner cannot estimate ``root_id = id``, the listing indexes'
    predicate, and takes it for 0.5% of the rows: on a small table it would
    rather sort a few rows than walk the index. Past ~30,000 sessions it walks.)
    """
    schema = f"tether_test_{uuid.uuid4().hex[:10]}"
    s = tether.open_store(with_params(pg_server, schema=schema), load_plugins=False)

    def fill(c):  # type: ignore[no-untyped-def]
        c.execute(
            """
            INSERT INTO sessions (id, source, root_id, created_at, last_active_at, ended_at,
                message_count, chain_tip_id, chain_message_count, chain_last_active_at, cwd)
            SELECT 'S' || lpad(i::text, 8, '0'), (ARRAY['cli','tui','cron'])[i % 3 + 1],
                'S' || lpad(i::text, 8, '0'), i, i, CASE WHEN i % 10 > 0 THEN i + 1 END, 1,
                'S' || lpad(i::text, 8, '0'), 1, i, '/w' || (i % 7)
            FROM generate_series(1, 100000) AS i
            """
        )

    s.backend.write(fill)
    s.backend.write(lambda c: c.execute("ANALYZE sessions"))
    yield s
    s.close()
    drop_schemas(schema)


def explain(store: tether.Store, q: listing.ListQuery) -> str:
    query, params = listing.build(q)
    rows = store.backend.read(lambda c: c.execute("EXPLAIN " + query, params).fetchall())
    return "\n".join(r[0] for r in rows)


@pytest.mark.parametrize(
    "query",
    [
        listing.ListQuery(),
        listing.ListQuery(cursor=listing.encode_cursor(50_000.0, "S00050000")),
        listing.ListQuery(source="cli", cursor=listing.encode_cursor(1e9, "Z")),
        listing.ListQuery(state="ended", include_empty=True),
    ],
)
def test_listing_plan_walks_the_listing_index(
    big_store: tether.Store, query: listing.ListQuery
) -> None:
    plan = explain(big_store, query)
    assert re.search(r"Index Scan Backward using sessions_listing\w* on sessions r", plan), plan
    assert "Sort" not in plan, plan  # rows come in index order: O(page)
    assert re.search(r"Index Scan using sessions_pkey on sessions t", plan), plan
    page = big_store.list_sessions(**{k: getattr(query, k) for k in ("source", "state", "cursor")})
    assert len(page.items) == 50


def test_open_listing_plan_starts_from_open_sessions(big_store: tether.Store) -> None:
    plan = explain(big_store, listing.ListQuery(state="open"))
    assert "sessions_open_" in plan and "Seq Scan" not in plan, plan


# --- poolers ---------------------------------------------------------------------------------


def test_prepared_statements_can_be_turned_off(db_url: str) -> None:
    """``?prepare_threshold=none`` (transaction-mode poolers): no statement is ever prepared."""
    url = with_params(db_url, prepare_threshold="none", pool_size="1")
    s = tether.open_store(url, load_plugins=False)
    assert s.backend.target.kwargs["prepare_threshold"] is None
    h = s.session(source="pooled")
    for i in range(20):  # far past psycopg's default threshold of 5
        h.append("user", f"m{i}")
    h.buffer("assistant", "buffered")
    h.flush()
    assert len(s.list_sessions().items) == 1
    prepared = s.backend.read(
        lambda c: c.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
    )
    assert prepared == 0
    h.end()
    s.close()
    # The default does prepare the hot statements (one connection: the same session).
    s = tether.open_store(with_params(db_url, pool_size="1"), load_plugins=False)
    h = s.session(source="pooled")
    for i in range(20):
        h.append("user", f"m{i}")
    prepared = s.backend.read(
        lambda c: c.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
    )
    assert prepared > 0
    h.end()
    s.close()


# --- connections that drop ------------------------------------------------------------------


def test_a_dropped_connection_is_replaced_and_the_write_retried(db_url: str) -> None:
    s = tether.open_store(with_params(db_url, pool_size="1"), load_plugins=False)
    h = s.session(source="flaky")
    h.append("user", "before")
    pid = s.backend.read(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0])
    with pg_admin() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    time.sleep(0.2)
    assert h.append("user", "after").seq == 2  # the broken connection was replaced
    assert [m.content for m in s.get_messages(h.id)] == ["before", "after"]
    new_pid = s.backend.read(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0])
    assert new_pid != pid
    h.end()
    s.close()


@pytest.mark.parametrize("landed", [True, False])
def test_an_append_whose_commit_is_unknown_finds_out(
    db_url: str, landed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-statement append lost its connection while committing: the
    store checks whether the message landed instead of guessing, so it is
    stored exactly once either way."""
    s = tether.open_store(db_url, load_plugins=False)
    h = s.session(source="unknown")
    h.append("user", "first")
    real = s._append_statement

    def lost(query, params):  # type: ignore[no-untyped-def]
        if landed:
            real(query, params)
        raise tether.CommitUnknownError("lost the connection while committing")

    monkeypatch.setattr(s, "_append_statement", lost)
    assert h.append("assistant", "second").seq == 2
    monkeypatch.undo()
    assert [m.content for m in s.get_messages(h.id)] == ["first", "second"]
    assert s.get_session(h.id).message_count == 2
    h.end()
    s.close()


def test_a_server_that_stays_away_is_reported_after_the_budget(db_url: str) -> None:
    s = tether.open_store(db_url, load_plugins=False)
    s.backend.write_budget = 0.5
    s.backend.close()  # as good as an unreachable server for the store's pool
    s.backend._closed = False
    # ... and for the main thread's own connection (see PostgresBackend._run_main)
    s.backend.target = pg_url.parse("postgresql://postgres@127.0.0.1:1/test")
    s.backend._pool = pg_backend.ConnectionPool(
        "postgresql://postgres@127.0.0.1:1/test", min_size=1, open=False, timeout=0.2
    )
    s.backend._pool.open(wait=False)
    started = time.monotonic()
    with pytest.raises(tether.StoreUnavailableError, match="lost the connection"):
        s.get_session("x")
    assert time.monotonic() - started < 10
    s.backend._pool.close()
    s.backend._closed = True


# --- the clock ------------------------------------------------------------------------------


def test_a_skewed_clock_is_logged_at_open(
    db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = time.time
    monkeypatch.setattr(pg_backend.time, "time", lambda: real() - 120)
    with caplog.at_level(logging.WARNING, logger="tether.store.postgres"):
        tether.open_store(db_url, load_plugins=False).close()
    assert "clock is 120.0 s behind" in caplog.text or "clock is 119." in caplog.text
    caplog.clear()
    monkeypatch.setattr(pg_backend.time, "time", real)
    with caplog.at_level(logging.WARNING, logger="tether.store.postgres"):
        tether.open_store(db_url, load_plugins=False).close()
    assert "clock" not in caplog.text


# --- LISTEN/NOTIFY --------------------------------------------------------------------------

EMITTER = """
import sys, tether
store = tether.open_store(sys.argv[1], load_plugins=False)
with store.session(source="remote") as h:
    h.append("user", "from another process")
print(h.id)
"""


def test_lifecycle_events_are_published_live(db_url: str) -> None:
    clock = tether.ManualClock()
    s = tether.open_store(db_url, clock=clock, load_plugins=False)
    other = tether.open_store(db_url, load_plugins=False)  # another process, in effect
    with s.listen() as listener:
        assert listener.channel.endswith(s.backend.schema)
        h = s.session(source="cli")
        h.append("user", "hi")
        h.end("completed")
        [sid] = owned_sessions(s, ProcessIdentity("far", "b", 1, 1), 1, clock.now())
        taken = other.resume(sid, force=True)
        taken.end("cli_close")
        [dead] = owned_sessions(s, ProcessIdentity("far2", "b", 2, 1), 1, clock.now())
        clock.advance(100)
        Reaper(s, clock=clock).sweep()
        out = subprocess.run(
            [sys.executable, "-c", EMITTER, db_url],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        remote = out.stdout.strip()
        events = list(listener.events(timeout=10, limit=7))
        assert list(listener.events(timeout=0.3)) == []  # and nothing else
    assert [(e.kind, e.session_id) for e in events] == [
        ("created", h.id),
        ("ended", h.id),
        ("taken_over", sid),
        ("ended", sid),
        ("reaped", dead),
        ("created", remote),
        ("ended", remote),
    ]
    assert events[1].data == {"reason": "completed", "detail": None}
    assert events[4].data["detail"] == "heartbeat stale 100 s"
    assert all(isinstance(e.id, int) and e.at > 0 for e in events)
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids)
    other.close()
    s.close()


def events_trigger_per_row(s: tether.Store) -> bool:
    """Does the store's NOTIFY trigger on ``events`` fire once per row (else per statement)?"""
    [(tgtype,)] = s.backend.read(
        lambda c: c.execute(
            "SELECT t.tgtype FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid"
            " JOIN pg_namespace n ON n.oid = r.relnamespace"
            " WHERE t.tgname = 'events_notify' AND r.relname = 'events' AND n.nspname = ?",
            (s.backend.schema,),
        ).fetchall()
    )
    return bool(tgtype & 1)  # TRIGGER_TYPE_ROW


def test_a_mass_reap_publishes_every_event_from_one_trigger_call(db_url: str) -> None:
    """The trigger runs once per statement (a 10,000-session reap called it 10,000
    times, ~20% of the server's work) and still publishes one notification per
    event, in id order, with the payload a per-row trigger sent."""
    clock = tether.ManualClock()
    s = tether.open_store(db_url, clock=clock, load_plugins=False)
    assert not events_trigger_per_row(s)
    dead = []
    for k in range(3):
        dead += owned_sessions(s, ProcessIdentity(f"far{k}", "b", k + 1, 1), 20, clock.now())
    clock.advance(100)
    big = {"x": "y" * 5000}  # over the inline limit: published without its data
    with s.listen() as listener:
        assert len(Reaper(s, clock=clock).sweep().reaped) == 60
        s.backend.write(lambda c: s._event(c, None, "attached", big))
        heard = list(listener.events(timeout=10, limit=61))
        assert list(listener.events(timeout=0.3)) == []  # and nothing else
    rows = s.backend.read(
        lambda c: c.execute(
            "SELECT id, at, kind, session_id, data FROM events"
            " WHERE kind IN ('reaped', 'attached') ORDER BY id"
        ).fetchall()
    )
    assert [(e.id, e.at, e.kind, e.session_id, e.data) for e in heard] == [
        (i, at, kind, sid, None if data == big else data) for i, at, kind, sid, data in rows
    ]
    assert sorted(e.session_id for e in heard[:60]) == sorted(dead)
    s.close()


def test_a_rolled_back_event_is_never_heard(db_url: str) -> None:
    s = tether.open_store(db_url, load_plugins=False)
    with s.listen() as listener:

        def tx(c):  # type: ignore[no-untyped-def]
            s._event(c, None, "created", {})
            raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            s.backend.write(tx)
        assert list(listener.events(timeout=0.5)) == []
        s.backend.write(lambda c: s._event(c, None, "attached", {"x": 1}))
        [event] = listener.events(timeout=5, limit=1)
        assert (event.kind, event.data) == ("attached", {"x": 1})
    s.close()


def test_schemas_do_not_hear_each_other(new_db: Callable[[], str]) -> None:
    a = tether.open_store(new_db(), load_plugins=False)
    b = tether.open_store(new_db(), load_plugins=False)
    with a.listen() as listener:
        with b.session(source="elsewhere") as h:
            h.append("user", "x")
        assert list(listener.events(timeout=0.5)) == []
    a.close()
    b.close()


def test_listening_is_refused_on_sqlite(sqlite_store: tether.Store) -> None:
    with pytest.raises(tether.StoreError, match="not supported on sqlite"):
        sqlite_store.listen()


def test_a_direct_connection_helper_sees_the_schema(db_url: str, schema: str) -> None:
    tether.open_store(db_url, load_plugins=False).close()
    with pg_connect(db_url) as conn:
        assert conn.execute("SELECT current_schema()").fetchone()[0] == schema


# --- end() in one round trip ---------------------------------------------------------


def _statements(store: tether.Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements this thread sends from now on, by their first two words
    (the store's own threads, a startup sweep say, are not counted)."""
    import psycopg

    sent: list[str] = []
    execute = psycopg.Cursor.execute
    me = threading.get_ident()

    def counting(self: Any, query: object, *args: object, **kw: object) -> object:
        if threading.get_ident() == me:
            sent.append(" ".join(str(query).split()[:2]))
        return execute(self, query, *args, **kw)

    monkeypatch.setattr(psycopg.Cursor, "execute", counting)
    return sent


def _ended_events(store: tether.Store, sid: str) -> int:
    return int(
        store.backend.read(
            lambda c: c.execute(
                "SELECT COUNT(*) FROM events WHERE session_id = ? AND kind = 'ended'", (sid,)
            ).fetchone()[0]
        )
    )


def test_an_end_is_one_statement(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """BEGIN, UPDATE, the event, COMMIT were four round trips; the end and its
    event are now one statement (the event only for the row it ended)."""
    with tether.open_store(db_url, load_plugins=False) as store:
        h = store.session(source="cli")
        h.append("user", "hi")
        sent = _statements(store, monkeypatch)
        assert h.end("completed", "done") is True
        assert sent == ["WITH ended"], sent
        s = store.get_session(h.id)
        assert (s.end_reason, s.end_detail) == ("completed", "done")
        assert _ended_events(store, h.id) == 1
        # Ended elsewhere first: False, and no second event.
        g = store.session(source="cli")
        g.append("user", "hi")
        store.end_session(g.id, "cli_close")
        assert g.end() is False
        assert _ended_events(store, g.id) == 1
        assert store.get_session(g.id).end_reason == "cli_close"


def lose_commit(store: tether.Store, statement: str, landed: bool) -> None:
    """The connection lost around the commit of each one-statement write that starts
    with ``statement``: after it ran (``landed``) or before."""
    real = store._append_statement
    assert real is not None

    def lost(query: str, params: Any) -> int:
        if query.lstrip().startswith(statement):
            if landed:
                real(query, params)
            raise tether.CommitUnknownError("connection lost during COMMIT")
        return real(query, params)

    store._append_statement = lost


@pytest.mark.parametrize("landed", [True, False])
def test_an_end_whose_commit_outcome_is_unknown_is_found_out(db_url: str, landed: bool) -> None:
    """The connection lost around the end's commit: whether it landed or not, the
    session ends once, with one event, and end() says it ended it."""
    with tether.open_store(db_url, load_plugins=False) as store:
        h = store.session(source="cli")
        h.append("user", "hi")
        lose_commit(store, "WITH ended", landed)
        assert h.end() is True
        assert _ended_events(store, h.id) == 1
        assert store.get_session(h.id).end_reason == "completed"


# --- a session's first append in one round trip ---------------------------------------


def test_a_first_append_is_one_statement(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """BEGIN, the session, its created event, the message, COMMIT were five round
    trips; with this process's owner row fresh they are one statement."""
    with tether.open_store(db_url, load_plugins=False) as store:
        first = store.session(source="cli")
        first.append("user", "the owner row goes with this one")
        h = store.session(source="web", title="t", cwd="/w", metadata={"k": "é"})
        sent = _statements(store, monkeypatch)
        assert h.append("user", "hi", meta={"turn": 1}).seq == 1
        assert sent == ["WITH s"], sent
        monkeypatch.undo()
        s = store.get_session(h.id)
        assert (s.source, s.title, s.cwd, s.metadata, s.message_count) == (
            "web",
            "t",
            "/w",
            {"k": "é"},
            1,
        )
        assert s.owner_id == store.owner_id and s.root_id == h.id
        (m,) = store.get_messages(h.id)
        assert (m.seq, m.role, m.content, m.meta) == (1, "user", "hi", {"turn": 1})
        created = store.backend.read(
            lambda c: c.execute(
                "SELECT COUNT(*) FROM events WHERE session_id = ? AND kind = 'created'", (h.id,)
            ).fetchone()[0]
        )
        assert created == 1
        assert h.append("assistant", "and on").seq == 2  # the handle knows its state
        assert store.list_sessions().items[0].session.id == h.id  # newest first


@pytest.mark.parametrize("landed", [True, False])
def test_a_first_append_whose_commit_outcome_is_unknown_is_found_out(
    db_url: str, landed: bool
) -> None:
    with tether.open_store(db_url, load_plugins=False) as store:
        store.session(source="cli").append("user", "owner row written")
        lose_commit(store, "WITH s", landed)
        h = store.session(source="cli")
        assert h.append("user", "once").seq == 1
        assert [m.content for m in store.get_messages(h.id)] == ["once"]
        assert store.get_session(h.id).message_count == 1
