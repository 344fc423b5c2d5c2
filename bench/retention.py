"""Retention (issue 14): prune and purge in short batches beside an appending agent; export.

What is measured (SQLite, the embedded default):

* **prune** (to the trash) and **purge** (for good) of N ended sessions with
  10 messages each (full run: 100,000 sessions / 1,000,000 messages). Each
  batch is one write transaction; its duration is the time it holds the
  write lock (target: max <= 50 ms). Between batches prune leaves the lock
  free three times as long (SQLite: see ``BatchSizer.pause``). Meanwhile an agent in another process
  appends one message at a time; its append latency is recorded (target:
  p99 < 10 ms while prune and purge run).
* the space given back: file size before the purge and after ``reclaim_space``.
* **export** (JSONL, canonical) against the floor: a raw ``SELECT`` of the
  same session and message rows with sqlite3 (rows/s; target: export at
  least 0.5x the floor), and the export's peak Python memory (tracemalloc)
  at N/10 and N sessions (target: the same: constant in the sessions).

Rounds: export and the floor run 3 times (min / median / max); prune and
purge are destructive, so they run once and their batches give the spread.
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
from pathlib import Path

import tether

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


def build(path: Path, sessions: int, per: int = 10) -> None:
    """N ended chains of one session with ``per`` messages, written 100 days ago, raw."""
    tether.open_store(str(path), load_plugins=False).close()  # the schema
    conn = sqlite3.connect(path)
    old = time.time() - 100 * DAY
    conn.execute("BEGIN")
    batch_s: list[tuple[object, ...]] = []
    batch_m: list[tuple[object, ...]] = []
    for i in range(sessions):
        sid = f"01BENCH{i:019d}"
        t = old + i * 0.001
        batch_s.append((sid, "cli", sid, t, t + 1, t + 2, "completed", per, sid, per, t + 1))
        for k in range(1, per + 1):
            batch_m.append((sid, k, "user" if k % 2 else "assistant", f"message {k} " * 8, t))
        if len(batch_m) >= 50_000:
            _flush(conn, batch_s, batch_m)
    _flush(conn, batch_s, batch_m)
    conn.execute("COMMIT")
    conn.close()


def _flush(
    conn: sqlite3.Connection, s: list[tuple[object, ...]], m: list[tuple[object, ...]]
) -> None:
    conn.executemany(
        "INSERT INTO sessions (id, source, root_id, created_at, last_active_at, ended_at,"
        " end_reason, message_count, chain_tip_id, chain_message_count, chain_last_active_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        s,
    )
    conn.executemany(
        "INSERT INTO messages (session_id, seq, role, content, created_at) VALUES (?, ?, ?, ?, ?)",
        m,
    )
    s.clear()
    m.clear()


def floor_rate(path: Path) -> float:
    """Rows per second of a raw SELECT of every session row and every message row."""
    conn = sqlite3.connect(path)
    t = time.perf_counter()
    n = 0
    for _ in conn.execute("SELECT * FROM sessions ORDER BY id"):
        n += 1
    for _ in conn.execute("SELECT * FROM messages ORDER BY session_id, seq"):
        n += 1
    elapsed = time.perf_counter() - t
    conn.close()
    return n / elapsed


def export_rate(path: Path) -> tuple[float, int]:
    """Rows (lines) per second of ``store.export_text`` to /dev/null, and the lines."""
    with tether.open_store(str(path), load_plugins=False) as store, open(os.devnull, "w") as f:
        t = time.perf_counter()
        n = 0
        for chunk in store.export_text():
            f.write(chunk)
            n += chunk.count("\n")
        return n / (time.perf_counter() - t), n


def export_peak(path: Path) -> int:
    """Peak Python memory (bytes) while exporting everything."""
    with tether.open_store(str(path), load_plugins=False) as store, open(os.devnull, "w") as f:
        tracemalloc.start()
        for chunk in store.export_text():
            f.write(chunk)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def with_agent(path: Path, work) -> tuple[list[float], list[float], object]:  # type: ignore[no-untyped-def]
    """Run ``work(held)`` while an agent appends; (batch ms, agent ms, work's result).

    ``held`` gets the time each batch held the write lock (its transaction)."""
    stop = path.with_suffix(".stop")
    out = path.with_suffix(".lat")
    stop.unlink(missing_ok=True)
    agent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(AGENT), str(path), str(stop), str(out)],
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


def _spread(xs: list[float]) -> tuple[str, str, str]:
    return f"{min(xs):.1f}", f"{median(xs):.1f}", f"{max(xs):.1f}"


def run(quick: bool = False, write: bool = True, directory: str | None = None) -> None:
    tmp = tempfile.TemporaryDirectory(dir=directory, prefix="tether-bench-")
    d = Path(tmp.name)
    n = 10_000 if quick else 100_000
    small = d / "small.db"
    build(small, n // 10)
    path = d / "retention.db"
    progress(f"building {n:,} ended sessions / {n * 10:,} messages")
    build(path, n)

    progress("export against the raw SELECT floor")
    floors, rates = [], []
    lines = 0
    for _ in range(3):
        floors.append(floor_rate(path))
        rate, lines = export_rate(path)
        rates.append(rate)
    peak_small, peak_big = export_peak(small), export_peak(path)

    progress("prune with an appending agent")
    with tether.open_store(str(path), load_plugins=False) as store:
        t = time.perf_counter()
        prune_batches, prune_lat, pruned = with_agent(
            path, lambda held: store.prune(90 * DAY, apply=True, held=held)
        )
        prune_s = time.perf_counter() - t
        size_before = path.stat().st_size
        progress("purge with an appending agent")
        t = time.perf_counter()
        purge_batches, purge_lat, purged = with_agent(path, lambda held: store.purge(0, held=held))
        purge_s = time.perf_counter() - t
        progress("giving the space back")
        t = time.perf_counter()
        space = store.reclaim_space()
        reclaim_s = time.perf_counter() - t

    text = (
        f"Prune (to the trash) and purge (for good) of {n:,} ended sessions / "
        f"{n * 10:,} messages, one batch per write transaction, beside an agent appending "
        "one message at a time in another process (ms; targets: batch max <= 50, "
        "agent p99 < 10):\n\n"
        + table(
            [
                "step",
                "sessions",
                "batches",
                "batch min",
                "batch median",
                "batch max",
                "agent appends",
                "agent p50",
                "agent p99",
                "agent max",
                "total s",
            ],
            [
                (
                    "prune",
                    f"{pruned.sessions:,}",  # type: ignore[attr-defined]
                    len(prune_batches),
                    *_spread(prune_batches),
                    len(prune_lat),
                    f"{median(prune_lat):.2f}",
                    f"{percentile(prune_lat, 0.99):.2f}",
                    f"{max(prune_lat):.2f}",
                    f"{prune_s:.1f}",
                ),
                (
                    "purge",
                    f"{purged.sessions:,}",  # type: ignore[attr-defined]
                    len(purge_batches),
                    *_spread(purge_batches),
                    len(purge_lat),
                    f"{median(purge_lat):.2f}",
                    f"{percentile(purge_lat, 0.99):.2f}",
                    f"{max(purge_lat):.2f}",
                    f"{purge_s:.1f}",
                ),
            ],
        )
        + f"\n\nSpace given back ({space.method}, {reclaim_s:.1f} s): file "
        f"{size_before / 1e6:.1f} MB before the purge, {(space.after or 0) / 1e6:.1f} MB after."
        + f"\n\nExport (JSONL, canonical) of the same {n:,} sessions ({lines:,} lines) against "
        "a raw sqlite3 SELECT of the same rows, rows/s (3 rounds; target: ratio >= 0.5):\n\n"
        + table(
            ["", "min", "median", "max"],
            [
                (
                    "raw SELECT (floor)",
                    *(f"{x:,.0f}" for x in (min(floors), median(floors), max(floors))),
                ),
                ("tether export", *(f"{x:,.0f}" for x in (min(rates), median(rates), max(rates)))),
                ("ratio (median)", f"{median(rates) / median(floors):.2f}", "", ""),
            ],
        )
        + f"\n\nExport peak Python memory: {peak_small / 1e6:.2f} MB at {n // 10:,} sessions, "
        f"{peak_big / 1e6:.2f} MB at {n:,} sessions."
    )
    notes = f"tether {tether.__version__}; SQLite {sqlite3.sqlite_version}."
    publish("retention" + (" (quick)" if quick else ""), text, notes, write=write)
    tmp.cleanup()
