"""OpenAI Agents SDK sessions: TetherSession against the SDK's SQLiteSession and SQLAlchemySession.

Runs in ``.venv-agents`` (``make bench-agents``: the SDK needs openai>=3).
What is measured, per call, through each session's public async API (so each
pays its own ``asyncio.to_thread`` or async-driver overhead):

* ``add_items`` of 1 item and of 10 items (one committed write each);
* ``get_items(limit=20)`` on a session of 10,000 items, and on one of 100
  items: the two should cost the same (a last-N read).

Pairs at equal durability (checked at run time, printed with each section),
each measured in the same rounds (interleaved, so drift hits both):

* SQLite, ``synchronous=FULL`` on both (a commit survives power loss):
  TetherSession on a store opened with ``durability="full"`` against
  ``SQLiteSession`` as shipped (WAL, SQLite's default ``synchronous=FULL``);
* SQLite, ``synchronous=NORMAL`` on both (a commit survives kill -9, not a
  power loss): tether's default durability against ``SQLiteSession`` with
  ``PRAGMA synchronous=NORMAL`` added to its connections;
* PostgreSQL (``--pg``): TetherSession (psycopg) against
  ``SQLAlchemySession`` with asyncpg, both committing every write on the same
  server (its ``synchronous_commit`` printed), each in a schema of its own
  (dropped afterwards).

Every write is committed before ``add_items`` returns, on both sides.

Floors, measured in the same rounds: ``await asyncio.to_thread(noop)``, what
any session that keeps the event loop free pays before touching a database;
a raw commit of one row (SQLite: ``BEGIN IMMEDIATE``, INSERT, ``COMMIT`` with
sqlite3 on the same disk and ``synchronous``; PostgreSQL: one autocommit
INSERT with psycopg), what any durable write pays, alone and behind the hop;
and TetherSession's parts: its rows, built on the event loop, and its worker
thread's work (the store's write), timed inside the thread. Work in a worker
thread is timed there, with calls one hop apart as a session's are: on this
machine's disk back-to-back fsyncs cost several times more than ones a hop
apart, so a tight loop would overstate the floor. Items
cycle through the four shapes the runner stores after a tool turn.
Reported: min / median / max over rounds of each round's median call.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from agents import SQLiteSession  # the SDK: only in .venv-agents

import tether
from tether.interop.openai_agents import TetherSession

from . import pg
from .report import progress, publish, table

ITEMS: list[dict[str, Any]] = [
    {"content": "count the words of: the quick brown fox", "role": "user"},
    {
        "arguments": '{"text":"the quick brown fox"}',
        "call_id": "call_1",
        "name": "word_count",
        "type": "function_call",
        "id": "fc_1",
    },
    {"call_id": "call_1", "output": "4", "type": "function_call_output"},
    {
        "id": "msg_1",
        "content": [
            {"annotations": [], "text": "Four words.", "type": "output_text", "logprobs": []}
        ],
        "role": "assistant",
        "status": "completed",
        "type": "message",
    },
]


def items(n: int) -> list[dict[str, Any]]:
    return [ITEMS[i % len(ITEMS)] for i in range(n)]


async def prefill(session: Any, n: int) -> None:
    for start in range(0, n, 100):
        await session.add_items(items(min(100, n - start)))


async def per_call(fn: Callable[[], Any], calls: int) -> float:
    """Median seconds of ``calls`` sequential calls (awaited if they return an awaitable).

    A call whose result is a :class:`Inner` is timed by it instead (the time
    spent inside its worker thread).
    """
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        result = fn()
        if inspect.isawaitable(result):
            result = await result
        times.append(result if isinstance(result, Inner) else time.perf_counter() - t0)
    return statistics.median(times)


class Inner(float):
    """Seconds measured inside a worker thread (see :func:`in_thread`)."""


def in_thread(fn: Callable[[], Any]) -> Callable[[], Awaitable[Inner]]:
    """``fn`` run through one hop, timed inside the thread: paced like a session's
    calls (back-to-back fsyncs cost more here than ones a hop apart), without the hop."""

    def timed() -> Inner:
        t0 = time.perf_counter()
        fn()
        return Inner(time.perf_counter() - t0)

    return lambda: asyncio.to_thread(timed)


def _noop() -> None:
    return None


Floors = dict[str, Callable[[], Any]]


async def measure(
    contestants: dict[str, Callable[[str], Awaitable[Any]]],
    floors: Callable[[], Awaitable[Floors]],
    *,
    big: int,
    rounds: int,
    calls: int,
) -> dict[str, dict[str, list[float]]]:
    """contestant -> operation -> per-round medians (seconds); floors under "floor"."""
    results: dict[str, dict[str, list[float]]] = {"floor": {}}
    sessions: dict[str, dict[str, Any]] = {}
    for name, make in contestants.items():
        progress(f"agents: {name}: filling a {big}-item and a 100-item session")
        long_s, short_s, w1, w10 = (
            await make("long"),
            await make("short"),
            await make("w1"),
            await make("w10"),
        )
        await prefill(long_s, big)
        await prefill(short_s, 100)
        sessions[name] = {"long": long_s, "short": short_s, "w1": w1, "w10": w10}
        results[name] = {"add 1": [], "add 10": [], "get 20 (10k)": [], "get 20 (100)": []}
    floor_fns: Floors = {"to_thread round trip": lambda: asyncio.to_thread(_noop)}
    floor_fns.update(await floors())
    one, ten = items(1), items(10)
    for r in range(rounds):
        progress(f"agents: round {r + 1}/{rounds}")
        for label, fn in floor_fns.items():
            results["floor"].setdefault(label, []).append(await per_call(fn, calls))
        for name, s in sessions.items():
            res = results[name]
            res["add 1"].append(await per_call(lambda s=s: s["w1"].add_items(one), calls))
            res["add 10"].append(await per_call(lambda s=s: s["w10"].add_items(ten), calls))
            res["get 20 (10k)"].append(
                await per_call(lambda s=s: s["long"].get_items(limit=20), calls)
            )
            res["get 20 (100)"].append(
                await per_call(lambda s=s: s["short"].get_items(limit=20), calls)
            )
    for s in sessions.values():
        for session in s.values():
            close = getattr(session, "close", None)
            if close is not None:
                result = close()
                if asyncio.iscoroutine(result):
                    await result
    return results


def tether_floors(session: TetherSession) -> Floors:
    """TetherSession's work inside its worker thread (the store's write, the tail read),
    and its rows (built on the event loop)."""
    one, ten = items(1), items(10)
    return {
        "tether add 1: rows (on the loop)": lambda: session._rows(one),
        "tether add 10: rows (on the loop)": lambda: session._rows(ten),
        "tether add 1: its worker thread's part": in_thread(
            lambda: session._add_items(session._rows(one))
        ),
        "tether add 10: its worker thread's part": in_thread(
            lambda: session._add_items(session._rows(ten))
        ),
        "tether get 20: the read itself": lambda: session._get_items(20),
    }


def ms(x: float) -> str:
    return f"{x * 1000:.3f}"


def report(
    title: str, results: dict[str, dict[str, list[float]]], tether_name: str, other: str
) -> str:
    floor = statistics.median(results["floor"]["to_thread round trip"])
    rows = []
    for op in results[tether_name]:
        t, o = results[tether_name][op], results[other][op]
        rows.append(
            [
                op,
                f"{ms(min(t))} / {ms(statistics.median(t))} / {ms(max(t))}",
                f"{ms(min(o))} / {ms(statistics.median(o))} / {ms(max(o))}",
                f"{statistics.median(o) / statistics.median(t):.2f}x",
                f"{statistics.median(t) / floor:.1f}",
            ]
        )
    head = [
        "operation",
        f"{tether_name} ms (min / med / max)",
        f"{other} ms (min / med / max)",
        f"{other} / tether",
        "tether / hop",
    ]
    floor_rows = [
        [label, f"{ms(min(v))} / {ms(statistics.median(v))} / {ms(max(v))}"]
        for label, v in results["floor"].items()
    ]
    return (
        f"### {title}\n\n"
        + table(head, rows)
        + "\n\nFloors, same rounds:\n\n"
        + table(["floor", "ms (min / med / max)"], floor_rows)
    )


def sqlite_floors(path: Path, synchronous: str) -> Floors:
    """A raw durable commit of one row with sqlite3, in WAL at ``synchronous``."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    value = json.dumps(ITEMS[3])

    def commit() -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES (?)", (value,))
        conn.execute("COMMIT")

    return {
        f"raw sqlite3 commit of one row ({synchronous}), in a worker thread": in_thread(commit),
        f"hop + raw sqlite3 commit of one row ({synchronous})": lambda: asyncio.to_thread(commit),
    }


def pragma(conn: sqlite3.Connection, name: str) -> str:
    return str(conn.execute(f"PRAGMA {name}").fetchone()[0])


class NormalSQLiteSession(SQLiteSession):  # type: ignore[misc, unused-ignore]
    """SQLiteSession with ``synchronous=NORMAL`` on every connection it opens."""

    @staticmethod
    def _configure_connection(conn: sqlite3.Connection) -> None:
        SQLiteSession._configure_connection(conn)
        conn.execute("PRAGMA synchronous=NORMAL")


def run(
    *,
    quick: bool = False,
    write: bool = True,
    directory: str | None = None,
    pg_url: str | None = pg.DEFAULT_URL,
) -> None:
    big = 2_000 if quick else 10_000
    rounds = 3 if quick else 7
    calls = 50 if quick else 200
    base = Path(directory or tempfile.mkdtemp(prefix="tether-bench-agents-"))
    counter = itertools.count()
    sections = []

    for durability in ("full", "normal"):
        sections.append(
            _sqlite(base, durability, big=big, rounds=rounds, calls=calls, counter=counter)
        )

    if pg_url is not None:
        sections.append(_postgres(pg_url, big=big, rounds=rounds, calls=calls, counter=counter))

    import agents

    notes = (
        f"openai-agents {agents.__version__ if hasattr(agents, '__version__') else '0.24'}, "
        f"tether {tether.__version__}; {rounds} rounds x {calls} calls, "
        f"get_items on sessions of {big:,} and 100 items; load average (1 min) "
        f"{os.getloadavg()[0]:.2f} at the end. "
        "`other / tether` > 1 means TetherSession is faster; `tether / hop`: its "
        "median over the to_thread round trip's."
    )
    publish(f"agents{' (quick)' if quick else ''}", "\n\n".join(sections), notes, write=write)


def _sqlite(
    base: Path, durability: str, *, big: int, rounds: int, calls: int, counter: Iterator[int]
) -> str:
    sdk_class = SQLiteSession if durability == "full" else NormalSQLiteSession
    store = tether.open_store(
        base / f"tether-{durability}.db", durability=durability, load_plugins=False
    )
    sdk_db = base / f"sdk-{durability}.db"
    checked: list[str] = []

    async def tether_sqlite(tag: str) -> Any:
        return TetherSession(f"{tag}-{next(counter)}", store)

    async def sdk_sqlite(tag: str) -> Any:
        session = sdk_class(f"{tag}-{next(counter)}", sdk_db)
        if not checked:  # the settings every connection of the SDK's gets
            conn = session._get_connection()
            checked.append(f"{pragma(conn, 'journal_mode')}/{pragma(conn, 'synchronous')}")
        return session

    async def floors() -> Floors:
        session = TetherSession(f"floor-{next(counter)}", store)
        await prefill(session, 100)
        return {
            **sqlite_floors(base / f"floor-{durability}.db", durability.upper()),
            **tether_floors(session),
        }

    async def sqlite_run() -> dict[str, dict[str, list[float]]]:
        return await measure(
            {"TetherSession": tether_sqlite, "SQLiteSession": sdk_sqlite},
            floors,
            big=big,
            rounds=rounds,
            calls=calls,
        )

    try:
        results = asyncio.run(sqlite_run())
        writer = store.backend._writer
        ours = f"{pragma(writer, 'journal_mode')}/{pragma(writer, 'synchronous')}"
    finally:
        store.close()
    # journal_mode/synchronous as each side's connections have them (2: FULL, 1: NORMAL).
    expected = {"full": "wal/2", "normal": "wal/1"}[durability]
    if ours != expected or checked != [expected]:
        raise SystemExit(f"unequal durability: tether {ours}, SQLiteSession {checked}")
    return report(
        f"SQLite, synchronous={durability.upper()} on both (checked: journal_mode/"
        f"synchronous = {expected} on each side's connections)",
        results,
        "TetherSession",
        "SQLiteSession",
    )


def _postgres(pg_url: str, *, big: int, rounds: int, calls: int, counter: Iterator[int]) -> str:
    from agents.extensions.memory import SQLAlchemySession

    with (
        pg.scratch_schema(pg_url, "agents_t") as t_url,
        pg.scratch_schema(pg_url, "agents_s") as s_url,
    ):
        schema = s_url.rsplit("schema=", 1)[1]
        with pg.connect(pg_url) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
            sync_commit = conn.execute("SHOW synchronous_commit").fetchone()[0]
        pg_store = tether.open_store(t_url, load_plugins=False)
        raw = pg.connect(t_url)  # autocommit, on tether's schema
        raw.execute("CREATE TABLE bench_floor (id bigserial PRIMARY KEY, v text)")
        value = json.dumps(ITEMS[3])
        target = pg_url.split("?", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        engine_kwargs = {"connect_args": {"server_settings": {"search_path": schema}}}

        async def tether_pg(tag: str) -> Any:
            return TetherSession(f"{tag}-{next(counter)}", pg_store)

        engines: list[Any] = []

        async def sdk_pg(tag: str) -> Any:
            session = SQLAlchemySession.from_url(
                f"{tag}-{next(counter)}",
                url=target,
                engine_kwargs=engine_kwargs,
                create_tables=True,
            )
            engines.append(session.engine)
            return session

        def insert() -> None:
            raw.execute("INSERT INTO bench_floor (v) VALUES (%s)", (value,))

        async def floors() -> Floors:
            session = TetherSession(f"floor-{next(counter)}", pg_store)
            await prefill(session, 100)
            return {
                "raw psycopg autocommit INSERT of one row, in a worker thread": in_thread(insert),
                "hop + raw psycopg autocommit INSERT of one row": lambda: asyncio.to_thread(insert),
                "raw psycopg SELECT 1": lambda: raw.execute("SELECT 1").fetchone(),
                **tether_floors(session),
            }

        async def pg_run() -> dict[str, dict[str, list[float]]]:
            try:
                return await measure(
                    {"TetherSession": tether_pg, "SQLAlchemySession": sdk_pg},
                    floors,
                    big=big,
                    rounds=rounds,
                    calls=calls,
                )
            finally:
                for engine in engines:
                    await engine.dispose()

        try:
            results = asyncio.run(pg_run())
        finally:
            raw.close()
            pg_store.close()
        return report(
            f"PostgreSQL {pg.server_version(pg_url)}, every write committed on both "
            f"(synchronous_commit = {sync_commit}, the same server)",
            results,
            "TetherSession",
            "SQLAlchemySession",
        )
