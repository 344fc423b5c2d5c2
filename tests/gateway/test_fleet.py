"""Several gateways, one PostgreSQL database: a fleet.

Two ``tether serve`` processes on different ports share one PostgreSQL store.
Each serves its own live sessions; the listing and the census see all of them;
a dashboard following ``store.listen()`` hears both; and when one gateway is
SIGKILLed, the other's reaper ends its sessions.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import tether
from tether.liveness import Reaper

from .conftest import Served, next_event, run, serve

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("backend", ["postgres"], indirect=True)]


async def exchange(gateway: Served, text: str) -> str:
    """Create a session on ``gateway``, run one turn in it, leave the client attached."""
    c = await gateway.client()
    sid = (await c.call("session.create"))["session_id"]
    await c.call("prompt.submit", session_id=sid, text=text)
    assert (await next_event(c, "turn.end", sid))["status"] == "completed"
    return sid


async def live_ids(gateway: Served) -> set[str]:
    c = await gateway.client()
    try:
        return {s["session_id"] for s in (await c.call("session.active_list"))["sessions"]}
    finally:
        await c.close()


async def listed_ids(gateway: Served) -> set[str]:
    c = await gateway.client()
    try:
        return {i["id"] for i in (await c.call("session.list", limit=100))["items"]}
    finally:
        await c.close()


def test_two_gateways_share_one_postgres(tmp_path: Path, db_url: str) -> None:
    store = tether.open_store(db_url, load_plugins=False)
    listener = store.listen()  # a dashboard following the whole fleet
    args = ("-o", "delay=0.01", "--detach-grace", "300")
    try:
        with (
            serve(tmp_path, *args, db=db_url, name="one") as one,
            serve(tmp_path, *args, db=db_url, name="two") as two,
        ):
            assert one.port != two.port
            a = run(exchange(one, "hello from the first gateway"))
            b = run(exchange(two, "hello from the second gateway"))

            # Each serves its own live sessions...
            assert a in run(live_ids(one)) and b not in run(live_ids(one))
            assert b in run(live_ids(two)) and a not in run(live_ids(two))
            # ...and both list, and the census counts, the whole fleet's.
            assert {a, b} <= run(listed_ids(one))
            assert {a, b} <= run(listed_ids(two))
            census = Reaper(store).census()
            assert (census.open, census.open_live_owner, census.open_dead_owner) == (2, 2, 0)
            sa, sb = store.get_session(a), store.get_session(b)
            assert sa.owner_id and sb.owner_id and sa.owner_id != sb.owner_id

            # (Turns and detaches are events too: the live view follows them.)
            heard = set()
            for e in listener.events(timeout=10):
                if e.kind == "created":
                    heard.add((e.kind, e.session_id))
                if len(heard) == 2:
                    break
            assert heard == {("created", a), ("created", b)}

            # The second gateway dies without running any exit path.
            two.proc.kill()
            two.proc.wait()
            killed_at = time.monotonic()
            # The first gateway's reaper loop (every 2 s) ends its sessions:
            # on this host at once (pid gone); elsewhere within the TTL + one sweep.
            while store.get_session(b).ended_at is None:
                assert time.monotonic() - killed_at < store.owner_ttl + 2 + 5
                time.sleep(0.05)
            ended_b = store.get_session(b)
            assert ended_b.end_reason == "reaped"
            assert ended_b.end_detail == f"pid {two.proc.pid} gone"
            assert [m.role for m in store.get_messages(b)] == ["user", "assistant"]
            reaped = next(e for e in listener.events(timeout=10) if e.kind == "reaped")
            assert reaped.session_id == b and reaped.data["detail"] == ended_b.end_detail

            # The survivor's own session is untouched and still served.
            assert store.get_session(a).is_open
            assert a in run(live_ids(one))

            async def carry_on() -> str:
                c = await one.client()
                await c.call("session.resume", session_id=a)
                await c.call("prompt.submit", session_id=a, text="still here?")
                return (await next_event(c, "turn.end", a))["status"]

            assert run(carry_on()) == "completed"
    finally:
        listener.close()
        store.close()
