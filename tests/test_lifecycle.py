"""The lifecycle API: lazy persist, append, buffered flush, end exactly once, chains."""

from __future__ import annotations

import pytest

import tether
from tether import SessionEndedError, SessionNotFoundError
from tether.compose import Store


def rows(store: Store, table: str) -> int:
    return store.backend.read(lambda c: c.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_a_session_without_content_leaves_no_row(store: Store) -> None:
    h = store.session(source="cli", model="m", title="t")
    assert not h.persisted
    assert h.end() is False
    assert rows(store, "sessions") == 0
    assert rows(store, "events") == 0
    with store.session(source="tui"):
        pass
    assert rows(store, "sessions") == 0


def test_persist_writes_an_empty_session_on_purpose(store: Store) -> None:
    h = store.session(source="cli")
    h.persist()
    s = store.get_session(h.id)
    assert s.message_count == 0 and s.is_open
    assert store.census().ghosts == 1
    assert store.list_sessions().items == []  # empties are not resumable
    assert [i.session.id for i in store.list_sessions(include_empty=True).items] == [h.id]
    assert h.end() is True


def test_set_title_before_the_first_write_rides_along_with_it(store: Store) -> None:
    h = store.session(source="gateway")
    assert h.set_title("Why does make fail?") is True
    h.append("user", "Why does make fail?")
    assert store.get_session(h.id).title == "Why does make fail?"
    assert h.set_title("too late") is False  # the row exists: nothing changes
    assert store.get_session(h.id).title == "Why does make fail?"
    with pytest.raises(tether.InvalidInputError):
        store.session(source="gateway").set_title("nul\x00")
    h.end()


def test_append_commits_and_numbers_messages(store: Store) -> None:
    h = store.session(source="cli", model="gpt", cwd="/src", metadata={"k": [1, "x"]})
    m1 = h.append("user", "hello")
    m2 = h.append(
        "assistant",
        None,
        tool_calls=[
            {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}
        ],
    )
    m3 = h.append("tool", "a b c", tool_call_id="c1", tool_name="ls")
    assert (m1.seq, m2.seq, m3.seq) == (1, 2, 3)
    msgs = store.get_messages(h.id)
    assert [m.role for m in msgs] == ["user", "assistant", "tool"]
    assert msgs[1].content is None and msgs[1].tool_calls[0]["function"]["name"] == "ls"
    assert msgs[2].tool_call_id == "c1" and msgs[2].tool_name == "ls"
    s = store.get_session(h.id)
    assert s.message_count == 3 and s.model == "gpt" and s.cwd == "/src"
    assert s.metadata == {"k": [1, "x"]}
    assert s.last_active_at >= s.created_at
    assert [m.seq for m in store.get_messages(h.id, after_seq=1)] == [2, 3]
    assert [m.seq for m in store.get_messages(h.id, after_seq=1, limit=1)] == [2]
    h.end()


def test_idempotency_key_on_append(store: Store) -> None:
    h = store.session(source="cli")
    a = h.append("user", "once", idem_key="k1")
    b = h.append("user", "once", idem_key="k1")
    assert a.seq == b.seq == 1
    assert store.get_session(h.id).message_count == 1
    h.end()


def test_buffer_and_flush_one_transaction_no_duplicates(store: Store) -> None:
    h = store.session(source="agent")
    keys = [h.buffer("assistant", f"step {i}") for i in range(10)]
    assert h.pending == 10 and not h.persisted
    flushed = h.flush()
    assert [m.seq for m in flushed] == list(range(1, 11))
    assert h.pending == 0
    assert store.get_session(h.id).message_count == 10
    # Re-flushing the same messages (say after an uncertain failure) is a no-op.
    for i, key in enumerate(keys[:5]):
        h.buffer("assistant", f"step {i}", idem_key=key)
    h.buffer("assistant", "step 10")
    again = h.flush()
    assert [m.seq for m in again] == [1, 2, 3, 4, 5, 11]
    assert store.get_session(h.id).message_count == 11
    assert [m.content for m in store.get_messages(h.id)] == [f"step {i}" for i in range(11)]
    h.end()


def test_repeated_key_within_one_flush_is_one_message(store: Store) -> None:
    h = store.session(source="agent")
    h.buffer("user", "a", idem_key="same")
    h.buffer("user", "a", idem_key="same")
    h.buffer("user", "b")
    assert [m.seq for m in h.flush()] == [1, 1, 2]
    assert store.get_session(h.id).message_count == 2
    h.end()


def test_persist_between_buffer_and_flush_keeps_keys_deduplicated(store: Store) -> None:
    # Found by the property test: persist() writes no pending row, so it must
    # not forget that the pending rows carry keys the caller chose.
    h = store.session(source="agent")
    h.buffer("assistant", "same", idem_key="k1")
    h.buffer("assistant", "same", idem_key="k1")
    h.persist()
    assert [m.seq for m in h.flush()] == [1, 1]
    assert store.get_session(h.id).message_count == 1
    h.end()


def test_failed_flush_keeps_messages_for_the_next(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = store.session(source="agent")
    h.append("user", "first")
    h.buffer("assistant", "kept")
    calls = {"n": 0}
    real = store.backend.write

    def flaky(fn):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise tether.StoreBusyError("simulated")
        return real(fn)

    monkeypatch.setattr(store.backend, "write", flaky)
    with pytest.raises(tether.StoreBusyError):
        h.flush()
    assert h.pending == 1
    assert [m.seq for m in h.flush()] == [2]
    assert store.get_session(h.id).message_count == 2


def test_a_flush_that_committed_but_failed_is_not_repeated(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit went through but the caller saw an error (a connection lost
    as it committed, say): flushing again must not store the messages twice."""
    h = store.session(source="agent")
    h.append("user", "first")
    for i in range(3):
        h.buffer("assistant", f"part {i}")
    real = store.backend.write
    calls = {"n": 0}

    def commits_then_fails(fn):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        result = real(fn)
        if calls["n"] == 1:
            raise tether.StoreUnavailableError("lost the connection while committing")
        return result

    monkeypatch.setattr(store.backend, "write", commits_then_fails)
    with pytest.raises(tether.StoreUnavailableError):
        h.flush()
    assert h.pending == 3  # the handle cannot know they are stored...
    h.buffer("assistant", "part 3")
    assert [m.seq for m in h.flush()] == [2, 3, 4, 5]  # ...so the flush looks their keys up
    assert [m.content for m in store.get_messages(h.id)] == [
        "first",
        "part 0",
        "part 1",
        "part 2",
        "part 3",
    ]
    assert store.get_session(h.id).message_count == 5
    h.end()


def test_append_writes_pending_buffer_first(store: Store) -> None:
    h = store.session(source="agent")
    h.buffer("user", "buffered")
    m = h.append("assistant", "direct")
    assert m.seq == 2 and h.pending == 0
    assert [x.content for x in store.get_messages(h.id)] == ["buffered", "direct"]
    h.end()


def test_end_flushes_and_is_idempotent(store: Store) -> None:
    h = store.session(source="agent")
    h.buffer("user", "q")
    h.buffer("assistant", "a")
    assert h.end("completed") is True
    assert h.end("error") is False
    s = store.get_session(h.id)
    assert s.end_reason == "completed" and s.message_count == 2
    with pytest.raises(SessionEndedError):
        h.append("user", "late")


def test_first_reason_wins(store: Store) -> None:
    h = store.session(source="cli")
    h.append("user", "x")
    assert store.end_session(h.id, "cli_close", "bye") is True
    assert store.end_session(h.id, "reaped") is False
    s = store.get_session(h.id)
    assert (s.end_reason, s.end_detail) == ("cli_close", "bye")
    ended_at = s.ended_at
    assert h.end("completed") is False  # the handle learns it was ended elsewhere
    assert store.get_session(h.id).ended_at == ended_at
    with pytest.raises(SessionNotFoundError):
        store.end_session("nope", "manual")


def test_append_after_external_end_is_refused(store: Store) -> None:
    h = store.session(source="cli")
    h.append("user", "x")
    store.end_session(h.id, "manual")
    with pytest.raises(SessionEndedError):
        h.append("user", "y")
    assert h.ended
    assert store.get_session(h.id).message_count == 1


def test_context_manager_reasons(store: Store) -> None:
    with store.session(source="cli") as ok:
        ok.append("user", "fine")
    assert store.get_session(ok.id).end_reason == "completed"
    with pytest.raises(ValueError), store.session(source="cli") as bad:
        bad.append("user", "boom")
        raise ValueError("kaput")
    s = store.get_session(bad.id)
    assert s.end_reason == "error" and s.end_detail == "ValueError: kaput"


def test_chains_are_listed_once_with_totals(db_url: str, clock: tether.ManualClock) -> None:
    s = tether.open_store(db_url, clock=clock, load_plugins=False)
    root = s.session(source="cli", title="first")
    root.append("user", "a")
    root.append("assistant", "b")
    root.end("compression")
    clock.advance(5)
    child = s.session(source="cli", title="second", parent_id=root.id)
    child.append("user", "c")
    clock.advance(5)
    grandchild = s.session(source="cli", parent_id=child.id)
    grandchild.append("user", "d")
    other = s.session(source="tui")
    other.append("user", "z")
    clock.advance(5)
    items = s.list_sessions().items
    by_root = {i.root_id: i for i in items}
    assert set(by_root) == {root.id, other.id}
    chain = by_root[root.id]
    assert chain.session.id == grandchild.id  # the newest tip is what you resume
    assert chain.chain_message_count == 4
    assert [x.id for x in s.get_chain(child.id)] == [root.id, child.id, grandchild.id]
    assert s.get_session(grandchild.id).parent_id == child.id
    assert s.get_session(grandchild.id).root_id == root.id
    # A branch starts its own chain but remembers where it came from.
    branch = s.session(source="cli", parent_id=root.id, branch=True)
    branch.append("user", "fork")
    assert s.get_session(branch.id).root_id == branch.id
    assert len(s.list_sessions().items) == 3
    for h in (grandchild, child, other, branch):
        h.end()
    s.close()


def test_unknown_parent_is_refused_before_anything_is_written(store: Store) -> None:
    h = store.session(source="cli", parent_id="missing")
    with pytest.raises(SessionNotFoundError):
        h.append("user", "x")
    assert rows(store, "sessions") == 0 and rows(store, "messages") == 0


def test_listing_keyset_pagination_and_filters(db_url: str, clock: tether.ManualClock) -> None:
    s = tether.open_store(db_url, clock=clock, load_plugins=False)
    ids = []
    for i in range(25):
        h = s.session(source="cli" if i % 2 else "tui", cwd=f"/w{i % 3}")
        h.append("user", str(i))
        if i % 5 == 0:
            h.end()
        ids.append(h.id)
        clock.advance(2)
    seen = []
    cursor = None
    while True:
        page = s.list_sessions(limit=7, cursor=cursor)
        seen += [i.session.id for i in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    assert len(s.list_sessions(source="cli", limit=100).items) == 12
    assert all(i.session.cwd == "/w1" for i in s.list_sessions(cwd="/w1", limit=100).items)
    assert len(s.list_sessions(state="ended", limit=100).items) == 5
    open_ids = [i.session.id for i in s.list_sessions(state="open", limit=100).items]
    assert len(open_ids) == 20 and open_ids == [x for x in reversed(ids) if ids.index(x) % 5]
    page = s.list_sessions(state="open", limit=3)
    assert [
        i.session.id
        for i in s.list_sessions(state="open", cursor=page.next_cursor, limit=100).items
    ] == open_ids[3:]
    with pytest.raises(tether.InvalidInputError):
        s.list_sessions(cursor="garbage!")
    with pytest.raises(tether.InvalidInputError):
        s.list_sessions(state="sleeping")
    s.close()


def test_census(store: Store) -> None:
    for reason in ("completed", "completed", "error"):
        h = store.session(source="cli")
        h.append("user", "x")
        h.end(reason)
    g = store.session(source="tui")
    g.persist()
    live = store.session(source="tui")
    live.append("user", "y")
    c = store.census()
    assert (c.total, c.open, c.ended, c.ghosts) == (5, 2, 3, 1)
    assert c.end_reasons == {"completed": 2, "error": 1}
    assert c.by_source["cli"].end_reasons == {"completed": 2, "error": 1}
    assert c.by_source["tui"].open == 2 and c.by_source["tui"].ghosts == 1
    assert c.oldest_open is not None and c.oldest_open.id == g.id
    d = c.to_dict()
    assert {"total", "open", "ended", "ghosts", "end_reasons", "by_source"} <= set(d)


def test_resolve_id_prefix(store: Store) -> None:
    a = store.session(source="cli")
    a.append("user", "x")
    assert store.resolve_id(a.id) == a.id
    assert store.resolve_id(a.id[:20]) == a.id
    with pytest.raises(SessionNotFoundError):
        store.resolve_id("ZZZZ")


def test_attach_cooperates_at_the_same_epoch(store: Store) -> None:
    owner = store.session(source="gateway")
    owner.append("user", "one")
    helper = store.attach(owner.id)
    assert helper.append("assistant", "two").seq == 2
    assert owner.append("user", "three").seq == 3  # the owner's cached count heals
    assert helper.end() is False  # an attached handle never ends the session...
    assert store.get_session(owner.id).is_open
    assert owner.end() is True  # ...its owner does
    with pytest.raises(SessionEndedError):
        store.attach(owner.id)


def test_mark_detached(store: Store, clock: tether.ManualClock) -> None:
    h = store.session(source="gateway")
    h.append("user", "x")
    assert store.mark_detached(h.id, clock.now()) is True
    assert store.get_session(h.id).detached_at == clock.now()
    assert store.mark_detached(h.id, None) is True
    assert store.get_session(h.id).detached_at is None
    h.end()
    assert store.mark_detached(h.id, clock.now()) is False
    assert store.mark_detached("nope", None) is False
