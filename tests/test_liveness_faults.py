"""Liveness under faults: a live process is never reaped, whatever happens to it.

Each scenario ran against the previous code and reaped a live process (or
kept a closed store alive): a stopped process, a lock-starved heartbeat, a
wall-clock step, another PID namespace, another boot id, concurrent first
sessions, a heartbeat that commits while a PostgreSQL reaper runs, and a
store closed under its liveness threads. Real processes, real signals, real
namespaces (``unshare --pid``, run as root), and an injected clock for the
clock steps.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest

import tether
from tether.compose import Store
from tether.liveness import Probe, Reaper, ReaperLoop

from .conftest import CHILD_PRELUDE, child_env, run_cli, skip_or_fail, spawn, wait_for_line
from .test_liveness import FAR, ME, is_open, owned_sessions


def wait_until(condition: Callable[[], object], timeout: float = 20.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(every)


class StepClock(tether.ManualClock):
    """A manual clock whose wall time can also jump alone (NTP step, resume from suspend)."""

    def step(self, seconds: float) -> None:
        with self._lock:
            self._t += seconds


# An owner that beats every 0.2 s with a 1 s lease, and writes again once told to.
OWNER = """
store = tether.open_store(sys.argv[1], heartbeat_interval=0.2, owner_ttl=1.0)
h = store.session(source="owner")
h.append("user", "before")
print(h.id, flush=True)
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
h.append("user", "after")
h.end()
print("finished", flush=True)
"""


def start_owner(
    db_url: str, go: Path, prefix: list[str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start OWNER (under ``prefix``, e.g. ``unshare``); return it and its session id."""
    script = CHILD_PRELUDE + textwrap.dedent(OWNER)
    proc = subprocess.Popen(
        [*(prefix or []), sys.executable, "-c", script, db_url, str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=child_env(),
        start_new_session=True,  # so that a namespace and its init die together (killpg)
    )
    assert proc.stdout is not None
    sid = proc.stdout.readline().strip()
    wait_for_line(proc, "ready")
    return proc, sid


def finish_owner(proc: subprocess.Popen[str], go: Path, store: Store, sid: str) -> None:
    go.touch()
    out, err = proc.communicate(timeout=30)
    assert "finished" in out, (out, err)
    s = store.get_session(sid)
    assert s.end_reason == "completed", (s.end_reason, s.end_detail)
    assert [m.content for m in store.get_messages(sid)] == ["before", "after"]


def sweep_for(reaper: Reaper, seconds: float) -> list[str]:
    """Sweep every 0.1 s for ``seconds``; return every session reaped."""
    reaped: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        reaped += [r.id for r in reaper.sweep().reaped]
        time.sleep(0.1)
    return reaped


# --- a stopped process --------------------------------------------------------------------


@pytest.mark.slow
def test_a_stopped_process_is_not_reaped_and_doctor_reports_it(db_url: str, tmp_path: Path) -> None:
    proc, sid = start_owner(db_url, tmp_path / "go")
    store = tether.open_store(db_url, load_plugins=False)
    try:
        proc.send_signal(signal.SIGSTOP)  # Ctrl+Z, a debugger: its heartbeat stops too
        wait_until(lambda: Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1][0] in "Tt")
        # Well past its 1 s lease, judged by this process and by another one on this host.
        # A reaper asking for a 1 s TTL (the owner's lease) too.
        assert sweep_for(Reaper(store, ttl=1.0), 2.5) == []
        cli = run_cli("reap", "--db", db_url, "--json", "--ttl", "1")
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["reaped"] == 0
        assert is_open(store, sid)
        doctor = run_cli("doctor", "--db", db_url, "--json")
        doc = json.loads(doctor.stdout)
        assert doc["open_live_owner"] == 1 and doc["open_dead_owner"] == 0
        assert doc["open_hung_owner"] == 1  # reported, never reaped
        human = run_cli("doctor", "--db", db_url)
        assert "hung" in human.stdout
        proc.send_signal(signal.SIGCONT)
        finish_owner(proc, tmp_path / "go", store, sid)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        store.close()


# --- a heartbeat starved by another program's write lock ------------------------------------


@pytest.mark.slow
def test_a_lock_starved_heartbeat_is_not_a_death(db_path: str, tmp_path: Path) -> None:
    proc, sid = start_owner(db_path, tmp_path / "go")
    store = tether.open_store(db_path, load_plugins=False)
    reaper = Reaper(store, ttl=1.0)
    reaped: list[str] = []
    try:
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # no heartbeat can land while this is held
        try:
            sweeper = threading.Thread(target=lambda: reaped.extend(sweep_for(reaper, 2.5)))
            sweeper.start()
            end = time.monotonic() + 2.5  # 2.5 leases
            while time.monotonic() < end:
                assert all(s.verdict.alive for s in reaper.classify())
                time.sleep(0.1)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        sweeper.join(timeout=90)
        reaped += sweep_for(reaper, 0.5)  # right after the lock is released
        assert reaped == [] and is_open(store, sid)
        finish_owner(proc, tmp_path / "go", store, sid)
    finally:
        if proc.poll() is None:
            proc.kill()
        store.close()


def test_lease_at_risk_is_logged_and_exposed(
    db_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = tether.open_store(db_path, heartbeat_interval=0.1, owner_ttl=1.0, load_plugins=False)
    h = store.session(source="agent")
    h.append("user", "x")
    try:
        wait_until(lambda: store.lease_ok)
        with caplog.at_level(logging.ERROR, logger="tether.liveness"):
            blocker = sqlite3.connect(db_path, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            try:
                wait_until(lambda: not store.lease_ok, timeout=10)  # older than half the lease
                wait_until(lambda: "lease" in caplog.text, timeout=10)
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
        wait_until(lambda: store.lease_ok, timeout=30)  # the next beat lands
        assert any(r.levelno == logging.ERROR for r in caplog.records)
    finally:
        h.end()
        store.close()
    assert store.lease_ok  # owning nothing, promising nothing


# --- the reaper's own clock -----------------------------------------------------------------


def test_a_wall_clock_step_does_not_reap(store: Store) -> None:
    clock = StepClock()
    [sid] = owned_sessions(store, FAR, 1, heartbeat_at=clock.now())
    reaper = Reaper(store, clock=clock)
    assert reaper.sweep().reaped == []
    clock.advance(2)
    clock.step(3600)  # NTP steps the wall clock forward an hour
    assert reaper.sweep().reaped == [] and is_open(store, sid)
    clock.advance(20)  # less than a lease since the step: still no verdict by heartbeat
    assert reaper.sweep().reaped == [] and is_open(store, sid)
    clock.advance(11)  # a full lease since the step, and the owner never beat again
    [reaped] = reaper.sweep().reaped
    assert reaped.id == sid and reaped.detail.startswith("heartbeat stale")


def test_a_wall_clock_step_spares_an_owner_that_beats_again(store: Store) -> None:
    clock = StepClock()
    [sid] = owned_sessions(store, FAR, 1, heartbeat_at=clock.now())
    reaper = Reaper(store, clock=clock)
    reaper.sweep()
    clock.step(-3600)  # backwards, then forwards again: both are pauses
    reaper.sweep()
    clock.step(7200)
    for _ in range(10):  # the owner beats with the new wall clock, every 10 s
        assert reaper.sweep().reaped == []
        clock.advance(10)
        store.backend.write(
            lambda c: c.execute("UPDATE owners SET heartbeat_at = ?", (clock.now(),))
        )
    assert is_open(store, sid)


# --- PID namespaces -------------------------------------------------------------------------

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]


@pytest.fixture(scope="module")
def unshare() -> list[str]:
    """The ``unshare`` prefix; fails (it must work here, as root) unless truly impossible."""
    if shutil.which("unshare") is None:
        skip_or_fail("unshare(1) is not installed: PID namespaces cannot be tested here")
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True)
    if probe.returncode != 0 and os.geteuid() != 0:
        skip_or_fail(f"unshare --pid needs root here: {probe.stderr.strip()}")
    assert probe.returncode == 0, probe.stderr
    return UNSHARE


def kill_group(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.mark.slow
def test_an_owner_in_another_pid_namespace_is_judged_by_its_lease(
    db_url: str, tmp_path: Path, unshare: list[str]
) -> None:
    proc, sid = start_owner(db_url, tmp_path / "go", prefix=unshare)
    store = tether.open_store(db_url, load_plugins=False)
    try:
        owner = store.get_session(sid).owner_id
        pid = store.backend.read(
            lambda c: c.execute("SELECT pid FROM owners WHERE id = ?", (owner,)).fetchone()[0]
        )
        assert pid == 1  # its pid in its own namespace: pid 1 here is someone else
        assert sweep_for(Reaper(store), 2.5) == [] and is_open(store, sid)
        kill_group(proc)  # dead: once its lease has passed, it is reaped
        reaper = Reaper(store)
        wait_until(lambda: bool(reaper.sweep().reaped) or not is_open(store, sid), timeout=15)
        assert store.get_session(sid).end_detail.startswith("heartbeat stale")
    finally:
        if proc.poll() is None:
            kill_group(proc)
        store.close()


def reap_in_namespace(unshare: list[str], db_url: str) -> dict[str, object]:
    out = subprocess.run(
        [*unshare, sys.executable, "-m", "tether", "reap", "--db", db_url, "--json"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_a_reaper_in_another_pid_namespace_judges_host_owners_by_their_lease(
    db_url: str, tmp_path: Path, unshare: list[str]
) -> None:
    proc, sid = start_owner(db_url, tmp_path / "go")
    store = tether.open_store(db_url, load_plugins=False)
    try:
        assert reap_in_namespace(unshare, db_url)["reaped"] == 0
        assert is_open(store, sid)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 20
        while is_open(store, sid):
            assert time.monotonic() < deadline
            reap_in_namespace(unshare, db_url)
        assert store.get_session(sid).end_detail.startswith("heartbeat stale")
    finally:
        if proc.poll() is None:
            proc.kill()
        store.close()


# --- another boot id, the same host name ------------------------------------------------------


def test_another_boot_of_this_host_name_is_judged_by_its_lease(
    store: Store, clock: tether.ManualClock
) -> None:
    other_boot = dataclasses.replace(ME, boot_id="another-boot")
    [sid] = owned_sessions(store, other_boot, 1, heartbeat_at=clock.now())
    reaper = Reaper(store, clock=clock)
    assert reaper.sweep().reaped == [] and is_open(store, sid)  # not "host rebooted" at once
    clock.advance(29)
    assert reaper.sweep().reaped == []
    clock.advance(2)
    [reaped] = reaper.sweep().reaped
    assert reaped.id == sid and reaped.detail == "heartbeat stale 31 s"


# --- the lease each owner promised ---------------------------------------------------------


def test_each_owner_is_judged_by_its_own_lease(store: Store, clock: tether.ManualClock) -> None:
    [long] = owned_sessions(store, FAR, 1, heartbeat_at=clock.now(), lease=60.0)
    [short] = owned_sessions(store, dataclasses.replace(FAR, pid=7), 1, clock.now(), lease=10.0)
    clock.advance(45)
    reaper = Reaper(store, clock=clock)  # the reaper's own setting (30 s) does not count
    assert [r.id for r in reaper.sweep().reaped] == [short]
    assert Reaper(store, clock=clock, ttl=5.0).sweep().reaped == []  # cannot go below 60
    assert is_open(store, long)
    clock.advance(16)
    [reaped] = Reaper(store, clock=clock).sweep().reaped
    assert reaped.id == long and reaped.detail == "heartbeat stale 61 s"


def test_cli_reap_ttl_cannot_go_below_the_owners_lease(db_url: str) -> None:
    store = tether.open_store(db_url, load_plugins=False)
    [sid] = owned_sessions(store, FAR, 1, heartbeat_at=time.time() - 20, lease=60.0)
    store.close()
    r = run_cli("reap", "--db", db_url, "--ttl", "5")
    assert r.returncode == 0, r.stderr
    assert "nothing to reap" in r.stdout
    [note] = r.stderr.strip().splitlines()
    assert "--ttl 5" in note and "lease" in note  # one line saying it was clamped
    store = tether.open_store(db_url, load_plugins=False)
    assert is_open(store, sid)
    store.close()


# --- one owner per process ------------------------------------------------------------------


def test_concurrent_first_sessions_register_one_owner(new_db: Callable[[], str]) -> None:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up
    try:
        for _ in range(6):
            first_sessions_at_once(new_db(), 16)
    finally:
        sys.setswitchinterval(interval)


def first_sessions_at_once(db_url: str, n: int) -> None:
    store = tether.open_store(db_url, load_plugins=False, heartbeat_interval=0.2, owner_ttl=2)
    handles = [store.session(source="thread") for _ in range(n)]
    barrier = threading.Barrier(n)

    def first(h: tether.SessionHandle) -> None:
        store.list_sessions(limit=1)  # every thread has a connection ready (PostgreSQL's pool)
        barrier.wait()
        h.append("user", "hi")

    threads = [threading.Thread(target=first, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    owners = {store.get_session(h.id).owner_id for h in handles}
    assert owners == {store.owner_id}
    rows = store.backend.read(lambda c: c.execute("SELECT id FROM owners").fetchall())
    assert [r[0] for r in rows] == [store.owner_id]
    for h in handles:
        h.end()
    store.close()


# --- PostgreSQL: the server's clock, and heartbeats that commit while a reaper runs ------------


class SkewedClock(tether.SystemClock):
    """This host's wall clock, ``skew`` seconds off (an unsynchronized host)."""

    def __init__(self, skew: float) -> None:
        self.skew = skew

    def now(self) -> float:  # type: ignore[override]
        return time.time() + self.skew


@pytest.fixture
def pg_url(new_db: Callable[[], str]) -> str:
    """A fresh PostgreSQL schema (the tests using it pin ``backend`` to postgres)."""
    return new_db()


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_postgres_heartbeats_use_the_server_clock(pg_url: str) -> None:
    behind = tether.open_store(pg_url, clock=SkewedClock(-120), load_plugins=False)
    ahead = tether.open_store(pg_url, clock=SkewedClock(+120), load_plugins=False)
    try:
        h = behind.session(source="skewed")
        h.append("user", "my clock is two minutes late")
        # Judged from another host whose clock is two minutes early: no one is 240 s stale.
        far = Reaper(ahead, identity=FAR)
        assert far.sweep().reaped == [] and is_open(ahead, h.id)
        [state] = far.classify()
        assert state.verdict.alive
        h.end()
    finally:
        behind.close()
        ahead.close()


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_postgres_reap_sees_a_heartbeat_that_commits_while_it_runs(pg_url: str) -> None:
    from .conftest import pg_connect

    clock = tether.ManualClock()
    store = tether.open_store(pg_url, clock=clock, load_plugins=False)
    try:
        [sid] = owned_sessions(store, FAR, 1, heartbeat_at=clock.now())
        clock.advance(100)
        reaper = Reaper(store, clock=clock)
        [state] = reaper.classify()
        assert not state.verdict.alive
        beat = pg_connect(pg_url)
        beat.execute("BEGIN")  # the owner's heartbeat, in flight while the reaper writes
        beat.execute("UPDATE owners SET heartbeat_at = %s", (clock.now(),))
        assert state.info is not None
        result: list[object] = []
        reap = threading.Thread(
            target=lambda: result.append(
                store.reap([(state.owner_id, state.info.heartbeat_at, "stale")], prune_before=0)
            )
        )
        reap.start()
        reap.join(timeout=1.0)  # it either skips the locked owner or waits for it
        beat.execute("COMMIT")
        beat.close()
        reap.join(timeout=30)
        assert not reap.is_alive()
        assert result == [[]] and is_open(store, sid)
    finally:
        store.close()


# --- closing a store under its liveness threads ----------------------------------------------


def tether_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("tether-") and t.is_alive()]


def test_closing_under_running_threads_is_clean_and_releases_the_store(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = set(tether_threads())
    refs = []
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            store = tether.open_store(
                db_url, heartbeat_interval=0.001, owner_ttl=1, load_plugins=False
            )
            h = store.session(source="closing")
            h.append("user", "x")
            loop = ReaperLoop(store, interval=0.001).start()
            wait_until(lambda loop=loop: loop.sweeps >= 3)
            store.close()  # while both threads run
            assert not loop.running
            assert not store._owner.beating
            assert set(tether_threads()) <= before
            refs.append(weakref.ref(store))
            del store, h, loop
    gc.collect()
    assert [r for r in refs if r() is not None] == []  # nothing keeps a closed store alive
    problems = [r for r in caplog.records if r.name.startswith("tether")]
    assert problems == [], [r.getMessage() for r in problems]


# --- the pure rules -------------------------------------------------------------------------


def test_pause_detector() -> None:
    from tether.liveness.policy import PauseDetector

    d = PauseDetector()
    assert d.observe(wall=1000.0, mono=10.0) == float("inf")  # nothing seen: no pause
    assert d.observe(wall=1002.0, mono=12.0) == float("inf")
    assert d.observe(wall=1502.0, mono=14.0) == 0.0  # the wall jumped 498 s ahead
    assert d.observe(wall=1512.0, mono=24.0) == 10.0  # seconds since the pause
    assert d.observe(wall=1400.0, mono=25.0) == 0.0  # and backwards
    assert d.observe(wall=1430.0, mono=55.0) == 30.0


def test_policy_probe_decides_on_this_host() -> None:
    from tether.liveness import OwnerInfo, Verdict, judge

    probed: list[int] = []

    def here(owner: OwnerInfo, found: Probe, quiet_for: float = float("inf")) -> Verdict:
        def probe(pid: int, start: int | None) -> Probe:
            probed.append(pid)
            return found

        return judge(
            owner,
            host=ME.host,
            boot_id=ME.boot_id,
            pid_ns=ME.pid_ns,
            now=1000.0,
            probe=probe,
            quiet_for=quiet_for,
        )

    owner = OwnerInfo("o", ME.host, ME.boot_id, 10, 5, "cli", 0.0, 0.0, ME.pid_ns, 30.0)
    stale_alive = here(owner, Probe.ALIVE)
    assert stale_alive.alive and stale_alive.hung  # a stopped or hung process: reported only
    gone = here(owner, Probe.GONE)
    assert not gone.alive and gone.detail == "pid 10 gone"
    probed.clear()
    other_ns = dataclasses.replace(owner, pid_ns="4026531999", heartbeat_at=990.0)
    assert here(other_ns, Probe.GONE).alive and probed == []  # another namespace: no probe
    stale = here(dataclasses.replace(other_ns, heartbeat_at=960.0), Probe.GONE)
    assert not stale.alive and stale.detail == "heartbeat stale 40 s"
    # The reaper paused less than a lease ago: no verdict by heartbeat yet.
    assert here(dataclasses.replace(other_ns, heartbeat_at=960.0), Probe.GONE, 29.0).alive
    assert probed == []


def test_identity_includes_the_pid_namespace() -> None:
    ns = os.stat("/proc/self/ns/pid").st_ino
    assert ME.pid_ns == str(ns)


# --- schema 2 on a database of schema 1 --------------------------------------------------------


def test_schema_1_owners_get_a_lease_and_are_judged_by_it(db_path: str) -> None:
    """Rows of owners written before schema 2 carry no namespace: judged by the default lease."""
    from tether.store.sqlite.schema import APPLICATION_ID, MIGRATIONS

    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN")
    for stmt in MIGRATIONS[0][1]:
        conn.execute(stmt)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    now = time.time()
    conn.execute(
        "INSERT INTO owners VALUES ('old', ?, ?, 1, 1, 'cli', ?, ?)",
        (ME.host, ME.boot_id, now - 20, now - 20),
    )
    conn.execute(
        "INSERT INTO sessions (id, source, root_id, created_at, last_active_at, owner_id,"
        " chain_tip_id, chain_last_active_at) VALUES ('s1', 'cli', 's1', ?, ?, 'old', 's1', ?)",
        (now, now, now),
    )
    conn.execute("COMMIT")
    conn.close()
    store = tether.open_store(db_path, load_plugins=False)
    try:
        row = store.backend.read(
            lambda c: c.execute("SELECT pid_ns, lease FROM owners WHERE id = 'old'").fetchone()
        )
        assert tuple(row) == (None, 30.0)
        # pid 1 here is not its process (it ran before namespaces were recorded): no probe.
        assert Reaper(store).sweep().reaped == [] and is_open(store, "s1")
        clock = tether.ManualClock(now + 11)
        [reaped] = Reaper(store, clock=clock).sweep().reaped
        assert reaped.id == "s1" and reaped.detail == "heartbeat stale 31 s"
    finally:
        store.close()


def test_a_forked_child_is_a_new_owner_and_drops_its_row_at_exit(db_path: str) -> None:
    proc = spawn(
        """
        store = tether.open_store(sys.argv[1], heartbeat_interval=0.2, owner_ttl=2)
        h = store.session(source="parent")
        h.append("user", "p")
        pid = os.fork()
        if pid == 0:
            c = store.session(source="child")
            c.append("user", "c")
            print("child", store.owner_id, c.id, flush=True)
            sys.exit(0)  # the exit path ends c and drops the child's owner row
        os.waitpid(pid, 0)
        print("parent", store.owner_id, h.id, flush=True)
        """,
        db_path,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    (child_owner, child_sid), (parent_owner, parent_sid) = (
        lines["child"].split(),
        lines["parent"].split(),
    )
    assert child_owner != parent_owner
    store = tether.open_store(db_path, load_plugins=False)
    try:
        assert store.get_session(child_sid).end_reason == "process_exit"
        assert store.get_session(parent_sid).end_reason == "process_exit"
        rows = store.backend.read(lambda c: c.execute("SELECT id FROM owners").fetchall())
        assert rows == []  # both rows dropped on the way out
    finally:
        store.close()
