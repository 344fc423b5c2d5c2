"""The gateway's writer thread and its group commit, on a real SQLite store.

Each test holds the writer on a first job until everything else is queued, so
the queued writes meet on the thread together, as fifty prompts arriving at
once do, and the grouping is deterministic.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.errors import SessionEndedError, StoreError
from tether.gateway.writer import GroupWriter
from tether.lifecycle import SessionHandle

_OPEN: list[SessionHandle] = []


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tether.Store]:
    with tether.open_store(tmp_path / "t.db") as s:
        yield s
        while _OPEN:
            _OPEN.pop().end()


def _sessions(store: tether.Store, n: int) -> list[SessionHandle]:
    """``n`` persisted sessions (their first message written, alone, as in the gateway)."""
    handles = [store.session(source="gateway") for _ in range(n)]
    _OPEN.extend(handles)
    for i, h in enumerate(handles):
        h.append("user", f"first {i}", idem_key=f"k{i}:0")
    return handles


def _stored(db: Path, session_id: str) -> list[tuple[int, str]]:
    """What another connection reads: the session's messages, seq and content."""
    with sqlite3.connect(db) as c:
        rows = c.execute(
            "SELECT seq, content FROM messages WHERE session_id = ? ORDER BY seq", (session_id,)
        ).fetchall()
    return [(int(seq), str(content)) for seq, content in rows]


def _persisted(h: SessionHandle) -> Any:
    return lambda: h.persisted and not h.ended


def _appends(writer: GroupWriter, handles: list[Any], role: str, text: str) -> list[Any]:
    """One keyed append per handle (``text i``), each queued as a groupable write."""
    return [
        writer.submit(
            lambda h=h, i=i: h.append(role, f"{text} {i}", idem_key=f"k{i}:1"), _persisted(h)
        )
        for i, h in enumerate(handles)
    ]


async def _held(writer: GroupWriter) -> threading.Event:
    """Occupy the writer thread until the returned event is set."""
    release = threading.Event()
    started = threading.Event()

    def hold() -> None:
        started.set()
        release.wait(10)

    writer.submit(hold)
    while not started.is_set():
        await asyncio.sleep(0.001)
    return release


def test_queued_appends_of_many_sessions_commit_together_and_are_durable_when_resolved(
    store: tether.Store, tmp_path: Path
) -> None:
    handles = _sessions(store, 20)

    async def main() -> list[Any]:
        writer = GroupWriter(store.backend)
        release = await _held(writer)
        futs = _appends(writer, handles, "user", "second")
        release.set()
        done, _ = await asyncio.wait(futs, return_when=asyncio.FIRST_COMPLETED)
        # Acknowledged means committed: the moment the first caller hears back,
        # another connection already reads every write of its group.
        seen = [_stored(tmp_path / "t.db", h.id) for h in handles]
        out = await asyncio.gather(*futs)
        writer.shutdown()
        assert (writer.groups, writer.grouped, writer.fallbacks) == (1, 20, 0)
        assert done and all(len(rows) == 2 for rows in seen)
        return out

    messages = asyncio.run(main())
    assert [m.seq for m in messages] == [2] * 20
    for i, h in enumerate(handles):
        assert _stored(tmp_path / "t.db", h.id) == [(1, f"first {i}"), (2, f"second {i}")]


def _events(db: Path, kind: str) -> int:
    with sqlite3.connect(db) as c:
        return int(c.execute("SELECT count(*) FROM events WHERE kind = ?", (kind,)).fetchone()[0])


def test_a_write_that_fails_in_a_group_fails_alone(store: tether.Store, tmp_path: Path) -> None:
    """One append refused (its session ended elsewhere), one write that fails after
    writing a row: each is rolled back alone, every other write of the group commits."""
    handles = _sessions(store, 5)
    with tether.open_store(tmp_path / "t.db") as other:
        assert other.end_session(handles[2].id, "cli_close")  # ended elsewhere meanwhile

    def half_done(c: Any) -> None:
        store.record_event(handles[0].id, "half_done", {})  # written, then the write fails
        raise ValueError("failed after writing")

    def failing() -> None:
        store.backend.write(half_done)

    async def main() -> list[Any]:
        writer = GroupWriter(store.backend)
        release = await _held(writer)
        futs = _appends(writer, handles, "assistant", "reply")
        futs.insert(1, writer.submit(failing, lambda: True))
        futs.append(writer.submit(lambda: store.record_event(handles[0].id, "kept", {}), None))
        release.set()
        out = await asyncio.gather(*futs, return_exceptions=True)
        writer.shutdown()
        assert (writer.groups, writer.grouped, writer.fallbacks) == (1, 6, 0)
        failed = out.pop(1)
        assert isinstance(failed, ValueError)
        return out

    out = asyncio.run(main())
    assert (_events(tmp_path / "t.db", "half_done"), _events(tmp_path / "t.db", "kept")) == (0, 1)
    assert isinstance(out[2], SessionEndedError)
    assert handles[2].ended  # the handle heard it: it writes no more
    for i, h in enumerate(handles):
        expected = [(1, f"first {i}")] + ([] if i == 2 else [(2, f"reply {i}")])
        assert _stored(tmp_path / "t.db", h.id) == expected
        if i != 2:
            assert out[i].seq == 2


def test_a_group_whose_transaction_goes_bad_runs_again_one_by_one(
    store: tether.Store, tmp_path: Path
) -> None:
    """A database error that is not a write's own (here: a statement the database
    rejects) may spoil the shared transaction: nothing of the group is kept, and
    every write runs again on its own, in order; only the bad one fails."""
    handles = _sessions(store, 4)

    def bad() -> None:
        store.backend.write(lambda c: c.execute("INSERT INTO no_such_table VALUES (1)"))

    async def main() -> list[Any]:
        writer = GroupWriter(store.backend)
        release = await _held(writer)
        futs = []
        for i, h in enumerate(handles):
            futs.append(
                writer.submit(
                    lambda h=h, i=i: h.append("user", f"again {i}", idem_key=f"k{i}:1"),
                    _persisted(h),
                )
            )
            if i == 1:
                futs.append(writer.submit(bad, lambda: True))
        release.set()
        out = await asyncio.gather(*futs, return_exceptions=True)
        writer.shutdown()
        assert (writer.groups, writer.fallbacks) == (0, 1)
        return out

    out = asyncio.run(main())
    assert isinstance(out[2], StoreError) and "no_such_table" in str(out[2])
    appended = [out[0], out[1], out[3], out[4]]
    assert [m.seq for m in appended] == [2, 2, 2, 2]  # not 3: the rolled-back try left no gap
    for i, h in enumerate(handles):
        assert _stored(tmp_path / "t.db", h.id) == [(1, f"first {i}"), (2, f"again {i}")]
        h.append("assistant", "later", idem_key=f"k{i}:2")  # the handle still writes, in order
        assert _stored(tmp_path / "t.db", h.id)[-1] == (3, "later")


def test_a_group_that_cannot_commit_acknowledges_nothing(
    store: tether.Store, tmp_path: Path
) -> None:
    """The database file removed under the store: the group's commit is refused,
    and so is every write when it runs again alone. No caller hears success."""
    handles = _sessions(store, 3)

    async def main() -> list[Any]:
        writer = GroupWriter(store.backend)
        release = await _held(writer)
        futs = _appends(writer, handles, "user", "lost")
        os.rename(tmp_path / "t.db", tmp_path / "moved.db")
        release.set()
        out = await asyncio.gather(*futs, return_exceptions=True)
        writer.shutdown()
        assert (writer.groups, writer.fallbacks) == (0, 1)
        return out

    out = asyncio.run(main())
    assert all(isinstance(o, StoreError) and "removed" in str(o) for o in out), out
    os.rename(tmp_path / "moved.db", tmp_path / "t.db")  # back beside its WAL: read it
    for i, h in enumerate(handles):
        assert _stored(tmp_path / "t.db", h.id) == [(1, f"first {i}")]


def test_writes_that_may_not_share_a_commit_keep_their_place_in_the_order(
    store: tether.Store, tmp_path: Path
) -> None:
    """A session's first message runs alone (it writes the row and starts the
    heartbeat); the writes around it are grouped before and after it, in order."""
    old = _sessions(store, 2)
    new = store.session(source="gateway")
    order: list[str] = []

    def append(h: SessionHandle, name: str, key: str) -> Any:
        order.append(name)
        return h.append("user", name, idem_key=key)

    async def main() -> None:
        writer = GroupWriter(store.backend)
        release = await _held(writer)
        futs = [
            writer.submit(lambda: append(old[0], "a", "a"), _persisted(old[0])),
            writer.submit(lambda: append(old[1], "b", "b"), _persisted(old[1])),
            writer.submit(lambda: append(new, "first", "n0"), _persisted(new)),
            writer.submit(lambda: append(new, "second", "n1"), _persisted(new)),
            writer.submit(lambda: append(old[0], "c", "c"), _persisted(old[0])),
        ]
        release.set()
        await asyncio.gather(*futs)
        writer.shutdown()
        # [a, b] together; the new session's first alone; then [second, c] together.
        assert (writer.groups, writer.grouped) == (2, 4)

    asyncio.run(main())
    assert order == ["a", "b", "first", "second", "c"]
    assert [c for _, c in _stored(tmp_path / "t.db", new.id)] == ["first", "second"]
    assert [c for _, c in _stored(tmp_path / "t.db", old[0].id)] == ["first 0", "a", "c"]


def test_a_shut_down_writer_runs_what_was_queued_and_refuses_more(store: tether.Store) -> None:
    handles = _sessions(store, 3)

    async def main() -> None:
        writer = GroupWriter(store.backend)
        futs = _appends(writer, handles, "user", "x")
        writer.shutdown()  # blocks until the queue is drained
        with pytest.raises(RuntimeError):
            writer.submit(lambda: None)
        assert [m.seq for m in await asyncio.gather(*futs)] == [2, 2, 2]

    asyncio.run(main())


def test_queued_appends_commit_together_on_every_backend(db_url: str, backend: str) -> None:
    """One transaction for the queued writes on SQLite and on PostgreSQL (where
    each write is a savepoint too): every caller gets its message, committed."""
    with tether.open_store(db_url, load_plugins=False) as s:
        handles = [s.session(source="gateway") for _ in range(6)]
        for i, h in enumerate(handles):
            h.append("user", f"first {i}", idem_key=f"k{i}:0")

        async def main() -> list[Any]:
            writer = GroupWriter(s.backend)
            release = await _held(writer)
            futs = _appends(writer, handles, "assistant", "reply")
            futs.append(writer.submit(lambda: s.record_event(handles[0].id, "kept", {}), None))
            release.set()
            out = await asyncio.gather(*futs)
            writer.shutdown()
            assert (writer.groups, writer.grouped, writer.fallbacks) == (1, 6, 0)
            return out

        out = asyncio.run(main())
        assert [m.seq for m in out[:-1]] == [2] * 6
        for i, h in enumerate(handles):
            assert [m.content for m in s.get_messages(h.id)] == [f"first {i}", f"reply {i}"]
            h.end()


def test_a_write_that_fails_in_a_group_fails_alone_on_every_backend(db_url: str) -> None:
    """As above, on both backends: a refused append and a write that fails after
    writing a row are each rolled back alone; the rest of the group commits."""
    with tether.open_store(db_url, load_plugins=False) as s:
        handles = [s.session(source="gateway") for _ in range(4)]
        for i, h in enumerate(handles):
            h.append("user", f"first {i}", idem_key=f"k{i}:0")
        with tether.open_store(db_url, load_plugins=False) as other:
            assert other.end_session(handles[1].id, "cli_close")

        def half_done(c: Any) -> None:
            s.record_event(handles[0].id, "half_done", {})
            raise ValueError("failed after writing")

        def events(kind: str) -> int:
            q = "SELECT count(*) FROM events WHERE kind = ?"
            return int(s.backend.read(lambda c: c.execute(q, (kind,)).fetchone()[0]))

        async def main() -> list[Any]:
            writer = GroupWriter(s.backend)
            release = await _held(writer)
            futs = _appends(writer, handles, "assistant", "reply")
            futs.append(writer.submit(lambda: s.backend.write(half_done), lambda: True))
            futs.append(writer.submit(lambda: s.record_event(handles[0].id, "kept", {}), _always))
            release.set()
            out = await asyncio.gather(*futs, return_exceptions=True)
            writer.shutdown()
            assert (writer.groups, writer.grouped, writer.fallbacks) == (1, 6, 0)
            return out

        out = asyncio.run(main())
        assert isinstance(out[1], SessionEndedError) and isinstance(out[4], ValueError)
        assert (events("half_done"), events("kept")) == (0, 1)
        for i, h in enumerate(handles):
            expected = [f"first {i}"] + ([] if i == 1 else [f"reply {i}"])
            assert [m.content for m in s.get_messages(h.id)] == expected
            h.end()


def _always() -> bool:
    return True
