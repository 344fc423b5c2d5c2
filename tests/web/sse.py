"""A minimal server-sent events client over http.client (what a browser's EventSource does)."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any


@dataclass
class Event:
    id: str | None
    event: str
    data: Any


class SSEClient:
    def __init__(
        self, port: int, token: str, *, last_event_id: int | None = None, timeout: float = 10
    ) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        headers = {
            "Host": f"127.0.0.1:{port}",
            "Authorization": f"Bearer {token}",
            "Accept": "text/event-stream",
        }
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.conn.request("GET", "/api/v1/events/stream", headers=headers)
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.read()
        assert self.resp.getheader("content-type", "").startswith("text/event-stream")

    def next(self) -> Event:
        """The next event (comments and retry lines skipped); raises on timeout."""
        fields: dict[str, str] = {}
        while True:
            raw = self.resp.fp.readline()
            if not raw:
                raise EOFError("the stream ended")
            line = raw.decode().rstrip("\n")
            if line == "":
                if "data" in fields:
                    return Event(
                        fields.get("id"), fields.get("event", "message"), json.loads(fields["data"])
                    )
                fields = {}
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            fields[key] = value.removeprefix(" ")

    def take(self, n: int) -> list[Event]:
        return [self.next() for _ in range(n)]

    def close(self) -> None:
        self.conn.close()
