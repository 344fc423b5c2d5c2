"""Reading messages back: the fast path (JSON decoded by the driver, rows made
Messages without a Python loop) returns what was written, on both backends, and
Message keeps its contract (frozen, equal by value and type only)."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from unittest import mock

import pytest

import tether
from tether import Message
from tether.compose import Store

CALLS = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]


def test_mixed_messages_read_back_with_their_json(store: Store) -> None:
    h = store.session(source="t")
    h.append("user", "hi")
    h.append("assistant", None, tool_calls=CALLS)
    h.append("tool", "42", tool_call_id="c1", tool_name="f", meta={"n": 1})
    h.append("assistant", "ok", payload={"type": "message", "raw": '{"k": [1, 2]}'})
    h.append("assistant", "bare list", payload=[{"a": "é"}, 2], meta={})
    h.append("user", "[json] is not a type here", idem_key="k1")
    got = store.get_messages(h.id)
    assert [(m.seq, m.role, m.content) for m in got] == [
        (1, "user", "hi"),
        (2, "assistant", None),
        (3, "tool", "42"),
        (4, "assistant", "ok"),
        (5, "assistant", "bare list"),
        (6, "user", "[json] is not a type here"),
    ]
    assert [m.tool_calls for m in got] == [None, CALLS, None, None, None, None]
    assert [m.meta for m in got] == [None, None, {"n": 1}, None, {}, None]
    assert [m.payload for m in got] == [
        None,
        None,
        None,
        {"type": "message", "raw": '{"k": [1, 2]}'},
        [{"a": "é"}, 2],
        None,
    ]
    assert got[5].idem_key == "k1" and got[2].tool_call_id == "c1" and got[2].tool_name == "f"
    assert all(isinstance(m, Message) and m.state == "active" for m in got)
    # The same messages through the other readers of the table.
    assert store.get_last_messages(h.id, 6) == got
    assert store.get_messages(h.id, after_seq=2, limit=2) == got[2:4]
    h.end()


def test_read_back_from_an_in_memory_store() -> None:
    """An in-memory database is read on the writer connection."""
    store = tether.open_store(":memory:", load_plugins=False)
    try:
        h = store.session(source="t")
        h.append("assistant", None, tool_calls=CALLS, meta={"turn": "t1"})
        (m,) = store.get_messages(h.id)
        assert (m.tool_calls, m.meta) == (CALLS, {"turn": "t1"})
    finally:
        store.close()


def test_a_plain_sqlite3_connection_keeps_reading_text(tmp_path: Path) -> None:
    """The driver-side JSON decoding is opt-in per column: the process's other
    sqlite3 users (and tether's raw rows) still get text back."""
    import sqlite3

    path = tmp_path / "t.db"
    store = tether.open_store(path, load_plugins=False)
    h = store.session(source="t")
    h.append("assistant", None, tool_calls=CALLS)
    store.close()
    with sqlite3.connect(path, detect_types=sqlite3.PARSE_COLNAMES) as c:
        (text,) = c.execute("SELECT tool_calls FROM messages").fetchone()
    assert isinstance(text, str)


def test_message_is_frozen_and_equal_by_type_and_value() -> None:
    m = Message("s1", 1, "user", "hi", None, None, None, 1.0)
    same = Message(
        session_id="s1",
        seq=1,
        role="user",
        content="hi",
        tool_calls=None,
        tool_call_id=None,
        tool_name=None,
        created_at=1.0,
    )
    assert m == same and (m != same) is False
    assert (m.idem_key, m.meta, m.state, m.payload) == (None, None, "active", None)
    assert m != Message("s1", 2, "user", "hi", None, None, None, 1.0)
    # Equal only to Messages: not to a tuple of the same values.
    values = ("s1", 1, "user", "hi", None, None, None, 1.0, None, None, "active", None)
    assert m != values and (m == values) is False and (values == m) is False
    assert m == mock.ANY  # other objects still decide
    with pytest.raises(AttributeError):
        m.seq = 2  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(m)) == m
    assert repr(m).startswith("Message(session_id='s1', seq=1, role='user'")
    assert m.to_dict()["seq"] == 1
    assert not dataclasses.is_dataclass(m) or dataclasses.fields(m)  # either shape reads
