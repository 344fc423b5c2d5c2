"""The live view mounted in ``tether serve``: a scripted client drives working → idle →
detached → ended, and the page's API follows from the store's facts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..gateway.conftest import TOKEN, next_event, serve
from .conftest import WebServer
from .sse import SSEClient


def wait_for(check: Callable[[], Any], timeout: float = 10.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(every)


def state_of(web: WebServer, sid: str) -> str | None:
    for row in web.get("/api/v1/live").json()["sessions"]:
        if row["id"] == sid:
            return str(row["state"])
    return None


def test_gateway_session_goes_working_idle_detached_ended(tmp_path: Path) -> None:
    with serve(
        tmp_path, "--detach-grace", "1.5", "-o", "delay=0.25", "--handshake-timeout", "0.5"
    ) as gw:
        web = WebServer(gw.port, TOKEN, None)
        # The event stream outlives the handshake deadline of the gateway's port.
        stream = SSEClient(gw.port, TOKEN, last_event_id=0)
        seen: list[str] = []

        async def drive() -> str:
            client = await gw.client()
            created = await client.call("session.create", source="gateway", title="driven")
            sid = created["session_id"]
            await client.call("prompt.submit", session_id=sid, text="one two three four five")
            await next_event(client, "turn.start", sid)
            seen.append(
                await asyncio.to_thread(
                    wait_for, lambda: state_of(web, sid) == "working" and "working"
                )
            )
            await next_event(client, "turn.end", sid, timeout=20)
            seen.append(
                await asyncio.to_thread(wait_for, lambda: state_of(web, sid) == "idle" and "idle")
            )
            await client.abort()  # the browser tab died: no goodbye
            return str(sid)

        sid = asyncio.run(asyncio.wait_for(drive(), 60))
        seen.append(wait_for(lambda: state_of(web, sid) == "detached" and "detached"))
        row = next(r for r in web.get("/api/v1/live").json()["sessions"] if r["id"] == sid)
        assert "no client attached" in row["why"] and row["owner"]["kind"] == "gateway"
        wait_for(lambda: state_of(web, sid) is None)  # the grace passed: ended
        session = web.get(f"/api/v1/sessions/{sid}").json()["session"]
        assert session["end_reason"] == "ws_disconnect"
        assert seen == ["working", "idle", "detached"]
        kinds = []
        deadline = time.monotonic() + 10
        while "ended" not in kinds and time.monotonic() < deadline:
            e = stream.next()
            if e.data.get("session_id") == sid:
                kinds.append(e.data["kind"])
        assert kinds == ["created", "turn_started", "turn_ended", "detached", "ended"]
        stream.close()
        metrics = web.get("/metrics").body.decode()
        assert "tether_gateway_connections" in metrics
