"""Against a real ``tether serve`` on 127.0.0.1, with real WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import tether
from tether.gateway import rpc
from tether.gateway.client import Client, RemoteError

from .conftest import Served, info, next_event, run, serve, wait_until

pytestmark = pytest.mark.slow


def stored(db: str, session_id: str) -> tuple[tether.Session, list[tether.Message]]:
    with tether.open_store(db, load_plugins=False) as store:
        return store.get_session(session_id), store.get_messages(session_id)


async def drain_turn(c: Client, timeout: float = 10) -> list[tuple[str, dict[str, Any]]]:
    """Every event up to and including turn.end."""
    out = []
    while True:
        m, p = await asyncio.wait_for(c.events.get(), timeout)
        out.append((m, p))
        if m == "turn.end":
            return out


# --- the handshake ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Origin": "http://evil.example"}, 403),
        ({"Host": "evil.example"}, 403),  # a DNS-rebound name pointing at 127.0.0.1
    ],
)
def test_refused_before_any_method_runs(
    gateway: Served, headers: dict[str, str], status: int
) -> None:
    async def go() -> None:
        full = dict(headers)
        if "Authorization" not in full and status != 401:
            full["Authorization"] = f"Bearer {gateway.token}"
        url, where = gateway.url, {}
        if "Host" in full:  # connect to 127.0.0.1 while the handshake names another host
            url = f"ws://{full.pop('Host')}:{gateway.port}/rpc"
            where = {"host": "127.0.0.1", "port": gateway.port}
        with pytest.raises(InvalidStatus) as err:
            await connect(url, additional_headers=full, open_timeout=5, **where)
        assert err.value.response.status_code == status
        assert (await info(gateway))["stats"]["connections"] == 1  # only the info call

    run(go())


def test_token_in_query_is_accepted(gateway: Served) -> None:
    async def go() -> None:
        async with connect(f"{gateway.url}?token={gateway.token}") as ws:
            await ws.send('{"jsonrpc": "2.0", "id": 1, "method": "ping"}')
            assert json.loads(await ws.recv())["result"]["pong"] is True

    run(go())


def test_oversized_frame_closes_only_that_connection(gateway: Served) -> None:
    async def go() -> None:
        c = await gateway.client()
        with contextlib.suppress(ConnectionClosed):
            await c.send_raw("x" * (2 * 1024 * 1024))
        await asyncio.wait_for(c.lost.wait(), 10)
        assert c.ws.close_code == 1009
        assert (await info(gateway))["version"]

    run(go())


def test_websocket_reads_go_into_one_shared_buffer() -> None:
    """asyncio's default read allocates a 256 KiB bytes object per read, which
    glibc maps, shrinks and unmaps: three system calls and a page fault per
    frame, most of a ping's server time at 50 connections. The gateway's
    WebSocket protocol is a BufferedProtocol reading into one buffer shared by
    its connections (each read is handed on before the next begins)."""
    from tether.gateway.server import READ_BUFFER, ServeOptions, _AcceptErrors, _protocols

    _http, ws = _protocols(ServeOptions(), _AcceptErrors())
    assert issubclass(ws, asyncio.BufferedProtocol)
    first = ws.get_buffer(None, 1)  # type: ignore[arg-type]
    assert len(first) == READ_BUFFER
    assert ws.get_buffer(None, READ_BUFFER * 4) is first  # type: ignore[arg-type]


def test_frames_longer_than_a_read_and_back_to_back_arrive_whole(gateway: Served) -> None:
    """Frames several reads long, on several connections at once, interleaved
    with short ones sent back to back, each arrive whole and answered in order."""
    from tether.gateway.server import READ_BUFFER

    async def one(k: int) -> None:
        ws = await gateway.raw()
        big = f"{k}:" + "x" * (READ_BUFFER * 3 + 1000 * k)
        frames = [
            json.dumps({"jsonrpc": "2.0", "id": i if i % 3 else big + str(i), "method": "ping"})
            for i in range(9)
        ]
        async with asyncio.timeout(30):
            for frame in frames:  # without waiting for the replies
                await ws.send(frame)
            replies = [json.loads(await ws.recv()) for _ in frames]
        assert [r["id"] for r in replies] == [json.loads(f)["id"] for f in frames]
        assert all(r["result"]["pong"] is True for r in replies)
        await ws.close()

    async def go() -> None:
        await asyncio.gather(*(one(k) for k in range(4)))

    run(go())


# --- JSON-RPC errors keep the connection usable ----------------------------------------


def test_errors_then_the_connection_still_works(gateway: Served) -> None:
    async def go() -> None:
        ws = await gateway.raw()
        replies = []
        for frame in (
            "{oops",
            "[]",
            "[1, 2]",
            '{"jsonrpc": "2.0", "id": 1, "method": "nope"}',
            '{"jsonrpc": "2.0", "id": 2, "method": "session.history", "params": {}}',
            '{"jsonrpc": "2.0", "id": 3, "method": "session.history", "params": [1]}',
            b"\xff\x00",
        ):
            async with asyncio.timeout(5):
                await ws.send(frame)
                replies.append(json.loads(await ws.recv()))
        assert replies[0]["error"]["code"] == rpc.PARSE_ERROR
        assert replies[1]["error"]["code"] == rpc.INVALID_REQUEST
        assert [r["error"]["code"] for r in replies[2]] == [rpc.INVALID_REQUEST] * 2
        assert replies[3]["error"]["code"] == rpc.METHOD_NOT_FOUND
        assert replies[4]["error"]["code"] == rpc.INVALID_PARAMS
        assert replies[5]["error"]["code"] == rpc.INVALID_PARAMS
        assert replies[6]["error"]["code"] == rpc.PARSE_ERROR
        for r in replies:
            assert "Traceback" not in json.dumps(r)
        await ws.send('{"jsonrpc": "2.0", "id": 9, "method": "ping"}')
        assert json.loads(await ws.recv())["result"]["pong"] is True
        await ws.close()

    run(go())


def test_method_errors(gateway: Served) -> None:
    async def go() -> None:
        c = await gateway.client()
        for method, params, code in [
            ("session.resume", {"session_id": "01NOPE"}, rpc.SESSION_NOT_FOUND),
            ("session.history", {"session_id": "01NOPE"}, rpc.SESSION_NOT_FOUND),
            ("session.close", {"session_id": "01NOPE"}, rpc.SESSION_NOT_FOUND),
            ("prompt.submit", {"session_id": "01NOPE", "text": "hi"}, rpc.NOT_ATTACHED),
            ("session.create", {"parent_id": "01NOPE"}, rpc.SESSION_NOT_FOUND),
            ("session.create", {"title": "a\x00b"}, rpc.INVALID_PARAMS),
            ("session.list", {"cursor": "garbage"}, rpc.INVALID_PARAMS),
            ("session.list", {"state": "weird"}, rpc.INVALID_PARAMS),
            ("session.list", {"limit": 0}, rpc.INVALID_PARAMS),
        ]:
            with pytest.raises(RemoteError) as err:
                await c.call(method, **params)
            assert err.value.code == code, (method, params, err.value)
        s = await c.call("session.create")
        with pytest.raises(RemoteError) as err:
            await c.call("prompt.submit", session_id=s["session_id"], text="  ")
        assert err.value.code == rpc.INVALID_PARAMS
        with pytest.raises(RemoteError) as err:
            await c.call("session.close", session_id=s["session_id"], reason="Not A Word")
        assert err.value.code == rpc.INVALID_PARAMS

    run(go())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
frames = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {"jsonrpc": st.sampled_from(["2.0", "1.0", 2]), "id": st.integers() | st.text()},
        optional={
            "method": st.sampled_from(
                ["ping", "session.history", "session.resume", "prompt.submit", "session.list"]
            )
            | st.text(max_size=10),
            "params": json_values,
        },
    ).map(json.dumps),
)


def test_fuzzed_frames_each_get_an_answer_and_the_server_keeps_serving(
    tmp_path: Path,
) -> None:
    with serve(tmp_path) as served:
        loop = asyncio.new_event_loop()
        ws = loop.run_until_complete(served.raw())
        answered = 0

        @settings(
            max_examples=300,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(frame=frames)
        def one(frame: str | bytes) -> None:
            nonlocal answered

            async def go() -> None:
                await ws.send(frame)
                reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
                for r in reply if isinstance(reply, list) else [reply]:
                    assert ("result" in r) != ("error" in r), r
                    assert r.get("jsonrpc") == "2.0"
                    if "error" in r:
                        assert r["error"]["code"] in (-32700, -32600, -32601, -32602) or (
                            -32099 <= r["error"]["code"] <= -32000
                        ), r
                        assert "Traceback" not in r["error"]["message"]

            # Notifications (no id) get no reply: make every frame a request or garbage.
            if isinstance(frame, str) and frame.startswith("{") and '"id"' not in frame:
                return
            loop.run_until_complete(go())
            answered += 1

        try:
            one()
            assert answered > 50
            loop.run_until_complete(ws.send('{"jsonrpc": "2.0", "id": 1, "method": "ping"}'))
            assert json.loads(loop.run_until_complete(ws.recv()))["result"]["pong"] is True
        finally:
            loop.run_until_complete(ws.close())
            loop.close()
        assert "Traceback" not in served.log.read_text()


# --- turns -------------------------------------------------------------------------------


def test_prompt_streams_and_stores_every_message(gateway: Served) -> None:
    async def go() -> None:
        c = await gateway.client()
        sid = (await c.call("session.create", title="t"))["session_id"]
        turn = await c.call("prompt.submit", session_id=sid, text="/tool one two")
        events = await drain_turn(c)
        names = [m for m, _ in events]
        assert names[0] == "turn.start" and names[-1] == "turn.end"
        assert {"message.delta", "message", "tool.call", "tool.result"} <= set(names)
        seqs = [p["seq"] for _, p in events]
        assert seqs == list(range(1, len(seqs) + 1))
        assert all(p["session_id"] == sid for _, p in events)
        assert events[-1][1] == {
            "session_id": sid,
            "seq": seqs[-1],
            "turn_id": turn["turn_id"],
            "status": "completed",
        }
        text = "".join(p["text"] for m, p in events if m == "message.delta")
        assert text == "echo: /tool one two (3 words)"
        history = (await c.call("session.history", session_id=sid))["messages"]
        assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant"]
        assert history[-1]["content"] == text
        assert all(m["turn_id"] == turn["turn_id"] for m in history)
        page = await c.call("session.history", session_id=sid, after_seq=1, limit=2)
        assert [m["seq"] for m in page["messages"]] == [2, 3] and page["next_after_seq"] == 3
        listed = await c.call("session.list")
        assert listed["items"][0]["id"] == sid and listed["next_cursor"] is None

    run(go())


def test_second_submit_while_running_is_busy_and_interrupt_keeps_partial(
    gateway: Served,
) -> None:
    async def go() -> None:
        c = await gateway.client()
        sid = (await c.call("session.create"))["session_id"]
        words = " ".join(f"w{i}" for i in range(200))
        turn = await c.call("prompt.submit", session_id=sid, text=words)
        await next_event(c, "message.delta")
        with pytest.raises(RemoteError, match="busy") as err:
            await c.call("prompt.submit", session_id=sid, text="again")
        assert err.value.code == rpc.BUSY and err.value.data == {"turn_id": turn["turn_id"]}
        assert (await c.call("session.interrupt", session_id=sid))["interrupted"] is True
        end = await next_event(c, "turn.end")
        assert end["status"] == "interrupted"
        _, msgs = stored(gateway.db, sid)
        assert [m.role for m in msgs] == ["user", "assistant"]
        partial = msgs[1].content
        assert partial and f"echo: {words}".startswith(partial) and partial != f"echo: {words}"
        assert msgs[1].meta == {"turn_id": turn["turn_id"], "interrupted": True}
        history = (await c.call("session.history", session_id=sid))["messages"]
        assert history[-1]["interrupted"] is True
        # The session takes prompts again.
        await c.call("prompt.submit", session_id=sid, text="short")
        assert (await next_event(c, "turn.end"))["status"] == "completed"

    run(go())


def test_close_while_running_interrupts_stores_and_ends(gateway: Served) -> None:
    async def go() -> None:
        c = await gateway.client()
        sid = (await c.call("session.create"))["session_id"]
        await c.call("prompt.submit", session_id=sid, text="a b c d e f g h i j k l m n")
        await next_event(c, "message.delta")
        assert await c.call("session.close", session_id=sid, reason="cli_close") == {
            "ended": True,
            "others_attached": 0,
            "persisted": True,
        }
        s, msgs = stored(gateway.db, sid)
        assert s.end_reason == "cli_close" and [m.role for m in msgs] == ["user", "assistant"]
        assert (await c.call("session.close", session_id=sid))["ended"] is False
        with pytest.raises(RemoteError) as err:
            await c.call("session.resume", session_id=sid)
        assert err.value.code == rpc.SESSION_ENDED and err.value.data == {"reason": "cli_close"}
        # Continue the ended session as a new one in its chain.
        child = await c.call("session.create", parent_id=sid)
        await c.call("prompt.submit", session_id=child["session_id"], text="more")
        await next_event(c, "turn.end", child["session_id"])
        listed = await c.call("session.list")
        [item] = listed["items"]
        assert item["id"] == child["session_id"] and item["chain_message_count"] == 4

    run(go())


def test_empty_session_leaves_no_row(gateway: Served) -> None:
    async def go() -> None:
        c = await gateway.client()
        sid = (await c.call("session.create"))["session_id"]
        assert (await c.call("session.history", session_id=sid))["messages"] == []
        assert await c.call("session.close", session_id=sid) == {
            "ended": False,
            "others_attached": 0,
            "persisted": False,
        }
        assert (await c.call("session.list", include_empty=True))["items"] == []

    run(go())


# --- detach, re-attach, grace --------------------------------------------------------------


def test_drop_mid_turn_then_reattach_gets_every_event_once_in_order(gateway: Served) -> None:
    async def go() -> None:
        c = await gateway.client()
        created = await c.call("session.create")
        sid = created["session_id"]
        text = " ".join(f"w{i}" for i in range(40))
        await c.call("prompt.submit", session_id=sid, text=text)
        seen: list[dict[str, Any]] = []
        while len(seen) < 6:
            seen.append((await c.events.get())[1] | {"method": "?"})
        stream = (await c.call("session.active_list"))["sessions"][0]
        assert stream["state"] == "running"
        await c.abort()  # no closing handshake: a lost network
        await asyncio.sleep(0.2)  # the turn goes on, unwatched
        c2 = await gateway.client()
        r = await c2.call(
            "session.resume", session_id=sid, since=seen[-1]["seq"], stream=created["stream"]
        )
        assert r["reload"] is False and r["replayed"] > 0
        rest = await drain_turn(c2)
        seqs = [p["seq"] for p in seen] + [p["seq"] for _, p in rest]
        assert seqs == list(range(1, seqs[-1] + 1))  # every event exactly once, in order
        deltas = [p["text"] for p in seen if "text" in p] + [
            p["text"] for m, p in rest if m == "message.delta"
        ]
        assert "".join(deltas) == f"echo: {text}"
        history = (await c2.call("session.history", session_id=sid))["messages"]
        assert history[-1]["content"] == f"echo: {text}"

    run(go())


def test_drop_and_never_return(gateway: Served) -> None:
    async def go() -> None:
        c = await gateway.client()
        sid = (await c.call("session.create"))["session_id"]
        await c.call("prompt.submit", session_id=sid, text="x " * 30)
        await next_event(c, "message.delta")
        await c.abort()

        async def ended() -> bool:
            s, _ = stored(gateway.db, sid)
            return s.end_reason is not None

        assert await wait_until(ended)
        s, msgs = stored(gateway.db, sid)
        assert s.end_reason == "ws_disconnect"
        assert [m.role for m in msgs] == ["user", "assistant"]
        assert msgs[1].content == "echo: " + " ".join(["x"] * 30)
        # The grace counted from the end of the turn, not from the drop.
        assert s.ended_at - msgs[1].created_at >= 2.0
        assert s.detached_at is not None and s.detached_at <= msgs[1].created_at
        assert (await info(gateway))["stats"]["live_sessions"] == 0

    run(go())


def test_active_list_and_warm_reattach_within_grace(gateway: Served) -> None:
    async def go() -> None:
        c = await gateway.client()
        sid = (await c.call("session.create"))["session_id"]
        await c.call("prompt.submit", session_id=sid, text="hi")
        await next_event(c, "turn.end")
        await c.close()
        c2 = await gateway.client()
        [row] = (await c2.call("session.active_list"))["sessions"]
        assert row["session_id"] == sid and row["state"] == "detached"
        assert 0 < row["ends_in"] <= 2.0 and row["ends_as"] == "ws_disconnect"
        # The store hears of the detachment from the writer thread, behind the
        # session's queued writes: the registry (active_list) knows first.

        async def detached_stored() -> bool:
            return stored(gateway.db, sid)[0].detached_at is not None

        assert await wait_until(detached_stored, timeout=10)
        r = await c2.call("session.resume", session_id=sid, since=0)
        assert r["replayed"] == r["last_seq"] and not r["reload"]
        await asyncio.sleep(2.5)  # past the grace, but attached: still live
        assert (await c2.call("session.active_list"))["sessions"][0]["state"] == "attached"
        assert stored(gateway.db, sid)[0].detached_at is None

    run(go())


def test_idle_timeout_and_max_live_sessions(tmp_path: Path) -> None:
    args = ("--idle-timeout", "2", "--max-live-sessions", "2", "-o", "delay=0")
    with serve(tmp_path, *args) as served:

        async def go() -> None:
            c = await served.client()
            ids = []
            for i in range(3):
                sid = (await c.call("session.create"))["session_id"]
                if i == 2:  # past the cap: the least recently active idle one goes
                    evicted = await next_event(c, "session.ended")
                    assert evicted["session_id"] == ids[0] and evicted["reason"] == "lru_evict"
                await c.call("prompt.submit", session_id=sid, text="hi")
                await next_event(c, "turn.end", sid)
                ids.append(sid)
            assert stored(served.db, ids[0])[0].end_reason == "lru_evict"

            async def all_ended() -> bool:
                return all(stored(served.db, i)[0].end_reason for i in ids)

            assert await wait_until(all_ended)
            assert [stored(served.db, i)[0].end_reason for i in ids[1:]] == ["idle_timeout"] * 2

        run(go())


# --- leaks ---------------------------------------------------------------------------------


def test_thousand_connect_create_prompt_drop_cycles_leave_nothing(tmp_path: Path) -> None:
    with serve(tmp_path, "--detach-grace", "0.2", "-o", "delay=0") as served:

        async def cycle(i: int) -> str:
            c = await served.client()
            sid = (await c.call("session.create"))["session_id"]
            await c.call("prompt.submit", session_id=sid, text=f"cycle {i}")
            if i % 2:
                await next_event(c, "turn.end")
                await c.close()
            else:
                await c.abort()  # mid-turn, no goodbye
            return sid

        async def go() -> None:
            for i in range(50):  # warm up: executors, caches, allocator
                await cycle(i)
            await asyncio.sleep(0.5)
            base = (await info(served))["stats"]
            ids = []
            for batch in range(20):
                ids += await asyncio.gather(*(cycle(batch * 50 + i) for i in range(50)))

            async def settled() -> dict[str, Any] | None:
                stats = (await info(served))["stats"]
                return stats if stats["live_sessions"] == 0 and stats["finalizing"] == 0 else None

            after = await wait_until(settled, timeout=60)
            assert after, "sessions still live after the grace"
            assert after["handles"] == after["running_turns"] == after["pending_writes"] == 0
            assert after["connections"] == 1  # the info call itself
            assert after["tasks"] <= base["tasks"] + 1
            assert after["threads"] <= base["threads"] + 1
            assert after["rss_bytes"] < base["rss_bytes"] + 20 * 1024 * 1024
            with tether.open_store(served.db, load_plugins=False) as store:
                census = store.census()
            assert census.open == 0 and census.total == 1050
            assert census.end_reasons == {"ws_disconnect": 1050}
            assert len(set(ids)) == 1000

        run(go(), timeout=300)


# --- stopping ------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_graceful_stop_ends_live_sessions_once_with_a_reason(tmp_path: Path, sig: int) -> None:
    with serve(tmp_path, "-o", "delay=0.05") as served:

        async def go() -> tuple[str, str]:
            c = await served.client()
            idle = (await c.call("session.create"))["session_id"]
            await c.call("prompt.submit", session_id=idle, text="hi")
            await next_event(c, "turn.end")
            busy = (await c.call("session.create"))["session_id"]
            await c.call("prompt.submit", session_id=busy, text="w " * 100)
            await next_event(c, "message.delta")
            return idle, busy

        idle, busy = run(go())
        assert served.stop(sig) == 0
    log = served.log.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log
    for sid in (idle, busy):
        s, msgs = stored(served.db, sid)
        assert s.end_reason == "gateway_shutdown"
        assert msgs[-1].role == "assistant"
    assert stored(served.db, busy)[1][-1].meta["interrupted"] is True
    with tether.open_store(served.db, load_plugins=False) as store:
        ended_events = store.backend.read(
            lambda c: c.execute("SELECT count(*) FROM events WHERE kind = 'ended'").fetchone()[0]
        )
    assert ended_events == 2  # exactly once each


# --- a killed gateway ---------------------------------------------------------------------


def test_sigkilled_gateway_is_reaped_by_the_next_and_nothing_acknowledged_is_lost(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "shared.db")
    acked: dict[str, list[str]] = {}  # session -> contents the gateway acknowledged as stored

    async def first(served: Served) -> tuple[list[str], str]:
        c = await served.client()
        done = []
        for i in range(3):
            sid = (await c.call("session.create"))["session_id"]
            await c.call("prompt.submit", session_id=sid, text=f"question {i}")
            acked[sid] = []
            while True:  # each `message` event is a stored message
                m, p = await c.events.get()
                if m == "message" and p["session_id"] == sid:
                    acked[sid].append(p["message"]["content"])
                if m == "turn.end" and p["session_id"] == sid:
                    break
            done.append(sid)
        busy = (await c.call("session.create"))["session_id"]
        await c.call("prompt.submit", session_id=busy, text="w " * 500)
        acked[busy] = ["w " * 500]
        await next_event(c, "message.delta", busy)
        return done, busy

    with serve(tmp_path, "-o", "delay=0.05", db=db, name="a") as a:
        done, busy = run(first(a))
        a.proc.kill()  # SIGKILL: no exit path runs
        a.proc.wait()

    with serve(tmp_path, db=db, name="b") as b:

        async def reaped() -> bool:
            with tether.open_store(db, load_plugins=False) as store:
                return store.census().open == 0

        assert run(wait_until(reaped, timeout=30))
        for sid, contents in acked.items():
            s, msgs = stored(db, sid)
            assert s.end_reason == "reaped", (sid, s.end_reason)
            assert [m.content for m in msgs][: len(contents)] == contents
        assert [m.role for m in stored(db, busy)[1]] == ["user"]

        async def go() -> None:
            c = await b.client()
            with pytest.raises(RemoteError) as err:
                await c.call("session.resume", session_id=done[0])
            assert err.value.data == {"reason": "reaped"}
            child = await c.call("session.create", parent_id=done[0])
            await c.call("prompt.submit", session_id=child["session_id"], text="go on")
            assert (await next_event(c, "turn.end"))["status"] == "completed"

        run(go())


def test_resuming_a_session_another_live_process_owns_is_refused(gateway: Served) -> None:
    with tether.open_store(gateway.db, load_plugins=False) as store:
        mine = store.session(source="cli")
        mine.append("user", "this process owns me")

        async def go() -> None:
            c = await gateway.client()
            with pytest.raises(RemoteError) as err:
                await c.call("session.resume", session_id=mine.id)
            assert err.value.code == rpc.OWNER_ALIVE

        run(go())
        mine.end()


def test_the_gateway_runs_its_collector_for_a_server(gateway: Served) -> None:
    """``tether serve`` freezes what start-up built and reports its collector in
    ``gateway.info`` (see tests/test_gcpolicy.py)."""
    stats = run(info(gateway))["stats"]
    assert stats["gc_frozen_objects"] > 1000
    assert stats["gc_collections"] >= 0 and stats["gc_pause_max_ms"] >= 0


def test_a_closed_connection_is_freed_without_the_cycle_collector(tmp_path: Path) -> None:
    """Each connection's objects go when it closes, by reference counting alone:
    a reconnect storm must not leave the cycle collector a pile to walk while
    the event loop waits (its passes took up to 42 ms in one)."""
    import gc

    from tether.agents.echo import EchoAgent
    from tether.gateway.server import ServeOptions, bind
    from tether.gateway.server import serve as serve_gateway

    from .conftest import TOKEN

    def protocols() -> int:
        return sum(1 for o in gc.get_objects() if type(o).__name__ == "_WebSocket")

    async def main() -> tuple[int, int]:
        store = tether.open_store(str(tmp_path / "t.db"), kind="gateway", load_plugins=False)
        stop = asyncio.Event()
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            serve_gateway(
                store,
                EchoAgent(delay=0),
                TOKEN,
                ServeOptions(),
                sock=bind("127.0.0.1", 0),
                ready=ready.set_result,
                stop=stop,
            )
        )
        try:
            url = await asyncio.wait_for(ready, 10)
            gc.collect()
            gc.disable()  # from here, only reference counting frees anything
            try:
                before = protocols()
                for _ in range(20):
                    c = await Client.connect(url, TOKEN)
                    await c.call("ping")
                    await c.close()

                async def freed() -> bool:
                    return protocols() == before

                await wait_until(freed, timeout=2)
                after = protocols()
            finally:
                gc.enable()
        finally:
            stop.set()
            await task
            store.close()
        return before, after

    before, after = run(main(), timeout=60)
    assert after == before
