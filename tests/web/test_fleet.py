"""A fleet: two ``tether serve`` on one PostgreSQL; each one's page shows both's sessions."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ..gateway.conftest import TOKEN, next_event, serve
from .conftest import WebServer
from .sse import SSEClient
from .test_browser import Page, browser  # noqa: F401  (the module-scoped chromium)


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_two_gateways_on_one_postgres_each_page_shows_both(
    new_db: Callable[[], str],
    tmp_path: Path,
    browser: Any,  # noqa: F811
    artifacts: Path,
) -> None:
    db = new_db()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        serve(tmp_path / "a", db=db, name="a") as a,
        serve(tmp_path / "b", db=db, name="b") as b,
    ):
        streams = [SSEClient(gw.port, TOKEN) for gw in (a, b)]

        ready: queue.Queue[list[str]] = queue.Queue()
        done = threading.Event()

        async def hold() -> None:
            # The clients stay attached (on a thread of their own: Playwright's sync
            # API owns this thread's loop) until the pages have been checked.
            clients, ids = [], []
            for gw, title in ((a, "on a"), (b, "on b")):
                client = await gw.client()
                s = await client.call("session.create", source="gateway", title=title)
                await client.call("prompt.submit", session_id=s["session_id"], text="hi")
                await next_event(client, "turn.end", s["session_id"])
                clients.append(client)
                ids.append(str(s["session_id"]))
            ready.put(ids)
            await asyncio.to_thread(done.wait, 60)
            for client in clients:
                await client.close()

        holder = threading.Thread(target=lambda: asyncio.run(hold()))
        holder.start()
        try:
            ids = ready.get(timeout=30)
            # Both pages see both sessions, each owned by its own gateway's process.
            for gw in (a, b):
                live = WebServer(gw.port, TOKEN, None).get("/api/v1/live").json()
                owners = {r["id"]: r["owner"]["pid"] for r in live["sessions"]}
                assert set(owners) == set(ids) and owners[ids[0]] != owners[ids[1]]
                page = Page(
                    browser, f"http://127.0.0.1:{gw.port}", TOKEN, artifacts, f"fleet-{gw.port}"
                )
                for sid in ids:
                    page.wait_state(sid, "idle")
                assert page.errors == []
                page.shot("both")
                page.close()
            # Each stream heard both gateways' creations (LISTEN/NOTIFY across processes).
            for s in streams:
                heard = set()
                while len(heard) < 2:
                    e = s.next()
                    if e.data["kind"] == "created":
                        heard.add(e.data["session_id"])
                assert heard == set(ids)
                s.close()
        finally:
            done.set()
            holder.join(30)
