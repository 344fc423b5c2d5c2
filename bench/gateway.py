"""Gateway benchmark: a real ``tether serve`` (echo agent, no delay) and WebSocket clients.

The server is a child process on 127.0.0.1; the clients run in this process
on one asyncio loop, so on a small machine they compete with the server for
the CPU: the numbers are a floor for the server, measured end to end.

* **ping round trips per second** with 1, 50 and 500 concurrent connections,
  each sending ``ping`` and waiting for the reply, in a loop, for a fixed time.
* **prompt to first event**: 50 connections, one session each, submit a
  prompt and time the reply to ``prompt.submit``, the ``turn.start`` event and
  the first ``message.delta``; p50 / p99 over every prompt.
* **memory per live idle session**: the gateway's RSS (from ``gateway.info``)
  before and after creating N sessions, each with one short turn, attached
  and idle, divided by N.
* **connect-create-drop cycles per second**: open a connection, create a
  session, drop the connection (10 clients in parallel). The server runs
  with a 1 s detach grace so dropped sessions are finalized as they go.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tether.gateway.client import Client
from tether.gateway.process import Child, spawn_gateway

from .report import percentile, publish, table

PING = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"})


async def _raw(child: Child) -> ClientConnection:
    return await connect(
        child.url,
        additional_headers={"Authorization": f"Bearer {child.token}"},
        compression=None,
        max_size=None,
    )


async def ping_rate(child: Child, conns: int, seconds: float) -> float:
    sockets = await asyncio.gather(*(_raw(child) for _ in range(conns)))
    stop = time.perf_counter() + seconds
    counts = [0] * conns

    async def loop(i: int, ws: ClientConnection) -> None:
        while time.perf_counter() < stop:
            await ws.send(PING)
            await ws.recv()
            counts[i] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(loop(i, ws) for i, ws in enumerate(sockets)))
    elapsed = time.perf_counter() - t0
    await asyncio.gather(*(ws.close() for ws in sockets))
    return sum(counts) / elapsed


async def first_event_latency(
    child: Child, conns: int, prompts: int
) -> tuple[list[float], list[float], list[float]]:
    """Per prompt: ms to the submit reply, to turn.start, to the first message.delta."""
    replies: list[float] = []
    starts: list[float] = []
    deltas: list[float] = []

    async def one(client: Client) -> None:
        sid = (await client.call("session.create"))["session_id"]
        for i in range(prompts):
            t0 = time.perf_counter()
            await client.call("prompt.submit", session_id=sid, text=f"hello number {i}")
            replies.append((time.perf_counter() - t0) * 1000)
            got_start = got_delta = False
            while True:
                method, _ = await client.events.get()
                if method == "turn.start" and not got_start:
                    starts.append((time.perf_counter() - t0) * 1000)
                    got_start = True
                elif method == "message.delta" and not got_delta:
                    deltas.append((time.perf_counter() - t0) * 1000)
                    got_delta = True
                elif method == "turn.end":
                    break

    clients = await asyncio.gather(*(Client.connect(child.url, child.token) for _ in range(conns)))
    await asyncio.gather(*(one(c) for c in clients))
    await asyncio.gather(*(c.close() for c in clients))
    return replies, starts, deltas


async def memory_per_session(child: Child, sessions: int) -> tuple[float, int]:
    """Bytes of RSS per live idle session (attached, one short turn each)."""
    clients = await asyncio.gather(*(Client.connect(child.url, child.token) for _ in range(10)))
    info = clients[0]

    async def rss() -> int:
        await asyncio.sleep(0.5)
        return (await info.call("gateway.info"))["stats"]["rss_bytes"]

    async def make(client: Client, n: int) -> None:
        for _ in range(n):
            sid = (await client.call("session.create"))["session_id"]
            await client.call("prompt.submit", session_id=sid, text="remember me")
            while (await client.events.get())[0] != "turn.end":
                pass

    await asyncio.gather(*(make(c, 20) for c in clients))  # warm up allocator and caches
    before = await rss()
    await asyncio.gather(*(make(c, sessions // len(clients)) for c in clients))
    after = await rss()
    live = (await info.call("gateway.info"))["stats"]["live_sessions"]
    await asyncio.gather(*(c.close() for c in clients))
    return (after - before) / sessions, live


async def churn_rate(child: Child, cycles: int, parallel: int) -> float:
    async def worker(n: int) -> None:
        for _ in range(n):
            c = await Client.connect(child.url, child.token)
            await c.call("session.create")
            await c.abort()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(cycles // parallel) for _ in range(parallel)))
    return cycles / (time.perf_counter() - t0)


def run(quick: bool = False, write: bool = True, directory: str | None = None) -> None:
    tmp = tempfile.TemporaryDirectory(dir=directory, prefix="tether-bench-")
    seconds = 1.0 if quick else 5.0
    token = secrets.token_urlsafe(16)
    # The memory run holds thousands of live sessions on ten connections: lift the caps.
    caps = ("--max-live-sessions", "100000", "--max-sessions-per-connection", "100000")
    with spawn_gateway(
        Path(tmp.name), "-o", "delay=0", "--detach-grace", "1", *caps, token=token
    ) as child:

        async def main() -> dict[str, Any]:
            out: dict[str, Any] = {}
            # Memory first: memory freed by the other runs would be reused and hide growth.
            out["memory"] = await memory_per_session(child, 500 if quick else 5000)
            out["ping"] = [(n, await ping_rate(child, n, seconds)) for n in (1, 50, 500)]
            out["latency"] = await first_event_latency(child, 50, 4 if quick else 40)
            out["churn"] = await churn_rate(child, 500 if quick else 5000, 10)
            c = await Client.connect(child.url, child.token)
            out["lag"] = (await c.call("gateway.info"))["stats"]["loop_lag_max_ms"]
            await c.close()
            return out

        results = asyncio.run(main())
    tmp.cleanup()
    ping_rows = [(f"{n}", f"{rate:,.0f}") for n, rate in results["ping"]]
    replies, starts, deltas = results["latency"]
    lat_rows = [
        (name, f"{percentile(xs, 0.5):.2f}", f"{percentile(xs, 0.99):.2f}")
        for name, xs in (
            ("prompt.submit reply", replies),
            ("turn.start", starts),
            ("first message.delta", deltas),
        )
    ]
    per_session, live = results["memory"]
    text = (
        "`ping` round trips per second (each connection: send, wait for the reply, repeat; "
        f"{seconds:.0f} s):\n\n"
        + table(["connections", "round trips/s"], ping_rows)
        + f"\n\nPrompt to first event, echo agent, 50 connections ({len(deltas)} prompts), ms:\n\n"
        + table(["event", "p50", "p99"], lat_rows)
        + f"\n\nMemory per live idle session: {per_session / 1024:.1f} KiB "
        f"(RSS growth over {live:,} attached sessions, one short turn each)."
        + f"\n\nConnect, create, drop: {results['churn']:,.0f} cycles/s (10 clients in parallel)."
        + f"\n\nWorst event-loop lag in the gateway over the whole run: {results['lag']:.1f} ms "
        "(store calls run on threads; this is what they and everything else cost the loop)."
    )
    publish("Gateway", text, notes=__doc__.split("\n\n", 1)[1] if __doc__ else "", write=write)
