"""Owned sessions with an origin, the chain tip by origin, and exact payload text (both backends).

What the OpenAI Agents SDK adapter (tether.interop.openai_agents) needs from the
core: a session written by this process (so a killed writer is reaped) that
another process finds by its name elsewhere, and a foreign item that comes back
byte for byte, key order included, on PostgreSQL too (jsonb reorders keys).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tether.compose import Store

# Keys deliberately out of jsonb's order (shorter keys first, then bytewise).
ITEM: dict[str, Any] = {
    "zeta": 1,
    "id": "x",
    "content": [{"type": "output_text", "text": "héllo", "annotations": []}],
    "a": {"y": None, "b": 1.5},
}


def test_payload_comes_back_with_its_exact_key_order_on_every_write_path(store: Store) -> None:
    h = store.session(source="cli")
    appended = h.append("assistant", "hello", payload=ITEM)  # first write: the slow path
    h.append("assistant", "again", payload=ITEM)  # the hot path (one statement on PostgreSQL)
    h.buffer("assistant", "buffered", payload=ITEM)
    h.flush()
    store.import_session("elsewhere:1", source="other", created_at=1.0)
    store.import_messages(
        "elsewhere:1", [{"key": "k1", "role": "assistant", "created_at": 2.0, "payload": ITEM}]
    )
    exact = json.dumps(ITEM)
    assert json.dumps(appended.payload) == exact
    got = store.get_messages(h.id) + store.get_last_messages(h.id, 1)
    imported = store.find_by_origin("elsewhere:1")
    assert imported is not None
    got += store.get_messages(imported.id)
    assert [json.dumps(m.payload) for m in got] == [exact] * 5


def test_an_owned_session_with_an_origin_is_found_with_its_owner_and_chain_tip(
    store: Store,
) -> None:
    assert store.chain_tip_by_origin("app:conv#1") is None
    first = store.session(source="app", origin="app:conv#1")
    first.append("user", "one")
    found = store.find_by_origin("app:conv#1")
    assert found is not None and found.id == first.id
    assert found.owner_id == store.owner_id and found.owner_id is not None  # owned, not external
    tip = store.chain_tip_by_origin("app:conv#1")
    assert tip is not None
    session, owner = tip
    assert session.id == first.id
    assert owner is not None and owner.id == store.owner_id
    first.end("rewound")
    second = store.session(source="app", origin="app:conv#2", parent_id=first.id)
    second.append("user", "two")
    tip = store.chain_tip_by_origin("app:conv#1")
    assert tip is not None and tip[0].id == second.id and tip[0].origin == "app:conv#2"
    assert store.chain_tip_by_origin("app:conv#2") is None  # only the root names the chain
    second.end()


def test_a_second_session_with_a_taken_origin_writes_nothing(store: Store) -> None:
    winner = store.session(source="app", origin="app:race#1")
    winner.append("user", "first")
    loser = store.session(source="app", origin="app:race#1")
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):  # the driver's own error
        loser.append("user", "second")
    loser.end("abandoned")
    found = store.find_by_origin("app:race#1")
    assert found is not None and found.id == winner.id
    assert [m.content for m in store.get_messages(winner.id)] == ["first"]
    assert len(store.list_sessions(source="app").items) == 1
    winner.end()


def test_the_chain_tip_lookup_reads_by_index_whatever_the_store_holds(store: Store) -> None:
    from tether.store import sql

    for i in range(30):
        h = store.session(source="app", origin=f"app:many-{i}#1")
        h.append("user", "x")
        h.end()
    query, params = sql.SELECT_CHAIN_TIP_BY_ORIGIN, ("app:many-7#1",)
    if store.backend.dialect == "postgresql":

        def explain(c: Any) -> list[Any]:
            # A few rows make a scan cheapest: ask whether the indexes *can* serve it.
            c.execute("SET LOCAL enable_seqscan = off")
            return c.execute("EXPLAIN (COSTS OFF) " + query, params).fetchall()

        rows = store.backend.write(explain)
        text = "\n".join(str(r[0]) for r in rows).lower()
        assert "seq scan on sessions" not in text, text
    else:
        rows = store.backend.read(
            lambda c: c.execute("EXPLAIN QUERY PLAN " + query, params).fetchall()
        )
        text = "\n".join(str(r[3]) for r in rows).lower()
        assert "scan r" not in text and "scan t" not in text, text
        assert "sessions_origin" in text, text


def test_retract_last_reaches_below_a_long_tail_of_retracted_messages(store: Store) -> None:
    """retract_last first looks among the last seqs (a bounded read on any plan),
    then, if every one of them is retracted, further back."""
    h = store.session(source="cli")
    for i in range(80):
        h.buffer("user", str(i))
    h.flush()
    taken = [store.retract_last(h.id) for _ in range(75)]
    assert [m.content for m in taken if m is not None] == [str(i) for i in range(79, 4, -1)]
    assert [m.content for m in store.get_messages(h.id)] == ["0", "1", "2", "3", "4"]
    assert [m.content for m in store.get_last_messages(h.id, 2)] == ["3", "4"]
    h.end()
