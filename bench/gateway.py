"""Gateway benchmark: a real ``tether serve`` (echo agent, no delay) and WebSocket clients.

The server is a child process on 127.0.0.1; the clients run in this process
on one asyncio loop, so on a small machine they compete with the server for
the CPU: the numbers are a floor for the server, measured end to end.

* **the floor**: a bare WebSocket server on the same ``websockets`` library
  (``bench/wsfloor.py``, a child process too) answers the same frames without
  storing or checking anything; tether and the floor are measured in
  interleaved rounds, and each figure is given as a ratio to the floor.
* **ping round trips per second** with 1 and 50 concurrent connections (and
  500, tether only), each sending ``ping`` and waiting for the reply, in a
  loop, for a fixed time.
* **prompt to first ``message.delta``**: 50 connections, one session each,
  submit prompts one after the other; p50 / p99 over every prompt of a round.
* **event-loop lag** of the gateway during those prompt runs (its own
  sampler, ``gateway.info``'s ``loop_lag_recent_ms``).
* **memory per live idle session**: the gateway's RSS (from ``gateway.info``)
  before and after creating N sessions, each with one short turn, attached
  and idle, divided by N.
* **connect-create-drop cycles per second**: open a connection, create a
  session, drop the connection (10 clients in parallel). The server runs
  with a 1 s detach grace so dropped sessions are finalized as they go.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tether.gateway.client import Client
from tether.gateway.process import Child, spawn_gateway

from . import wsfloor
from .report import median, percentile, progress, publish, table

PING = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"})


async def _raw(url: str, token: str) -> ClientConnection:
    return await connect(
        url,
        additional_headers={"Authorization": f"Bearer {token}"},
        compression=None,
        max_size=None,
    )


async def ping_rate(
    url: str, token: str, conns: int, seconds: float, pid: int | None = None
) -> float:
    """Round trips per second; with ``pid``, also that server's CPU seconds per round trip."""
    rate, _ = await ping_cpu(url, token, conns, seconds, pid)
    return rate


async def ping_cpu(
    url: str, token: str, conns: int, seconds: float, pid: int | None
) -> tuple[float, float]:
    sockets = await asyncio.gather(*(_raw(url, token) for _ in range(conns)))
    stop = time.perf_counter() + seconds
    counts = [0] * conns

    async def loop(i: int, ws: ClientConnection) -> None:
        while time.perf_counter() < stop:
            await ws.send(PING)
            await ws.recv()
            counts[i] += 1

    cpu = 0.0 if pid is None else cpu_seconds(pid)
    t0 = time.perf_counter()
    await asyncio.gather(*(loop(i, ws) for i, ws in enumerate(sockets)))
    elapsed = time.perf_counter() - t0
    cpu = 0.0 if pid is None else cpu_seconds(pid) - cpu
    await asyncio.gather(*(ws.close() for ws in sockets))
    return sum(counts) / elapsed, cpu / max(1, sum(counts))


async def first_event_latency(
    url: str, token: str, conns: int, prompts: int
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

    clients = await asyncio.gather(*(Client.connect(url, token) for _ in range(conns)))
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


@contextlib.contextmanager
def spawn_floor(directory: Path) -> Iterator[tuple[str, int]]:
    """The bare WebSocket server of bench/wsfloor.py as a child process: its URL and pid."""
    log = directory / "floor.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.wsfloor"],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith(wsfloor.READY):
            raise RuntimeError(f"the floor server did not start: {log.read_text()}")
        yield line.split()[2], proc.pid
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def client_cpu() -> float:
    """CPU time (user + system) this process, the clients' side, has used so far."""
    t = os.times()
    return t.user + t.system


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spread(xs: list[float], fmt: str = "{:,.0f}") -> str:
    """min / median / max of the rounds."""
    return " / ".join(fmt.format(v) for v in (min(xs), median(xs), max(xs)))


def run(quick: bool = False, write: bool = True, directory: str | None = None) -> None:
    tmp = tempfile.TemporaryDirectory(dir=directory, prefix="tether-bench-")
    seconds = 0.5 if quick else 2.0
    rounds = 3 if quick else 5
    prompts = 4 if quick else 20
    token = secrets.token_urlsafe(16)
    # The memory run holds thousands of live sessions on ten connections: lift the caps.
    caps = ("--max-live-sessions", "100000", "--max-sessions-per-connection", "100000")
    with (
        spawn_gateway(
            Path(tmp.name), "-o", "delay=0", "--detach-grace", "1", *caps, token=token
        ) as child,
        spawn_floor(Path(tmp.name)) as (floor_url, floor_pid),
    ):
        targets = {"tether": (child.url, child.proc.pid), "floor": (floor_url, floor_pid)}

        async def main() -> dict[str, Any]:
            out: dict[str, Any] = {"ping": {}, "latency": {}, "lag": [], "cpu": {}}
            # Memory first: memory freed by the other runs would be reused and hide growth.
            progress("gateway: memory per live session")
            out["memory"] = await memory_per_session(child, 500 if quick else 5000)
            info = await Client.connect(child.url, child.token)
            for r in range(rounds):
                # Interleaved: tether and its floor see the same machine, round by round.
                progress(
                    f"gateway: round {r + 1}/{rounds}: ping and prompt latency, tether and floor"
                )
                for name, (url, pid) in targets.items():
                    for n in (1, 50):
                        rate, per = await ping_cpu(url, token, n, seconds, pid)
                        out["ping"].setdefault((name, n), []).append(rate)
                        if n == 50:  # server CPU per round trip (robust on a busy machine)
                            out["cpu"].setdefault((name, "ping"), []).append(per)
                    cpu, mine = cpu_seconds(pid), client_cpu()
                    _, _, deltas = await first_event_latency(url, token, 50, prompts)
                    per = (cpu_seconds(pid) - cpu) / (50 * prompts)
                    out["cpu"].setdefault((name, "prompt"), []).append(per)
                    # The clients' side of the same run (this process): where the
                    # rest of the time goes when the server is cheap.
                    per = (client_cpu() - mine) / (50 * prompts)
                    out["cpu"].setdefault((name, "client"), []).append(per)
                    out["latency"].setdefault(name, []).append(
                        (percentile(deltas, 0.5), percentile(deltas, 0.99))
                    )
                    if name == "tether":  # the loop's worst lag during this prompt run
                        stats = (await info.call("gateway.info"))["stats"]
                        out["lag"].append(stats["loop_lag_recent_ms"])
            progress("gateway: 500 connections, churn")
            out["ping500"] = await ping_rate(child.url, token, 500, seconds)
            out["churn"] = await churn_rate(child, 500 if quick else 5000, 10)
            stats = (await info.call("gateway.info"))["stats"]
            out["lag_max"] = stats["loop_lag_max_ms"]
            out["groups"] = (stats["write_groups"], stats["grouped_writes"])
            await info.close()
            return out

        results = asyncio.run(main())
    tmp.cleanup()
    ping = results["ping"]
    ping_rows = []
    for n in (1, 50):
        t, f = ping[("tether", n)], ping[("floor", n)]
        ratios = [a / b for a, b in zip(t, f, strict=True)]
        ok = "met" if median(ratios) >= 0.7 else "missed"
        ping_rows.append((f"{n}", spread(t), spread(f), f"{spread(ratios, '{:.2f}')}x", ok))
    lat = results["latency"]
    lat_rows = []
    for i, (q, target) in enumerate((("p50", 5.0), ("p99", 20.0))):
        t = [x[i] for x in lat["tether"]]
        f = [x[i] for x in lat["floor"]]
        ratios = [b / a for a, b in zip(t, f, strict=True)]
        ok = "met" if median(t) < target else "missed"
        lat_rows.append(
            (
                q,
                spread(t, "{:.2f}"),
                spread(f, "{:.2f}"),
                f"{spread(ratios, '{:.2f}')}x",
                f"< {target:.0f} ms: {ok}",
            )
        )
    cpu = results["cpu"]
    cpu_rows = []
    for what, label in (
        ("ping", "`ping` (50 connections)"),
        ("prompt", "prompt, whole turn"),
        ("client", "prompt, whole turn: the clients (Python, one loop)"),
    ):
        t = [x * 1e6 for x in cpu[("tether", what)]]
        f = [x * 1e6 for x in cpu[("floor", what)]]
        ratios = [b / a for a, b in zip(t, f, strict=True)]
        cpu_rows.append((label, spread(t), spread(f), f"{spread(ratios, '{:.2f}')}x"))
    per_session, live = results["memory"]
    text = (
        f"{rounds} interleaved rounds; each cell is min / median / max over the rounds. "
        "The floor is a bare WebSocket server on the same `websockets` library answering "
        "the same frames (bench/wsfloor.py); ratios are tether's over the floor's "
        "(for latency: floor ms / tether ms), so 1.00x is the floor.\n\n"
        f"`ping` round trips per second (each connection: send, wait for the reply, repeat; "
        f"{seconds:g} s per round):\n\n"
        + table(
            ["connections", "tether", "floor", "ratio", "target >= 0.7x"],
            ping_rows,
        )
        + f"\n\nPrompt to first `message.delta`, echo agent, 50 connections ({prompts} prompts "
        "each per round), ms:\n\n"
        + table(["", "tether", "floor", "ratio", "target"], lat_rows)
        + "\n\nCPU time (user + system, from /proc; 10 ms ticks) per request, µs: what each "
        "server spends whatever the machine's load, and what the clients (this process, "
        "one asyncio loop) spend on the same run:\n\n"
        + table(["", "tether", "floor", "ratio"], cpu_rows)
        + f"\n\nEvent-loop lag in the gateway during the 50-connection prompt runs (worst "
        f"wake-up, sampled every 0.25 s): {spread(results['lag'], '{:.1f}')} ms; worst over "
        f"the whole run: {results['lag_max']:.1f} ms."
        + f"\n\nGroup commit: {results['groups'][1]:,} of the gateway's writes were committed "
        f"in {results['groups'][0]:,} shared transactions "
        f"({results['groups'][1] / max(1, results['groups'][0]):.1f} writes each)."
        + f"\n\n`ping` with 500 connections: {results['ping500']:,.0f} round trips/s (tether)."
        + f"\n\nMemory per live idle session: {per_session / 1024:.1f} KiB "
        f"(RSS growth over {live:,} attached sessions, one short turn each)."
        + f"\n\nConnect, create, drop: {results['churn']:,.0f} cycles/s (10 clients in parallel)."
    )
    publish("Gateway", text, notes=__doc__.split("\n\n", 1)[1] if __doc__ else "", write=write)
