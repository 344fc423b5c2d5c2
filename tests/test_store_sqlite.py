"""SQLite specifics: migrations, pragmas, query plans, concurrency."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

import tether
from tether.store import listing
from tether.store.sqlite import backend as sqlite_backend
from tether.store.sqlite.schema import APPLICATION_ID, SCHEMA_VERSION


def test_new_database_is_wal_versioned_and_marked(db_path: str) -> None:
    tether.open_store(db_path, load_plugins=False).close()
    c = sqlite3.connect(db_path)
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    versions = c.execute("SELECT max(version), max(compatible_with) FROM tether_migrations")
    assert versions.fetchone() == (SCHEMA_VERSION, 1)
    # The legacy record holds the compatible-with version (see tests/test_upgrades.py).
    assert c.execute("PRAGMA user_version").fetchone()[0] == 1
    assert c.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"sessions", "messages", "owners", "events"} <= tables


def test_durability_setting(db_path: str) -> None:
    for durability, level in (("normal", 1), ("full", 2)):
        s = tether.open_store(db_path, durability=durability, load_plugins=False)
        assert s.backend._writer.execute("PRAGMA synchronous").fetchone()[0] == level
        s.close()


def test_reopening_an_up_to_date_file_runs_no_ddl(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tether.open_store(db_path, load_plugins=False).close()
    statements: list[str] = []
    real_connect = sqlite_backend.SQLiteBackend._connect

    def traced(self):  # type: ignore[no-untyped-def]
        conn = real_connect(self)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sqlite_backend.SQLiteBackend, "_connect", traced)
    s = tether.open_store(db_path, load_plugins=False)
    s.close()
    ddl = [x for x in statements if x.lstrip().upper().startswith(("CREATE", "ALTER", "DROP"))]
    assert ddl == []
    assert not any("user_version =" in x for x in statements)


def _plan(store: tether.Store, q: listing.ListQuery) -> list[str]:
    sql, params = listing.build(q)
    rows = store.backend.read(lambda c: c.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall())
    return [r[3] for r in rows]


@pytest.mark.parametrize(
    "query",
    [
        listing.ListQuery(),
        listing.ListQuery(cursor=listing.encode_cursor(1e9, "Z")),
        listing.ListQuery(source="cli", cursor=listing.encode_cursor(1e9, "Z")),
        listing.ListQuery(cwd="/src"),
        listing.ListQuery(state="ended", include_empty=True),
    ],
)
def test_listing_plan_is_an_index_walk(
    sqlite_store: tether.Store, query: listing.ListQuery
) -> None:
    plan = _plan(sqlite_store, query)
    outer = plan[0]
    assert "USING INDEX sessions_listing" in outer, plan
    assert "TEMP B-TREE" not in " ".join(plan), plan  # no sort: rows come in index order
    assert plan[1].startswith("SEARCH t USING") and "(id=?)" in plan[1], plan
    if query.cursor is not None:
        assert "<(?,?)" in outer, plan  # the cursor is a range seek, not a filter


def test_open_listing_plan_starts_from_open_sessions(sqlite_store: tether.Store) -> None:
    plan = _plan(sqlite_store, listing.ListQuery(state="open"))
    assert plan[0].startswith("SCAN t USING INDEX sessions_open"), plan


def test_listing_is_o_page_on_a_large_store(tmp_path: Path) -> None:
    """20,000 chains: the first page reads about one page of rows, not the table."""
    path = tmp_path / "big.db"
    s = tether.open_store(path, load_plugins=False)
    s.close()
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("BEGIN")
    c.executemany(
        "INSERT INTO sessions (id, source, root_id, created_at, last_active_at, message_count,"
        " chain_tip_id, chain_message_count, chain_last_active_at) VALUES (?,?,?,?,?,?,?,?,?)",
        [
            (f"S{i:08d}", "cli", f"S{i:08d}", i, i, 1, f"S{i:08d}", 1, float(i))
            for i in range(20000)
        ],
    )
    c.execute("COMMIT")
    steps = []
    s = tether.open_store(path, load_plugins=False)
    conn = s.backend._acquire_reader()
    conn.set_progress_handler(lambda: steps.append(1), 100)
    s.backend._release_reader(conn)
    page = s.list_sessions(limit=50)
    assert [i.session.id for i in page.items][:2] == ["S00019999", "S00019998"]
    # A full scan of 20,000 rows would take far more than a few thousand VM steps.
    assert len(steps) * 100 < 20000, len(steps) * 100
    s.close()


def test_bulk_writes_wake_the_checkpointer_before_the_wal_backstop(tmp_path: Path) -> None:
    """A few commits that each change thousands of rows (a purge batch, an import)
    wake the background checkpointer, as many small commits do: otherwise the WAL
    grows to the backstop and the writer checkpoints inline, holding the write
    lock for tens of milliseconds (a purge's longest batches: 60 to 77 ms, every
    ~70 batches, against a median of 5)."""
    store = tether.open_store(tmp_path / "bulk.db", load_plugins=False)
    backend = store.backend
    assert isinstance(backend, sqlite_backend.SQLiteBackend)
    rows = [(float(i), "bulk") for i in range(sqlite_backend._CHECKPOINT_ROWS // 4 + 1)]
    for _ in range(4):  # far fewer commits than _CHECKPOINT_EVERY
        backend.write(lambda c: c.executemany("INSERT INTO events (at, kind) VALUES (?, ?)", rows))
    assert backend._checkpointer is not None and backend._checkpointer.is_alive()
    store.close()


def test_small_writes_wake_the_checkpointer_by_their_count(tmp_path: Path) -> None:
    """Appends of a row or two wake it every _CHECKPOINT_EVERY commits, not sooner."""
    store = tether.open_store(tmp_path / "small.db", load_plugins=False)
    backend = store.backend
    assert isinstance(backend, sqlite_backend.SQLiteBackend)
    h = store.session(source="cli")
    for i in range(sqlite_backend._CHECKPOINT_EVERY - 10):
        h.append("user", f"m{i}")
    assert backend._checkpointer is None
    for i in range(20):
        h.append("user", f"n{i}")
    assert backend._checkpointer is not None
    store.close()


def test_a_writer_behind_another_process_tries_again_within_a_millisecond(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that finds the file locked by another connection is tried again by
    tether, after sleeps that start under a millisecond and grow by half, not by
    SQLite's own handler (1, 2, 5, 10 ms...: a lock held for 4 ms cost a waiting
    agent 8). It goes through once the lock is released."""
    import threading
    import time

    store = tether.open_store(str(tmp_path / "t.db"), load_plugins=False)
    h = store.session(source="cli")
    h.append("user", "first")
    other = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's write lock
    sleeps: list[float] = []
    real_sleep = time.sleep

    def recorded(seconds: float) -> None:
        sleeps.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(sqlite_backend.time, "sleep", recorded)
    writer = threading.Thread(target=h.append, args=("user", "second"))
    writer.start()
    deadline = time.monotonic() + 10
    while len(sleeps) < 6 and time.monotonic() < deadline:
        real_sleep(0.001)
    other.execute("COMMIT")
    writer.join(10)
    assert not writer.is_alive()
    assert len(sleeps) >= 6, "the waiting was not tether's"
    assert 0.00025 <= sleeps[0] <= 0.0005
    # Each delay half as long again as the one before, each sleep jittered in [d/2, d].
    assert all(b <= 3 * a for a, b in itertools.pairwise(sleeps))
    assert max(sleeps) <= 0.05
    assert [m.content for m in store.get_messages(h.id)] == ["first", "second"]
    other.close()
    store.close()
