"""Live view benchmark (``python -m bench web``): /api/v1/live at scale, SSE fan-out, first load.

* **/api/v1/live** on a store with 10,000 open sessions owned by 1,000
  processes (on 10 other hosts, fresh heartbeats: judged by lease, as in a
  fleet) and 90,000 ended ones; 1,000 open sessions have a running turn.
  Timed: a whole HTTP GET against ``tether web`` (a child process), body
  read: exact counts per state, source and host, and the first page (100
  rows). Floor: the raw driver (sqlite3 / psycopg) counting the open sessions
  by owner, in the same run. Target: < 50 ms on SQLite and PostgreSQL.
  Also the server process's CPU time per request (every thread, from
  ``/proc``; PostgreSQL's own work is not in it): a figure a loaded machine
  barely moves, unlike the wall time. With ``BENCH_WEB_BASELINE=SRC`` (a
  ``src`` directory, e.g. the main checkout's), a second ``tether web`` runs
  that code on the same store, and its requests are interleaved with these
  (before/after in one run).
* **SSE fan-out.** 100 clients hold ``/api/v1/events/stream``; this process
  writes one event (``record_event``); latency from just before the write to
  the moment each client has read it. p99 over every client and event.
  Floor: the same with 1 client. Target: p99 < 100 ms.
* **Dashboard first load** in headless Debian chromium (Playwright): bytes
  of every response until the first data is drawn, and the time from
  navigation to the first drawn data (``document.body.dataset.updated``).
  Floor: navigating to one static file of the same server. Targets: < 200 KB,
  < 1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import tether
from tether.ids import new_id

from . import pg
from .report import median, percentile, publish, table

TOKEN = "bench-web-token-0123456789"
OWNER_COLUMNS = (
    "id", "host", "boot_id", "pid", "pid_start_time", "kind", "started_at", "heartbeat_at",
    "pid_ns", "lease",
)  # fmt: skip
SESSION_COLUMNS = (
    "id", "source", "title", "root_id", "created_at", "last_active_at", "ended_at",
    "end_reason", "message_count", "owner_id", "chain_tip_id", "chain_message_count",
    "chain_last_active_at",
)  # fmt: skip
EVENT_COLUMNS = ("at", "session_id", "kind", "data")


def rows(total: int, open_: int, owners: int, working: int) -> tuple[list, list, list]:  # type: ignore[type-arg]
    now = time.time()
    owner_rows = [
        (
            new_id(),
            f"host-{k % 10}",
            "boot",
            1000 + k,
            1,
            "gateway",
            now - 3600,
            now + 3600,
            None,
            30.0,
        )
        for k in range(owners)
    ]
    per = open_ // owners
    sessions, events = [], []
    for i in range(total):
        sid = f"S{i:09d}"
        t = now - (total - i)
        if i < open_:
            owner = owner_rows[i // per][0]
            sessions.append(
                (sid, "gateway", f"session {i}", sid, t, t, None, None, 3, owner, sid, 3, t)
            )
            events.append((t, sid, "created", '{"source":"gateway"}'))
            if i < working:
                events.append((t, sid, "turn_started", '{"turn_id":"x"}'))
        else:
            sessions.append((sid, "cli", None, sid, t, t, t + 1, "completed", 3, None, sid, 3, t))
    return owner_rows, sessions, events


def build_sqlite(path: Path, total: int, open_: int, owners: int, working: int) -> None:
    tether.open_store(path, load_plugins=False).close()
    o, s, e = rows(total, open_, owners, working)
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("BEGIN")
    for table_name, cols, data in (
        ("owners", OWNER_COLUMNS, o),
        ("sessions", SESSION_COLUMNS, s),
        ("events", EVENT_COLUMNS, e),
    ):
        c.executemany(
            f"INSERT INTO {table_name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            data,
        )
    c.execute("COMMIT")
    c.execute("ANALYZE")
    c.close()


def build_pg(url: str, total: int, open_: int, owners: int, working: int) -> None:
    tether.open_store(url, load_plugins=False).close()
    o, s, e = rows(total, open_, owners, working)
    pg.copy_rows(url, "owners", OWNER_COLUMNS, o)
    pg.copy_rows(url, "sessions", SESSION_COLUMNS, s)
    pg.copy_rows(url, "events", EVENT_COLUMNS, e)


@contextlib.contextmanager
def tether_web(db: str, directory: Path, src: str | None = None) -> Iterator[tuple[int, int]]:
    """``tether web --port 0`` as a child (``src``: run the tether found there);
    yields its port and pid."""
    env = dict(os.environ, TETHER_TOKEN=TOKEN, PYTHONUNBUFFERED="1")
    if src is not None:
        env["PYTHONPATH"] = src
    log = open(directory / ("web-baseline.log" if src else "web.log"), "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether", "web", "--db", db, "--port", "0"],
        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("tether web on http://"), (line, (directory / "web.log").read_text())
        yield int(line.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]), proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(
        "GET", path, headers={"Authorization": f"Bearer {TOKEN}", "Host": f"127.0.0.1:{port}"}
    )
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


def cpu_ms(pid: int) -> float:
    """CPU time so far of every thread of process ``pid`` (Linux schedstat, ns)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total / 1e6


def time_live(servers: list[tuple[int, int]], rounds: int) -> list[tuple[list[float], list[float]]]:
    """Wall and server CPU times (ms) of GET /api/v1/live on each server, the
    servers' requests interleaved, in alternating order."""
    for port, _ in servers:
        get(port, "/api/v1/live")  # warm: connections, caches
    out: list[tuple[list[float], list[float]]] = [([], []) for _ in servers]
    for k in range(rounds):
        order = list(range(len(servers)))
        for i in order if k % 2 == 0 else order[::-1]:
            port, pid = servers[i]
            c = cpu_ms(pid)
            t = time.perf_counter()
            status, body = get(port, "/api/v1/live")
            out[i][0].append((time.perf_counter() - t) * 1e3)
            out[i][1].append(cpu_ms(pid) - c)
            assert status == 200 and b'"working":1000,"idle":9000' in body, body[:300]
    return out


def live_rows(
    backend: str, server: tuple[int, int], db: str, directory: Path, rounds: int, floor: list[float]
) -> list[tuple[str, ...]]:
    """/api/v1/live on ``server`` (and, with ``BENCH_WEB_BASELINE``, on the baseline's
    ``tether web``, started for these requests only)."""
    baseline = os.environ.get("BENCH_WEB_BASELINE")
    with contextlib.ExitStack() as stack:
        servers = [server]
        if baseline:
            servers.append(stack.enter_context(tether_web(db, directory, baseline)))
        times = time_live(servers, rounds)
    name = f"{backend}: GET /api/v1/live (10,000 open, 1,000 owners), ms"
    out = [_row(name, times[0][0], floor, "< 50 ms")]
    out.append(_row(f"{backend}: /api/v1/live, server CPU per request, ms", times[0][1], floor, ""))
    if len(times) > 1:
        out.append(
            _row(f"{backend}: /api/v1/live, baseline (interleaved), ms", times[1][0], floor, "")
        )
        out.append(
            _row(f"{backend}: /api/v1/live, baseline server CPU, ms", times[1][1], floor, "")
        )
    return out


# The least any exact count of open sessions by owner does: one grouped pass.
LIVE_FLOOR_SQL = "SELECT owner_id, COUNT(*) FROM sessions WHERE ended_at IS NULL GROUP BY owner_id"


def floor_sqlite(path: Path, rounds: int) -> list[float]:
    c = sqlite3.connect(path)
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        c.execute(LIVE_FLOOR_SQL).fetchall()
        out.append((time.perf_counter() - t) * 1e3)
    c.close()
    return out


def floor_pg(url: str, rounds: int) -> list[float]:
    out = []
    with pg.connect(url) as c:
        for _ in range(rounds):
            t = time.perf_counter()
            c.execute(LIVE_FLOOR_SQL).fetchall()
            out.append((time.perf_counter() - t) * 1e3)
    return out


async def fanout(port: int, db: str, clients: int, events: int) -> list[float]:
    """Latency (ms) of each event at each of ``clients`` SSE streams."""
    readers = []
    for _ in range(clients):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(
            f"GET /api/v1/events/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        await w.drain()
        readers.append((r, w))
    for r, _ in readers:  # the headers and the retry line: every stream is live
        while (await r.readline()).strip() != b"retry: 1000":
            pass
    await asyncio.sleep(0.3)
    store = tether.open_store(db, load_plugins=False)
    sid = store.session(source="bench")
    sid.append("user", "x")  # persisted: events may name it
    latencies: list[float] = []

    async def until_event(r: asyncio.StreamReader, marker: bytes) -> float:
        while True:
            line = await r.readline()
            if marker in line:
                return time.perf_counter()

    loop = asyncio.get_running_loop()
    for k in range(events):
        marker = f'"n":{k},'.encode()
        waits = [asyncio.create_task(until_event(r, marker)) for r, _ in readers]
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        await loop.run_in_executor(None, store.record_event, sid.id, "bench", {"n": k, "pad": 0})
        arrived = await asyncio.wait_for(asyncio.gather(*waits), 10)
        latencies += [(a - t0) * 1e3 for a in arrived]
    for _, w in readers:
        w.close()
    sid.end("completed")
    store.close()
    return latencies


TRANSFERRED = """
[...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')]
  .reduce((n, e) => n + e.transferSize, 0)
"""


def first_load(port: int, rounds: int) -> tuple[list[float], list[int], list[float]]:
    from playwright.sync_api import sync_playwright

    times, sizes, floors = [], [], []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        for _ in range(rounds):
            ctx = b.new_context(bypass_csp=True)  # lets the bench read performance entries
            ctx.add_cookies(
                [{"name": "tether_token", "value": TOKEN, "url": f"http://127.0.0.1:{port}/"}]
            )
            page = ctx.new_page()
            page.goto(f"http://127.0.0.1:{port}/static/favicon.svg")
            floors.append(page.evaluate("performance.getEntriesByType('navigation')[0].duration"))
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.body.dataset.firstDrawMs", timeout=10_000)
            drawn = float(page.evaluate("document.body.dataset.firstDrawMs"))
            times.append(drawn)
            # Bytes on the wire (headers included) of the page and everything it
            # fetched until then; the event stream, still open, is not counted.
            sizes.append(int(page.evaluate(TRANSFERRED)))
            ctx.close()
        b.close()
    return times, sizes, floors


def _row(name: str, xs: list[float], floor: list[float], target: str) -> tuple[str, ...]:
    ratio = median(xs) / median(floor) if median(floor) > 0 else float("nan")
    return (
        name,
        f"{min(xs):.1f}",
        f"{median(xs):.1f}",
        f"{max(xs):.1f}",
        f"{percentile(xs, 0.99):.1f}",
        f"{median(floor):.2f}",
        f"{ratio:.1f}x",
        target,
    )


def run(
    quick: bool = False, write: bool = True, directory: str | None = None, pg_url: str | None = None
) -> None:
    total, open_, owners, working = (
        (20_000, 10_000, 1_000, 1_000) if quick else (100_000, 10_000, 1_000, 1_000)
    )
    rounds = 5 if quick else 30
    events = 5 if quick else 30
    out: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        d = Path(tmp)
        db = d / "live.db"
        build_sqlite(db, total, open_, owners, working)
        with tether_web(str(db), d) as server:
            port = server[0]
            out += live_rows("SQLite", server, str(db), d, rounds, floor_sqlite(db, rounds))
            lat = asyncio.run(fanout(port, str(db), 100, events))
            one = asyncio.run(fanout(port, str(db), 1, events))
            out.append(_row("SQLite: one event to 100 SSE clients, ms", lat, one, "p99 < 100 ms"))
            times, sizes, floors = first_load(port, 3 if quick else 10)
            out.append(
                _row("dashboard: navigation to first data drawn, ms", times, floors, "< 1,000 ms")
            )
            kb = [s / 1024 for s in sizes]
            out.append(
                (
                    "dashboard: first load, KB (all responses)",
                    f"{min(kb):.0f}",
                    f"{median(kb):.0f}",
                    f"{max(kb):.0f}",
                    "",
                    "",
                    "",
                    "< 200 KB",
                )
            )
        if pg_url:
            with pg.scratch_schema(pg_url, "web") as url:
                build_pg(url, total, open_, owners, working)
                with tether_web(url, d) as server:
                    port = server[0]
                    out += live_rows("PostgreSQL", server, url, d, rounds, floor_pg(url, rounds))
                    lat = asyncio.run(fanout(port, url, 100, events))
                    one = asyncio.run(fanout(port, url, 1, events))
                    out.append(
                        _row(
                            "PostgreSQL: one event to 100 SSE clients, ms", lat, one, "p99 < 100 ms"
                        )
                    )
    text = table(
        ["measure", "min", "median", "max", "p99", "floor (median)", "ratio", "target"], out
    )
    load = os.getloadavg()[0]
    notes = (
        f"{rounds} rounds of /live, {events} events per fan-out, "
        f"{'quick' if quick else 'full'} run; load average (1 min) {load:.2f} at the end. "
        "Floors: the raw driver counting the open sessions by owner (/live), the same event to 1 "
        "client (SSE), a navigation to one static file (dashboard). Server CPU: the `tether web` "
        "process's threads during each request (PostgreSQL's backend not included). "
        + (
            f"Baseline: {os.environ['BENCH_WEB_BASELINE']}, interleaved. "
            if os.environ.get("BENCH_WEB_BASELINE")
            else ""
        )
        + f"tether {tether.__version__}."
    )
    publish("web", text, notes, write=write)
