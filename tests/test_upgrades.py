"""Rolling upgrades: older and newer tethers share one store (see tether.store.migrations).

"Older" and "newer" tethers are real child processes whose known migration list
is cut short or extended (the backends read it from their schema module when
they open a store), on the same SQLite file or PostgreSQL schema.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.errors import SchemaTooNewError
from tether.store.migrations import (
    Migration,
    SchemaState,
    check_steps,
    pending,
    state_after,
    too_new,
)
from tether.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION

from .conftest import pg_connect, run_cli, spawn, wait_for_line
from .test_errors import assert_one_clear_line

# A child tether that knows the first KNOWN steps, plus the EXTRA ones (JSON:
# [[version, [statements], compatible_with], ...]) on both backends.
AS_OF = """
import json
from tether.store.migrations import Migration, check_steps
from tether.store.postgres import schema as pg_schema
from tether.store.sqlite import schema as sqlite_schema

url, known, extra = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
for mod in (sqlite_schema, pg_schema):
    mod.MIGRATIONS = mod.MIGRATIONS[:known] + [Migration(v, s, c) for v, s, c in extra]
    check_steps(mod.MIGRATIONS)
if known < 4:
    # Before schema 4 a tether wrote no meta or payload column: its statements,
    # taking (and requiring empty) the two values this code's writers add.
    from tether.model import MESSAGE_COLUMNS as _V1  # the columns of schema 1
    from tether.store import sql
    _EMPTY = "CAST(? AS text) IS NULL AND CAST(? AS text) IS NULL"
    sql.INSERT_MESSAGE = (
        f"INSERT INTO messages ({_V1}) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE {_EMPTY}"
    )
    sql.INSERT_MESSAGE_EXACT_PAYLOAD = sql.INSERT_MESSAGE  # PostgreSQL's variant
    sql.APPEND_ONE_STATEMENT = (
        sql.APPEND_ONE_STATEMENT.replace(", meta, payload)", ")")
        .replace(",\\n    ?::jsonb, to_jsonb(?::text) FROM bump", " FROM bump WHERE " + _EMPTY)
    )
    sql.START_ROOT_ONE_STATEMENT = (
        sql.START_ROOT_ONE_STATEMENT.replace(", meta, payload)", ")")
        .replace(",\\n    ?::jsonb, to_jsonb(?::text) FROM s", " FROM s WHERE " + _EMPTY)
    )
    assert "meta" not in sql.INSERT_MESSAGE + sql.APPEND_ONE_STATEMENT
    assert "to_jsonb" not in sql.APPEND_ONE_STATEMENT + sql.START_ROOT_ONE_STATEMENT
"""

# A step older code survives (it never names the new table) and one it does not.
ADDITIVE = [[SCHEMA_VERSION + 1, ["CREATE TABLE upgrade_probe (id integer PRIMARY KEY)"], 1]]
BREAKING = [
    [
        SCHEMA_VERSION + 1,
        ["ALTER TABLE messages RENAME COLUMN content TO body"],
        SCHEMA_VERSION + 1,
    ]
]


def as_of(url: str, known: int, extra: list[Any], body: str) -> subprocess.Popen[str]:
    return spawn(AS_OF + textwrap.dedent(body), url, str(known), json.dumps(extra))


def run_as_of(url: str, known: int, extra: list[Any], body: str) -> str:
    proc = as_of(url, known, extra, body)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    conn = pg_connect(url) if url.startswith("postgresql://") else sqlite3.connect(url)
    try:
        return [tuple(r) for r in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def record(url: str) -> list[tuple[int, int]]:
    """The applied steps: (version, compatible_with), oldest first."""
    rows = query(url, "SELECT version, compatible_with FROM tether_migrations ORDER BY version")
    return [(int(v), int(c)) for v, c in rows]


def legacy(url: str) -> int:
    """The version a tether from before the record reads as the schema version."""
    if url.startswith("postgresql://"):
        return int(query(url, "SELECT max(version) FROM tether_schema")[0][0])
    return int(query(url, "PRAGMA user_version")[0][0])


CURRENT = [(m.version, m.compatible_with) for m in MIGRATIONS]


# --- the rule, as pure logic -----------------------------------------------------------


def test_steps_must_be_numbered_in_order_and_compatibility_never_drops() -> None:
    check_steps(MIGRATIONS)
    with pytest.raises(ValueError, match="out of order"):
        check_steps([Migration(1, [], 1), Migration(3, [], 1)])
    with pytest.raises(ValueError, match="between 2 and 3"):
        check_steps([Migration(1, [], 1), Migration(2, [], 2), Migration(3, [], 1)])
    with pytest.raises(ValueError, match="between 1 and 2"):
        check_steps([Migration(1, [], 1), Migration(2, [], 3)])


def test_the_state_after_some_steps_and_what_remains() -> None:
    steps = [Migration(1, [], 1), Migration(2, [], 1), Migration(3, [], 3), Migration(4, [], 3)]
    assert state_after(steps, 0) == SchemaState(0, 0)
    assert state_after(steps, 2) == SchemaState(2, 1)
    assert state_after(steps, 4) == SchemaState(4, 3)
    assert [m.version for m in pending(steps, SchemaState(2, 1))] == [3, 4]
    assert pending(steps, SchemaState(6, 3)) == []  # newer: nothing to run


def test_only_a_store_needing_newer_code_is_refused() -> None:
    assert too_new("x.db", SchemaState(7, 2), known=2) is None
    assert too_new("x.db", SchemaState(2, 1), known=3) is None
    err = too_new("x.db", SchemaState(7, 5), known=3)
    assert isinstance(err, SchemaTooNewError)
    assert str(err) == (
        "x.db was written by a newer tether (schema version 7, usable from schema version 5 "
        "on; this tether knows up to 3); upgrade tether to open it"
    )


# --- the records -----------------------------------------------------------------------


def test_a_new_store_records_each_step_and_its_legacy_version(db_url: str) -> None:
    tether.open_store(db_url, load_plugins=False).close()
    assert record(db_url) == CURRENT
    # Every step so far is additive: tethers from before the record still open it.
    assert legacy(db_url) == 1


def test_a_store_from_before_the_record_gets_it_and_its_missing_steps(
    db_url: str, backend: str
) -> None:
    # A store as a tether from before the record left it: schema 1, legacy record only.
    run_as_of(db_url, 1, [], "tether.open_store(url, load_plugins=False).close()")
    if backend == "postgres":
        conn = pg_connect(db_url)
    else:
        conn = sqlite3.connect(db_url, isolation_level=None)
    conn.execute("DROP TABLE tether_migrations")
    conn.close()
    assert legacy(db_url) == 1
    s = tether.open_store(db_url, load_plugins=False)
    try:
        h = s.session(source="cli")
        h.append("user", "hi")
        h.end()
    finally:
        s.close()
    assert record(db_url) == CURRENT and legacy(db_url) == 1
    assert query(db_url, "SELECT count(*) FROM messages") == [(1,)]


def test_a_store_from_before_the_record_at_an_unknown_version_is_refused(
    db_url: str, backend: str
) -> None:
    tether.open_store(db_url, load_plugins=False).close()
    if backend == "postgres":
        conn = pg_connect(db_url)
        conn.execute("INSERT INTO tether_schema (version) VALUES (%s)", (SCHEMA_VERSION + 2,))
    else:
        conn = sqlite3.connect(db_url, isolation_level=None)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 2}")
    conn.execute("DROP TABLE tether_migrations")
    conn.close()
    v = SCHEMA_VERSION + 2
    with pytest.raises(SchemaTooNewError, match=f"version {v}, usable from schema version {v} on"):
        tether.open_store(db_url, load_plugins=False)


# --- older and newer processes on one store ----------------------------------------------

# An older tether (schema 2) writing until told to stop: one session open all along,
# and short sessions opened, written and ended, before, during and after the upgrade.
OLDER_WRITER = """
flag = sys.argv[4]
store = tether.open_store(url, load_plugins=False)
long = store.session(source="older")
long.append("user", "first")
appended, short_ids, after_flag = 1, [], 0
print("ready", flush=True)
while after_flag < 20:
    if os.path.exists(flag):
        after_flag += 1
    long.append("user", f"m{appended}")
    appended += 1
    h = store.session(source="older-short")
    h.append("user", "x")
    h.append("assistant", "y")
    h.end()
    short_ids.append(h.id)
long.end()
listed = [c.session.id for c in store.list_sessions(source="newer").items]
store.close()
print(json.dumps({"long": long.id, "appended": appended, "short": short_ids, "listed": listed}))
"""


def test_an_older_process_keeps_working_while_a_newer_one_migrates(
    db_url: str, tmp_path: Path
) -> None:
    flag = tmp_path / "migrated"
    older = as_of(db_url, 2, [], OLDER_WRITER.replace("sys.argv[4]", repr(str(flag))))
    wait_for_line(older, "ready")
    assert record(db_url) == CURRENT[:2]
    # The newer tether migrates the store the older one is writing to.
    newer = tether.open_store(db_url, load_plugins=False)
    try:
        assert record(db_url) == CURRENT and legacy(db_url) == 1
        mine = newer.session(source="newer")
        mine.append("user", "hello")
        flag.write_text("go")
        out, err = older.communicate(timeout=120)
        assert older.returncode == 0, err
        result = json.loads(out.splitlines()[-1])
        # Nothing the older process wrote was lost, before, during or after.
        long = newer.get_session(result["long"])
        assert long.ended_at is not None and long.message_count == result["appended"]
        assert len(newer.get_messages(result["long"])) == result["appended"]
        for sid in result["short"]:
            s = newer.get_session(sid)
            assert s.ended_at is not None and s.message_count == 2
        assert mine.id in result["listed"]  # and it reads what the newer one wrote
        mine.end()
    finally:
        newer.close()
    # A fresh older process opens the migrated (newer, compatible) store as it is.
    out = run_as_of(
        db_url,
        2,
        [],
        """
        store = tether.open_store(url, load_plugins=False)
        h = store.session(source="older-again")
        h.append("user", "still here")
        h.end()
        print(store.get_session(h.id).message_count)
        store.close()
        """,
    )
    assert out.strip() == "1"
    assert record(db_url) == CURRENT and legacy(db_url) == 1


def test_a_compatible_newer_store_is_opened_as_it_is(db_url: str) -> None:
    run_as_of(
        db_url, SCHEMA_VERSION, ADDITIVE, "tether.open_store(url, load_plugins=False).close()"
    )
    newer = [*CURRENT, (SCHEMA_VERSION + 1, 1)]
    assert record(db_url) == newer and legacy(db_url) == 1
    s = tether.open_store(db_url, load_plugins=False)
    try:
        h = s.session(source="cli")
        h.append("user", "hi")
        h.end()
        assert s.get_session(h.id).message_count == 1
    finally:
        s.close()
    assert record(db_url) == newer  # nothing run, nothing undone
    assert query(db_url, "SELECT count(*) FROM upgrade_probe") == [(0,)]
    assert run_cli("ls", "--db", db_url).returncode == 0


def test_an_incompatible_newer_store_is_refused_with_both_versions(db_url: str) -> None:
    run_as_of(
        db_url, SCHEMA_VERSION, BREAKING, "tether.open_store(url, load_plugins=False).close()"
    )
    v = SCHEMA_VERSION + 1
    assert record(db_url) == [*CURRENT, (v, v)]
    # The legacy record rose too: tethers from before the record refuse it as well.
    assert legacy(db_url) == v
    with pytest.raises(SchemaTooNewError) as info:
        tether.open_store(db_url, load_plugins=False)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"schema version {v}, usable from schema version {v} on" in msg
    assert f"this tether knows up to {SCHEMA_VERSION}" in msg and "upgrade tether" in msg
    assert_one_clear_line(run_cli("ls", "--db", db_url), "newer tether", "upgrade tether")
    assert record(db_url) == [*CURRENT, (v, v)]  # left as it was
    # An older process is refused the same way, and the newer one still works.
    proc = as_of(db_url, 2, [], "tether.open_store(url, load_plugins=False)")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "knows up to 2" in err
    out = run_as_of(
        db_url,
        SCHEMA_VERSION,
        BREAKING,
        """
        store = tether.open_store(url, load_plugins=False)
        print(store.census().total)
        store.close()
        """,
    )
    assert out.strip() == "0"
