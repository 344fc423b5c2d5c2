"""Retention (issue 14): prune and purge in short batches beside an appending agent; export.

What is measured, on SQLite (the embedded default) and on PostgreSQL (``--pg``,
default the test server, in a schema of its own dropped afterwards):

* **prune** (to the trash) and **purge** (for good) of N ended sessions with
  10 messages each (full run: 100,000 sessions / 1,000,000 messages). Each
  batch is one write transaction; its duration is the time it holds the
  write lock (target: max <= 50 ms). Between batches prune leaves the lock
  free three times as long (SQLite: see ``BatchSizer.pause``). Meanwhile an agent in another process
  appends one message at a time; its append latency is recorded (target:
  p99 < 10 ms while prune and purge run).
* the space given back (SQLite): file size before the purge and after ``reclaim_space``.
* **export** (JSONL, canonical) against the floor: a raw ``SELECT *`` of the
  same session and message rows in the export's order (sessions by id,
  messages by session and seq), every row fetched into Python and nothing
  else done with it: sqlite3 on SQLite, a plain psycopg cursor on PostgreSQL
  (the whole result at once: the fastest raw read, not constant in memory).
  Rows/s (target: export at least 0.5x the floor), the two interleaved round
  by round, the ratio taken per round; and the export's peak Python memory
  (tracemalloc) at N/10 and N sessions (target: the same: constant).

Each batch's time is also split in two (:class:`CommitTimer`): its statements,
and its COMMIT. On PostgreSQL an ordinary COMMIT waits for the server to flush
the WAL to disk, and during a checkpoint that wait alone exceeded the target
(100 ms on a slow disk; the agent's one-row appends, its max in the same
window, wait as long): batches now commit without that wait
(``write_unflushed``) and the run's last write flushes them all. The longest
statements and the longest COMMIT tell the two apart in every run.

Rounds: export and the floor run 5 times (3 with --quick), interleaved (min /
median / max); prune and purge are destructive, so they run once and their
batches give the spread.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tether

from . import pg
from .report import median, percentile, progress, publish, table

DAY = 86400.0

AGENT = """
import sys, time, tether
db, stop, out = sys.argv[1], sys.argv[2], sys.argv[3]
store = tether.open_store(db, load_plugins=False)
h = store.session(source="agent")
lat = []
import os
print("ready", flush=True)
while not os.path.exists(stop):
    t = time.perf_counter()
    h.append("user", "tick")
    lat.append(time.perf_counter() - t)
    time.sleep(0.002)
h.end("completed")
store.close()
open(out, "w").write("\\n".join(map(str, lat)))
"""


def rows(sessions: int, per: int = 10) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """N ended chains of one session with ``per`` messages, written 100 days ago."""
    old = time.time() - 100 * DAY
    s: list[tuple[object, ...]] = []
    m: list[tuple[object, ...]] = []
    for i in range(sessions):
        sid = f"01BENCH{i:019d}"
        t = old + i * 0.001
        s.append((sid, "cli", sid, t, t + 1, t + 2, "completed", per, sid, per, t + 1))
        for k in range(1, per + 1):
            m.append((sid, k, "user" if k % 2 else "assistant", f"message {k} " * 8, t))
    return s, m


SESSION_COLS = [
    "id",
    "source",
    "root_id",
    "created_at",
    "last_active_at",
    "ended_at",
    "end_reason",
    "message_count",
    "chain_tip_id",
    "chain_message_count",
    "chain_last_active_at",
]
MESSAGE_COLS = ["session_id", "seq", "role", "content", "created_at"]


def build(path: Path, sessions: int, per: int = 10) -> None:
    """The sessions of :func:`rows` in a new SQLite store, raw."""
    tether.open_store(str(path), load_plugins=False).close()  # the schema
    conn = sqlite3.connect(path)
    s, m = rows(sessions, per)
    conn.execute("BEGIN")
    conn.executemany(
        f"INSERT INTO sessions ({', '.join(SESSION_COLS)}) VALUES ({', '.join('?' * 11)})", s
    )
    conn.executemany(f"INSERT INTO messages ({', '.join(MESSAGE_COLS)}) VALUES (?, ?, ?, ?, ?)", m)
    conn.execute("COMMIT")
    conn.close()


def build_pg(url: str, sessions: int, per: int = 10) -> None:
    """The same in a PostgreSQL schema, with COPY."""
    tether.open_store(url, load_plugins=False).close()  # the schema
    s, m = rows(sessions, per)
    pg.copy_rows(url, "sessions", SESSION_COLS, s)
    pg.copy_rows(url, "messages", MESSAGE_COLS, m)


FLOOR = ("SELECT * FROM sessions ORDER BY id", "SELECT * FROM messages ORDER BY session_id, seq")


def floor_rate(db: str) -> tuple[float, float]:
    """Rows per second of a raw SELECT of every session row and every message row:
    by the clock and by this process's CPU time."""
    pgsql = db.startswith("postgresql:")
    conn = pg.connect(db) if pgsql else sqlite3.connect(db)
    t, cpu = time.perf_counter(), time.process_time()
    n = 0
    for query in FLOOR:
        for _ in conn.execute(query):
            n += 1
    elapsed, used = time.perf_counter() - t, time.process_time() - cpu
    conn.close()
    return n / elapsed, n / used


def export_rate(db: str) -> tuple[float, float, int]:
    """Rows (lines) per second of ``store.export_text`` to /dev/null (by the clock,
    by this process's CPU time), and the lines."""
    with tether.open_store(db, load_plugins=False) as store, open(os.devnull, "w") as f:
        t, cpu = time.perf_counter(), time.process_time()
        n = 0
        for chunk in store.export_text():
            f.write(chunk)
            n += chunk.count("\n")
        return n / (time.perf_counter() - t), n / (time.process_time() - cpu), n


def export_peak(db: str) -> int:
    """Peak Python memory (bytes) while exporting everything."""
    with tether.open_store(db, load_plugins=False) as store, open(os.devnull, "w") as f:
        tracemalloc.start()
        for chunk in store.export_text():
            f.write(chunk)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


class CommitTimer:
    """Times the COMMIT of each write of a store apart from its statements: the
    backend's writes are wrapped so that the moment the transaction's function
    returned is noted; what remains of the write is its commit (seconds)."""

    def __init__(self, store: tether.Store) -> None:
        self.commits: list[float] = []
        backend = store.backend
        for name in ("write", "write_ordered", "write_unflushed"):
            inner = getattr(backend, name, None)
            if inner is not None:
                setattr(backend, name, self._timed(inner))

    def _timed(self, inner: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def write(fn: Callable[[Any], Any], **kw: Any) -> Any:
            returned = [0.0]

            def body(c: Any) -> Any:
                out = fn(c)
                returned[0] = time.perf_counter()  # a retried write: its last attempt's
                return out

            out = inner(body, **kw)
            self.commits.append(time.perf_counter() - returned[0])
            return out

        return write

    def take(self) -> list[float]:
        """The commits timed since the last take (ms)."""
        out = [x * 1000 for x in self.commits]
        self.commits.clear()
        return out


def with_agent(db: str, d: Path, work) -> tuple[list[float], list[float], object]:  # type: ignore[no-untyped-def]
    """Run ``work(held)`` while an agent appends to ``db``; (batch ms, agent ms, work's result).

    ``held`` gets the time each batch held the write lock (its transaction)."""
    stop = d / "agent.stop"
    out = d / "agent.lat"
    stop.unlink(missing_ok=True)
    agent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(AGENT), db, str(stop), str(out)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert agent.stdout is not None
    agent.stdout.readline()  # ready
    time.sleep(0.3)
    held: list[float] = []
    result = work(held)
    batches = [x * 1000 for x in held]
    time.sleep(0.3)
    stop.write_text("")
    agent.wait(timeout=60)
    lat = [float(x) * 1000 for x in out.read_text().split()]
    return batches, lat, result


def _split(batches: list[float], commits: list[float]) -> tuple[str, str]:
    """The longest statements of a batch (its time less its COMMIT) and the longest COMMIT.

    A run that did something ends with one more write, its event (see
    ``Retention._log_run``): not a batch."""
    if len(commits) == len(batches) + 1:
        commits = commits[:-1]
    if len(commits) != len(batches):  # not one write per batch: cannot pair them
        return "n/a", "n/a"
    statements = [b - c for b, c in zip(batches, commits, strict=True)]
    return f"{max(statements):.1f}", f"{max(commits):.1f}"


def _spread(xs: list[float]) -> tuple[str, str, str]:
    return f"{min(xs):.1f}", f"{median(xs):.1f}", f"{max(xs):.1f}"


def measure(db: str, small: str, d: Path, n: int, rounds: int) -> dict[str, object]:
    """Export against its floor (interleaved), then prune (and on SQLite purge and reclaim)
    beside an appending agent."""
    progress(f"{db.split('?')[0]}: export against the raw SELECT floor")
    floors, rates, ratios, cpu_ratios = [], [], [], []
    lines = 0
    for _ in range(rounds):
        floor, floor_cpu = floor_rate(db)
        rate, rate_cpu, lines = export_rate(db)
        floors.append(floor)
        rates.append(rate)
        ratios.append(rate / floor)
        cpu_ratios.append(rate_cpu / floor_cpu)
    peak_small, peak_big = export_peak(small), export_peak(db)
    progress("prune with an appending agent")
    with tether.open_store(db, load_plugins=False) as store:
        timer = CommitTimer(store)
        t = time.perf_counter()
        prune_batches, prune_lat, pruned = with_agent(
            db, d, lambda held: store.prune(90 * DAY, apply=True, held=held)
        )
        prune_s = time.perf_counter() - t
        steps = [("prune", pruned.sessions, prune_batches, timer.take(), prune_lat, prune_s)]  # type: ignore[attr-defined]
        pgsql = db.startswith("postgresql:")
        size_before = 0 if pgsql else Path(db).stat().st_size
        progress("purge with an appending agent")
        t = time.perf_counter()
        timer.take()  # writes between the steps are neither's
        purge_batches, purge_lat, purged = with_agent(db, d, lambda held: store.purge(0, held=held))
        purge_s = time.perf_counter() - t
        steps.append(("purge", purged.sessions, purge_batches, timer.take(), purge_lat, purge_s))  # type: ignore[attr-defined]
        if pgsql:  # VACUUM gives the space back to the tables, not the file system
            return _result(
                floors, rates, (ratios, cpu_ratios), lines, (peak_small, peak_big), steps, None
            )
        progress("giving the space back")
        t = time.perf_counter()
        space = store.reclaim_space()
        reclaim_s = time.perf_counter() - t
    space_report = (space, reclaim_s, size_before)
    peaks = (peak_small, peak_big)
    return _result(floors, rates, (ratios, cpu_ratios), lines, peaks, steps, space_report)


def _result(  # type: ignore[no-untyped-def]
    floors, rates, ratios, lines, peaks, steps, space
) -> dict[str, object]:
    return {
        "floors": floors,
        "rates": rates,
        "ratios": ratios,
        "lines": lines,
        "peaks": peaks,
        "steps": steps,
        "space": space,
    }


def section(name: str, n: int, r: dict[str, object]) -> str:
    steps = r["steps"]
    floors, rates = r["floors"], r["rates"]
    ratios, cpu_ratios = r["ratios"]  # type: ignore[misc]
    peak_small, peak_big = r["peaks"]  # type: ignore[misc]
    text = (
        f"### {name}\n\nPrune (to the trash) and purge (for good) "
        f"of {n:,} ended sessions / "
        f"{n * 10:,} messages, one batch per write transaction, beside an agent appending "
        "one message at a time in another process (ms; targets: batch max <= 50, "
        "agent p99 < 10; a batch's time split into its statements and its COMMIT, "
        "which on PostgreSQL no longer waits for the server's WAL flush: the run's "
        "last write, its event, does):\n\n"
        + table(
            [
                "step",
                "sessions",
                "batches",
                "batch min",
                "batch median",
                "batch max",
                "its statements, max",
                "its COMMIT, max",
                "agent appends",
                "agent p50",
                "agent p99",
                "agent max",
                "total s",
            ],
            [
                (
                    step,
                    f"{count:,}",
                    len(batches),
                    *_spread(batches),
                    *_split(batches, commits),
                    len(lat),
                    f"{median(lat):.2f}",
                    f"{percentile(lat, 0.99):.2f}",
                    f"{max(lat):.2f}",
                    f"{total:.1f}",
                )
                for step, count, batches, commits, lat, total in steps  # type: ignore[attr-defined]
            ],
        )
    )
    if r["space"] is not None:
        space, reclaim_s, size_before = r["space"]  # type: ignore[misc]
        text += (
            f"\n\nSpace given back ({space.method}, {reclaim_s:.1f} s): file "
            f"{size_before / 1e6:.1f} MB before the purge, {(space.after or 0) / 1e6:.1f} MB after."
        )
    text += (
        f"\n\nExport (JSONL, canonical) of the same {n:,} sessions ({r['lines']:,} lines) "
        f"against a raw SELECT of the same rows, rows/s ({len(rates)} interleaved rounds; "  # type: ignore[arg-type]
        "target: ratio >= 0.5):\n\n"
        + table(
            ["", "min", "median", "max"],
            [
                ("raw SELECT (floor)", *(f"{x:,.0f}" for x in _mmm(floors))),  # type: ignore[arg-type]
                ("tether export", *(f"{x:,.0f}" for x in _mmm(rates))),  # type: ignore[arg-type]
                ("ratio (per round)", *(f"{x:.2f}" for x in _mmm(ratios))),
                ("ratio of CPU rates (this process)", *(f"{x:.2f}" for x in _mmm(cpu_ratios))),
            ],
        )
        + "\n\nThe CPU ratio counts this process only: it is steadier than the clock on a "
        "busy machine; on PostgreSQL it leaves out the server's work (which builds the "
        "export's lines), so there the clock's ratio is the one that counts."
        + f"\n\nExport peak Python memory: {peak_small / 1e6:.2f} MB at {n // 10:,} sessions, "
        f"{peak_big / 1e6:.2f} MB at {n:,} sessions."
    )
    return text


def _mmm(xs: list[float]) -> tuple[float, float, float]:
    return min(xs), median(xs), max(xs)


def run(
    quick: bool = False,
    write: bool = True,
    directory: str | None = None,
    pg_url: str | None = pg.DEFAULT_URL,
) -> None:
    tmp = tempfile.TemporaryDirectory(dir=directory, prefix="tether-bench-")
    d = Path(tmp.name)
    n = 10_000 if quick else 100_000
    rounds = 3 if quick else 5
    small = d / "small.db"
    build(small, n // 10)
    path = d / "retention.db"
    progress(f"SQLite: building {n:,} ended sessions / {n * 10:,} messages")
    build(path, n)
    sections = [section("SQLite", n, measure(str(path), str(small), d, n, rounds))]
    notes = f"tether {tether.__version__}; SQLite {sqlite3.sqlite_version}"
    if pg_url is not None:
        with pg.scratch_schema(pg_url, "ret") as url, pg.scratch_schema(pg_url, "rets") as s_url:
            progress(f"PostgreSQL: building {n:,} ended sessions / {n * 10:,} messages")
            build_pg(s_url, n // 10)
            build_pg(url, n)
            sections.append(section("PostgreSQL", n, measure(url, s_url, d, n, rounds)))
        notes += f"; PostgreSQL {pg.server_version(pg_url)}"
    publish(
        "retention" + (" (quick)" if quick else ""), "\n\n".join(sections), notes + ".", write=write
    )
    tmp.cleanup()
