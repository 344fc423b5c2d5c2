"""Liveness benchmark: reaper sweeps at scale, kill -9 to ``ended_at``, heartbeat cost.

* **Sweep.** A store of 100,000 sessions (90,000 ended), 10,000 open; 1,000
  of their owners are dead (500 on this host with pids that no longer exist,
  500 remote ones with a stale heartbeat). Two shapes: 10,000 owners with one
  session each (a fleet of CLI processes: the sweep ends 1,000 sessions) and
  2,000 owners with five each (it ends 5,000). We time ``Reaper.sweep()``
  (median over fresh copies of the store, cache warm as in a running loop)
  and a steady-state sweep that finds nothing to do. Target: under 50 ms.
* **kill -9 to ended.** A child opens a session, appends, and is SIGKILLed;
  a ``ReaperLoop`` at its default 2 s interval runs in this process; we time
  from the kill to ``ended_at`` being visible. Median of 20. Target: < 3 s.
* **PostgreSQL** (``--pg URL``, default the test server): the same sweep
  store, loaded with COPY into a schema of its own; between runs the reaped
  sessions are reopened and the owners restored. Target: under 100 ms.
* **Issue #15's sweep.** 100,000 sessions, every one of 2,000 owners x 5 open
  sessions dead (half local with their pid gone, half remote and stale): the
  sweep ends 10,000 sessions. Interleaved in each round, each on a fresh copy
  of the store: ``Reaper.sweep()`` in one transaction; the same with
  ``batch=200`` owners (1,000 sessions) per transaction; the *floor*, the
  reap's own statements run through the raw driver (no candidate read, no
  verdicts, no Python layers); and the *minimal* SQL, one INSERT ... SELECT
  and one UPDATE with a constant detail. Wall time and this process's CPU
  time, min / median / max, and the longest write transaction of the sweep
  (SQLite's write lock is held that long: appenders wait behind it). Last,
  ``Reaper.sweep()`` with a trivial ``on_session_end`` hook: each end is then
  marked as owed in the reap, its hook run and its mark cleared (one write
  per end, so that a process killed mid-way owes only the hooks not yet run).
* **Heartbeat cost.** A process owning 10,000 open sessions: statements per
  heartbeat tick (traced) and time per beat.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tether
from tether.ids import new_id
from tether.liveness import ProcessIdentity, Reaper, ReaperLoop
from tether.store import sql
from tether.store.sqlite.reap import reap as sqlite_reap

from . import pg
from .report import median, percentile, progress, publish, table

ME = ProcessIdentity.current()


def _free_pids(n: int) -> list[int]:
    pids, p = [], 4_000_000
    while len(pids) < n:
        if not os.path.exists(f"/proc/{p}"):
            pids.append(p)
        p += 1
    return pids


# The owners table's columns, as the store itself names them.
OWNER_COLUMNS = ("id", *(c.strip() for c in sql.OWNER_COLUMNS.split(",")))
SWEEP_COLUMNS = (
    "id",
    "source",
    "root_id",
    "created_at",
    "last_active_at",
    "ended_at",
    "end_reason",
    "message_count",
    "owner_id",
    "chain_tip_id",
    "chain_message_count",
    "chain_last_active_at",
)


def sweep_rows(
    total: int, open_: int, owners: int, dead: int
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Owner rows and session rows (OWNER_COLUMNS, SWEEP_COLUMNS) of the sweep store."""
    now = time.time()
    per_owner = open_ // owners
    local_dead = _free_pids(dead // 2)
    owner_rows: list[tuple[object, ...]] = []
    for k in range(owners):
        oid = new_id()
        if k < dead // 2:  # dead on this host: the pid is gone
            row = (oid, ME.host, ME.boot_id, local_dead[k], 1, "bench", now - 100, now, ME.pid_ns)
        elif k < dead:  # dead elsewhere: the heartbeat is stale
            row = (oid, f"remote-{k}", "b", 100 + k, 1, "bench", now - 1000, now - 600, None)
        else:  # alive elsewhere: fresh heartbeat
            row = (oid, f"remote-{k}", "b", 100 + k, 1, "bench", now - 1000, now + 3600, None)
        row += (30.0,)  # the lease
        owner_rows.append(row)
    sessions: list[tuple[object, ...]] = []
    for i in range(total):
        sid = f"S{i:09d}"
        t = now - (total - i)
        if i < open_:
            owner = owner_rows[i // per_owner][0]
            sessions.append((sid, "bench", sid, t, t, None, None, 3, owner, sid, 3, t))
        else:
            sessions.append((sid, "bench", sid, t, t, t + 1, "completed", 3, None, sid, 3, t))
    return owner_rows, sessions


def build_sweep_store(path: Path, total: int, open_: int, owners: int, dead: int) -> None:
    tether.open_store(path, load_plugins=False).close()
    owner_rows, sessions = sweep_rows(total, open_, owners, dead)
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA synchronous = OFF")
    c.execute("BEGIN")
    marks = ", ".join("?" * len(OWNER_COLUMNS))
    c.executemany(f"INSERT INTO owners ({', '.join(OWNER_COLUMNS)}) VALUES ({marks})", owner_rows)
    c.executemany(
        f"INSERT INTO sessions ({', '.join(SWEEP_COLUMNS)}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        sessions,
    )
    c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()


def time_sweep(target: str | Path, reap_ms: list[float], idle_ms: list[float]) -> int:
    """One sweep that reaps, then one that finds nothing; returns how many it reaped."""
    store = tether.open_store(target, load_plugins=False, startup_sweep=False)
    reaper = Reaper(store)
    reaper.classify()  # warm the cache, as a running loop has
    t = time.perf_counter()
    report = reaper.sweep()
    reap_ms.append((time.perf_counter() - t) * 1e3)
    t = time.perf_counter()
    assert reaper.sweep().reaped == []
    idle_ms.append((time.perf_counter() - t) * 1e3)
    store.close()
    return len(report.reaped)


class WriteTimer:
    """Times each write transaction of a store (how long SQLite's write lock is held)."""

    def __init__(self, store: Any) -> None:
        self.holds: list[float] = []
        backend = store.backend
        inner = backend.write

        def timed(fn: Any) -> Any:
            t = time.perf_counter()
            try:
                return inner(fn)
            finally:
                self.holds.append((time.perf_counter() - t) * 1e3)

        backend.write = timed


class EndHook:
    """A trivial ``on_session_end`` plugin: what a sweep costs once hooks are owed."""

    calls = 0

    @tether.hookimpl
    def on_session_end(self, session: Any, reason: str, interrupted: bool) -> None:
        EndHook.calls += 1


def tether_sweep(target: str | Path, batch: int | None, hook: bool = False) -> dict[str, float]:
    """One reaping sweep: wall and CPU ms, the longest write transaction, sessions ended."""
    store = tether.open_store(target, load_plugins=False, startup_sweep=False)
    if hook:  # each end is marked as owed, its hooks run, its mark cleared
        store.plugins.register(EndHook())
    reaper = Reaper(store, batch=batch)
    reaper.classify()  # warm the cache, as a running loop has
    timer = WriteTimer(store)
    gc.collect()  # every contender starts from the same collector state
    t, cpu = time.perf_counter(), time.process_time()
    report = reaper.sweep()
    out = {
        "wall": (time.perf_counter() - t) * 1e3,
        "cpu": (time.process_time() - cpu) * 1e3,
        "hold": max(timer.holds, default=0.0),
        "ended": float(len(report.reaped)),
    }
    store.close()
    return out


def judged_owners(rows: list[tuple[Any, ...]]) -> list[tuple[str, float, str]]:
    """(owner id, heartbeat, detail) as a sweep judges the bench's owners, details alike."""
    return [
        (oid, beat, f"pid {pid} gone" if host == ME.host else "heartbeat stale 600 s")
        for oid, host, pid, beat in rows
    ]


def sqlite_floor(path: Path, minimal: bool) -> dict[str, float]:
    """The reap's own statements (or the minimal two) on a raw sqlite3 connection."""
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode = WAL")
    c.execute("PRAGMA synchronous = NORMAL")  # the store's default durability
    dead = judged_owners(c.execute("SELECT id, host, pid, heartbeat_at FROM owners").fetchall())
    c.execute("SELECT COUNT(*) FROM sessions WHERE ended_at IS NULL").fetchone()  # warm
    ids = json.dumps([d[0] for d in dead])
    gc.collect()
    t, cpu = time.perf_counter(), time.process_time()
    c.execute("BEGIN IMMEDIATE")
    now = time.time()
    if minimal:
        c.execute(MINIMAL_LOG_SQLITE, (now, ids))
        ended = c.execute(MINIMAL_END_SQLITE, (now, ids)).fetchall()
    else:
        ended = sqlite_reap(c, list(dead), now, None)  # the store's statements, raw connection
    c.execute("COMMIT")
    wall = (time.perf_counter() - t) * 1e3
    out = {"wall": wall, "cpu": (time.process_time() - cpu) * 1e3, "hold": wall}
    out["ended"] = float(len(ended))
    c.close()
    return out


# The least SQL that ends the sessions and logs them: constant detail, no
# re-check of the owners, no hooks column (SQLite; ? = now, a JSON array of ids).
MINIMAL_LOG_SQLITE = """
INSERT INTO events (at, session_id, kind, data)
SELECT ?, id, 'reaped', json_object('owner', owner_id, 'detail', 'dead')
FROM sessions WHERE owner_id IN (SELECT value FROM json_each(?)) AND ended_at IS NULL
"""
MINIMAL_END_SQLITE = """
UPDATE sessions SET ended_at = ?, end_reason = 'reaped', end_detail = 'dead'
WHERE owner_id IN (SELECT value FROM json_each(?)) AND ended_at IS NULL
RETURNING id, owner_id, end_detail
"""
MINIMAL_LOG_PG = """
INSERT INTO events (at, session_id, kind, data)
SELECT %s, id, 'reaped', jsonb_build_object('owner', owner_id, 'detail', 'dead')
FROM sessions WHERE owner_id = ANY(%s) AND ended_at IS NULL
"""
MINIMAL_END_PG = """
UPDATE sessions SET ended_at = %s, end_reason = 'reaped', end_detail = 'dead'
WHERE owner_id = ANY(%s) AND ended_at IS NULL
RETURNING id, owner_id, end_detail
"""


def pg_floor(url: str, minimal: bool) -> dict[str, float]:
    """The reap's own statement (or the minimal two) on a raw psycopg connection."""
    with pg.connect(url) as c:
        rows = c.execute("SELECT id, host, pid, heartbeat_at FROM owners").fetchall()
        dead = judged_owners(rows)
        ids = [d[0] for d in dead]
        judged = json.dumps([{"owner_id": o, "heartbeat_at": h, "detail": d} for o, h, d in dead])
        c.execute("SELECT COUNT(*) FROM sessions WHERE ended_at IS NULL").fetchone()
        c.commit()
        gc.collect()
        t, cpu = time.perf_counter(), time.process_time()
        now = time.time()
        if minimal:
            c.execute(MINIMAL_LOG_PG, (now, ids))
            ended = c.execute(MINIMAL_END_PG, (now, ids)).fetchall()
        else:
            query = sql.REAP_PG.replace("?", "%s")
            ended = c.execute(query, [judged, now, now, None]).fetchall()
        c.commit()
        wall = (time.perf_counter() - t) * 1e3
    return {
        "wall": wall,
        "cpu": (time.process_time() - cpu) * 1e3,
        "hold": wall,
        "ended": len(ended),
    }


def pg_restore(url: str, owner_rows: list[tuple[object, ...]]) -> None:
    """Undo a sweep: reopen the reaped sessions, restore the owners, drop the events."""
    with pg.connect(url) as c:
        c.execute(
            "UPDATE sessions SET ended_at = NULL, end_reason = NULL, end_detail = NULL"
            " WHERE end_reason = 'reaped'"
        )
        with c.cursor() as cur:
            cur.executemany(
                f"INSERT INTO owners ({', '.join(OWNER_COLUMNS)})"
                f" VALUES ({', '.join(['%s'] * len(OWNER_COLUMNS))})"
                " ON CONFLICT DO NOTHING",
                owner_rows,
            )
        c.execute("DELETE FROM events")
        c.commit()
        c.autocommit = True
        c.execute("VACUUM ANALYZE sessions")
        c.execute("VACUUM ANALYZE owners")
        c.execute("VACUUM ANALYZE events")


# The contenders of issue #15's sweep, run in this order in every round.
ISSUE15 = (
    "tether",
    "tether, batch=200",
    "floor (same SQL, raw)",
    "minimal SQL (raw)",
    "tether, an on_session_end hook",
)


def issue15_sqlite(directory: Path, runs: int) -> dict[str, list[dict[str, float]]]:
    base = directory / "issue15-base.db"
    build_sweep_store(base, total=100_000, open_=10_000, owners=2_000, dead=2_000)
    out: dict[str, list[dict[str, float]]] = {name: [] for name in ISSUE15}
    for r in range(runs):
        progress(f"liveness: issue #15 sweep on SQLite, round {r + 1}/{runs}")
        for name in ISSUE15:
            path = directory / "issue15-run.db"
            shutil.copy(base, path)
            if name.startswith("tether"):
                batch = 200 if "batch" in name else None
                out[name].append(tether_sweep(path, batch, hook="hook" in name))
            else:
                out[name].append(sqlite_floor(path, minimal=name.startswith("minimal")))
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    return out


def issue15_pg(base_url: str, runs: int) -> dict[str, list[dict[str, float]]]:
    owner_rows, sessions = sweep_rows(100_000, 10_000, 2_000, 2_000)
    out: dict[str, list[dict[str, float]]] = {name: [] for name in ISSUE15}
    with pg.scratch_schema(base_url, "sweep15") as url:
        tether.open_store(url, load_plugins=False).close()
        pg.copy_rows(url, "owners", OWNER_COLUMNS, owner_rows)
        pg.copy_rows(url, "sessions", SWEEP_COLUMNS, sessions)
        for r in range(runs):
            progress(f"liveness: issue #15 sweep on PostgreSQL, round {r + 1}/{runs}")
            for name in ISSUE15:
                if name.startswith("tether"):
                    batch = 200 if "batch" in name else None
                    out[name].append(tether_sweep(url, batch, hook="hook" in name))
                else:
                    out[name].append(pg_floor(url, minimal=name.startswith("minimal")))
                pg_restore(url, owner_rows)
    return out


def spread(xs: list[float]) -> str:
    return " / ".join(f"{x:.1f}" for x in (min(xs), median(xs), max(xs)))


def issue15_table(results: dict[str, list[dict[str, float]]], target_ms: float) -> str:
    """Min / median / max of each contender, and its ratio to the floor, round by round."""
    floor = results[ISSUE15[2]]
    rows = []
    for name in ISSUE15:
        runs = results[name]
        wall = [r["wall"] for r in runs]
        ratio = median([r["wall"] / f["wall"] for r, f in zip(runs, floor, strict=True)])
        cpu_ratio = median([r["cpu"] / f["cpu"] for r, f in zip(runs, floor, strict=True)])
        met = "met" if median(wall) < target_ms else "missed"
        rows.append(
            (
                name,
                spread(wall),
                spread([r["cpu"] for r in runs]),
                f"{ratio:.2f}x / {cpu_ratio:.2f}x",
                f"{median([r['hold'] for r in runs]):.1f}",
                f"{int(runs[0]['ended']):,}",
                f"< {target_ms:.0f} ms: {met}" if name in ISSUE15[:2] else "",
            )
        )
    headers = [
        "sweep",
        "wall ms",
        "CPU ms (this process)",
        "vs floor, wall / CPU",
        "longest write tx, ms",
        "ended",
        "target",
    ]
    return table(headers, rows)


def sweep_times(
    directory: Path, runs: int, owners: int, dead: int = 1_000
) -> tuple[list[float], list[float], int]:
    base = directory / f"sweep-base-{owners}-{dead}.db"
    build_sweep_store(base, total=100_000, open_=10_000, owners=owners, dead=dead)
    reap_ms, idle_ms, reaped = [], [], 0
    for r in range(runs):
        path = directory / f"sweep-{r}.db"
        shutil.copy(base, path)
        reaped = time_sweep(path, reap_ms, idle_ms)
        os.remove(path)
    return reap_ms, idle_ms, reaped


def pg_sweep_times(
    base: str, runs: int, owners: int, dead: int = 1_000
) -> tuple[list[float], list[float], int]:
    """The same sweep on PostgreSQL; the store is put back as it was between runs."""
    owner_rows, sessions = sweep_rows(100_000, 10_000, owners, dead)
    reap_ms, idle_ms, reaped = [], [], 0
    with pg.scratch_schema(base, "sweep") as url:
        tether.open_store(url, load_plugins=False).close()
        pg.copy_rows(url, "owners", OWNER_COLUMNS, owner_rows)
        pg.copy_rows(url, "sessions", SWEEP_COLUMNS, sessions)
        for _ in range(runs):
            reaped = time_sweep(url, reap_ms, idle_ms)
            pg_restore(url, owner_rows)
    return reap_ms, idle_ms, reaped


def sweep_table(results: list[tuple[int, tuple[list[float], list[float], int]]]) -> str:
    rows = []
    for owners, (reap_ms, idle_ms, reaped) in results:
        shape = f"{owners:,} owners x {10_000 // owners} open"
        rows.append(
            (
                f"{shape}: reap the 1,000 dead",
                f"{median(reap_ms):.1f}",
                f"{max(reap_ms):.1f}",
                f"{reaped:,}",
            )
        )
        rows.append(
            (f"{shape}: steady state", f"{median(idle_ms):.1f}", f"{max(idle_ms):.1f}", "0")
        )
    return table(["sweep", "median", "max", "sessions ended"], rows)


VICTIM = """
import sys, tether
store = tether.open_store(sys.argv[1])
h = store.session(source="victim")
h.append("user", "x")
print(h.id, flush=True)
import time
time.sleep(600)
"""


def kill_to_ended(directory: Path, runs: int) -> list[float]:
    path = directory / "kill.db"
    store = tether.open_store(path, load_plugins=False)
    loop = ReaperLoop(store).start()  # the default interval, 2 s
    out = []
    try:
        for _ in range(runs):
            proc = subprocess.Popen(
                [sys.executable, "-c", VICTIM, str(path)], stdout=subprocess.PIPE, text=True
            )
            assert proc.stdout is not None
            sid = proc.stdout.readline().strip()
            time.sleep(0.3 + (time.time() * 1000 % 1700) / 1000)  # a random phase of the loop
            t = time.monotonic()
            proc.kill()
            proc.wait()
            while store.get_session(sid).ended_at is None:
                time.sleep(0.005)
            out.append(time.monotonic() - t)
    finally:
        loop.stop()
        store.close()
    return out


def heartbeat_cost(directory: Path, sessions: int) -> tuple[int, int, float]:
    store = tether.open_store(
        directory / "hb.db", heartbeat_interval=0.05, owner_ttl=5, load_plugins=False
    )
    handles = []
    for i in range(sessions):
        h = store.session(source="hb")
        h.buffer("user", f"m{i}")
        h.flush()
        handles.append(h)
    statements: list[str] = []
    thread = store._owner._thread
    assert thread is not None
    store.backend._writer.set_trace_callback(statements.append)
    before = thread.beats
    time.sleep(1.0)
    store.backend._writer.set_trace_callback(None)
    beats = thread.beats - before
    writes = [s for s in statements if s.lstrip().upper().startswith(("INSERT", "UPDATE"))]
    t = time.perf_counter()
    for _ in range(200):
        store._owner.beat()
    per_beat_us = (time.perf_counter() - t) / 200 * 1e6
    for h in handles:
        h.end()
    store.close()
    return beats, len(writes), per_beat_us


def run(
    quick: bool = False, write: bool = True, directory: str | None = None, pg_url: str | None = None
) -> None:
    tmp = tempfile.TemporaryDirectory(dir=directory, prefix="tether-bench-")
    d = Path(tmp.name)
    runs = 3 if quick else 7
    progress(f"liveness: sweeps on SQLite ({runs} runs per shape)")
    results = [(owners, sweep_times(d, runs, owners)) for owners in (10_000, 2_000)]
    text = (
        "Reaper sweep, 100,000 sessions / 10,000 open / 1,000 dead owners (half on this host "
        "with their pid gone, half remote with a stale heartbeat), ms, target < 50:\n\n"
        + sweep_table(results)
    )
    # Issue #15: every one of 2,000 owners x 5 open sessions is dead, against the floor.
    rounds = 5 if quick else 9
    text += (
        "\n\nIssue #15: reaper sweep, 100,000 sessions, 2,000 dead owners x 5 open sessions "
        "(half local with their pid gone, half remote and stale), 10,000 ended per sweep; "
        f"SQLite, {rounds} interleaved rounds, min / median / max; ratios are medians of "
        "per-round ratios to the floor (the reap's own SQL through the raw driver):\n\n"
        + issue15_table(issue15_sqlite(d, rounds), 30)
    )
    if pg_url:
        text += (
            f"\n\nThe same on PostgreSQL {pg.server_version(pg_url)} (loopback TCP; the floor "
            "is the reap's one statement through raw psycopg; the database server's CPU is not "
            "in the CPU column):\n\n" + issue15_table(issue15_pg(pg_url, rounds), 60)
        )
    if pg_url:
        results = [(owners, pg_sweep_times(pg_url, runs, owners)) for owners in (10_000, 2_000)]
        text += (
            f"\n\nThe same sweep on PostgreSQL {pg.server_version(pg_url)} (loopback TCP; "
            "candidates claimed FOR UPDATE SKIP LOCKED), ms, target < 100:\n\n"
            + sweep_table(results)
        )
    kills = kill_to_ended(d, 5 if quick else 20)
    text += (
        f"\n\nSIGKILL to `ended_at`, reaper loop at its default 2 s interval "
        f"({len(kills)} runs, s, target < 3):\n\n"
        + table(
            ["median", "p90", "max"],
            [(f"{median(kills):.2f}", f"{percentile(kills, 0.9):.2f}", f"{max(kills):.2f}")],
        )
    )
    n = 2_000 if quick else 10_000
    beats, writes, per_beat = heartbeat_cost(d, n)
    text += (
        f"\n\nHeartbeat of a process owning {n:,} open sessions (1 s traced at a 50 ms interval):"
        "\n\n"
        + table(
            ["beats", "writes (all statements)", "writes per beat", "time per beat (µs)"],
            [(str(beats), str(writes), f"{writes / max(beats, 1):.1f}", f"{per_beat:.0f}")],
        )
    )
    publish("liveness" + (" (quick)" if quick else ""), text, write=write)
    tmp.cleanup()
