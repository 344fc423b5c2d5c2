"""Hermes import and mirror: ``python -m bench hermes_sync [--quick]``.

**Import.** A Hermes store of S sessions and M messages (full: 100,000 /
1,000,000; quick: 10,000 / 100,000) is made with the real Hermes schema (an
empty store written by ``hermes-agent``'s own SessionDB, then filled by plain
SQL with the FTS triggers dropped from this bench-only copy, to make the fill
fast: reads do not touch them). Each round imports it into a fresh tether
SQLite store twice, interleaved:

* the **floor**: a raw ``sqlite3`` copy of the same rows into the same tether
  schema (sessions with origin and chain summary, messages with key, meta and
  state), in one transaction, with no validation, decoding or idempotency;
* ``tether hermes import`` (:func:`import_stores`): paged snapshots, decoding,
  origins and keys, one tether transaction per page with its cursor.

The target is a rate of at least half the floor's (ratio >= 0.5).

**Mirror lag.** A real Hermes process appends 100 messages a second (on an absolute
schedule) through SessionDB for T seconds (full 20, quick 8) while a mirror follows
with ``--interval`` 0.25 s, then 0.5 s (the default) and 1 s; the lag of each message
is the time its tether commit returned minus its Hermes timestamp. Target: p99 < 1 s.

**Idle mirror.** The cost of one idle round (``PRAGMA data_version`` and no
pass), against a ``SELECT 1`` on the same connection as the floor.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from .report import median, percentile, progress, publish, table

ROOT = Path(__file__).resolve().parent.parent
HERMES_PYTHON = Path(
    os.environ.get("TETHER_TEST_HERMES_PYTHON") or ROOT / ".venv-hermes/bin/python"
)
FIXTURE = ROOT / "tests" / "interop" / "hermes_fixture.py"
OPS = ROOT / "tests" / "interop" / "hermes_ops.py"
SOURCES = ("cli", "tui", "api_server", "telegram", "cron")


def _hermes_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def make_store(path: Path, sessions: int, messages: int) -> None:
    """An empty store by the real SessionDB, filled by plain SQL (deterministic)."""
    code = (
        "import os,sys; os.environ['HERMES_HOME']=sys.argv[2]; import hermes_state; "
        "from pathlib import Path; hermes_state.SessionDB(db_path=Path(sys.argv[1])).close()"
    )
    subprocess.run(
        [str(HERMES_PYTHON), "-c", code, str(path), str(path.parent)],
        check=True,
        env=_hermes_env(),
        timeout=120,
    )
    conn = sqlite3.connect(path, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    rng = random.Random(1)
    per = messages // sessions
    t0 = 1_780_000_000.0
    conn.execute("BEGIN")
    srows, mrows = [], []
    mid = 0
    for n in range(sessions):
        sid = f"2026{n:08d}_{rng.getrandbits(24):06x}"
        start = t0 + n * 10
        parent = srows[-1][0] if n % 10 == 9 else None
        ended = start + per + 1 if n % 5 else None
        srows.append(
            (
                sid,
                SOURCES[n % 5],
                "gpt-5",
                parent,
                start,
                ended,
                "user_exit" if ended else None,
                per,
                f"title {n}",
            )
        )
        for k in range(per):
            mid += 1
            role = ("user", "assistant", "tool")[k % 3]
            content = None if k % 7 == 3 else f"message {mid} " + "x" * 80
            calls = '[{"id": "c1", "type": "function"}]' if content is None else None
            mrows.append((mid, sid, role, content, calls, start + k))
    conn.executemany(
        "INSERT INTO sessions (id, source, model, parent_session_id, started_at, ended_at, "
        "end_reason, message_count, title) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        srows,
    )
    conn.executemany(
        "INSERT INTO messages (id, session_id, role, content, tool_calls, timestamp) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        mrows,
    )
    conn.execute("COMMIT")
    conn.close()


def raw_copy(source: Path, target: Path) -> None:
    """The floor: the same rows into the same tether schema by plain sqlite3."""
    import tether

    tether.open_store(target, load_plugins=False).close()
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target, isolation_level=None)
    dst.execute("BEGIN IMMEDIATE")
    ids: dict[str, str] = {}
    rows = []
    for n, (sid, source_, model, title, started, ended, reason) in enumerate(
        src.execute(
            "SELECT id, source, model, title, started_at, ended_at, end_reason FROM sessions "
            "ORDER BY started_at, id"
        )
    ):
        tid = f"T{n:012d}"
        ids[sid] = tid
        meta = json.dumps({"hermes_id": sid})
        rows.append(
            (
                tid,
                source_,
                model,
                title,
                tid,
                f"hermes:{sid}",
                started,
                started,
                ended,
                reason,
                meta,
                tid,
                started,
            )
        )
    dst.executemany(
        "INSERT INTO sessions (id, source, model, title, root_id, origin, created_at, "
        "last_active_at, ended_at, end_reason, metadata, chain_tip_id, chain_last_active_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    seq: dict[str, int] = {}

    def messages():  # type: ignore[no-untyped-def]
        for mid, sid, role, content, calls, ts in src.execute(
            "SELECT id, session_id, role, content, tool_calls, timestamp FROM messages ORDER BY id"
        ):
            tid = ids[sid]
            seq[tid] = seq.get(tid, 0) + 1
            yield (
                tid,
                seq[tid],
                role,
                content,
                calls,
                None,
                None,
                ts,
                f"hermes:{mid}",
                json.dumps({"hermes_id": mid}),
                "active",
            )

    dst.executemany(
        "INSERT INTO messages (session_id, seq, role, content, tool_calls, tool_call_id, "
        "tool_name, created_at, idem_key, meta, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        messages(),
    )
    dst.executemany(
        "UPDATE sessions SET message_count = ?, chain_message_count = ? WHERE id = ?",
        [(n, n, tid) for tid, n in seq.items()],
    )
    dst.execute("COMMIT")
    src.close()
    dst.close()


def tether_import(source: Path, target: Path) -> int:
    import tether
    from tether.interop.hermes.importer import import_stores

    with tether.open_store(target, load_plugins=False) as store:
        (report,) = import_stores(store, [source])
    return report.messages


def bench_import(
    tmp: Path, sessions: int, messages: int, rounds: int
) -> tuple[list[str], list[list[str]]]:
    source = tmp / "hermes" / "state.db"
    source.parent.mkdir()
    progress(f"hermes_sync: making a store of {sessions} sessions / {messages} messages")
    make_store(source, sessions, messages)
    floor, ours = [], []
    for r in range(rounds):
        for name in random.sample(["floor", "import"], 2):
            target = tmp / f"{name}{r}.db"
            t = time.perf_counter()
            if name == "floor":
                raw_copy(source, target)
                floor.append(time.perf_counter() - t)
            else:
                n = tether_import(source, target)
                ours.append(time.perf_counter() - t)
                assert n == messages, n
            for p in tmp.glob(f"{name}{r}.db*"):
                p.unlink()
        progress(
            f"hermes_sync: import round {r + 1}/{rounds}: "
            f"floor {floor[-1]:.2f}s, import {ours[-1]:.2f}s"
        )
    rows = []
    for name, ts in (("raw sqlite3 copy (floor)", floor), ("tether hermes import", ours)):
        rows.append(
            [
                name,
                f"{min(ts):.2f}",
                f"{median(ts):.2f}",
                f"{max(ts):.2f}",
                f"{messages / median(ts):,.0f}",
                f"{median(floor) / median(ts):.2f}",
            ]
        )
    return ["import", "min s", "median s", "max s", "messages/s (median)", "rate vs floor"], rows


def bench_mirror(tmp: Path, seconds: float, interval: float, name: str) -> list[str]:
    import tether
    from tether.interop.hermes.mirror import HermesMirror

    path = tmp / name / "state.db"
    path.parent.mkdir()
    subprocess.run(
        [str(HERMES_PYTHON), str(FIXTURE), "generate", str(path), "--conversations", "20"],
        check=True,
        env=_hermes_env(),
        timeout=120,
        capture_output=True,
    )
    lags: list[float] = []
    with tether.open_store(tmp / f"{name}.db", load_plugins=False) as store:
        mirror = HermesMirror(
            store,
            [path],
            interval=interval,
            on_pass=lambda rs: lags.extend(x for r in rs for x in r.lags),
        )
        mirror.step()
        lags.clear()
        writer = subprocess.Popen(
            [
                str(HERMES_PYTHON),
                str(OPS),
                "pace",
                str(path),
                "--seconds",
                str(seconds),
                "--rate",
                "100",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_hermes_env(),
        )
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        stop = threading.Event()

        def follow() -> None:
            while not stop.is_set():
                mirror.step()
                stop.wait(interval)
            mirror.step()
            mirror.close()

        thread = threading.Thread(target=follow)
        thread.start()
        out, _ = writer.communicate(timeout=seconds + 60)
        time.sleep(interval * 2)
        stop.set()
        thread.join(30)
    report = json.loads(out.strip().splitlines()[-1])
    return [
        f"{interval}",
        f"{report['appended'] / seconds:.0f}",
        str(len(lags)),
        f"{report['failures']}",
        f"{median(lags) * 1000:.0f}",
        f"{percentile(lags, 0.99) * 1000:.0f}",
        f"{max(lags) * 1000:.0f}",
    ]


def bench_idle(tmp: Path, n: int) -> list[list[str]]:
    import tether
    from tether.interop.hermes.mirror import HermesMirror

    path = tmp / "live" / "state.db"
    with tether.open_store(tmp / "idle.db", load_plugins=False) as store:
        mirror = HermesMirror(store, [path])
        mirror.step()
        conn = mirror.syncs[0].reader.conn
        t = time.perf_counter()
        for _ in range(n):
            conn.execute("SELECT 1").fetchone()
        floor = (time.perf_counter() - t) / n
        t = time.perf_counter()
        for _ in range(n):
            mirror.step()
        idle = (time.perf_counter() - t) / n
        assert mirror.passes == 1 and mirror.idle_checks == n
        mirror.close()
    return [
        ["SELECT 1 (floor)", f"{floor * 1e6:.1f}", ""],
        ["idle round (data_version)", f"{idle * 1e6:.1f}", f"{idle / floor:.1f}"],
    ]


def run(quick: bool = False, write: bool = True, directory: str | None = None) -> None:
    sessions, messages = (10_000, 100_000) if quick else (100_000, 1_000_000)
    rounds = 3
    seconds = 8.0 if quick else 20.0
    if not HERMES_PYTHON.exists():
        raise SystemExit(f"no Hermes environment at {HERMES_PYTHON}: make .venv-hermes/.installed")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=directory) as d:
        tmp = Path(d)
        headers, import_rows = bench_import(tmp, sessions, messages, rounds)
        progress("hermes_sync: mirror lag")
        mirror_rows = [
            bench_mirror(tmp, seconds, 0.25, "live"),
            bench_mirror(tmp, seconds, 0.5, "default"),
            bench_mirror(tmp, seconds, 1.0, "slow"),
        ]
        idle_rows = bench_idle(tmp, 20_000)
    load_after = os.getloadavg()[0]
    text = "\n\n".join(
        [
            table(headers, import_rows),
            table(
                [
                    "mirror interval s",
                    "Hermes msg/s",
                    "messages",
                    "writer failures",
                    "lag median ms",
                    "lag p99 ms",
                    "lag max ms",
                ],
                mirror_rows,
            ),
            table(["idle mirror", "µs per round", "x floor"], idle_rows),
        ]
    )
    import tether

    notes = (
        f"Import of {sessions:,} sessions / {messages:,} messages, {rounds} interleaved rounds "
        "(min/median/max), SQLite; rate vs floor = floor's median time / import's (target >= 0.5). "
        f"Mirror: {seconds:.0f} s of a real Hermes writer at ~100 msg/s (target p99 < 1 s). "
        f"tether {tether.__version__}; hermes-agent 0.19.0. "
        f"Load average (1 min): {load_before:.2f} before, {load_after:.2f} after."
    )
    publish(f"hermes_sync{' (quick)' if quick else ''}", text, notes, write=write)
