"""What reaches the socket: frames of one loop turn leave together, pipelined requests in order.

A raw TCP socket with websockets' sans-IO client protocol, so the test sees
each ``recv`` as the server wrote it (issue 15: fewer writes per prompt).
"""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlparse

from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.uri import parse_uri

from .conftest import TOKEN, Served


class RawClient:
    """A blocking WebSocket client over a plain socket; ``read_once`` is one ``recv``."""

    def __init__(self, url: str) -> None:
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=10)
        self.proto = ClientProtocol(parse_uri(url))
        request = self.proto.connect()
        request.headers["Authorization"] = f"Bearer {TOKEN}"
        self.proto.send_request(request)
        self._flush()
        while self.proto.handshake_exc is None and not self.proto.events_received():
            self._feed()
        self.pending: list[dict[str, Any]] = []

    def _flush(self) -> None:
        for data in self.proto.data_to_send():
            if data:
                self.sock.sendall(data)

    def _feed(self) -> None:
        self.proto.receive_data(self.sock.recv(1 << 16))

    def send(self, *frames: dict[str, Any]) -> None:
        for f in frames:
            self.proto.send_text(json.dumps(f).encode())
        self._flush()

    def read_once(self) -> list[dict[str, Any]]:
        """The frames of one ``recv`` (what one write of the server put on the wire)."""
        self._feed()
        return [json.loads(e.data) for e in self.proto.events_received() if isinstance(e, Frame)]

    def read(self, n: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(out) < n:
            out += self.read_once()
        return out

    def close(self) -> None:
        self.sock.close()


def req(i: int, method: str, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": i, "method": method, "params": params}


def test_a_reply_and_the_events_right_after_it_leave_in_one_write(gateway: Served) -> None:
    c = RawClient(gateway.url)
    try:
        c.send(req(1, "session.create"))
        [created] = c.read(1)
        sid = created["result"]["session_id"]
        c.send(req(2, "prompt.submit", session_id=sid, text="one two"))
        # The reply, turn.start and the prompt's message are sent in one turn of
        # the gateway's loop: one write, so one recv holds all three.
        first = c.read_once()
        assert [f.get("id") or f.get("method") for f in first[:3]] == [2, "turn.start", "message"]
        rest = first[3:]
        while not any(f.get("method") == "turn.end" for f in rest):
            rest += c.read_once()
        methods = [f["method"] for f in rest]
        assert methods == ["message.delta"] * 3 + ["message", "turn.end"]
        seqs = [f["params"]["seq"] for f in first[1:] + rest]
        assert seqs == list(range(1, len(seqs) + 1))
    finally:
        c.close()


def test_pipelined_requests_are_all_answered_in_order(gateway: Served) -> None:
    """More requests than the read-ahead in one burst: reading pauses and resumes, none lost."""
    c = RawClient(gateway.url)
    try:
        c.send(*(req(i, "ping") for i in range(1, 201)))
        replies = c.read(200)
        assert [r["id"] for r in replies] == list(range(1, 201))
        assert all(r["result"]["pong"] is True for r in replies)
        c.send(req(201, "ping"))  # reading resumed: the connection still serves
        assert c.read(1)[0]["id"] == 201
    finally:
        c.close()


def test_a_request_that_waits_for_the_store_holds_back_the_ones_after_it(
    gateway: Served,
) -> None:
    """A frame answered on the spot (ping) and one that waits for the writer
    (prompt.submit) in one burst: replies in request order, and a history read
    sent after the prompt sees it stored."""
    c = RawClient(gateway.url)
    try:
        c.send(req(1, "session.create"))
        sid = c.read(1)[0]["result"]["session_id"]
        for round_ in range(3):
            base = 10 * (round_ + 1)
            c.send(
                req(base, "ping"),
                req(base + 1, "prompt.submit", session_id=sid, text=f"hello {round_}"),
                req(base + 2, "ping"),
                req(base + 3, "session.history", session_id=sid),
                req(base + 4, "ping"),
            )
            replies: list[dict[str, Any]] = []
            ended = False
            while len(replies) < 5 or not ended:
                for f in c.read_once():
                    if "id" in f:
                        replies.append(f)
                    ended = ended or f.get("method") == "turn.end"
            assert [r["id"] for r in replies] == [base + k for k in range(5)]
            history = replies[3]["result"]["messages"]
            assert history[-1]["content"] == f"hello {round_}"
    finally:
        c.close()
