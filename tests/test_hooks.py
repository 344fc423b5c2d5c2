"""pluggy hooks: start and end fire once, a failing hook never blocks an end."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.compose import Store
from tether.liveness import Probe, ProcessIdentity, Reaper
from tether.liveness.deliveries import owing_process_alive
from tether.store.deliveries import DueEnd

from .conftest import child_env, hold_writes, pg_connect, spawn, wait_for_line


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    @tether.hookimpl
    def on_session_start(self, session: tether.Session) -> None:
        self.calls.append(("start", session.id, session.message_count))

    @tether.hookimpl
    def on_session_end(self, session: tether.Session, reason: str, interrupted: bool) -> None:
        self.calls.append(("end", session.id, reason, interrupted, session.end_reason))


class Exploding:
    @tether.hookimpl
    def on_session_start(self, session: tether.Session) -> None:
        raise RuntimeError("plugin bug")

    @tether.hookimpl
    def on_session_end(self, session: tether.Session, reason: str, interrupted: bool) -> None:
        raise RuntimeError("plugin bug")


def test_start_and_end_fire_once(store: Store) -> None:
    rec = Recorder()
    store.plugins.register(rec)
    h = store.session(source="cli")
    assert rec.calls == []  # nothing written, nothing announced
    h.append("user", "a")
    h.append("user", "b")
    h.end("completed")
    h.end("error")
    assert rec.calls == [("start", h.id, 1), ("end", h.id, "completed", False, "completed")]


def test_no_hooks_for_a_session_that_never_existed(store: Store) -> None:
    rec = Recorder()
    store.plugins.register(rec)
    with store.session(source="cli"):
        pass
    assert rec.calls == []


def test_external_end_fires_in_the_ending_process(store: Store) -> None:
    rec = Recorder()
    h = store.session(source="cli")
    h.append("user", "a")
    store.plugins.register(rec)
    assert store.end_session(h.id, "manual") is True
    assert store.end_session(h.id, "manual") is False
    assert rec.calls == [("end", h.id, "manual", True, "manual")]
    assert h.end() is False
    assert len(rec.calls) == 1


def test_failing_hooks_never_block_the_end(store: Store, caplog) -> None:  # type: ignore[no-untyped-def]
    rec = Recorder()
    store.plugins.register(Exploding())
    store.plugins.register(rec)
    with store.session(source="cli") as h:
        h.append("user", "x")
    assert store.get_session(h.id).end_reason == "completed"
    assert [c[0] for c in rec.calls] == ["start", "end"]  # the others still ran
    assert "plugin bug" in caplog.text


def test_error_exit_is_reported_as_interrupted(store: Store) -> None:
    rec = Recorder()
    store.plugins.register(rec)
    try:
        with store.session(source="cli") as h:
            h.append("user", "x")
            raise OSError("disk")
    except OSError:
        pass
    assert rec.calls[-1] == ("end", h.id, "error", True, "error")


def test_plugins_are_discovered_through_entry_points(tmp_path: Path) -> None:
    """A plugin published in the ``tether.plugins`` group is loaded by every store."""
    site = tmp_path / "site"
    dist = site / "tether_audit-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tether-audit\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tether.plugins]\naudit = tether_audit\n")
    (site / "tether_audit.py").write_text(
        textwrap.dedent(
            """
            import tether

            @tether.hookimpl
            def on_session_end(session, reason, interrupted):
                print("AUDIT", session.id, reason, interrupted, flush=True)
            """
        )
    )
    code = textwrap.dedent(
        f"""
        import sys, tether
        s = tether.open_store({str(tmp_path / "x.db")!r})
        h = s.session(source="cli")
        h.append("user", "x")
        h.end("completed")
        print("ID", h.id)
        """
    )
    env = child_env(PYTHONPATH=str(site))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    sid = proc.stdout.split("ID ")[1].strip()
    assert f"AUDIT {sid} completed False" in proc.stdout


# --- delivery under faults: exactly once in a process, at least once across a crash --------

HOOKED_CHILD = """
class Hook:
    @tether.hookimpl
    def on_session_end(self, session, reason, interrupted):
        print("HOOK", session.id, reason, interrupted, flush=True)
        if sys.argv[2] == "hang":
            idle()  # killed in here: after the end was recorded, before the hook finished

store = tether.open_store(sys.argv[1])
store.plugins.register(Hook())
"""


@pytest.mark.slow
def test_ctrl_c_during_end_still_fires_the_hook_once(db_url: str) -> None:
    """Today a deferred Ctrl+C was re-raised before the hooks ran, so they never fired."""
    proc = spawn(
        HOOKED_CHILD
        + """
with store.session(source="exit-test") as h:
    h.append("user", "acknowledged")
    h.buffer("assistant", "buffered")
    print("ID", h.id, flush=True)
    print("ready", flush=True)
    idle()
""",
        db_url,
        "return",
    )
    assert proc.stdout is not None
    sid = proc.stdout.readline().split()[1]
    wait_for_line(proc, "ready")
    with hold_writes(db_url):  # the end now waits for the lock
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # arrives during end(): deferred
        time.sleep(0.3)
        assert proc.poll() is None
    out, err = proc.communicate(timeout=20)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert out.count("HOOK") == 1, (out, err)
    assert f"HOOK {sid} signal True" in out
    s = open_store_quietly(db_url)
    try:
        assert s.get_session(sid).end_reason == "signal"
    finally:
        s.close()


def open_store_quietly(url: str) -> Store:
    return tether.open_store(url, load_plugins=False)


def wait_until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.mark.slow
def test_hooks_of_a_process_killed_before_they_ran_are_delivered_by_the_next(
    db_url: str,
) -> None:
    proc = spawn(
        HOOKED_CHILD
        + """
h = store.session(source="exit-test")
h.append("user", "acknowledged")
h.end("completed")
""",
        db_url,
        "hang",
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("HOOK "), line
    sid = line.split()[1]
    store = open_store_quietly(db_url)
    try:
        rec = Recorder()
        store.plugins.register(rec)
        assert store.get_session(sid).end_reason == "completed"  # recorded before the hooks
        # Its process is alive (running the hook): nobody else delivers it.
        assert store.deliver_due_hooks() == 0
        proc.kill()
        proc.communicate(timeout=20)
        # Dead now: the next process that records a session delivers it, once.
        h = store.session(source="cli")
        h.append("user", "x")
        ends = lambda: [c for c in rec.calls if c[0] == "end"]  # noqa: E731
        wait_until(ends)
        assert ends() == [("end", sid, "completed", False, "completed")]
        assert store.deliver_due_hooks() == 0
        h.end()
        assert ends() == [
            ("end", sid, "completed", False, "completed"),
            ("end", h.id, "completed", False, "completed"),
        ]
    finally:
        store.close()
    other = open_store_quietly(db_url)
    try:
        other.plugins.register(Recorder())
        assert other.deliver_due_hooks() == 0  # delivered means delivered, for every process
    finally:
        other.close()


def test_ends_without_hooks_leave_nothing_due(store: Store, db_url: str) -> None:
    h = store.session(source="cli")
    h.append("user", "x")
    h.end()
    store.end_session(h.id, "manual")
    other = open_store_quietly(db_url)
    try:
        rec = Recorder()
        other.plugins.register(rec)
        assert other.deliver_due_hooks() == 0 and rec.calls == []
    finally:
        other.close()


def ended_by_a_process_killed_in_its_hook(store: Store, db_url: str) -> Any:
    """A session of this process, ended by another (``end_session``, as ``tether end``)
    that is SIGKILLed inside its on_session_end hook."""
    h = store.session(source="cli")
    h.append("user", "x")
    proc = spawn(HOOKED_CHILD + "store.end_session(sys.argv[3], 'manual')\n", db_url, "hang", h.id)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.split() == ["HOOK", h.id, "manual", "True"], line
    proc.kill()
    proc.communicate(timeout=20)
    return h


@pytest.mark.slow
def test_an_external_end_of_a_killed_process_is_delivered_at_once(db_url: str) -> None:
    """``tether end`` owns no session: it used to leave no owner row, so its owed hooks
    waited out a whole lease although the process was provably dead."""
    store = tether.open_store(db_url, load_plugins=False)
    try:
        h = ended_by_a_process_killed_in_its_hook(store, db_url)
        rec = Recorder()
        store.plugins.register(rec)
        _, (due,) = store.due_hook_ends()
        assert due.owner is not None  # the ending process wrote its owner row with the end
        assert store.deliver_due_hooks() == 1  # its pid is gone: no lease to wait out
        assert rec.calls == [("end", h.id, "manual", True, "manual")]
        assert store.deliver_due_hooks() == 0
    finally:
        store.close()


@pytest.mark.slow
def test_an_external_end_is_delivered_by_the_next_process_once_its_lease_passed(
    db_url: str,
) -> None:
    """An end whose process has no owner row (pruned) cannot be probed: its lease decides."""
    clock = tether.ManualClock(start=time.time())
    store = tether.open_store(db_url, load_plugins=False, clock=clock)
    try:
        h = ended_by_a_process_killed_in_its_hook(store, db_url)
        _, (due,) = store.due_hook_ends()
        store.backend.write(lambda c: c.execute("DELETE FROM owners WHERE id = ?", (due.due_by,)))
        rec = Recorder()
        store.plugins.register(rec)
        assert store.deliver_due_hooks() == 0  # within its lease it may still be delivering
        # The child stamped its end with the real clock: move past that plus the lease.
        clock.advance(time.time() - clock.now() + store.owner_ttl + 1)
        assert store.deliver_due_hooks() == 1
        assert rec.calls == [("end", h.id, "manual", True, "manual")]
        assert store.deliver_due_hooks() == 0
        assert h.end() is False  # this handle learns the session ended elsewhere
    finally:
        store.close()


def test_looking_for_owed_hooks_reads_only_the_partial_index(sqlite_store: Store) -> None:
    from tether.store.deliveries import SELECT_HOOKS_DUE

    plan = sqlite_store.backend.read(
        lambda c: c.execute("EXPLAIN QUERY PLAN " + SELECT_HOOKS_DUE, ("x", 10)).fetchall()
    )
    details = [row[3] for row in plan]
    assert details[0] == "SCAN e USING INDEX events_hooks_due", details
    assert not any("TEMP B-TREE" in d for d in details)


def test_a_database_from_before_migration_3_gets_the_mark_and_owes_nothing(db_url: str) -> None:
    store = open_store_quietly(db_url)
    h = store.session(source="cli")
    h.append("user", "x")
    h.end()
    store.close()
    # Back to the schema before migration 3 (undoing it and the steps after it),
    # with an ended session in it.
    if db_url.startswith("postgresql://"):
        conn = pg_connect(db_url)
    else:
        conn = sqlite3.connect(db_url, isolation_level=None)
    conn.execute("DROP TABLE import_cursors")  # migration 6
    conn.execute("DROP TABLE claims")  # migration 5
    conn.execute("DROP TABLE settings")
    conn.execute("DROP INDEX sessions_trashed")
    conn.execute("ALTER TABLE sessions DROP COLUMN trashed_at")
    for column in ("meta", "state", "payload"):  # migration 4
        conn.execute(f"ALTER TABLE messages DROP COLUMN {column}")
    conn.execute("DROP INDEX events_hooks_due")
    conn.execute("ALTER TABLE events DROP COLUMN hooks_due_by")
    conn.execute("DELETE FROM tether_migrations WHERE version >= 3")
    conn.close()
    store = open_store_quietly(db_url)
    try:
        rec = Recorder()
        store.plugins.register(rec)
        assert store.deliver_due_hooks() == 0 and rec.calls == []  # old ends owe nothing
        rows = store.backend.read(
            lambda c: c.execute("SELECT kind, hooks_due_by FROM events ORDER BY id").fetchall()
        )
        assert [tuple(r) for r in rows] == [("created", None), ("ended", None)]
    finally:
        store.close()


# --- reaper and repair ends are delivered durably too -------------------------------------

OWNER_CHILD = """
store = tether.open_store(sys.argv[1], load_plugins=False, startup_sweep=False)
for _ in range(3):
    h = store.session(source="cli")
    h.append("user", "mine")
    print("ID", h.id, flush=True)
print("ready", flush=True)
idle()
"""

# Ends sessions (as the reaper or the legacy repair) with a hook that finishes the
# first end's hooks and hangs in the second's: it is killed in there.
ENDING_CHILD = """
class Hook:
    calls = 0

    @tether.hookimpl
    def on_session_end(self, session, reason, interrupted):
        Hook.calls += 1
        print("HOOK", session.id, reason, Hook.calls, flush=True)
        if Hook.calls == 2:
            idle()

store = tether.open_store(sys.argv[1], startup_sweep=False)
store.plugins.register(Hook())
if sys.argv[2] == "reap":
    from tether.liveness import Reaper

    Reaper(store).sweep()
else:
    store.repair_unowned(0, apply=True)
"""


def sessions_of_a_killed_owner(db_url: str) -> list[str]:
    """Three open sessions whose owner process was SIGKILLed (so the reaper may end them)."""
    proc = spawn(OWNER_CHILD, db_url)
    try:
        ids = [wait_for_line_prefix(proc, "ID ").split()[1] for _ in range(3)]
        wait_for_line(proc, "ready")
    finally:
        proc.kill()
        proc.communicate(timeout=20)
    return ids


def wait_for_line_prefix(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith(prefix), (line, proc.poll())
    return line


@pytest.mark.slow
@pytest.mark.parametrize("ender", ["reap", "repair"])
def test_reaper_and_repair_ends_killed_mid_hook_are_delivered_by_the_next_process_once(
    db_url: str, ender: str
) -> None:
    """Reaped and abandoned ends owe their hooks like any other end, in the same transaction."""
    if ender == "reap":
        ids = sessions_of_a_killed_owner(db_url)
        reason = "reaped"
    else:
        from .test_liveness import legacy_session

        with open_store_quietly(db_url) as setup:
            ids = [legacy_session(setup, at=time.time() - 100) for _ in range(3)]
        reason = "abandoned"
    proc = spawn(ENDING_CHILD, db_url, ender)
    try:
        first = wait_for_line_prefix(proc, "HOOK ").split()
        second = wait_for_line_prefix(proc, "HOOK ").split()  # hanging in this one now
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGKILL, err
    assert first[2] == second[2] == reason and {first[1], second[1]} < set(ids)
    store = open_store_quietly(db_url)
    try:
        assert {store.get_session(i).end_reason for i in ids} == {reason}
        rec = Recorder()
        store.plugins.register(rec)
        # Its killer is dead (pid gone): the first end's hooks ran and were marked,
        # the interrupted one and the one never reached are owed.
        assert store.deliver_due_hooks() == 2
        owed = set(ids) - {first[1]}
        assert sorted(rec.calls) == sorted(("end", i, reason, True, reason) for i in owed)
        assert store.deliver_due_hooks() == 0
    finally:
        store.close()
    other = open_store_quietly(db_url)
    try:
        other.plugins.register(Recorder())
        assert other.deliver_due_hooks() == 0  # exactly once across processes
    finally:
        other.close()


def test_a_reaper_that_ran_its_hooks_leaves_nothing_due(db_url: str) -> None:
    ids = sessions_of_a_killed_owner(db_url)
    store = open_store_quietly(db_url)
    try:
        rec = Recorder()
        store.plugins.register(rec)
        assert {r.id for r in Reaper(store).sweep().reaped} == set(ids)
        assert sorted(rec.calls) == sorted(("end", i, "reaped", True, "reaped") for i in ids)
        due = store.backend.read(
            lambda c: c.execute(
                "SELECT COUNT(*) FROM events WHERE hooks_due_by IS NOT NULL"
            ).fetchone()[0]
        )
        assert due == 0
    finally:
        store.close()
    other = open_store_quietly(db_url)
    try:
        other.plugins.register(Recorder())
        assert other.deliver_due_hooks() == 0
    finally:
        other.close()


def _due(owner: tuple[Any, ...] | None, ended_at: float = 100.0) -> DueEnd:
    return DueEnd(1, "s", ended_at, "reaped", True, "o", owner)


def test_who_may_deliver_is_judged_like_the_reaper_judges(store: Store) -> None:
    """Pure judgement with an injected probe: the owing process's pid decides on this host."""
    me = ProcessIdentity.current()
    row = ("o", me.host, me.boot_id, 4242, 7, "cli", 0.0, 100.0, me.pid_ns, 30.0)
    for probe, alive in [(Probe.ALIVE, True), (Probe.GONE, False), (Probe.REUSED, False)]:
        reaper = Reaper(store, identity=me, probe=lambda pid, start, p=probe: p)
        # However old its heartbeat: a live pid is alive, a gone one dead at once.
        assert (
            owing_process_alive(_due(row), reaper, heartbeat_now=10_000.0, now=10_000.0, lease=30.0)
            is alive
        )
    far = ("o", "elsewhere", "b", 4242, 7, "cli", 0.0, 100.0, None, 30.0)
    reaper = Reaper(store, identity=me, probe=lambda pid, start: Probe.GONE)  # never asked
    assert owing_process_alive(_due(far), reaper, heartbeat_now=125.0, now=0.0, lease=5.0)
    assert not owing_process_alive(_due(far), reaper, heartbeat_now=131.0, now=0.0, lease=5.0)
    # No owner row: the deliverer's lease since the end decides.
    assert owing_process_alive(_due(None), reaper, heartbeat_now=0.0, now=130.0, lease=30.0)
    assert not owing_process_alive(_due(None), reaper, heartbeat_now=0.0, now=131.0, lease=30.0)


def test_the_store_records_owed_hooks_without_importing_the_layers_above() -> None:
    """store -> lifecycle -> liveness: the records stay in the store, the judging above it."""
    import ast
    import inspect

    import tether.store.deliveries as records

    def imports(node: ast.AST) -> list[str]:
        """Modules imported at run time anywhere (not under ``if TYPE_CHECKING:``)."""
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            return []
        found = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if isinstance(node, ast.Import):
            found = [a.name for a in node.names]
        return found + [m for child in ast.iter_child_nodes(node) for m in imports(child)]

    modules = imports(ast.parse(inspect.getsource(records)))
    assert "errors" in modules  # the walk sees the imports
    assert [m for m in modules if "liveness" in m or "lifecycle" in m] == []
    assert "._verdict" not in inspect.getsource(records)
