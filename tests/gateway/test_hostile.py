"""A real ``tether serve`` against hostile or broken clients: it stays small and keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .conftest import Served, info, run, serve

pytestmark = pytest.mark.slow

MB = 1024 * 1024


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes (from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def report(name: str, before: int, after: int) -> None:
    # The numbers the brief asks for, visible with `pytest -s` / in the log of a run.
    print(f"\n{name}: gateway RSS {before / MB:.1f} MB -> {after / MB:.1f} MB")


async def wait_closed(served: Served, timeout: float = 30) -> dict:
    """Wait until the gateway holds only the connection asking (the hostile one is gone)."""
    deadline = time.monotonic() + timeout
    while True:
        got = await info(served)
        if got["stats"]["connections"] == 1 or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.1)


# --- handshakes ---------------------------------------------------------------------------


def test_refused_handshakes_are_one_warning_each_without_the_token(tmp_path: Path) -> None:
    with serve(tmp_path) as served:

        async def go() -> None:
            for url, headers in [
                (f"{served.url}?token=WRONG-TOKEN-123", {}),
                (served.url, {"Authorization": "Bearer WRONG-TOKEN-456"}),
                (f"{served.url}?token={served.token}", {"Origin": "http://evil.example"}),
            ]:
                with pytest.raises(InvalidStatus):
                    await connect(url, additional_headers=headers, open_timeout=5)
            assert (await info(served))["version"]

        run(go())
        assert served.stop() == 0
    log = served.log.read_text()
    refused = [line for line in log.splitlines() if "refused a connection" in line]
    assert len(refused) == 3, log
    assert all(line.startswith("WARNING") for line in refused)
    assert "WRONG-TOKEN" not in log and served.token not in log
    assert "ERROR" not in log and "Traceback" not in log, log


def test_silent_and_half_header_connections_are_closed_after_the_handshake_timeout(
    tmp_path: Path,
) -> None:
    with serve(tmp_path, "--handshake-timeout", "1") as served:
        silent = socket.create_connection(("127.0.0.1", served.port))
        half = socket.create_connection(("127.0.0.1", served.port))
        half.sendall(b"GET /rpc HTTP/1.1\r\nHost: localhost\r\nUpgrade: websock")
        try:
            for s in (silent, half):
                s.settimeout(10)
                t = time.monotonic()
                assert s.recv(100) == b""  # closed by the gateway
                assert time.monotonic() - t < 5
        finally:
            silent.close()
            half.close()
        assert run(info(served))["stats"]["connections"] == 1
        assert served.stop() == 0
    assert "Traceback" not in served.log.read_text()


# --- clients that do not read --------------------------------------------------------------


def test_non_reading_client_asking_for_big_histories_is_cut_and_memory_stays_bounded(
    tmp_path: Path,
) -> None:
    with serve(tmp_path, "-o", "delay=0") as served:

        async def go() -> tuple[int, int]:
            c = await served.client()
            sid = (await c.call("session.create"))["session_id"]
            for i in range(4):  # about 4 MB of history: each prompt and reply 0.5 MB
                await c.call("prompt.submit", session_id=sid, text=f"{i}" + "x" * 500_000)
                while (await c.events.get())[0] != "turn.end":
                    pass
            await c.close()
            before = rss(served.proc.pid)
            # A client that sends requests but never reads a reply.
            ws = await connect(
                served.url,
                additional_headers={"Authorization": f"Bearer {served.token}"},
                max_queue=1,
                max_size=None,
            )
            frame = {"jsonrpc": "2.0", "method": "session.history"}
            with contextlib.suppress(ConnectionClosed):
                for i in range(30):
                    frame["id"] = i
                    frame["params"] = {"session_id": sid}
                    await ws.send(json.dumps(frame))
            got = await wait_closed(served)
            assert got["stats"]["connections"] == 1
            after = rss(served.proc.pid)
            ws.transport.abort()
            return before, after

        before, after = run(go())
        report("30 history requests, not read", before, after)
        assert after - before < 60 * MB  # 30 x 4 MB would be 120 MB queued
        assert served.stop() == 0
    log = served.log.read_text()
    assert "not reading" in log and "Traceback" not in log


def test_non_reading_client_flooding_pings_is_cut_and_memory_stays_bounded(
    tmp_path: Path,
) -> None:
    with serve(tmp_path) as served:

        async def go() -> tuple[int, int]:
            before = rss(served.proc.pid)
            ws = await connect(
                served.url,
                additional_headers={"Authorization": f"Bearer {served.token}"},
                max_queue=1,
            )
            batch = json.dumps([{"jsonrpc": "2.0", "id": i, "method": "ping"} for i in range(100)])
            with contextlib.suppress(ConnectionClosed):
                for _ in range(5000):  # 500,000 JSON-RPC pings, ~30 MB of replies
                    await ws.send(batch)
            got = await wait_closed(served)
            assert got["stats"]["connections"] == 1
            after = rss(served.proc.pid)
            ws.transport.abort()
            return before, after

        before, after = run(go())
        report("JSON-RPC ping flood, not read", before, after)
        assert after - before < 40 * MB
        assert served.stop() == 0


def test_websocket_ping_flood_without_reading_pongs_is_cut(tmp_path: Path) -> None:
    with serve(tmp_path) as served:

        async def go() -> tuple[int, int]:
            before = rss(served.proc.pid)
            ws = await connect(
                served.url,
                additional_headers={"Authorization": f"Bearer {served.token}"},
                max_queue=1,
                ping_interval=None,
            )
            ws.transport.pause_reading()  # read nothing at all, not even pongs
            payload = b"p" * 125
            with contextlib.suppress(ConnectionClosed):
                for i in range(400_000):  # 50 MB of pongs if they were all kept
                    if ws.transport.is_closing():
                        break
                    ws.protocol.send_ping(payload)
                    ws.transport.write(b"".join(ws.protocol.data_to_send()))
                    if i % 1000 == 0:
                        await asyncio.sleep(0)  # let the socket drain toward the gateway
            got = await wait_closed(served)
            assert got["stats"]["connections"] == 1
            after = rss(served.proc.pid)
            ws.transport.abort()
            return before, after

        before, after = run(go())
        report("WebSocket ping flood, pongs not read", before, after)
        assert after - before < 40 * MB
        assert served.stop() == 0
    assert "pings with no pongs read" in served.log.read_text()


# --- out of file descriptors ---------------------------------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_out_of_descriptors_is_logged_once_and_the_gateway_recovers(tmp_path: Path) -> None:
    limit = 96

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    with serve(tmp_path, "--handshake-timeout", "1", preexec_fn=low_limit) as served:
        run(info(served))  # the store's connections are open
        spare = limit - open_fds(served.proc.pid)
        assert spare > 0
        hogs = []
        try:
            for _ in range(spare + 40):  # more silent connections than descriptors
                hogs.append(socket.create_connection(("127.0.0.1", served.port)))
            time.sleep(3)  # a few accept retries while out of descriptors
            mid = served.log.read_text()
        finally:
            for s in hogs:
                s.close()

        async def good_client() -> None:
            deadline = time.monotonic() + 30
            while True:  # descriptors free up as the silent ones time out
                try:
                    got = await asyncio.wait_for(info(served), 5)
                    assert got["version"]
                    return
                except (OSError, TimeoutError, InvalidStatus):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)

        run(good_client())
        assert served.stop() == 0
    log = served.log.read_text()
    assert mid.count("cannot accept connections") == 1, mid
    assert log.count("cannot accept connections") <= 2  # once per burst
    assert "Traceback" not in log and len(log) < 20_000, log[:2000]
