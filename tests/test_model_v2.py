"""Data model v2 (schema 4): message meta, state and payload; last-N reads; retraction; origins."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import tether
from tether import SessionEndedError, SessionNotFoundError, StaleOwnerError
from tether.compose import Store
from tether.gateway.messages import message_view, turn_key, turn_meta
from tether.liveness import Reaper


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


# --- import and external sessions --------------------------------------------------------------

T0 = 1_700_000_000.0


def page(start: int, stop: int) -> list[dict[str, Any]]:
    """Source messages ``start``..``stop - 1`` as an importer hands them over."""
    return [
        {
            "key": f"src-{i}",
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"message {i}",
            "created_at": T0 + 10 * i,
            "meta": {"source_id": i, "tokens": 3 * i},
            "payload": {"id": f"src-{i}", "raw": [i, None, "x"]},
        }
        for i in range(start, stop)
    ]


def counts(store: Store) -> tuple[int, int, int]:
    return (
        raw(store, "SELECT count(*) FROM sessions")[0][0],
        raw(store, "SELECT count(*) FROM messages")[0][0],
        raw(store, "SELECT count(*) FROM events")[0][0],
    )


def test_import_writes_history_and_a_reimport_writes_nothing(store: Store) -> None:
    first = store.import_session(
        "hermes:abc",
        source="hermes",
        model="m",
        title="imported",
        cwd="/w",
        created_at=T0,
        last_active_at=T0 + 5,
        metadata={"k": 1},
        messages=page(0, 3),
    )
    assert (first.created, first.ended, first.written) == (True, False, 3)
    s = first.session
    assert (s.origin, s.source, s.model) == ("hermes:abc", "hermes", "m")
    assert (s.title, s.cwd, s.metadata) == ("imported", "/w", {"k": 1})
    assert s.owner_id is None and s.created_at == T0 and s.ended_at is None
    assert s.message_count == 3 and s.last_active_at == T0 + 20  # its newest message
    assert store.find_by_origin("hermes:abc") == s
    msgs = store.get_messages(s.id)
    assert [(m.seq, m.idem_key, m.created_at) for m in msgs] == [
        (1, "src-0", T0),
        (2, "src-1", T0 + 10),
        (3, "src-2", T0 + 20),
    ]
    assert msgs[1].meta == {"source_id": 1, "tokens": 3}
    assert msgs[1].payload == {"id": "src-1", "raw": [1, None, "x"]}
    before = counts(store)
    again = store.import_session("hermes:abc", source="hermes", created_at=T0, messages=page(0, 3))
    assert (again.created, again.ended, again.written) == (False, False, 0)
    assert again.session == s and counts(store) == before
    # A later page overlapping the first, then the end: each written once.
    more = store.import_messages("hermes:abc", page(2, 6))
    assert more.written == 3 and more.session.message_count == 6
    ended = store.import_session(
        "hermes:abc",
        source="hermes",
        created_at=T0,
        ended_at=T0 + 100,
        end_reason="cli_close",
        end_detail="from hermes",
    )
    assert ended.ended and ended.session.ended_at == T0 + 100
    assert ended.session.end_reason == "cli_close" and ended.session.end_detail == "from hermes"
    before = counts(store)
    replay = store.import_session(
        "hermes:abc",
        source="hermes",
        created_at=T0,
        ended_at=T0 + 200,
        end_reason="other",
        messages=page(0, 6),
    )
    assert (replay.created, replay.ended, replay.written) == (False, False, 0)
    assert replay.session.end_reason == "cli_close"  # the first end wins
    assert counts(store) == before
    # Pages may still come after the end (an importer catching up).
    late = store.import_messages("hermes:abc", page(6, 7))
    assert late.written == 1 and late.session.message_count == 7
    assert [m.seq for m in store.get_messages(s.id)] == list(range(1, 8))
    # It is listed like any session with content, by its chain's activity.
    listed = store.list_sessions(source="hermes").items
    assert [c.session.id for c in listed] == [s.id] and listed[0].chain_message_count == 7


def test_import_with_a_parent_joins_its_chain_and_is_checked(store: Store) -> None:
    root = store.import_session("hermes:root", source="hermes", created_at=T0, messages=page(0, 2))
    child = store.import_session(
        "hermes:child",
        source="hermes",
        created_at=T0 + 50,
        parent_id=root.session.id,
        messages=page(0, 1),
    )
    assert child.session.parent_id == root.session.id
    assert child.session.root_id == root.session.id
    assert [x.id for x in store.get_chain(child.session.id)] == [root.session.id, child.session.id]
    with pytest.raises(SessionNotFoundError):
        store.import_session("hermes:orphan", source="hermes", created_at=T0, parent_id="nope")
    assert store.find_by_origin("hermes:orphan") is None
    with pytest.raises(SessionNotFoundError):
        store.import_messages("hermes:unknown", page(0, 1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"messages": [{"role": "user", "created_at": T0}]}, "message key is required"),
        ({"messages": [{"key": "k", "role": "user"}]}, "needs created_at"),
        ({"messages": [{"key": "k", "role": "boss", "created_at": T0}]}, "invalid role"),
        ({"messages": [{"key": "k", "role": "user", "created_at": T0, "x": 1}]}, "unknown"),
        ({"ended_at": T0}, "needs both"),
        ({"end_detail": "why"}, "end_detail needs"),
        ({"created_at": float("inf")}, "created_at"),
    ],
)
def test_import_validates_everything_before_writing(
    store: Store, kwargs: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {"source": "hermes", "created_at": T0, **kwargs}
    with pytest.raises(tether.InvalidInputError, match=message):
        store.import_session("hermes:x", **args)
    assert counts(store) == (0, 0, 0)


def test_external_sessions_are_never_reaped_nor_repaired_and_counted_apart(
    store: Store, clock: tether.ManualClock
) -> None:
    ext = store.import_session("hermes:open", source="hermes", created_at=T0, messages=page(0, 1))
    legacy = store.import_session("hermes:legacy", source="hermes", created_at=T0)
    # A legacy row (written before owners): no owner, no origin.
    store.backend.write(
        lambda c: (
            c.execute(
                "UPDATE sessions SET origin = NULL WHERE id = ?", (legacy.session.id,)
            ).rowcount
        )
    )
    census = store.census()
    assert (census.open, census.open_no_owner, census.open_external) == (2, 1, 1)
    assert census.to_dict()["open_external"] == 1
    report = Reaper(store, clock=clock).sweep()
    assert report.reaped == []
    # Idle for years, it is still not abandoned: its source ends it, never tether.
    assert [s.id for s in store.repair_unowned(3600)] == [legacy.session.id]
    assert [s.id for s in store.repair_unowned(3600, apply=True)] == [legacy.session.id]
    assert store.get_session(ext.session.id).is_open
    assert store.get_session(legacy.session.id).end_reason == "abandoned"


def test_concurrent_retracts_take_distinct_messages(db_url: str) -> None:
    stores = [tether.open_store(db_url, load_plugins=False) for _ in range(2)]
    try:
        h = stores[0].session(source="cli")
        for i in range(1, 11):
            h.buffer("user", f"m{i}")
        h.flush()
        start = threading.Barrier(6)
        taken: list[int] = []
        lock = threading.Lock()

        def retract(store: Store) -> None:
            start.wait(timeout=10)
            m = store.retract_last(h.id)
            assert m is not None
            with lock:
                taken.append(m.seq)

        threads = [threading.Thread(target=retract, args=(stores[k % 2],)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(taken) == [5, 6, 7, 8, 9, 10]
        assert [m.seq for m in stores[1].get_messages(h.id)] == [1, 2, 3, 4]
        h.end()
    finally:
        for s in stores:
            s.close()


def test_doctor_shows_open_external_sessions_on_a_line_of_their_own(db_url: str) -> None:
    from .conftest import run_cli

    store = tether.open_store(db_url, load_plugins=False)
    store.import_session("hermes:open", source="hermes", created_at=T0, messages=page(0, 1))
    store.close()
    r = run_cli("doctor", "--db", db_url)
    assert r.returncode == 0, r.stderr
    lines = [line.split() for line in r.stdout.splitlines()]
    assert ["external", "(imported)", "1"] in lines and ["without", "owner", "0"] in lines
