"""Faults around the store: signals inside transactions, commits of unknown
outcome, files that vanish or cannot be written, hostile input.

Every test here runs on real databases (SQLite files, the test PostgreSQL);
a fault is injected at one precise point of a real transaction, never by
replacing the database.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import tether
from tether.store import Store

from .conftest import drop_schemas, with_params


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh PostgreSQL schema of this test's own (for PostgreSQL-only tests)."""
    schema = f"tether_faults_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    yield with_params(pg_server, schema=schema)
    drop_schemas(schema)

# --- a signal never leaves a transaction open ---------------------------------------------


class _InterruptAfter(sqlite3.Cursor):
    """The writer's real cursor, raising KeyboardInterrupt right after one statement ran.

    This is where a Ctrl+C lands when its handler runs as ``execute`` returns:
    the statement took effect, the exception comes before the next line.
    """

    statement = "BEGIN IMMEDIATE"
    armed = 0

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:  # type: ignore[override]
        result = super().execute(sql, params)
        if _InterruptAfter.armed and sql.strip().startswith(_InterruptAfter.statement):
            _InterruptAfter.armed -= 1
            raise KeyboardInterrupt
        return result


def _interrupt_writer(store: Store, after: str, times: int = 1) -> None:
    backend: Any = store.backend
    _InterruptAfter.statement = after
    _InterruptAfter.armed = times
    backend._wcur = _InterruptAfter(backend._writer)


def _other_process_can_write(db: str) -> None:
    """A second store (its own connections, as another process has) writes at once."""
    if not db.startswith("postgresql://"):
        raw = sqlite3.connect(db, timeout=0.5, isolation_level=None)
        raw.execute("BEGIN IMMEDIATE")  # "database is locked" if the writer kept its lock
        raw.execute("ROLLBACK")
        raw.close()
    other = tether.open_store(db, load_plugins=False)
    other.backend.write_budget = 2.0  # type: ignore[attr-defined]
    try:
        with other.session(source="other") as h:
            h.append("user", "the write lock is free")
    finally:
        other.close()


@pytest.mark.parametrize("after", ["BEGIN IMMEDIATE", "UPDATE", "INSERT INTO messages", "COMMIT"])
def test_an_interrupt_at_any_point_of_a_write_leaves_no_transaction_open(
    db_path: str, after: str
) -> None:
    """KeyboardInterrupt right after BEGIN, mid-transaction or after COMMIT:
    the writer is rolled back (or committed), the lock is free, writes go on."""
    s = tether.open_store(db_path, load_plugins=False)
    h = s.session(source="sig")
    h.append("user", "first")
    _interrupt_writer(s, after, times=40)
    interrupted = 0
    for i in range(40):
        try:
            h.append("user", f"m{i}")
        except KeyboardInterrupt:
            interrupted += 1
    assert interrupted == 40
    backend: Any = s.backend
    assert not backend._writer.in_transaction
    _other_process_can_write(db_path)
    h.append("user", "after the interrupts")
    h.buffer("assistant", "buffered")
    h.flush()
    session = s.get_session(h.id)
    stored = s.get_messages(h.id)
    assert session.message_count == len(stored) == stored[-1].seq
    assert [m.content for m in stored[-2:]] == ["after the interrupts", "buffered"]
    assert h.end() is True
    s.close()


def test_an_interrupt_right_after_begin_of_a_flush_keeps_the_buffer(db_path: str) -> None:
    s = tether.open_store(db_path, load_plugins=False)
    h = s.session(source="sig")
    h.buffer("user", "kept")
    _interrupt_writer(s, "BEGIN IMMEDIATE")
    with pytest.raises(KeyboardInterrupt):
        h.flush()
    assert h.pending == 1
    assert [m.content for m in h.flush()] == ["kept"]
    assert h.end() is True
    _other_process_can_write(db_path)
    s.close()


def test_an_interrupt_inside_a_postgres_transaction_rolls_it_back(pg_url: str) -> None:
    """The same on PostgreSQL: the connection goes back to the pool idle, never
    inside a transaction, and its row locks are released."""
    url = pg_url
    s = tether.open_store(url, load_plugins=False)
    h = s.session(source="sig")
    h.append("user", "first")

    def interrupted(c: Any) -> None:
        c.execute("UPDATE sessions SET title = 'never' WHERE id = ?", (h.id,))
        raise KeyboardInterrupt

    for _ in range(3):
        with pytest.raises(KeyboardInterrupt):
            s.backend.write(interrupted)
    assert s.get_session(h.id).title is None
    _other_process_can_write(url)
    h.append("user", "second")
    assert h.end() is True
    s.close()
