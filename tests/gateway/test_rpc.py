"""JSON-RPC framing: every input gets a result or an error object, never an exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.gateway import rpc
from tether.gateway.replay import ReplayBuffer
from tether.gateway.rpc import Param, Request, RpcError


def codes(frame: str | bytes) -> list[int | None]:
    items, _ = rpc.parse(frame)
    return [None if isinstance(i, Request) else i["error"]["code"] for i in items]


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ("{", [rpc.PARSE_ERROR]),
        (b"\xff\xfe", [rpc.PARSE_ERROR]),
        ("NaN", [rpc.PARSE_ERROR]),
        ("[]", [rpc.INVALID_REQUEST]),
        ("[1, 2]", [rpc.INVALID_REQUEST, rpc.INVALID_REQUEST]),
        ('"ping"', [rpc.INVALID_REQUEST]),
        ('{"jsonrpc": "1.0", "method": "ping", "id": 1}', [rpc.INVALID_REQUEST]),
        ('{"jsonrpc": "2.0", "method": 5, "id": 1}', [rpc.INVALID_REQUEST]),
        ('{"jsonrpc": "2.0", "method": "ping", "id": 1.5}', [rpc.INVALID_REQUEST]),
        ('{"jsonrpc": "2.0", "method": "ping", "id": true}', [rpc.INVALID_REQUEST]),
        ('{"jsonrpc": "2.0", "method": "ping", "params": [1]}', [rpc.INVALID_PARAMS]),
        ('{"jsonrpc": "2.0", "method": "ping", "params": 3}', [rpc.INVALID_REQUEST]),
        ('{"jsonrpc": "2.0", "method": "ping", "id": 1}', [None]),
        ('[{"jsonrpc": "2.0", "method": "ping"}, 7]', [None, rpc.INVALID_REQUEST]),
        ("[" + ",".join(["1"] * (rpc.MAX_BATCH + 1)) + "]", [rpc.INVALID_REQUEST]),
        ("[" * 100_000, [rpc.PARSE_ERROR]),
    ],
)
def test_parse(frame: str, expected: list[int | None]) -> None:
    assert codes(frame) == expected


def test_notification_and_batch_flags() -> None:
    [req], batch = rpc.parse('{"jsonrpc": "2.0", "method": "ping"}')
    assert isinstance(req, Request) and req.is_notification and not batch
    [req], batch = rpc.parse('[{"jsonrpc": "2.0", "method": "ping", "id": null}]')
    assert isinstance(req, Request) and not req.is_notification and batch


SPEC = (Param("session_id", "str", required=True), Param("limit", "int", minimum=1, maximum=9))


def test_check_params() -> None:
    assert rpc.check_params({"session_id": "a"}, SPEC) == {"session_id": "a", "limit": None}
    for bad in (
        {},
        {"session_id": 1},
        {"session_id": "a", "limit": 0},
        {"session_id": "a", "limit": 10},
        {"session_id": "a", "limit": True},
        {"session_id": "a", "x": 1},
    ):
        with pytest.raises(RpcError) as err:
            rpc.check_params(bad, SPEC)
        assert err.value.code == rpc.INVALID_PARAMS


def test_replies_are_ascii_json_even_for_lone_surrogates() -> None:
    text = rpc.dumps(rpc.error(1, RpcError(rpc.METHOD_NOT_FOUND, "unknown method '\ud800'")))
    assert text.isascii() and json.loads(text)["error"]["code"] == rpc.METHOD_NOT_FOUND


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()  # beyond 64 bits too: orjson refuses those
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),  # lone surrogates too: orjson refuses those
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
def test_every_frame_reads_back_as_it_was_and_encodes_as_utf8(value: object) -> None:
    """Frames are written by orjson where it can (UTF-8, a tenth of the json
    module's time) and by the json module, escaped to ASCII, where it cannot:
    either way the frame reads back as the value, and is valid UTF-8."""
    text = rpc.dumps(value)
    text.encode("utf-8")  # a WebSocket text frame
    assert json.loads(text) == value
    frame = rpc.notification("message.delta", {"text": value})
    assert json.loads(frame) == {
        "jsonrpc": "2.0",
        "method": "message.delta",
        "params": {"text": value},
    }


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.binary(),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
            max_leaves=20,
        ).map(json.dumps),
    )
)
def test_parse_never_raises(frame: str | bytes) -> None:
    items, _ = rpc.parse(frame)
    assert items
    for item in items:
        assert isinstance(item, Request) or "error" in item


def test_replay_buffer_bounds_and_gaps() -> None:
    buf = ReplayBuffer(max_events=3, max_bytes=100)
    assert buf.since(0) == []
    for seq in range(1, 6):
        buf.add(seq, f"f{seq}")
    assert buf.since(2) == ["f3", "f4", "f5"]
    assert buf.since(4) == ["f5"] and buf.since(5) == []
    assert buf.since(1) is None  # f2 is gone
    assert buf.since(6) is None and buf.since(-1) is None
    buf.add(6, "x" * 200)  # bigger than the byte bound: kept by nobody
    assert len(buf) == 0 and buf.since(5) is None and buf.since(6) == []
    with pytest.raises(ValueError):
        buf.add(9, "gap")
    with pytest.raises(ValueError):
        ReplayBuffer(0, 1)
