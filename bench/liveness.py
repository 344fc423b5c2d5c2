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
* **Heartbeat cost.** A process owning 10,000 open sessions: statements per
  heartbeat tick (traced) and time per beat.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tether
from tether.ids import new_id
from tether.liveness import ProcessIdentity, Reaper, ReaperLoop
from tether.store import sql

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
            with pg.connect(url) as c:  # undo the sweep: reopen, restore owners, drop events
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
                c.execute("VACUUM ANALYZE sessions")
                c.execute("VACUUM ANALYZE owners")
    return reap_ms, idle_ms, reaped


def issue15_sweep_row(
    label: str, reap_ms: list[float], reaped: int, target_ms: float
) -> tuple[str, ...]:
    """Issue #15's row: min / median / max of the sweeps, against the target."""
    met = "met" if median(reap_ms) < target_ms else "missed"
    spread = " / ".join(f"{x:.1f}" for x in (min(reap_ms), median(reap_ms), max(reap_ms)))
    return (label, spread, f"{reaped:,}", f"< {target_ms:.0f} ms: {met}")


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
    # Issue #15's row: every one of 2,000 owners x 5 open sessions is dead.
    progress("liveness: issue #15's sweep, 2,000 dead owners x 5 sessions")
    reap_ms, _, reaped = sweep_times(d, runs, 2_000, dead=2_000)
    issue15 = [issue15_sweep_row("SQLite", reap_ms, reaped, 30)]
    if pg_url:
        reap_ms, _, reaped = pg_sweep_times(pg_url, runs, 2_000, dead=2_000)
        issue15.append(issue15_sweep_row("PostgreSQL", reap_ms, reaped, 60))
    text += (
        "\n\nIssue #15: reaper sweep, 100,000 sessions, 2,000 dead owners x 5 open sessions "
        "(half local with their pid gone, half remote and stale), ms, min / median / max:\n\n"
        + table(["backend", "sweep", "sessions ended", "target"], issue15)
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
