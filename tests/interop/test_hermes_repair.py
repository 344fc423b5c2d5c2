"""``tether hermes repair`` (dry run and ``--yes``) on stores the real Hermes wrote.

The expected classes are counted here by plain SQL over the fixture; the evidence
is real: child processes holding the store through Hermes' SessionDB, a real
``flock`` on ``gateway.lock``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tether.interop.hermes.repair import (
    START_SLACK,
    Holder,
    HoldersChangedError,
    apply_repair,
    classify,
    holders,
    plan_repair,
)

from ..conftest import run_cli
from .conftest import FIXTURE, _hermes_env, start_writer, writer_report

PROCESS_OWNED = ("cli", "tui", "cron")


def open_ids(path: Path, where: str) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        sql = f"SELECT id FROM sessions WHERE ended_at IS NULL AND ({where}) ORDER BY id"
        return [r[0] for r in conn.execute(sql)]
    finally:
        conn.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_with_no_holder_every_open_process_owned_row_is_dead_and_nothing_changes(
    hermes_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "state.db"
    shutil.copy(hermes_store, store)
    before = sha256(store)
    owned = open_ids(store, "source IN ('cli', 'tui', 'cron')")
    assert owned
    plan = plan_repair(store, recheck_after=0.05)
    assert plan.holders == [] and not plan.gateway_lock_held
    assert plan.classes["dead"] == owned
    assert plan.classes["parked"] == open_ids(store, "source = 'telegram'")
    assert plan.classes["by_design"] == open_ids(store, "source = 'api_server'")
    assert plan.classes["probably_dead"] == plan.classes["live"] == []
    proc = run_cli("hermes", "repair", "--json", str(store))
    assert proc.returncode == 0, proc.stderr
    [printed] = json.loads(proc.stdout)["stores"]
    assert printed["classes"] == plan.to_dict()["classes"]
    assert sha256(store) == before
    wal = Path(f"{store}-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_a_live_holder_keeps_the_rows_it_touched_live_and_the_others_probably_dead(
    hermes_python: Path, hermes_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "state.db"
    shutil.copy(hermes_store, store)
    owned = open_ids(store, "source IN ('cli', 'tui', 'cron')")
    touched = owned[:2]
    # The holder must start measurably after every row's last activity (start times
    # are known to about a second): wait until the clock is past that, bounded.
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    [(last,)] = conn.execute("SELECT MAX(timestamp) FROM messages").fetchall()
    conn.close()
    while time.time() < last + START_SLACK + 1.0:
        time.sleep(0.05)
    holder = subprocess.Popen(
        [str(hermes_python), str(FIXTURE), "hold", str(store), *touched],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_hermes_env(),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        found = holders(store)
        assert [h.pid for h in found] == [holder.pid]
        plan = plan_repair(store, recheck_after=0.05)
        assert [h.pid for h in plan.holders] == [holder.pid]
        assert plan.classes["live"] == touched
        assert plan.classes["probably_dead"] == owned[2:]
        assert plan.classes["dead"] == []
        assert plan.classes["parked"] == open_ids(store, "source = 'telegram'")
    finally:
        holder.communicate(input="", timeout=60)
    assert holder.returncode == 0
    # The holder is gone: nothing holds the store, every process-owned open row is dead.
    assert plan_repair(store, recheck_after=0.05).classes["dead"] == owned


def test_a_held_gateway_lock_is_no_proof(hermes_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "state.db"
    shutil.copy(hermes_store, store)
    owned = open_ids(store, "source IN ('cli', 'tui', 'cron')")
    fd = os.open(tmp_path / "gateway.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a gateway this user cannot see the files of
        plan = plan_repair(store, recheck_after=0.05)
        assert plan.gateway_lock_held
        assert plan.classes["live"] == owned and plan.classes["dead"] == []
    finally:
        os.close(fd)
    assert not plan_repair(store, recheck_after=0.05).gateway_lock_held


def test_classification_rules_with_an_injected_clock() -> None:
    rows = [
        ("a", "cli", 100.0),
        ("b", "tui", 300.0),
        ("c", "telegram", 50.0),
        ("d", "api_server", 10.0),
    ]
    early, late = Holder(1, 200.0, ("hermes",)), Holder(2, 250.0, ("hermes", "-r", "a"))
    # The first scan saw a per-request process, the second did not: still a holder.
    plan = classify(Path("s.db"), rows, [[early], []], False, now=1000.0, stale_after=800.0)
    assert plan.classes["probably_dead"] == ["a"] and plan.classes["live"] == ["b"]
    assert plan.classes["parked"] == ["c"] and plan.classes["by_design"] == ["d"]
    assert plan.idle == ["a", "c", "d"]  # listed only: idleness ends nothing
    # A holder naming the row on its command line (hermes -r a) keeps it live.
    plan = classify(Path("s.db"), rows, [[late]], False, now=1000.0)
    assert plan.classes["live"] == ["a", "b"] and plan.idle == []
    plan = classify(Path("s.db"), rows, [[], []], False, now=1000.0)
    assert plan.classes["dead"] == ["a", "b"]
    assert plan.to_end == {"dead": ["a", "b"], "probably_dead": [], "gateway_dead": [],
                           "api_idle": []}  # fmt: skip


def test_gateway_and_api_rows_need_their_flag_and_their_evidence() -> None:
    rows = [("c", "telegram", 50.0), ("d", "api_server", 10.0), ("e", "api_server", 900.0)]

    def ends(
        *scans: list[Holder], held: bool = False, alive: bool = False, **flags: bool
    ) -> tuple[list[str], list[str]]:
        plan = classify(Path("s.db"), rows, list(scans), held, now=1000.0, stale_after=500.0,
                        gateway_alive=alive, **flags)  # fmt: skip
        return plan.to_end["gateway_dead"], plan.to_end["api_idle"]

    assert ends([]) == ([], [])  # not asked: parked and by design
    both = {"include_gateway": True, "include_api": True}
    assert ends([], **both) == (["c"], ["d"])  # e is not idle long enough
    assert ends([], alive=True, **both) == ([], ["d"])  # gateway.pid's process runs
    assert ends([], held=True, **both) == ([], [])  # the lock is held: owners may live
    old = Holder(7, 5.0, ("hermes", "gateway"))  # started before every row's activity
    assert ends([old], **both) == ([], [])
    new = Holder(8, 950.0, ("hermes",))  # started after: the rows are not its own
    assert ends([new], **both) == (["c"], ["d"])


def test_repair_while_hermes_writes_costs_the_writer_nothing(
    hermes_python: Path, hermes_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "state.db"
    shutil.copy(hermes_store, store)
    writer = start_writer(hermes_python, store, seconds=4, rate=100)
    # The writer holds the store for 4 s from its "ready": plans in the first 2.5 s
    # all run while it does (its close and exit come after).
    until = time.monotonic() + 2.5
    plans = []
    while time.monotonic() < until:
        plans.append(plan_repair(store, recheck_after=0.05))
    report = writer_report(writer)
    assert report["failures"] == 0, report
    assert len(plans) >= 5
    # Its own row was live throughout: it started before the row's activity.
    assert all(f"live_{writer.pid}" in p.classes["live"] for p in plans)


# --- repair --yes ------------------------------------------------------------------------------


def snapshot(path: Path) -> dict[str, tuple[object, ...]]:
    """Every session row as plain SQL reads it: id -> (ended_at, end_reason, last activity)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            sid: (ended_at, reason, last)
            for sid, ended_at, reason, last in conn.execute(
                "SELECT s.id, s.ended_at, s.end_reason, (SELECT MAX(timestamp) FROM messages m"
                " WHERE m.session_id = s.id) FROM sessions s"
            )
        }
    finally:
        conn.close()


def wait_past_last_activity(path: Path) -> None:
    """Until the clock is past every row's activity by the holder start-time margin (bounded:
    the fixture was written moments ago at most)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    [(last,)] = conn.execute("SELECT MAX(timestamp) FROM messages").fetchall()
    conn.close()
    while time.time() < last + START_SLACK + 1.0:
        time.sleep(0.05)


def start_holder(python: Path, store: Path, *sids: str) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [str(python), str(FIXTURE), "hold", str(store), *sids],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_hermes_env(),
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
    return holder


def repair_json(store: Path, *args: str) -> dict[str, object]:
    proc = run_cli("hermes", "repair", "--json", *args, str(store))
    assert proc.returncode == 0, proc.stderr
    [printed] = json.loads(proc.stdout)["stores"]
    return dict(printed)


def test_yes_with_no_holder_ends_every_open_process_owned_row_and_only_those(
    hermes_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "state.db"
    shutil.copy(hermes_store, store)
    before = snapshot(store)
    owned = open_ids(store, "source IN ('cli', 'tui', 'cron')")
    kept_open = open_ids(store, "source NOT IN ('cli', 'tui', 'cron')")
    assert owned and kept_open
    main_file = sha256(store)
    printed = repair_json(store, "--yes")
    assert printed["ended"] == {"dead": owned, "probably_dead": [], "gateway_dead": [],
                                "api_idle": []}  # fmt: skip
    assert printed["skipped"] == [] and printed["longest_transaction_ms"] < 1000
    after = snapshot(store)
    assert open_ids(store, "1") == kept_open  # gateway chats and API rows stay open
    for sid, (ended_at, reason, last) in after.items():
        if sid in owned:
            assert reason == "reaped" and isinstance(ended_at, float)
            assert last is None or ended_at >= last  # type: ignore[operator]
        else:
            assert (ended_at, reason, last) == before[sid]  # every other row as it was
    # The ends are in the WAL, and nothing was checkpointed into the main file.
    assert sha256(store) == main_file and Path(f"{store}-wal").stat().st_size > 0
    # A second run ends nothing.
    again = repair_json(store, "--yes")
    assert all(ids == [] for ids in again["ended"].values())  # type: ignore[union-attr]
    assert snapshot(store) == after


def test_yes_beside_a_live_holder_ends_only_the_rows_no_holder_can_own(
    hermes_python: Path, hermes_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "state.db"
    shutil.copy(hermes_store, store)
    owned = open_ids(store, "source IN ('cli', 'tui')")
    touched = owned[:2]
    wait_past_last_activity(store)
    holder = start_holder(hermes_python, store, *touched)
    try:
        printed = repair_json(store, "--yes")
        ended = printed["ended"]
        assert isinstance(ended, dict) and ended["dead"] == []
        assert set(touched).isdisjoint(ended["probably_dead"])
        # Still open, by plain SQL, while their holder runs: the holder appended to them.
        assert set(touched) <= set(open_ids(store, "1"))
        assert open_ids(store, "source IN ('cli', 'tui', 'cron')") == touched
    finally:
        holder.communicate(input="", timeout=60)
    assert holder.returncode == 0


def test_a_process_opening_the_store_after_the_plan_stops_the_write(
    hermes_python: Path, hermes_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "state.db"
    shutil.copy(hermes_store, store)
    plan = plan_repair(store, recheck_after=0.05)
    assert plan.to_end["dead"]
    before = snapshot(store)
    holder = start_holder(hermes_python, store)
    try:
        with pytest.raises(HoldersChangedError, match="run repair again"):
            apply_repair(plan)
        assert snapshot(store) == before
    finally:
        holder.communicate(input="", timeout=60)


def test_a_row_active_again_since_the_plan_is_left_open(
    hermes_python: Path, hermes_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "state.db"
    shutil.copy(hermes_store, store)
    plan = plan_repair(store, recheck_after=0.05)
    resumed, *others = plan.to_end["dead"]
    # A Hermes resumes one row, appends, and exits before the write.
    start_holder(hermes_python, store, resumed).communicate(input="", timeout=60)
    result = apply_repair(plan, batch=2)
    assert result.skipped == [resumed] and result.ended["dead"] == others
    assert result.transactions == (len(others) + 1 + 1) // 2
    assert resumed in open_ids(store, "1")


def test_api_rows_end_only_when_asked_idle_and_unowned(
    hermes_python: Path, hermes_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "state.db"
    shutil.copy(hermes_store, store)
    api = open_ids(store, "source = 'api_server'")
    assert len(api) >= 2
    wait_past_last_activity(store)
    start_holder(hermes_python, store, api[0]).communicate(input="", timeout=60)
    [(touched_at,)] = rows_of(
        store, f"SELECT MAX(timestamp) FROM messages WHERE session_id = '{api[0]}'"
    )
    # Two hours on from the client's last request to api[0]: the others have been idle longer.
    two_hours_on = touched_at + 7200 - 0.5
    plan = plan_repair(store, stale_after=7200, recheck_after=0.05, clock=lambda: two_hours_on)
    assert plan.to_end["api_idle"] == [] and set(api[1:]) <= set(plan.idle)  # not asked
    plan = plan_repair(
        store, stale_after=7200, include_api=True, recheck_after=0.05, clock=lambda: two_hours_on
    )
    assert plan.to_end["api_idle"] == api[1:]
    result = apply_repair(plan)
    assert result.ended["api_idle"] == api[1:]
    assert open_ids(store, "source = 'api_server'") == [api[0]]
    proc = run_cli("hermes", "repair", "--include-api", str(store))
    assert proc.returncode == 2 and "--include-api needs --stale-after" in proc.stderr


def rows_of(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_gateway_chats_end_only_when_asked_and_the_gateway_is_gone(
    hermes_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "state.db"
    shutil.copy(hermes_store, store)
    chats = open_ids(store, "source = 'telegram'")
    assert chats
    # The gateway.pid record of a live process (this one, with its real start time).
    with open(f"/proc/{os.getpid()}/stat") as f:
        me = int(f.read().rpartition(")")[2].split()[19])
    record = tmp_path / "gateway.pid"
    record.write_text(json.dumps({"pid": os.getpid(), "kind": "hermes-gateway", "start_time": me}))
    assert repair_json(store, "--include-gateway")["would_end"]["gateway_dead"] == []  # type: ignore[index]
    # The same pid with another start time: recycled, the gateway is gone.
    record.write_text(json.dumps({"pid": os.getpid(), "start_time": me + 1}))
    # ... but its lock is held (a gateway running under another user): no evidence G.
    fd = os.open(tmp_path / "gateway.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        printed = repair_json(store, "--include-gateway", "--yes")
        assert all(ids == [] for ids in printed["ended"].values())  # type: ignore[union-attr]
    finally:
        os.close(fd)
    assert repair_json(store, "--yes")["ended"]["gateway_dead"] == []  # type: ignore[index]
    assert open_ids(store, "source = 'telegram'") == chats  # not asked: parked
    printed = repair_json(store, "--include-gateway", "--yes")
    assert printed["ended"]["gateway_dead"] == chats  # type: ignore[index]
    assert open_ids(store, "source = 'telegram'") == []
    assert {r[0] for r in rows_of(store, "SELECT DISTINCT end_reason FROM sessions"
                                  " WHERE source = 'telegram'")} >= {"reaped"}  # fmt: skip


def test_repair_yes_while_hermes_writes_costs_the_writer_nothing(
    hermes_python: Path, hermes_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "state.db"
    shutil.copy(hermes_store, store)
    owned = open_ids(store, "source IN ('cli', 'tui', 'cron')")
    wait_past_last_activity(store)
    writer = start_writer(hermes_python, store, seconds=4, rate=100)
    until = time.monotonic() + 2.5
    results = []
    while time.monotonic() < until:
        # One row per transaction: as many write transactions beside the writer as there are rows.
        results.append(apply_repair(plan_repair(store, recheck_after=0.05), batch=1))
    report = writer_report(writer)
    assert report["failures"] == 0, report
    ended = [sid for r in results for sid in r.ended["probably_dead"]]
    assert sorted(ended) == owned  # each ended once, by the first run
    assert all(r.longest_transaction < 1.0 for r in results)
    live = f"live_{writer.pid}"
    assert live not in ended
    [(count, reason)] = rows_of(
        store,
        f"SELECT (SELECT COUNT(*) FROM messages WHERE session_id = '{live}'), end_reason"
        f" FROM sessions WHERE id = '{live}'",
    )
    assert count == report["appended"] and reason is None


def test_a_store_that_cannot_be_written_is_one_error_line_and_the_others_are_repaired(
    hermes_store: Path, tmp_path: Path
) -> None:
    first, second = tmp_path / "a" / "state.db", tmp_path / "b" / "state.db"
    for store in (first, second):
        store.parent.mkdir()
        shutil.copy(hermes_store, store)
    owned = open_ids(first, "source IN ('cli', 'tui', 'cron')")
    before = snapshot(second)
    wait_past_last_activity(second)
    # Another process keeps the write lock of the second store past the 5 s busy timeout.
    locker = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None);"
         " c.execute('BEGIN IMMEDIATE'); print('ready', flush=True); sys.stdin.read()",
         str(second)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "ready"
        proc = run_cli("hermes", "repair", "--yes", str(first), str(second))
    finally:
        locker.communicate(input="", timeout=30)
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and str(second) in line and "locked" in line, line
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    assert f"ended (reaped)                                               {len(owned)}" in out
    assert all(sid in out for sid in owned) and "none (see the error below)" in out
    assert open_ids(first, "source IN ('cli', 'tui', 'cron')") == []
    assert snapshot(second) == before
