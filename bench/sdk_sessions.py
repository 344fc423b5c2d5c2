"""OpenAI Agents SDK sessions: TetherSession against the SDK's SQLiteSession and SQLAlchemySession.

Runs in ``.venv-agents`` (``make bench-agents``: the SDK needs openai>=3).
What is measured, per call, through each session's public async API (so each
pays its own ``asyncio.to_thread`` or async-driver overhead):

* ``add_items`` of 1 item and of 10 items (one committed write each);
* ``get_items(limit=20)`` on a session of 10,000 items, and on one of 100
  items: the two should cost the same (a last-N read).

Pairs at equal durability, each measured in the same rounds (interleaved, so
drift hits both):

* SQLite: TetherSession on a store opened with ``durability="full"`` (WAL,
  ``synchronous=FULL``: a commit survives power loss) against
  ``SQLiteSession`` as shipped (WAL, SQLite's default ``synchronous=FULL``);
* PostgreSQL (``--pg``): TetherSession (psycopg) against
  ``SQLAlchemySession`` with asyncpg, both committing every write on the same
  server, each in a schema of its own (dropped afterwards).

The floor is ``await asyncio.to_thread(noop)``, measured in the same rounds:
what any session that keeps the event loop free pays before touching a
database. Items cycle through the four shapes the runner stores after a tool
turn. Reported: min / median / max over rounds of each round's median call.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

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


async def per_call(fn: Callable[[], Awaitable[Any]], calls: int) -> float:
    """Median seconds of ``calls`` sequential calls."""
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _noop() -> None:
    return None


async def measure(
    contestants: dict[str, Callable[[str], Awaitable[Any]]],
    *,
    big: int,
    rounds: int,
    calls: int,
) -> dict[str, dict[str, list[float]]]:
    """contestant -> operation -> per-round medians (seconds)."""
    results: dict[str, dict[str, list[float]]] = {"floor": {"to_thread": []}}
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
    one, ten = items(1), items(10)
    for r in range(rounds):
        progress(f"agents: round {r + 1}/{rounds}")
        results["floor"]["to_thread"].append(
            await per_call(lambda: asyncio.to_thread(_noop), calls)
        )
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


def ms(x: float) -> str:
    return f"{x * 1000:.3f}"


def report(
    title: str, results: dict[str, dict[str, list[float]]], tether_name: str, other: str
) -> str:
    floor = statistics.median(results["floor"]["to_thread"])
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
        "tether / floor",
    ]
    floor_line = f"Floor (to_thread round trip): {ms(floor)} ms"
    return f"### {title}\n\n" + table(head, rows) + "\n\n" + floor_line


def run(
    *,
    quick: bool = False,
    write: bool = True,
    directory: str | None = None,
    pg_url: str | None = pg.DEFAULT_URL,
) -> None:
    from agents import SQLiteSession  # the SDK: only in .venv-agents

    big = 2_000 if quick else 10_000
    rounds = 3 if quick else 7
    calls = 50 if quick else 200
    base = Path(directory or tempfile.mkdtemp(prefix="tether-bench-agents-"))
    counter = itertools.count()
    sections = []

    store = tether.open_store(base / "tether.db", durability="full", load_plugins=False)

    async def tether_sqlite(tag: str) -> Any:
        return TetherSession(f"{tag}-{next(counter)}", store)

    async def sdk_sqlite(tag: str) -> Any:
        return SQLiteSession(f"{tag}-{next(counter)}", base / "sdk.db")

    async def sqlite_run() -> dict[str, dict[str, list[float]]]:
        return await measure(
            {"TetherSession": tether_sqlite, "SQLiteSession": sdk_sqlite},
            big=big,
            rounds=rounds,
            calls=calls,
        )

    results = asyncio.run(sqlite_run())
    store.close()
    sections.append(
        report("SQLite (synchronous=FULL on both)", results, "TetherSession", "SQLiteSession")
    )

    if pg_url is not None:
        from agents.extensions.memory import SQLAlchemySession

        with (
            pg.scratch_schema(pg_url, "agents_t") as t_url,
            pg.scratch_schema(pg_url, "agents_s") as s_url,
        ):
            schema = s_url.rsplit("schema=", 1)[1]
            with pg.connect(pg_url) as conn:
                conn.execute(f'CREATE SCHEMA "{schema}"')
            pg_store = tether.open_store(t_url, load_plugins=False)
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

            async def pg_run() -> dict[str, dict[str, list[float]]]:
                try:
                    return await measure(
                        {"TetherSession": tether_pg, "SQLAlchemySession": sdk_pg},
                        big=big,
                        rounds=rounds,
                        calls=calls,
                    )
                finally:
                    for engine in engines:
                        await engine.dispose()

            results = asyncio.run(pg_run())
            pg_store.close()
            sections.append(
                report(
                    f"PostgreSQL {pg.server_version(pg_url)} (every write committed on both)",
                    results,
                    "TetherSession",
                    "SQLAlchemySession",
                )
            )

    import agents

    notes = (
        f"openai-agents {agents.__version__ if hasattr(agents, '__version__') else '0.24'}, "
        f"tether {tether.__version__}; {rounds} rounds x {calls} calls, "
        f"get_items on sessions of {big:,} and 100 items. "
        "`other / tether` > 1 means TetherSession is faster."
    )
    publish(f"agents{' (quick)' if quick else ''}", "\n\n".join(sections), notes, write=write)
