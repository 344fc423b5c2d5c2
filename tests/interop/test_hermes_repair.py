"""``tether hermes repair`` (dry run) on stores the real Hermes wrote.

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
import time
from pathlib import Path

from tether.interop.hermes.repair import START_SLACK, Holder, classify, holders, plan_repair

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
