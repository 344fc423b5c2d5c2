"""The gateway runtime under store faults and awkward clients, in this process.

Real stores (SQLite files, the test PostgreSQL), real child processes where
another owner is needed, no sockets: see :mod:`.inproc`.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.agents.echo import EchoAgent
from tether.compose import Store
from tether.gateway import rpc
from tether.gateway.methods import receive
from tether.gateway.runtime import Gateway
from tether.store.sqlite import SQLiteBackend

from ..conftest import CHILD_PRELUDE, child_env
from .inproc import CallError, Peer, running, until


def go(coro: Any, timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def short_budget_store(path: str) -> Store:
    """A SQLite store that gives up on a held write lock after 0.2 s (not 60)."""
    return Store(SQLiteBackend(path, busy_timeout=0.05, write_budget=0.2), kind="gateway")


def stored(db: str, sid: str) -> tether.Session:
    with tether.open_store(db, load_plugins=False) as s:
        return s.get_session(sid)


async def chat(peer: Peer, text: str = "hello there", **create: Any) -> str:
    """Create a session, run one turn to its end; the session id."""
    sid = (await peer.call("session.create", **create))["session_id"]
    await peer.call("prompt.submit", session_id=sid, text=text)
    await peer.event("turn.end")
    return sid


class WriteLock:
    """Another connection holding SQLite's write lock (``BEGIN IMMEDIATE``) until released."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


class BlockedWriter:
    """Occupies the gateway's single writer thread until released, so later writes queue."""

    def __init__(self, gw: Gateway) -> None:
        self.gate = threading.Event()
        self.fut = gw.write(self.gate.wait, 30)

    async def release(self) -> None:
        self.gate.set()
        await self.fut


# --- an end that cannot be recorded is retried until it is ----------------------------


def test_end_that_cannot_be_recorded_stays_finalizing_and_is_retried(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    store = short_budget_store(db)

    async def scenario() -> None:
        async with running(store, end_retry=0.05, end_retry_max=0.2) as gw:
            peer = Peer(gw)
            sid = await chat(peer)
            lock = WriteLock(db)  # the database is unavailable for writes
            try:
                closed = await peer.call("session.close", session_id=sid)
                assert closed["ended"] is False and closed["ending"] is True
                [row] = (await peer.call("session.active_list"))["sessions"]
                assert row["session_id"] == sid and row["state"] == "finalizing"
                assert row["ends_as"] == "completed" and "locked" in row["error"]
                await until(lambda: gw.registry.active()[0]["attempts"] >= 3)
                assert sid in gw.handles  # the handle is held, never dropped
                with pytest.raises(CallError) as err:  # not -32006 "owned by this process"
                    await peer.call("session.resume", session_id=sid)
                assert err.value.code == rpc.SESSION_ENDED
                assert stored(db, sid).ended_at is None
            finally:
                lock.release()
            await until(lambda: not gw.registry.active(), timeout=10)
            assert sid not in gw.handles and sid not in gw.finalizing
            s = stored(db, sid)
            assert s.end_reason == "completed"

    try:
        go(scenario())
    finally:
        store.close()


def test_failed_end_at_shutdown_is_retried_within_the_shutdown_timeout(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    store = short_budget_store(db)

    async def scenario() -> str:
        async with running(store, end_retry=0.05, shutdown_timeout=5) as gw:
            peer = Peer(gw)
            sid = await chat(peer)
            lock = WriteLock(db)
            threading.Timer(0.6, lock.release).start()  # back after a few failed attempts
            await gw.shutdown()
            return sid

    try:
        sid = go(scenario())
        assert stored(db, sid).end_reason == "gateway_shutdown"
    finally:
        store.close()


# --- requests that must be refused ------------------------------------------------------


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[tuple[str, Store]]:
    db = str(tmp_path / "t.db")
    store = tether.open_store(db, kind="gateway", load_plugins=False)
    try:
        yield db, store
    finally:
        store.close()


def test_interrupt_from_a_connection_not_attached_is_32004(sqlite_db: tuple[str, Store]) -> None:
    async def scenario() -> None:
        async with running(sqlite_db[1], delay=0.05) as gw:
            a, b = Peer(gw), Peer(gw)
            sid = (await a.call("session.create"))["session_id"]
            await a.call("prompt.submit", session_id=sid, text="one two three four five six")
            with pytest.raises(CallError) as err:
                await b.call("session.interrupt", session_id=sid)
            assert err.value.code == rpc.NOT_ATTACHED
            end = await a.event("turn.end")
            assert end["status"] == "completed"  # b could not cut it off

    go(scenario())


OWNER = (
    CHILD_PRELUDE
    + """
store = tether.open_store(sys.argv[1], load_plugins=False)
h = store.session(source="cli")
h.append("user", "mine")
print(h.id, flush=True)
sys.stdin.readline()
"""
)


def test_close_of_a_session_another_live_process_owns_is_32006(
    sqlite_db: tuple[str, Store],
) -> None:
    db, store = sqlite_db
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(OWNER), db],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None
        sid = proc.stdout.readline().strip()

        async def scenario() -> None:
            async with running(store) as gw:
                peer = Peer(gw)
                with pytest.raises(CallError) as err:
                    await peer.call("session.close", session_id=sid)
                assert err.value.code == rpc.OWNER_ALIVE

        go(scenario())
        assert stored(db, sid).ended_at is None  # the other process's session is untouched
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=20)


def dead_owners_session(db: str) -> str:
    """An open session whose owner was killed with SIGKILL."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(OWNER), db],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert proc.stdout is not None
    sid = proc.stdout.readline().strip()
    proc.kill()
    proc.wait()
    proc.stdout.close()
    assert proc.stdin is not None
    proc.stdin.close()
    return sid


def test_close_of_a_dead_owners_session_ends_it(sqlite_db: tuple[str, Store]) -> None:
    db, store = sqlite_db
    sid = dead_owners_session(db)

    async def scenario() -> None:
        async with running(store) as gw:
            closed = await Peer(gw).call("session.close", session_id=sid, reason="cli_close")
            assert closed == {"ended": True, "others_attached": 0, "persisted": True}

    go(scenario())
    assert stored(db, sid).end_reason == "cli_close"


def test_resume_with_since_but_no_stream_reloads(sqlite_db: tuple[str, Store]) -> None:
    async def scenario() -> None:
        async with running(sqlite_db[1]) as gw:
            a, b = Peer(gw), Peer(gw)
            sid = await chat(a)
            got = await b.call("session.resume", session_id=sid, since=2)
            assert got["reload"] is True and got["replayed"] == 0
            other = await b.call("session.resume", session_id=sid, since=2, stream="x.1")
            assert other["reload"] is True and other["replayed"] == 0
            same = await b.call("session.resume", session_id=sid, since=2, stream=got["stream"])
            assert same["reload"] is False and same["replayed"] == got["last_seq"] - 2
            # "I saw nothing" needs no stream: everything is replayed.
            zero = await b.call("session.resume", session_id=sid, since=0)
            assert zero["reload"] is False and zero["replayed"] == got["last_seq"]

    go(scenario())


def test_cold_resume_that_finds_the_gateway_full_leaves_the_session_as_it_was(
    sqlite_db: tuple[str, Store],
) -> None:
    db, store = sqlite_db
    cold = dead_owners_session(db)  # an earlier gateway's, killed

    async def scenario() -> None:
        async with running(store, max_live_sessions=1, delay=0.2) as gw:
            a, b = Peer(gw), Peer(gw)
            idle = (await a.call("session.create"))["session_id"]
            blocked = BlockedWriter(gw)
            # The cold resume sees room (the idle session can be evicted) and
            # waits for the writer; meanwhile a turn starts on the idle session.
            resume = asyncio.create_task(b.call("session.resume", session_id=cold))
            await until(lambda: gw.cold_lock.locked())
            submit = asyncio.create_task(a.call("prompt.submit", session_id=idle, text="hi"))
            await until(lambda: gw.registry.running() or idle not in gw.registry)
            await blocked.release()
            outcomes = await asyncio.gather(resume, submit, return_exceptions=True)
            if isinstance(outcomes[0], CallError):  # refused: full of running turns
                assert outcomes[0].code == rpc.GATEWAY_FULL
                assert cold not in gw.registry
            else:  # the idle session made room (LRU) before anything was written
                assert cold in gw.registry and isinstance(outcomes[1], CallError)
            s = stored(db, cold)
            assert s.ended_at is None and s.end_reason is None  # never ended as lru_evict

    go(scenario())


def test_shutdown_racing_a_submit_starts_no_turn_and_leaves_no_task(
    sqlite_db: tuple[str, Store],
) -> None:
    db, store = sqlite_db

    async def scenario() -> str:
        gw = Gateway(store, EchoAgent(delay=0.01))
        await gw.start()
        peer = Peer(gw)
        sid = (await peer.call("session.create"))["session_id"]
        blocked = BlockedWriter(gw)
        frame = {"jsonrpc": "2.0", "id": 9, "method": "prompt.submit"}
        frame["params"] = {"session_id": sid, "text": "hi"}
        # The request itself (its reply is not awaited: shutdown drops the connections).
        submit = asyncio.create_task(receive(gw, peer.conn, json.dumps(frame)))
        await until(lambda: gw.registry.running())
        stopping = asyncio.create_task(gw.shutdown())
        await until(lambda: gw.stopping)
        await blocked.release()
        await stopping
        await submit  # the prompt was stored; the turn never started
        assert not gw.turns and not gw.handles and not gw.finalizing
        leftover = [t for t in asyncio.all_tasks() if t.get_name().startswith("tether-")]
        assert leftover == []
        assert [m for m, _ in peer.events if m == "turn.start"] == []
        return sid

    sid = go(scenario())
    s = stored(db, sid)
    assert s.end_reason == "gateway_shutdown" and s.message_count == 1


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("session.history", {"session_id": "\ud800"}),
        ("session.resume", {"session_id": "abc\udfff"}),
        ("session.close", {"session_id": "\ud83d"}),
        ("session.list", {"source": "\ud800"}),
        ("session.create", {"metadata": {"k\ud800": 1}}),
        ("session.create", {"metadata": {"k": ["\udc00"]}}),
        ("prompt.submit", {"session_id": "x", "text": "hi \ud800"}),
        ("session.history", {"session_id": "x", "after_seq": 2**63}),
        ("session.history", {"session_id": "x", "after_seq": 2**64 + 5}),
        ("session.resume", {"session_id": "x", "since": 2**63}),
        ("session.create", {"metadata": {"n": 2**70}}),
        ("session.list", {"cursor": "WzFlOTk5LCJ4Il0"}),  # [1e999,"x"]: infinite time
        ("session.list", {"cursor": "W05hTiwieCJd"}),  # [NaN,"x"]
        ("session.list", {"cursor": "WzEwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMCwieCJd"}),  # huge number
        ("session.list", {"cursor": "!!"}),
        ("session.create", {"source": ""}),
        ("session.create", {"model": "m\x00"}),
    ],
)
def test_bad_params_get_32602_never_32603(
    sqlite_db: tuple[str, Store], method: str, params: dict[str, Any]
) -> None:
    async def scenario() -> None:
        async with running(sqlite_db[1]) as gw:
            with pytest.raises(CallError) as err:
                await Peer(gw).call(method, **params)
            assert err.value.code == rpc.INVALID_PARAMS, err.value.message
            assert "\n" not in err.value.message

    go(scenario())


def test_caps_on_sessions_per_connection_and_overall(sqlite_db: tuple[str, Store]) -> None:
    async def scenario() -> None:
        async with running(sqlite_db[1], max_sessions_per_connection=3, max_live_sessions=4) as gw:
            a, b = Peer(gw), Peer(gw)
            for _ in range(3):
                await a.call("session.create")
            with pytest.raises(CallError) as err:
                await a.call("session.create")
            assert err.value.code == rpc.GATEWAY_FULL and "this connection" in err.value.message
            for _ in range(3):  # past the overall cap: the least recently active idle goes
                await b.call("session.create")
            assert len(gw.registry) == 4

    go(scenario())


def test_default_caps_are_set() -> None:
    from tether.gateway.runtime import GatewayConfig

    c = GatewayConfig()
    assert c.max_live_sessions is not None and c.max_sessions_per_connection is not None
    assert c.max_sessions_per_connection <= c.max_live_sessions <= 10_000


# --- session.close with if_alone; source, model and title -------------------------------


def test_close_if_alone_detaches_when_others_are_attached(sqlite_db: tuple[str, Store]) -> None:
    db, store = sqlite_db

    async def scenario() -> str:
        async with running(store) as gw:
            a, b = Peer(gw), Peer(gw)
            sid = await chat(a)
            await b.call("session.resume", session_id=sid)
            got = await a.call("session.close", session_id=sid, if_alone=True)
            assert got == {"ended": False, "others_attached": 1, "detached": True}
            assert sid in gw.registry and gw.registry.session(sid).conns == {b.conn.id}
            got = await b.call("session.close", session_id=sid, if_alone=True, reason="tui_close")
            assert got == {"ended": True, "others_attached": 0, "persisted": True}
            return sid

    sid = go(scenario())
    assert stored(db, sid).end_reason == "tui_close"


def test_close_without_if_alone_ends_for_everyone(sqlite_db: tuple[str, Store]) -> None:
    async def scenario() -> None:
        async with running(sqlite_db[1]) as gw:
            a, b = Peer(gw), Peer(gw)
            sid = await chat(a)
            await b.call("session.resume", session_id=sid)
            got = await a.call("session.close", session_id=sid)
            assert got == {"ended": True, "others_attached": 1, "persisted": True}
            assert (await b.event("session.ended"))["reason"] == "completed"

    go(scenario())


def test_create_takes_source_and_model_and_titles_from_the_first_prompt(
    sqlite_db: tuple[str, Store],
) -> None:
    db, store = sqlite_db
    long = "  Please   summarise the attached quarterly report for the board meeting tomorrow\n"

    async def scenario() -> tuple[str, str, str]:
        async with running(store) as gw:
            p = Peer(gw)
            a = await chat(p, long + "second line", source="tui", model="gpt-test")
            b = await chat(p, "later prompt", title="given")
            c = await chat(p, "hi")
            return a, b, c

    a, b, c = go(scenario())
    sa = stored(db, a)
    assert (sa.source, sa.model) == ("tui", "gpt-test")
    assert sa.title is not None and "\n" not in sa.title and len(sa.title) <= 60
    assert sa.title.startswith("Please summarise the attached quarterly report")
    assert sa.title.endswith("\u2026")
    sb = stored(db, b)
    assert (sb.source, sb.model, sb.title) == ("gateway", "echo", "given")
    assert stored(db, c).title == "hi"


# --- ends recorded elsewhere reach attached clients -------------------------------------


def test_session_ended_elsewhere_is_told_to_attached_clients(
    sqlite_db: tuple[str, Store],
) -> None:
    db, store = sqlite_db

    async def scenario() -> None:
        async with running(store) as gw:
            a, b = Peer(gw), Peer(gw)
            sid = await chat(a)
            await b.call("session.resume", session_id=sid)
            # `tether end` in another process, as a user would.
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "tether", "end", "--db", db, "--reason", "cli_close", sid],
                env=child_env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            for peer in (a, b):
                ended = await peer.event("session.ended", timeout=5)
                assert ended["session_id"] == sid and ended["reason"] == "cli_close"
            await until(lambda: sid not in gw.registry and sid not in gw.handles)
            with pytest.raises(CallError) as err:
                await a.call("prompt.submit", session_id=sid, text="lost?")
            assert err.value.code == rpc.NOT_ATTACHED

    go(scenario())


# --- on both backends ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("session.history", {"session_id": "01ABC\x00"}),
        ("session.resume", {"session_id": "\x00"}),
        ("session.close", {"session_id": "x\x00y"}),
        ("session.list", {"source": "cli\x00"}),
        ("session.list", {"cwd": "/tmp/\x00"}),
        ("session.list", {"cursor": "!!"}),  # the store's InvalidInputError
        ("session.history", {"session_id": "x", "after_seq": 2**63}),
    ],
)
def test_bad_input_is_32602_on_every_backend(
    store: Store, method: str, params: dict[str, Any]
) -> None:
    async def scenario() -> None:
        async with running(store) as gw:
            peer = Peer(gw)
            with pytest.raises(CallError) as err:
                await peer.call(method, **params)
            assert err.value.code == rpc.INVALID_PARAMS, err.value.message
            assert (await peer.call("ping"))["pong"] is True

    go(scenario())


def test_invalid_input_maps_to_32602_whatever_else_it_is() -> None:
    from tether.errors import InvalidInputError, StoreError
    from tether.gateway.methods import to_rpc_error

    class BadAndStore(InvalidInputError, StoreError):
        pass

    assert to_rpc_error(InvalidInputError("x")).code == rpc.INVALID_PARAMS
    assert to_rpc_error(BadAndStore("x")).code == rpc.INVALID_PARAMS


def test_session_ended_elsewhere_reaches_clients_on_every_backend(
    store: Store, db_url: str
) -> None:
    async def scenario() -> None:
        async with running(store) as gw:
            a = Peer(gw)
            sid = await chat(a)
            with tether.open_store(db_url, load_plugins=False) as other:
                assert await asyncio.to_thread(other.end_session, sid, "session_reset")
            ended = await a.event("session.ended", timeout=5)
            assert ended["reason"] == "session_reset"
            await until(lambda: sid not in gw.registry and not gw.registry.is_ending(sid))

    go(scenario())


def test_running_session_ended_elsewhere_stops_its_turn_and_tells_clients_at_once(
    sqlite_db: tuple[str, Store], caplog: pytest.LogCaptureFixture
) -> None:
    db, store = sqlite_db

    async def scenario() -> str:
        async with running(store, delay=0.05) as gw:
            a = Peer(gw)
            sid = await chat(a, "first")
            await a.call("prompt.submit", session_id=sid, text="w " * 200)  # 10 s of reply
            await a.event("message.delta")
            with tether.open_store(db, load_plugins=False) as other:
                assert await asyncio.to_thread(other.end_session, sid, "session_reset")
            t = time.monotonic()
            end = await a.event("turn.end", timeout=5)
            ended = await a.event("session.ended", timeout=5)
            assert time.monotonic() - t < 2.0
            assert end["status"] == "interrupted" and ended["reason"] == "session_reset"
            await until(lambda: not gw.turns and sid not in gw.registry)
            return sid

    sid = go(scenario())
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
    assert stored(db, sid).end_reason == "session_reset"


# --- an end recorded with lost messages is recorded, not retried --------------------------


def test_end_that_lost_buffered_messages_counts_as_recorded_and_is_not_retried(
    store: Store, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``MessagesLostError`` means the end WAS recorded (as ``error``): not a failure to retry."""
    from ..test_end_faults import reject_poison

    async def scenario() -> str:
        async with running(store, end_retry=0.05) as gw:
            peer = Peer(gw)
            sid = await chat(peer)
            reject_poison(db_url)  # the final flush of the next message fails
            gw.handles[sid].buffer("assistant", "poison")
            closed = await peer.call("session.close", session_id=sid)
            assert closed["ended"] is True and "ending" not in closed
            assert sid not in gw.registry and not gw.registry.is_ending(sid)
            assert gw.registry.active() == [] and sid not in gw.handles
            return sid

    sid = go(scenario())
    s = stored(db_url, sid)
    assert s.end_reason == "error" and s.end_detail is not None
    assert s.end_detail.startswith("1 buffered message could not be stored; ending as completed")
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.levelname == "ERROR" and r.name.startswith("tether.gateway")
    ]
    assert len(errors) == 1, errors  # one line, with the count; no "failed", no retry
    assert f"session {sid} ended with reason 'error': 1 buffered message" in errors[0]
