"""``tether hermes census`` (and repair's dry run) on a 100,000-session Hermes store.

The store: a seed written by the real ``hermes-agent`` (``.venv-hermes``, the test
fixture generator: 300 conversations of every shape the census counts), then
multiplied by plain SQL (each copy's ids suffixed ``#n``, parent links and message
rows kept) up to the target size. Hermes' FTS triggers are dropped in this copy
first: they would only slow the build, and the census never reads the FTS tables.

What is measured, in interleaved rounds on the same file (page cache warm after the
first round, as a user re-running a census sees it):

* **floor**: plain ``sqlite3`` reading what any census must read at least: one
  pass over ``sessions`` and one over ``messages`` (``COUNT(*)`` and
  ``SUM(content IS NULL)``), on a ``mode=ro`` connection;
* **census()**: :func:`tether.interop.hermes.census`, in process;
* **tether hermes census --json**: the whole command, as a user runs it;
* **repair dry run**: :func:`plan_repair` without its 1 s second holder scan.

Each gets its wall time (min, median, max) and its median CPU time (user + system,
of this process and of the child it waited for): on a shared machine the CPU time
says what a quiet one would show, the wall time what this one did.

Target (issue 11): the census of a 100,000-session store under 2 s.
"""

from __future__ import annotations

import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .report import median, progress, publish, table

ROOT = Path(__file__).resolve().parent.parent
HERMES_PYTHON = ROOT / ".venv-hermes" / "bin" / "python"
FIXTURE = ROOT / "tests" / "interop" / "hermes_fixture.py"
TARGET_S = 2.0


def _seed(path: Path) -> None:
    if not HERMES_PYTHON.exists():
        sys.exit(f"no Hermes environment at {HERMES_PYTHON}: make .venv-hermes/.installed")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [str(HERMES_PYTHON), str(FIXTURE), "generate", str(path), "--seed", "5",
         "--conversations", "300"],
        check=True, env=env, capture_output=True, timeout=600,
    )  # fmt: skip


def build(path: Path, sessions: int) -> tuple[int, int]:
    """A store of ``sessions`` rows (see the module docstring); its (sessions, messages)."""
    _seed(path)
    conn = sqlite3.connect(path, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    [(seed_rows,)] = conn.execute("SELECT COUNT(*) FROM sessions").fetchall()
    s_cols = [r[1] for r in conn.execute("PRAGMA table_info(sessions)")]
    m_cols = [r[1] for r in conn.execute("PRAGMA table_info(messages)") if r[1] != "id"]
    conn.execute("CREATE TEMP TABLE seed_s AS SELECT * FROM sessions")
    conn.execute("CREATE TEMP TABLE seed_m AS SELECT * FROM messages ORDER BY id")
    copies = -(-sessions // seed_rows) - 1
    s_sel = ", ".join(
        "id || ?1" if c == "id"
        else "CASE WHEN parent_session_id IS NULL THEN NULL ELSE parent_session_id || ?1 END"
        if c == "parent_session_id"
        else "NULL" if c == "title"  # titles are unique in Hermes
        else c
        for c in s_cols
    )  # fmt: skip
    m_sel = ", ".join("session_id || ?1" if c == "session_id" else c for c in m_cols)
    for n in range(1, copies + 1):
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO sessions ({', '.join(s_cols)}) SELECT {s_sel} FROM seed_s",
                     (f"#{n}",))  # fmt: skip
        conn.execute(f"INSERT INTO messages ({', '.join(m_cols)}) SELECT {m_sel} FROM seed_m",
                     (f"#{n}",))  # fmt: skip
        conn.execute("COMMIT")
    # Trim to the exact size (the newest copy's surplus, with its messages).
    conn.execute("BEGIN")
    conn.execute(
        "CREATE TEMP TABLE surplus AS SELECT id FROM sessions ORDER BY rowid DESC LIMIT"
        " (SELECT COUNT(*) - ? FROM sessions)",
        (sessions,),
    )
    conn.execute("DELETE FROM messages WHERE session_id IN (SELECT id FROM surplus)")
    conn.execute("DELETE FROM sessions WHERE id IN (SELECT id FROM surplus)")
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # our own copy: a settled file
    [(n_s, n_m)] = conn.execute(
        "SELECT (SELECT COUNT(*) FROM sessions), (SELECT COUNT(*) FROM messages)"
    ).fetchall()
    conn.close()
    return n_s, n_m


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _floor(path: Path) -> None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    conn.execute("SELECT COUNT(*) FROM sessions").fetchone()
    conn.execute("SELECT COUNT(*), SUM(content IS NULL) FROM messages").fetchone()
    conn.close()


def run(quick: bool = False, write: bool = True, directory: str | None = None) -> None:
    from tether.interop.hermes import census
    from tether.interop.hermes.repair import plan_repair

    size = 10_000 if quick else 100_000
    rounds = 3 if quick else 7
    tmp = Path(tempfile.mkdtemp(prefix="bench-hermes-", dir=directory))
    try:
        store = tmp / "state.db"
        progress(f"building a {size:,}-session store from a real Hermes seed")
        n_sessions, n_messages = build(store, size)
        tether = Path(sys.executable).parent / "tether"
        cases = {
            "floor: plain sqlite3, one pass per table": lambda: _floor(store),
            "census() in process": lambda: census(store),
            "tether hermes census --json (whole process)": lambda: subprocess.run(
                [str(tether), "hermes", "census", "--json", str(store)],
                check=True,
                capture_output=True,
            ),
            "repair dry run (plan, one holder scan)": lambda: plan_repair(store, recheck_after=0.0),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        cpus: dict[str, list[float]] = {name: [] for name in cases}
        load_before = os.getloadavg()[0]
        for r in range(rounds):
            progress(f"round {r + 1}/{rounds}")
            for name, fn in cases.items():
                began, cpu = time.perf_counter(), _cpu()
                fn()
                times[name].append(time.perf_counter() - began)
                cpus[name].append(_cpu() - cpu)
        load_after = os.getloadavg()[0]
        floor = median(times["floor: plain sqlite3, one pass per table"])
        rows = []
        for name, ts in times.items():
            target = f"< {TARGET_S:.0f} s" if "census" in name else ""
            rows.append(
                [name, f"{min(ts):.3f}", f"{median(ts):.3f}", f"{max(ts):.3f}",
                 f"{median(cpus[name]):.3f}", f"{median(ts) / floor:.1f}", target]
            )  # fmt: skip
        headers = ["what", "min s", "median s", "max s", "CPU s (median)", "x floor", "target"]
        text = table(headers, rows)
        notes = (
            f"Store: {n_sessions:,} sessions, {n_messages:,} messages, "
            f"{store.stat().st_size / 2**20:.0f} MiB (a real hermes-agent seed multiplied by "
            f"plain SQL, see bench/hermes_census.py). {rounds} interleaved rounds; load average "
            f"(1 min) {load_before:.2f} before, {load_after:.2f} after."
        )
        publish("hermes census", text, notes, write=write)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
