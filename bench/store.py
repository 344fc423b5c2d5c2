"""Store benchmark: appends against raw sqlite3, buffered flushes, listing at scale.

What is measured, each beside a baseline run in the same process:

* **Durable single appends.** ``handle.append()`` (committed before it returns)
  against raw ``sqlite3`` inserting the same rows into a table with tether's
  own ``messages`` DDL, one commit each, same journal mode (WAL) and the same
  ``synchronous`` level. Raw gets SQLite's defaults otherwise. Rounds are
  interleaved (raw, tether, raw, tether...) so drift hits both; we report the
  median rate and the median of the per-round ratios, plus tether's append
  latency percentiles.
* **Buffered appends.** ``buffer()`` x10 + ``flush()`` against raw sqlite3
  inserting the same 10 rows (idempotency keys included) in one transaction.
* **Listing.** The first page (50) of the resumable listing on stores of
  100,000 and 1,000,000 sessions (with continuation chains and ended
  sessions), warm cache, median and p99 of 200 calls; also the next page by
  cursor and a source-filtered page.
* **Where the time goes** (issue 15): beside each whole-session round, tether's
  own statements run through its backend (``store.backend.write``: the same
  transactions, the same connection, WAL and checkpointer, the file check of
  each write) without the repository and handle layers above it. Between the
  raw floor and that is the SQL tether runs that the floor does not (the
  ``created`` and ``ended`` events, the count bump of each append); between
  that and tether, Python.
* **The heartbeat's share** (issue 15): the raw floor runs once more with one
  idle thread alive (blocked on an Event, as tether's heartbeat thread is
  between beats; liveness needs it while a session is open). On the 2-core
  VM measured, a live idle thread started after the connection opened cost
  raw sqlite3 9 to 13% of its whole-session rate at ``full`` (its commits
  up to a third longer in a test of commits alone), nothing at ``normal``.
  The target is still judged against the plain floor.
* **PostgreSQL** (``--pg URL``, default the test server): the same appends
  against raw psycopg inserting the same rows (autocommit, one INSERT each;
  ``executemany`` of 10 in one transaction), and the same listings, loaded
  with COPY. Each run gets a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tether
from tether.model import MESSAGE_COLUMNS  # the columns a writer names (schema 4 adds defaults)
from tether.store import sql as tether_sql
from tether.store.sqlite.schema import MIGRATIONS

from . import pg
from .report import median, percentile, progress, publish, table

CONTENT = (
    "Sure - the build fails because the generated header is missing; run the code "
    "generator first, then make. Here is the command and the reason it is needed."
)
MESSAGE_DDL = [
    stmt for m in MIGRATIONS for stmt in m.statements if "messages" in stmt.split("(", 1)[0]
]
SYNC = {"normal": "NORMAL", "full": "FULL"}
RAW_INSERT = f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
RAW_INSERT_PG = RAW_INSERT.replace("?", "%s")
INSERT_MESSAGE = tether_sql.insert_message("sqlite")
NONE3 = (None, None, None)


def _raw_connection(path: Path, durability: str) -> sqlite3.Connection:
    c = sqlite3.connect(path)
    c.execute("PRAGMA journal_mode = WAL")
    c.execute(f"PRAGMA synchronous = {SYNC[durability]}")
    for stmt in MESSAGE_DDL:
        c.execute(stmt)
    c.commit()
    return c


def raw_single(path: Path, durability: str, n: int) -> float:
    c = _raw_connection(path, durability)
    sid = tether.ids.new_id()
    t = time.perf_counter()
    for i in range(n):
        c.execute(
            RAW_INSERT,
            (sid, i + 1, "assistant", f"{CONTENT} {i}", None, None, None, time.time(), None),
        )
        c.commit()
    elapsed = time.perf_counter() - t
    c.close()
    return n / elapsed


def stmts_single(path: Path, durability: str, n: int) -> float:
    """tether's statements for a later single append (count bump + insert), through its
    backend: what an append costs without the repository and handle layers."""
    store = tether.open_store(path, durability=durability, load_plugins=False)
    h = store.session(source="bench")
    h.append("user", "start")
    sid = h.id
    write = store.backend.write
    t = time.perf_counter()
    for i in range(n):
        seq, now = i + 2, time.time()
        content = f"{CONTENT} {i}"

        def tx(c: Any, seq: int = seq, now: float = now, content: str = content) -> None:
            c.execute(tether_sql.BUMP_ROOT, (seq, 1, now, sid, 0, seq - 1))
            c.execute(INSERT_MESSAGE, (sid, seq, "assistant", content, *NONE3, now, *NONE3))

        write(tx)
    elapsed = time.perf_counter() - t
    store.close()
    return n / elapsed


def tether_single(path: Path, durability: str, n: int) -> tuple[float, list[float]]:
    store = tether.open_store(path, durability=durability, load_plugins=False)
    h = store.session(source="bench")
    h.append("user", "start")
    lat = []
    t = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        h.append("assistant", f"{CONTENT} {i}")
        lat.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - t
    h.end()
    store.close()
    return n / elapsed, lat


def raw_batch(sid: str, last_seq: int, n: int = 10) -> list[tuple[object, ...]]:
    """The rows a raw baseline inserts for one flush: what tether stores for ``buffer()`` x n."""
    return [
        # The key is made as cheaply as tether makes its own buffered keys.
        (
            sid,
            seq,
            "assistant",
            f"{CONTENT} {seq}",
            None,
            None,
            None,
            time.time(),
            f"b:{sid[-8:]}:{seq}",
        )
        for seq in range(last_seq + 1, last_seq + 1 + n)
    ]


def raw_buffered(path: Path, durability: str, batches: int) -> float:
    c = _raw_connection(path, durability)
    sid = tether.ids.new_id()
    seq = 0
    t = time.perf_counter()
    for _ in range(batches):
        rows = raw_batch(sid, seq)
        seq += len(rows)
        c.executemany(RAW_INSERT, rows)
        c.commit()
    elapsed = time.perf_counter() - t
    c.close()
    return batches * 10 / elapsed


def tether_buffered(path: Path, durability: str, batches: int) -> float:
    store = tether.open_store(path, durability=durability, load_plugins=False)
    h = store.session(source="bench")
    h.append("user", "start")
    seq = 0
    t = time.perf_counter()
    for _ in range(batches):
        for _k in range(10):
            seq += 1
            h.buffer("assistant", f"{CONTENT} {seq}")
        h.flush()
    elapsed = time.perf_counter() - t
    h.end()
    store.close()
    return batches * 10 / elapsed


def summarize(pairs: list[tuple[float | tuple[float, list[float]], float]]) -> dict[str, float]:
    """(ours, raw) rates per round -> medians, ratio, and latency percentiles if measured."""
    raw, ours, ratios, lat = [], [], [], []
    for b, a in pairs:
        if isinstance(b, tuple):
            b, latencies = b
            lat += latencies
        raw.append(a)
        ours.append(b)
        ratios.append(b / a)
    out = {"raw": median(raw), "ours": median(ours), "ratio": median(ratios)}
    if lat:
        out["p50"] = percentile(lat, 0.50) * 1e6
        out["p99"] = percentile(lat, 0.99) * 1e6
        out["p999"] = percentile(lat, 0.999) * 1e6
    return out


def compare(directory: Path, rounds: int, fn_raw, fn_ours, *args, fn_mid=None) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Interleaved rounds of ``fn_raw`` and ``fn_ours`` (and ``fn_mid`` between them,
    whose median rate is returned as ``mid``)."""
    pairs = []
    mids = []
    for r in range(rounds):
        tag = f"{fn_ours.__name__}-{'-'.join(map(str, args))}-{r}"
        a = fn_raw(directory / f"raw-{tag}.db", *args)
        if fn_mid is not None:
            mids.append(fn_mid(directory / f"mid-{tag}.db", *args))
        pairs.append((fn_ours(directory / f"ours-{tag}.db", *args), a))
    out = summarize(pairs)
    if mids:
        out["mid"] = median(mids)
    return out


# --- listing at scale -------------------------------------------------------------


LISTING_COLUMNS = (
    "id",
    "source",
    "parent_id",
    "root_id",
    "created_at",
    "last_active_at",
    "ended_at",
    "end_reason",
    "message_count",
    "chain_tip_id",
    "chain_message_count",
    "chain_last_active_at",
)


def listing_rows(n: int) -> Iterator[tuple[object, ...]]:
    """``n`` sessions: roots, 5% continued by a child, 70% ended (LISTING_COLUMNS)."""
    rnd = random.Random(7)
    sources = ["cli", "tui", "gateway", "cron"]
    base = time.time() - n * 10
    i = 0
    while i < n:
        t = base + i * 10 + rnd.random()
        sid = f"S{i:09d}"
        source = rnd.choice(sources)
        ended = rnd.random() < 0.7
        if rnd.random() < 0.05 and i + 1 < n:
            child = f"S{i + 1:09d}"
            yield (sid, source, None, sid, t, t + 1, t + 2, "compression", 12, child, 20, t + 5)
            yield (
                child,
                source,
                sid,
                sid,
                t + 2,
                t + 5,
                t + 6 if ended else None,
                "completed" if ended else None,
                8,
                None,
                0,
                None,
            )
            i += 2
            continue
        yield (
            sid,
            source,
            None,
            sid,
            t,
            t + 3,
            t + 4 if ended else None,
            "completed" if ended else None,
            6,
            sid,
            6,
            t + 3,
        )
        i += 1


def build_listing_store(path: Path, n: int) -> None:
    tether.open_store(path, load_plugins=False).close()
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA synchronous = OFF")
    c.execute("BEGIN")
    c.executemany(
        f"INSERT INTO sessions ({', '.join(LISTING_COLUMNS)}) VALUES"
        f" ({', '.join('?' * len(LISTING_COLUMNS))})",
        listing_rows(n),
    )
    c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()


def time_calls(fn, calls: int = 200) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    for _ in range(10):
        fn()
    xs = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t)
    return median(xs) * 1e3, percentile(xs, 0.99) * 1e3


def time_listing(target: str | Path) -> list[tuple[str, str, str]]:
    store = tether.open_store(target, load_plugins=False)
    first = store.list_sessions(limit=50)
    assert len(first.items) == 50
    results = []
    for label, fn in (
        ("first page", lambda: store.list_sessions(limit=50)),
        ("next page (cursor)", lambda: store.list_sessions(limit=50, cursor=first.next_cursor)),
        ("first page, source=cli", lambda: store.list_sessions(limit=50, source="cli")),
        ("first page, ended only", lambda: store.list_sessions(limit=50, state="ended")),
    ):
        med, p99 = time_calls(fn)
        results.append((label, f"{med:.2f}", f"{p99:.2f}"))
    store.close()
    return results


def listing(directory: Path, n: int) -> list[tuple[str, str, str]]:
    path = directory / f"listing{n}.db"
    build_listing_store(path, n)
    results = time_listing(path)
    os.remove(path)
    return results


# --- whole sessions, first append, end, read back (issue #15's rows) -----------------

SESSION_DDL = [
    stmt for m in MIGRATIONS for stmt in m.statements if "sessions" in stmt.split("(", 1)[0]
]
RAW_NEW_SESSION = (
    "INSERT INTO sessions (id, source, root_id, created_at, last_active_at, message_count,"
    " chain_tip_id, chain_message_count, chain_last_active_at) VALUES (?, ?, ?, ?, ?, 0, ?, 0, ?)"
)
RAW_BUMP = "UPDATE sessions SET message_count = message_count + 1, last_active_at = ? WHERE id = ?"
RAW_END = "UPDATE sessions SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL"
WHOLE_MESSAGES = 10
READ_MESSAGES = tether_sql.select_messages(1)


def _raw_full_schema(path: Path, durability: str) -> sqlite3.Connection:
    """Raw sqlite3 on tether's own schema (so both write the same indexes)."""
    tether.open_store(path, durability=durability, load_plugins=False).close()
    c = sqlite3.connect(path, isolation_level=None)
    c.execute(f"PRAGMA synchronous = {SYNC[durability]}")
    return c


@contextlib.contextmanager
def idle_thread() -> Iterator[None]:
    """One more live thread, blocked on an Event (as a heartbeat thread between beats)."""
    wake = threading.Event()
    thread = threading.Thread(target=wake.wait, name="bench-idle", daemon=True)
    thread.start()
    try:
        yield
    finally:
        wake.set()
        thread.join()


def raw_whole(
    path: Path, durability: str, sessions: int, *, with_thread: bool = False
) -> tuple[float, list[float], list[float]]:
    """The floor: per session, one transaction creating it with its first message,
    one per later message (insert + count bump), one ending it. ``with_thread``:
    with one idle thread alive meanwhile (see the module docstring)."""
    c = _raw_full_schema(path, durability)
    if with_thread:  # started once the connection is open, as tether's heartbeat is
        with idle_thread():
            return _raw_whole_on(c, sessions)
    return _raw_whole_on(c, sessions)


def _raw_whole_on(c: sqlite3.Connection, sessions: int) -> tuple[float, list[float], list[float]]:
    firsts: list[float] = []
    ends: list[float] = []
    t = time.perf_counter()
    for _ in range(sessions):
        sid = tether.ids.new_id()
        now = time.time()
        t0 = time.perf_counter()
        c.execute("BEGIN IMMEDIATE")
        c.execute(RAW_NEW_SESSION, (sid, "bench", sid, now, now, sid, now))
        c.execute(RAW_INSERT, (sid, 1, "user", CONTENT, None, None, None, now, None))
        c.execute(RAW_BUMP, (now, sid))
        c.execute("COMMIT")
        firsts.append(time.perf_counter() - t0)
        for i in range(2, WHOLE_MESSAGES + 1):
            c.execute("BEGIN IMMEDIATE")
            c.execute(RAW_INSERT, (sid, i, "assistant", CONTENT, None, None, None, now, None))
            c.execute(RAW_BUMP, (now, sid))
            c.execute("COMMIT")
        t0 = time.perf_counter()
        c.execute("BEGIN IMMEDIATE")
        c.execute(RAW_END, (time.time(), "completed", sid))
        c.execute("COMMIT")
        ends.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - t
    c.close()
    return sessions * WHOLE_MESSAGES / elapsed, firsts, ends


def tether_whole(
    path: Path | str, durability: str, sessions: int
) -> tuple[float, list[float], list[float]]:
    store = tether.open_store(path, durability=durability, load_plugins=False)
    firsts: list[float] = []
    ends: list[float] = []
    t = time.perf_counter()
    for _ in range(sessions):
        h = store.session(source="bench")
        t0 = time.perf_counter()
        h.append("user", CONTENT)
        firsts.append(time.perf_counter() - t0)
        for _i in range(2, WHOLE_MESSAGES + 1):
            h.append("assistant", CONTENT)
        t0 = time.perf_counter()
        h.end("completed")
        ends.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - t
    store.close()
    return sessions * WHOLE_MESSAGES / elapsed, firsts, ends


def stmts_whole(
    path: Path | str, durability: str, sessions: int
) -> tuple[float, list[float], list[float]]:
    """tether's own transactions for whole sessions, through its backend: the first
    write (session row with its first message counted, ``created`` event, message),
    each later append (count bump, message), the end (fenced UPDATE, ``ended``
    event). No repository, handle or owner code runs (the owner id is a constant)."""
    store = tether.open_store(path, durability=durability, load_plugins=False)
    write = store.backend.write
    owner = tether.ids.new_id()
    firsts: list[float] = []
    ends: list[float] = []
    t = time.perf_counter()
    for _ in range(sessions):
        sid = tether.ids.new_id()
        now = time.time()
        row = ("user", CONTENT, *NONE3, now, *NONE3)
        params = tether_sql.root_session_params(
            sid, "bench", None, None, None, None, now, now, owner, None, 1, now
        )
        created = '{"source":"bench","parent_id":null}'

        def first(
            c: Any, sid: str = sid, row: Any = row, p: Any = params, e: str = created
        ) -> None:
            c.execute(tether_sql.INSERT_ROOT_SESSION, p)
            c.execute(tether_sql.INSERT_EVENT, (time.time(), sid, "created", e))
            c.execute(INSERT_MESSAGE, (sid, 1, *row))

        t0 = time.perf_counter()
        write(first)
        firsts.append(time.perf_counter() - t0)
        for i in range(2, WHOLE_MESSAGES + 1):

            def later(c: Any, sid: str = sid, i: int = i) -> None:
                at = time.time()
                c.execute(tether_sql.BUMP_ROOT, (i, 1, at, sid, 0, i - 1))
                c.execute(INSERT_MESSAGE, (sid, i, "assistant", CONTENT, *NONE3, at, *NONE3))

            write(later)

        def end(c: Any, sid: str = sid) -> None:
            at = time.time()
            c.execute(tether_sql.END_SESSION_FENCED_QUIETLY, (at, "completed", None, sid, 0))
            c.execute(
                tether_sql.INSERT_EVENT, (at, sid, "ended", '{"reason":"completed","detail":null}')
            )

        t0 = time.perf_counter()
        write(end)
        ends.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - t
    store.close()
    return sessions * WHOLE_MESSAGES / elapsed, firsts, ends


def spread(xs: list[float], fmt: str = "{:.2f}") -> str:
    """min / median / max of repeated rounds."""
    return " / ".join(fmt.format(x) for x in (min(xs), median(xs), max(xs)))


def whole_sessions(
    directory: Path, durability: str, rounds: int, sessions: int
) -> dict[str, list[float]]:
    """Interleaved rounds of raw and tether whole sessions; per-round ratios."""
    out: dict[str, list[float]] = {"raw": [], "ours": [], "ratio": [], "first": [], "end": []}
    out.update({"first_raw_us": [], "first_us": [], "end_raw_us": [], "end_us": []})
    out.update({"stmts": [], "first_stmts_us": [], "end_stmts_us": []})
    out.update({"raw_thread": [], "ratio_thread": []})
    for r in range(rounds):
        # The two floors in alternating order: whichever runs second in a round
        # finds the disk and caches warmed by the first.
        thread_db = directory / f"raw-thread-whole-{durability}-{r}.db"
        if r % 2:
            out["raw_thread"].append(
                raw_whole(thread_db, durability, sessions, with_thread=True)[0]
            )
        raw_rate, raw_firsts, raw_ends = raw_whole(
            directory / f"raw-whole-{durability}-{r}.db", durability, sessions
        )
        if not r % 2:
            out["raw_thread"].append(
                raw_whole(thread_db, durability, sessions, with_thread=True)[0]
            )
        stmts_rate, stmts_firsts, stmts_ends = stmts_whole(
            directory / f"stmts-whole-{durability}-{r}.db", durability, sessions
        )
        out["stmts"].append(stmts_rate)
        out["first_stmts_us"].append(median(stmts_firsts) * 1e6)
        out["end_stmts_us"].append(median(stmts_ends) * 1e6)
        rate, firsts, ends = tether_whole(
            directory / f"ours-whole-{durability}-{r}.db", durability, sessions
        )
        out["raw"].append(raw_rate)
        out["ours"].append(rate)
        out["ratio"].append(rate / raw_rate)
        out["ratio_thread"].append(rate / out["raw_thread"][-1])
        out["first_raw_us"].append(median(raw_firsts) * 1e6)
        out["first_us"].append(median(firsts) * 1e6)
        out["end_raw_us"].append(median(raw_ends) * 1e6)
        out["end_us"].append(median(ends) * 1e6)
        out["first"].append(median(raw_firsts) / median(firsts))
        out["end"].append(median(raw_ends) / median(ends))
    return out


def raw_read_back(path: Path, session_id: str, calls: int) -> list[float]:
    c = sqlite3.connect(path, isolation_level=None)
    xs = []
    for _ in range(calls):
        t = time.perf_counter()
        c.execute("BEGIN")
        # The very statement tether runs (active messages, in seq order).
        rows = c.execute(READ_MESSAGES, (session_id, 0, "active", 2**63 - 1)).fetchall()
        c.execute("COMMIT")
        xs.append(time.perf_counter() - t)
    assert len(rows) == 1000
    c.close()
    return xs


def read_back(directory: Path, rounds: int, calls: int) -> dict[str, list[float]]:
    """Reading a 1,000-message session: ``store.messages()`` against raw fetchall()."""
    path = directory / "read-back.db"
    store = tether.open_store(path, load_plugins=False)
    h = store.session(source="bench")
    for i in range(100):
        for k in range(10):
            h.buffer("assistant" if k % 2 else "user", f"{CONTENT} {i}.{k}")
        h.flush()
    h.end()
    out: dict[str, list[float]] = {"raw": [], "ours": [], "ratio": []}
    for _ in range(rounds):
        raw = median(raw_read_back(path, h.id, calls))
        xs = []
        for _ in range(calls):
            t = time.perf_counter()
            got = store.get_messages(h.id)
            xs.append(time.perf_counter() - t)
        assert len(got) == 1000
        ours = median(xs)
        out["raw"].append(raw * 1e3)
        out["ours"].append(ours * 1e3)
        out["ratio"].append(raw / ours)
    store.close()
    return out


def run_whole(d: Path, quick: bool) -> tuple[str, list[tuple[str, ...]]]:
    rounds = 3 if quick else 7
    rows: list[tuple[str, ...]] = []
    latency: list[tuple[str, ...]] = []
    for durability, target in (("normal", 0.8), ("full", 0.9)):
        sessions = (100 if quick else 300) if durability == "normal" else (20 if quick else 60)
        progress(f"store: whole sessions, {durability} ({rounds} rounds of {sessions})")
        r = whole_sessions(d, durability, rounds, sessions)
        met = "met" if median(r["ratio"]) >= target else "missed"
        rows.append(
            (
                f"whole session (create + {WHOLE_MESSAGES} appends + end), {durability}",
                spread(r["raw"], "{:,.0f}"),
                spread(r["raw_thread"], "{:,.0f}"),
                spread(r["stmts"], "{:,.0f}"),
                spread(r["ours"], "{:,.0f}"),
                spread(r["ratio"]),
                spread(r["ratio_thread"]),
                f"≥ {target}x: {met}",
            )
        )
        for what in ("first", "end"):
            label = "first append" if what == "first" else "end()"
            met = "met" if median(r[what]) >= 0.5 else "missed"
            latency.append(
                (
                    f"{label}, {durability}",
                    spread(r[f"{what}_raw_us"], "{:.0f}"),
                    spread(r[f"{what}_stmts_us"], "{:.0f}"),
                    spread(r[f"{what}_us"], "{:.0f}"),
                    spread(r[what]),
                    f"≥ 0.5x: {met}",
                )
            )
    progress("store: reading back a 1,000-message session")
    rb = read_back(d, rounds, 20 if quick else 100)
    met = "met" if median(rb["ratio"]) >= 0.8 else "missed"
    stmts = "tether's SQL via its backend"
    text = table(
        [
            "msgs/s, min / median / max",
            "raw sqlite3",
            "raw sqlite3 + an idle thread",
            stmts,
            "tether",
            "ratio",
            "ratio to raw + idle thread",
            "target (vs raw)",
        ],
        rows,
    )
    text += "\n\nLatency of a session's first append and of `end()` (µs, medians per round):\n\n"
    text += table(["", "raw sqlite3", stmts, "tether", "ratio (raw/tether)", "target"], latency)
    text += "\n\nReading back a 1,000-message session (ms):\n\n"
    text += table(
        ["", "raw sqlite3", "tether", "ratio (raw/tether)", "target"],
        [
            (
                "store.messages()",
                spread(rb["raw"], "{:.2f}"),
                spread(rb["ours"], "{:.2f}"),
                spread(rb["ratio"]),
                f"≥ 0.8x: {met}",
            )
        ],
    )
    return text, rows


# --- PostgreSQL -----------------------------------------------------------------------


def pg_raw_single(base: str, n: int) -> float:
    """Raw psycopg: one INSERT per message into tether's messages table, autocommit."""
    with pg.scratch_schema(base, "raw") as url:
        tether.open_store(url, load_plugins=False).close()
        with pg.connect(url) as c:
            sid = tether.ids.new_id()
            t = time.perf_counter()
            for i in range(n):
                c.execute(
                    RAW_INSERT_PG,
                    (
                        sid,
                        i + 1,
                        "assistant",
                        f"{CONTENT} {i}",
                        None,
                        None,
                        None,
                        time.time(),
                        None,
                    ),
                )
            elapsed = time.perf_counter() - t
    return n / elapsed


def pg_raw_buffered(base: str, batches: int) -> float:
    """Raw psycopg: the same 10 rows per transaction with executemany."""
    with pg.scratch_schema(base, "raw") as url:
        tether.open_store(url, load_plugins=False).close()
        with pg.connect(url) as c:
            sid = tether.ids.new_id()
            seq = 0
            t = time.perf_counter()
            for _ in range(batches):
                rows = raw_batch(sid, seq)
                seq += len(rows)
                with c.transaction(), c.cursor() as cur:
                    cur.executemany(RAW_INSERT_PG, rows)
            elapsed = time.perf_counter() - t
    return batches * 10 / elapsed


def pg_raw_whole(base: str, sessions: int) -> float:
    """Raw psycopg, one statement per step (autocommit): create, 10 inserts, end."""
    with pg.scratch_schema(base, "raw") as url:
        tether.open_store(url, load_plugins=False).close()
        new_session = RAW_NEW_SESSION.replace("?", "%s")
        end = RAW_END.replace("?", "%s")
        with pg.connect(url) as c:
            t = time.perf_counter()
            for _ in range(sessions):
                sid = tether.ids.new_id()
                now = time.time()
                c.execute(new_session, (sid, "bench", sid, now, now, sid, now))
                for i in range(1, WHOLE_MESSAGES + 1):
                    c.execute(
                        RAW_INSERT_PG, (sid, i, "assistant", CONTENT, None, None, None, now, None)
                    )
                c.execute(end, (time.time(), "completed", sid))
            elapsed = time.perf_counter() - t
    return sessions * WHOLE_MESSAGES / elapsed


def pg_whole(base: str, rounds: int, sessions: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"raw": [], "ours": [], "ratio": []}
    for _ in range(rounds):
        raw = pg_raw_whole(base, sessions)
        with pg.scratch_schema(base, "ours") as url:
            ours = tether_whole(url, "normal", sessions)[0]
        out["raw"].append(raw)
        out["ours"].append(ours)
        out["ratio"].append(ours / raw)
    return out


def pg_compare(base: str, rounds: int, fn_raw, fn_ours, n: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    pairs = []
    for _ in range(rounds):
        a = fn_raw(base, n)
        with pg.scratch_schema(base, "ours") as url:
            pairs.append((fn_ours(url, "normal", n), a))
    return summarize(pairs)


def pg_listing(base: str, n: int) -> tuple[list[tuple[str, str, str]], float]:
    """The listing on PostgreSQL, loaded with COPY; returns the timings and the load time."""
    with pg.scratch_schema(base, "listing") as url:
        tether.open_store(url, load_plugins=False).close()
        t = time.perf_counter()
        pg.copy_rows(url, "sessions", LISTING_COLUMNS, listing_rows(n))
        load = time.perf_counter() - t
        return time_listing(url), load


def run_pg(base: str, quick: bool) -> str:
    n = 1000 if quick else 5000
    rounds = 3 if quick else 5
    rows = []
    r = pg_compare(base, rounds, pg_raw_single, tether_single, n)
    rows.append(("single append", f"{r['raw']:,.0f}", f"{r['ours']:,.0f}", f"{r['ratio']:.2f}x"))
    single = r
    r = pg_compare(base, rounds, pg_raw_buffered, tether_buffered, n // 10)
    rows.append(
        ("buffered, 10/flush", f"{r['raw']:,.0f}", f"{r['ours']:,.0f}", f"{r['ratio']:.2f}x")
    )
    progress("store: PostgreSQL whole sessions")
    w = pg_whole(base, rounds, 30 if quick else 100)
    met = "met" if median(w["ratio"]) >= 0.8 else "missed"
    whole_row = (
        f"whole session (create + {WHOLE_MESSAGES} appends + end): "
        f"raw {spread(w['raw'], '{:,.0f}')}, tether {spread(w['ours'], '{:,.0f}')}, "
        f"ratio {spread(w['ratio'])} (≥ 0.8x: {met})"
    )
    text = f"PostgreSQL {pg.server_version(base)} on this machine (loopback TCP):\n\n"
    text += table(["messages/s", "raw psycopg", "tether", "median ratio"], rows)
    text += f"\n\nWhole sessions, one at a time, min / median / max of rounds: {whole_row}"
    text += "\n\nAppend latency on PostgreSQL (tether, µs):\n\n" + table(
        ["p50", "p99", "p99.9"],
        [(f"{single['p50']:.0f}", f"{single['p99']:.0f}", f"{single['p999']:.0f}")],
    )
    for size in [20_000] if quick else [100_000, 1_000_000]:
        progress(f"store: PostgreSQL listing at {size:,} sessions")
        res, load = pg_listing(base, size)
        text += (
            f"\n\nListing at {size:,} sessions on PostgreSQL (ms; loaded with COPY in "
            f"{load:.1f} s):\n\n"
        )
        text += table(["query", "median", "p99"], res)
    return text


def run(
    quick: bool = False, write: bool = True, directory: str | None = None, pg_url: str | None = None
) -> None:
    tmp = tempfile.TemporaryDirectory(dir=directory, prefix="tether-bench-")
    d = Path(tmp.name)
    n = 2000 if quick else 10000
    rounds = 3 if quick else 7
    rows = []
    singles = {}
    for durability in ("normal", "full"):
        count = n if durability == "normal" else max(500, n // 10)
        progress(f"store: single appends, {durability} ({rounds} rounds of {count:,})")
        r = compare(d, rounds, raw_single, tether_single, durability, count, fn_mid=stmts_single)
        singles[durability] = r
        rows.append(
            (
                f"single append, {durability}",
                f"{r['raw']:,.0f}",
                f"{r['mid']:,.0f}",
                f"{r['ours']:,.0f}",
                f"{r['ratio']:.2f}x",
                "≥ 0.85x",
            )
        )
    for durability in ("normal", "full"):
        batches = n // 10 if durability == "normal" else max(100, n // 50)
        progress(f"store: buffered appends, {durability} ({rounds} rounds of {batches:,} flushes)")
        r = compare(d, rounds, raw_buffered, tether_buffered, durability, batches)
        rows.append(
            (
                f"buffered, 10/flush, {durability}",
                f"{r['raw']:,.0f}",
                "",
                f"{r['ours']:,.0f}",
                f"{r['ratio']:.2f}x",
                "≥ 0.85x" if durability == "normal" else "≥ 0.70x",
            )
        )
    text = table(
        [
            "messages/s",
            "raw sqlite3",
            "tether's SQL via its backend",
            "tether",
            "median ratio",
            "target",
        ],
        rows,
    )
    whole, _ = run_whole(d, quick)
    text += "\n\nWhole sessions, one at a time (messages/s; min / median / max of rounds):\n\n"
    text += whole
    lat_rows = [
        (d_, f"{r['p50']:.0f}", f"{r['p99']:.0f}", f"{r['p999']:.0f}") for d_, r in singles.items()
    ]
    text += "\n\nAppend latency (tether, µs):\n\n" + table(
        ["durability", "p50", "p99", "p99.9"], lat_rows
    )
    sizes = [20_000] if quick else [100_000, 1_000_000]
    for size in sizes:
        progress(f"store: listing at {size:,} sessions (building the database)")
        res = listing(d, size)
        text += f"\n\nListing at {size:,} sessions (ms, target: first page < 5 ms):\n\n"
        text += table(["query", "median", "p99"], res)
    if pg_url:
        progress("store: PostgreSQL")
        text += "\n\n" + run_pg(pg_url, quick)
    notes = (
        "median ratio: the median of the per-round ratios (tether / raw, measured in the "
        "same round), which can differ from the ratio of the two median rates beside it. "
        f"Rounds: {rounds}, interleaved; single appends: {n:,} per round at normal, "
        f"{max(500, n // 10):,} at full. Raw sqlite3 uses tether's messages DDL, "
        "WAL, the same synchronous level and SQLite's default auto-checkpoint; "
        "tether checkpoints on a background thread (see store/sqlite/backend.py)."
    )
    publish("store" + (" (quick)" if quick else ""), text, notes, write=write)
    tmp.cleanup()
