"""Data model v2 (schema 4): message meta, state and payload; last-N reads; retraction; origins."""

from __future__ import annotations

from typing import Any

import pytest

import tether
from tether import SessionEndedError, SessionNotFoundError, StaleOwnerError
from tether.gateway.messages import message_view, turn_key, turn_meta
from tether.store import Store


def raw(store: Store, query: str, *params: Any) -> list[Any]:
    return store.backend.read(lambda c: c.execute(query, params).fetchall())


def plan(store: Store, query: str, params: tuple[Any, ...]) -> str:
    """The backend's plan for ``query`` as one lowercase text."""
    if store.backend.dialect == "postgresql":
        rows = raw(store, "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + query, *params)
    else:
        rows = [(r[3],) for r in raw(store, "EXPLAIN QUERY PLAN " + query, *params)]
    return "\n".join(str(r[0]) for r in rows).lower()


# --- migration 4 ---------------------------------------------------------------------------


def test_messages_gain_meta_state_and_payload_with_state_checked(store: Store) -> None:
    h = store.session(source="cli")
    h.append("user", "hi")
    assert raw(store, "SELECT meta, state, payload FROM messages") == [(None, "active", None)]
    with pytest.raises(Exception, match=r"(?i)check"):  # the driver's own error: a CHECK
        store.backend.write(
            lambda c: c.execute("UPDATE messages SET state = 'gone' WHERE seq = 1").rowcount
        )
    assert raw(store, "SELECT state FROM messages") == [("active",)]
    h.end()


# --- meta and payload ------------------------------------------------------------------------


def test_meta_and_payload_are_stored_and_returned_unchanged(store: Store) -> None:
    item = {"type": "function_call", "call_id": "c1", "arguments": '{"x": [1, 2.5, null]}'}
    h = store.session(source="sdk")
    m = h.append("assistant", None, meta={"source_id": "m-17", "tokens": 42}, payload=item)
    assert (m.meta, m.state, m.payload) == ({"source_id": "m-17", "tokens": 42}, "active", item)
    key = h.buffer("tool", "42", tool_call_id="c1", meta={"n": 1}, payload=[{"a": "é"}, 2])
    flushed = h.flush()
    assert [(x.meta, x.payload) for x in flushed] == [({"n": 1}, [{"a": "é"}, 2])]
    assert flushed[0].idem_key == key
    got = store.get_messages(h.id)
    assert [(x.meta, x.state, x.payload) for x in got] == [
        ({"source_id": "m-17", "tokens": 42}, "active", item),
        ({"n": 1}, "active", [{"a": "é"}, 2]),
    ]
    d = got[0].to_dict()
    assert d["meta"] == {"source_id": "m-17", "tokens": 42} and d["payload"] == item
    assert d["state"] == "active" and d["content"] is None and d["seq"] == 1
    # A plain append (the hot path) stores neither.
    plain = h.append("user", "plain")
    assert (plain.meta, plain.payload) == (None, None)
    assert store.get_messages(h.id)[-1].meta is None
    h.end()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"meta": ["not", "an", "object"]}, "meta must be a dict"),
        ({"meta": {"x": float("nan")}}, "meta"),
        ({"payload": "a string"}, "payload must be a dict or a list"),
        ({"payload": {"bad": {1, 2}}}, "payload"),
    ],
)
def test_meta_and_payload_are_validated_before_anything_is_written(
    store: Store, kwargs: dict[str, Any], message: str
) -> None:
    h = store.session(source="cli")
    with pytest.raises(tether.InvalidInputError, match=message):
        h.append("user", "x", **kwargs)
    with pytest.raises(tether.InvalidInputError, match=message):
        h.buffer("user", "x", **kwargs)
    assert not h.persisted and h.pending == 0
    h.end()


# --- states and retraction -------------------------------------------------------------------


def test_retract_keeps_the_seq_and_readers_choose_the_states_they_see(store: Store) -> None:
    h = store.session(source="cli")
    for text in ("one", "two", "three"):
        h.append("user", text)
    gone = h.retract_last()
    assert gone is not None and (gone.seq, gone.content, gone.state) == (3, "three", "retracted")
    gone = store.retract_last(h.id)
    assert gone is not None and (gone.seq, gone.content) == (2, "two")
    # The next message takes the next seq: retracted rows keep theirs.
    assert h.append("assistant", "four").seq == 4
    assert [m.seq for m in store.get_messages(h.id)] == [1, 4]
    both = store.get_messages(h.id, states=("active", "retracted"))
    assert [(m.seq, m.state) for m in both] == [
        (1, "active"),
        (2, "retracted"),
        (3, "retracted"),
        (4, "active"),
    ]
    assert [m.seq for m in store.get_messages(h.id, states=["retracted"])] == [2, 3]
    assert store.get_messages(h.id, states=("compacted",)) == []
    # message_count counts stored rows, whatever their state.
    assert store.get_session(h.id).message_count == 4
    with pytest.raises(tether.InvalidInputError, match="invalid message states"):
        store.get_messages(h.id, states=("deleted",))
    with pytest.raises(tether.InvalidInputError, match="invalid message states"):
        store.get_messages(h.id, states=())
    h.end()


def test_retract_last_with_nothing_active_and_on_unknown_sessions(store: Store) -> None:
    h = store.session(source="cli")
    assert h.retract_last() is None  # nothing written: still nothing written
    assert not h.persisted
    h.append("user", "only")
    assert h.retract_last() is not None
    assert h.retract_last() is None
    assert store.retract_last(h.id) is None
    with pytest.raises(SessionNotFoundError):
        store.retract_last("no-such-session")
    h.end()
    # From outside the owner it works on ended sessions too (an importer's correction).
    assert store.get_messages(h.id, states=("retracted",))[0].content == "only"


def test_retract_through_a_handle_flushes_the_buffer_first(store: Store) -> None:
    h = store.session(source="cli")
    h.append("user", "kept")
    h.buffer("assistant", "buffered")
    gone = h.retract_last()
    assert gone is not None and gone.content == "buffered" and gone.seq == 2
    assert h.pending == 0
    assert [m.content for m in store.get_messages(h.id)] == ["kept"]
    h.end()


def test_retract_through_a_handle_is_fenced_by_its_epoch(db_url: str) -> None:
    a = tether.open_store(db_url, load_plugins=False)
    b = tether.open_store(db_url, load_plugins=False, startup_sweep=False)
    try:
        h = a.session(source="cli")
        h.append("user", "one")
        h.append("user", "two")
        taken = b.resume(h.id, force=True)
        with pytest.raises(StaleOwnerError):
            h.retract_last()
        assert [m.content for m in b.get_messages(h.id)] == ["one", "two"]
        gone = taken.retract_last()
        assert gone is not None and gone.content == "two"
        taken.end()
        with pytest.raises(SessionEndedError):
            b.retract_last(h.id, epoch=taken.epoch)
        assert [m.content for m in b.get_messages(h.id)] == ["one"]
    finally:
        b.close()
        a.close()


def test_retract_finds_the_newest_active_row_by_the_primary_key(store: Store) -> None:
    h = store.session(source="cli")
    for i in range(50):
        h.buffer("user", f"m{i}")
    h.flush()
    text = plan(store, tether.store.sql.NEWEST_ACTIVE_SEQ, (h.id,))
    if store.backend.dialect == "postgresql":
        assert "index scan backward using messages_pkey" in text, text
        assert "rows=1 " in text.split("index scan backward")[1], text
    else:
        assert "using primary key" in text or "sqlite_autoindex_messages_1" in text, text
        assert "temp b-tree" not in text, text
    h.end()


# --- the last N ------------------------------------------------------------------------------


def test_get_last_messages_returns_the_last_n_in_order(store: Store) -> None:
    h = store.session(source="cli")
    for i in range(1, 11):
        h.append("user", f"m{i}")
    last = store.get_last_messages(h.id, 3)
    assert [(m.seq, m.content) for m in last] == [(8, "m8"), (9, "m9"), (10, "m10")]
    h.retract_last()
    assert [m.seq for m in store.get_last_messages(h.id, 3)] == [7, 8, 9]
    assert [m.seq for m in store.get_last_messages(h.id, 2, states=("active", "retracted"))] == [
        9,
        10,
    ]
    assert [m.seq for m in store.get_last_messages(h.id, 100)] == list(range(1, 10))
    assert store.get_last_messages(h.id, 0) == []
    with pytest.raises(SessionNotFoundError):
        store.get_last_messages("no-such-session", 3)
    with pytest.raises(tether.InvalidInputError):
        store.get_last_messages(h.id, -1)
    h.end()


def test_get_last_messages_reads_only_n_rows(store: Store) -> None:
    h = store.session(source="cli")
    for _ in range(4):
        for i in range(100):
            h.buffer("user", f"m{i}")
        h.flush()
    query = tether.store.sql.select_last_messages(1)
    text = plan(store, query, (h.id, "active", 5))
    if store.backend.dialect == "postgresql":
        # EXPLAIN ANALYZE counts the rows each node produced: the backward
        # index walk stops after 5 of the 400.
        walk = text.split("index scan backward using messages_pkey")[1].splitlines()[0]
        assert "rows=5 " in walk, text
    else:
        # The inner query walks the primary key backwards (no sort of the whole
        # session); only the outer sort of the N rows uses a temporary tree.
        assert "sqlite_autoindex_messages_1" in text or "primary key" in text, text
        assert text.count("use temp b-tree for order by") <= 1, text
    assert [m.seq for m in store.get_last_messages(h.id, 5)] == [396, 397, 398, 399, 400]
    h.end()


# --- origins ---------------------------------------------------------------------------------


def test_find_by_origin(store: Store) -> None:
    assert store.find_by_origin("hermes:abc") is None
    with pytest.raises(tether.InvalidInputError):
        store.find_by_origin(None)  # type: ignore[arg-type]


# --- the gateway's turn marks ------------------------------------------------------------------


def test_turn_marks_live_in_meta_and_old_keyed_marks_are_still_read(store: Store) -> None:
    h = store.session(source="gateway")
    # Rows as gateways before schema 4 wrote them: the mark in the idempotency key.
    h.append("user", "old prompt", idem_key=turn_key("T1", 0))
    h.append("assistant", "old partial", idem_key="turn:T1:1:interrupted")
    # Rows as they are written now: the key names the message, the meta says the rest.
    h.append("user", "new prompt", idem_key=turn_key("T2", 0), meta=turn_meta("T2"))
    h.append(
        "assistant", "new partial", idem_key=turn_key("T2", 1), meta=turn_meta("T2", "interrupted")
    )
    h.append("assistant", "failed", idem_key=turn_key("T3", 1), meta=turn_meta("T3", "error"))
    views = [message_view(m) for m in store.get_messages(h.id)]
    assert [(v["turn_id"], v["interrupted"]) for v in views] == [
        ("T1", False),
        ("T1", True),
        ("T2", False),
        ("T2", True),
        ("T3", False),
    ]
    stored = store.get_messages(h.id)
    assert stored[3].idem_key == "turn:T2:1" and stored[3].meta == {
        "turn_id": "T2",
        "interrupted": True,
    }
    assert stored[4].meta == {"turn_id": "T3", "error": True}
    h.end()
