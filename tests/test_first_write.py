"""A root session's first write (issue 15): the row goes in with its first messages
already counted, instead of an INSERT and then an UPDATE of the row just written.

The row it leaves must be the very row the two-step path leaves (a session
persisted empty, then written to): counts, activity, the listing's key, the
``created`` event, and the seqs handed back.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

import tether
from tether.errors import SessionEndedError

# The columns a first write sets; ids and the owner differ between two sessions.
COMPARED = (
    "source",
    "message_count",
    "chain_message_count",
    "created_at",
    "last_active_at",
    "chain_last_active_at",
    "epoch",
    "ended_at",
)


def _row(store: tether.Store, session_id: str) -> dict[str, Any]:
    query = f"SELECT {', '.join(COMPARED)} FROM sessions WHERE id = ?"
    row = store.backend.read(lambda c: c.execute(query, (session_id,)).fetchone())
    return dict(zip(COMPARED, row, strict=True))


def _chain_activity(store: tether.Store, session_id: str) -> float:
    return float(_row(store, session_id)["chain_last_active_at"])


def _two_step(store: tether.Store) -> Any:
    """A session written the long way: its row first (persist), then its messages."""
    h = store.session(source="cli")
    h.persist()
    return h


@pytest.fixture
def clocked(db_url: str, clock: tether.ManualClock) -> Any:
    s = tether.open_store(db_url, clock=clock, load_plugins=False)
    yield s
    s.close()


def test_a_first_append_leaves_the_row_the_two_step_path_leaves(
    clocked: tether.Store, clock: tether.ManualClock
) -> None:
    one = clocked.session(source="cli")
    two = _two_step(clocked)
    clock.advance(0.25)  # within the listing's resolution: its key stays at creation
    m1 = one.append("user", "hello")
    m2 = two.append("user", "hello")
    assert m1.seq == m2.seq == 1
    assert _row(clocked, one.id) == _row(clocked, two.id)
    session = clocked.get_session(one.id)
    assert session.message_count == 1 and session.last_active_at == session.created_at + 0.25
    assert [m.content for m in clocked.get_messages(one.id)] == ["hello"]
    listed = {item.session.id for item in clocked.list_sessions().items}
    assert {one.id, two.id} <= listed
    one.end()
    two.end()


def test_a_first_flush_spread_over_seconds_moves_the_listing_key_as_before(
    clocked: tether.Store, clock: tether.ManualClock
) -> None:
    one = clocked.session(source="cli")
    two = _two_step(clocked)
    for h in (one, two):
        h.buffer("user", "a")
    clock.advance(2.0)  # past the listing's resolution: the key moves to the last row
    for h in (one, two):
        h.buffer("assistant", "b")
    assert [m.seq for m in one.flush()] == [m.seq for m in two.flush()] == [1, 2]
    assert _row(clocked, one.id) == _row(clocked, two.id)
    session = clocked.get_session(one.id)
    assert _chain_activity(clocked, one.id) == session.created_at + 2.0
    assert one.append("assistant", "c").seq == 3
    assert clocked.get_session(one.id).message_count == 3


def test_a_key_repeated_in_a_first_flush_is_one_message(clocked: tether.Store) -> None:
    h = clocked.session(source="cli")
    h.buffer("user", "once", idem_key="k1")
    h.buffer("user", "once", idem_key="k1")
    h.buffer("assistant", "reply", idem_key="k2")
    assert [m.seq for m in h.flush()] == [1, 1, 2]
    assert clocked.get_session(h.id).message_count == 2
    assert [m.idem_key for m in clocked.get_messages(h.id)] == ["k1", "k2"]


def test_a_first_write_logs_created_once(clocked: tether.Store) -> None:
    h = clocked.session(source="cli")
    h.append("user", "x")
    h.append("user", "y")
    events = clocked.backend.read(
        lambda c: c.execute(
            "SELECT kind, data FROM events WHERE session_id = ? ORDER BY id", (h.id,)
        ).fetchall()
    )
    kinds = [e[0] for e in events]
    assert kinds == ["created"]
    data = events[0][1]
    expected = {"source": "cli", "parent_id": None}
    assert (data if isinstance(data, dict) else json.loads(data)) == expected


def test_a_first_write_onto_an_id_already_taken_goes_through_the_checks(
    clocked: tether.Store,
) -> None:
    """Should a new handle's id already be stored, its first write does what any write
    does: appends after the stored messages if it may, is refused if the session ended."""
    first = clocked.session(source="cli")
    first.append("user", "one")
    again = clocked.session(source="cli")
    again._new_session = dataclasses.replace(again._new_session, id=first.id)
    again._w.session_id = first.id
    assert again.append("user", "two").seq == 2
    assert clocked.get_session(first.id).message_count == 2
    first.end()
    late = clocked.session(source="cli")
    late._new_session = dataclasses.replace(late._new_session, id=first.id)
    late._w.session_id = first.id
    with pytest.raises(SessionEndedError):
        late.append("user", "three")
    assert clocked.get_session(first.id).message_count == 2


# Every column a new session's row gets from the handle (the owner is the same
# process for both), compared between the one-step first append and persist().
EVERY_FIELD = (
    *COMPARED,
    "model",
    "title",
    "cwd",
    "root_id = id",
    "chain_tip_id = id",
    "owner_id",
    "metadata",
    "origin IS NOT NULL",
)


def test_a_first_append_writes_the_row_persist_then_append_writes(
    clocked: tether.Store,
) -> None:
    """The root row is bound by position (issue 15): each value lands in its column
    (persist() writes through the same statement, so values are checked too)."""
    fields = {"model": "m-1", "title": "t-1", "cwd": "/c/1", "metadata": {"k": 1}}
    one = clocked.session(source="cli", origin="o:one", **fields)
    two = clocked.session(source="cli", origin="o:two", **fields)
    two.persist()
    one.append("user", "hello")
    two.append("user", "hello")
    query = f"SELECT {', '.join(EVERY_FIELD)}, origin FROM sessions WHERE id = ?"
    rows = [
        clocked.backend.read(lambda c, i=i: c.execute(query, (i,)).fetchone())
        for i in (one.id, two.id)
    ]
    assert tuple(rows[0][:-1]) == tuple(rows[1][:-1])
    assert (rows[0][-1], rows[1][-1]) == ("o:one", "o:two")
    got = dict(zip(EVERY_FIELD, rows[0], strict=False))
    assert (got["model"], got["title"], got["cwd"]) == ("m-1", "t-1", "/c/1")
    assert got["root_id = id"] and got["chain_tip_id = id"]
    assert got["owner_id"] == clocked.owner_id
    metadata = got["metadata"]  # text on SQLite, already decoded (jsonb) on PostgreSQL
    assert (json.loads(metadata) if isinstance(metadata, str) else metadata) == {"k": 1}
    assert got["message_count"] == got["chain_message_count"] == 1
    assert got["created_at"] == got["last_active_at"] == got["chain_last_active_at"]
    assert got["epoch"] == 0 and got["ended_at"] is None and got["source"] == "cli"
    one.end()
    two.end()
