"""Liveness: owners, heartbeats, the reaper, takeover and fencing."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest

import tether
from tether.compose import Store
from tether.liveness import OwnerInfo, Probe, ProcessIdentity, Reaper, ReaperLoop, judge, probe_pid
from tether.liveness.identity import pid_start_time
from tether.store import sql

from .conftest import child_env, spawn, wait_for_line

ME = ProcessIdentity.current()
FAR = ProcessIdentity("far-away-host", "boot-far", 4242, 77)


def owned_sessions(
    store: Store,
    identity: ProcessIdentity,
    n: int,
    heartbeat_at: float,
    *,
    lease: float = 30.0,
) -> list[str]:
    """Write ``n`` open sessions owned by a process with ``identity`` (as if it ran elsewhere)."""
    owner_id = tether.ids.new_id()
    ids = [tether.ids.new_id() for _ in range(n)]
    values = {
        "host": identity.host,
        "boot_id": identity.boot_id,
        "pid": identity.pid,
        "pid_start_time": identity.start_time,
        "pid_ns": getattr(identity, "pid_ns", None),
        "lease": lease,
        "kind": "test",
        "started_at": heartbeat_at,
        "heartbeat_at": heartbeat_at,
    }
    columns = [c.strip() for c in sql.OWNER_COLUMNS.split(",")]
    insert_owner = f"INSERT INTO owners (id, {', '.join(columns)}) VALUES (?{', ?' * len(columns)})"

    def tx(c):  # type: ignore[no-untyped-def]
        c.execute(insert_owner, (owner_id, *(values[k] for k in columns)))
        for sid in ids:
            c.execute(
                sql.INSERT_SESSION,
                sql.new_session_params(
                    id=sid,
                    source="test",
                    root_id=sid,
                    created_at=heartbeat_at,
                    last_active_at=heartbeat_at,
                    owner_id=owner_id,
                    chain_tip_id=sid,
                    chain_last_active_at=heartbeat_at,
                ),
            )

    store.backend.write(tx)
    return ids


def legacy_session(store: Store, at: float) -> str:
    """An open session without owner, last active at ``at`` (as if written before owners)."""
    sid = tether.ids.new_id()
    store.backend.write(
        lambda c: c.execute(
            sql.INSERT_SESSION,
            sql.new_session_params(
                id=sid,
                source="import",
                root_id=sid,
                created_at=at,
                last_active_at=at,
                chain_tip_id=sid,
                chain_last_active_at=at,
            ),
        )
    )
    return sid


def is_open(store: Store, sid: str) -> bool:
    return store.get_session(sid).is_open


# --- the pure policy ----------------------------------------------------------------


def _owner(**kw) -> OwnerInfo:  # type: ignore[no-untyped-def]
    base = dict(
        id="o",
        host=ME.host,
        boot_id=ME.boot_id,
        pid=10,
        pid_start_time=5,
        kind="cli",
        started_at=0.0,
        heartbeat_at=100.0,
        pid_ns=ME.pid_ns,
        lease=30.0,
    )
    base.update(kw)
    return OwnerInfo(**base)  # type: ignore[arg-type]


def _judge(owner: OwnerInfo, probe=Probe.ALIVE, now: float = 110.0):  # type: ignore[no-untyped-def]
    return judge(
        owner,
        host=ME.host,
        boot_id=ME.boot_id,
        pid_ns=ME.pid_ns,
        now=now,
        probe=lambda pid, start: probe,
    )


def test_policy_same_host_uses_the_pid() -> None:
    assert _judge(_owner(), Probe.GONE).detail == "pid 10 gone"
    assert _judge(_owner(), Probe.REUSED).detail == "pid 10 reused"
    assert _judge(_owner(), Probe.ALIVE).alive
    # A process that stopped beating (SIGSTOP, a hung interpreter) but is there is
    # alive: reported as hung, never reaped.
    stale = _judge(_owner(), Probe.ALIVE, now=141.0)
    assert stale.alive and stale.hung and stale.detail == "alive, no heartbeat for 41 s"
    # Gone is gone at once, however fresh the heartbeat.
    assert not _judge(_owner(heartbeat_at=110.0), Probe.GONE).alive


def test_policy_reboot_and_remote_hosts() -> None:
    # Another boot of a host with this name: not probed, judged by its lease.
    other_boot = _owner(boot_id="older-boot")
    assert _judge(other_boot, Probe.GONE).alive
    assert _judge(other_boot, Probe.GONE, now=131.0).detail == "heartbeat stale 31 s"
    probed = []
    remote = _owner(host="elsewhere")
    verdict = judge(
        remote,
        host=ME.host,
        boot_id=ME.boot_id,
        pid_ns=ME.pid_ns,
        now=129.0,
        ttl=30.0,
        probe=lambda pid, start: probed.append(pid) or Probe.GONE,
    )
    assert verdict.alive and probed == []  # a remote pid is never probed here
    assert not _judge(remote, now=131.0).alive


# --- process identity ---------------------------------------------------------------


def test_identity_and_probe() -> None:
    me = ProcessIdentity.current()
    assert me.pid == os.getpid() and me.start_time == pid_start_time(os.getpid())
    assert len(me.boot_id) > 8
    assert probe_pid(me.pid, me.start_time) is Probe.ALIVE
    assert probe_pid(me.pid, (me.start_time or 0) + 1) is Probe.REUSED
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert probe_pid(child.pid, None) is Probe.GONE
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(0.5)  # exited but not waited for: a zombie
    assert probe_pid(zombie.pid, None) is Probe.GONE
    zombie.wait()


# --- owners and heartbeats -------------------------------------------------------------


def test_first_session_registers_the_owner_and_starts_the_heartbeat(db_url: str) -> None:
    store = tether.open_store(
        db_url, kind="cron", heartbeat_interval=0.05, owner_ttl=5, load_plugins=False
    )
    assert store.owner_id is None
    h = store.session(source="cron")
    assert not store._owner.beating  # nothing written, nothing owned
    h.append("user", "x")
    s = store.get_session(h.id)
    assert s.owner_id == store.owner_id and s.epoch == 0
    row = store.backend.read(lambda c: c.execute(sql.SELECT_OWNER, (s.owner_id,)).fetchone())
    assert row[1:6] == (ME.host, ME.boot_id, os.getpid(), ME.start_time, "cron")
    assert store._owner.beating
    last_active = s.last_active_at
    time.sleep(0.3)
    row2 = store.backend.read(lambda c: c.execute(sql.SELECT_OWNER, (s.owner_id,)).fetchone())
    assert row2[7] > row[7]  # the heartbeat moved...
    assert store.get_session(h.id).last_active_at == last_active  # ...activity did not
    h.end()
    assert not store._owner.beating  # the last owned session stops it
    store.close()
    assert store.backend  # closed store dropped its idle owner row:
    s2 = tether.open_store(db_url, load_plugins=False)
    assert s2.backend.read(lambda c: c.execute("SELECT count(*) FROM owners").fetchone()[0]) == 0
    s2.close()


def test_sessions_one_after_another_share_one_heartbeat_thread(db_path: str) -> None:
    """Starting and joining a thread per session cost ~350 µs each (issue #15): the
    thread stays, idle, between sessions, and writes nothing while nothing is owned."""
    store = tether.open_store(db_path, heartbeat_interval=0.02, owner_ttl=5, load_plugins=False)
    h = store.session(source="one")
    h.append("user", "x")
    thread = store._owner._thread
    h.end()
    assert not store._owner.beating and thread.is_alive()
    beats = thread.beats
    time.sleep(0.2)  # ~10 idle ticks
    assert thread.beats == beats  # nothing owned: nothing written
    for _ in range(3):
        h = store.session(source="next")
        h.append("user", "x")
        assert store._owner._thread is thread and store._owner.beating
        h.end()
    h = store.session(source="last")
    h.append("user", "x")
    deadline = time.monotonic() + 20
    while thread.beats == beats and time.monotonic() < deadline:
        time.sleep(0.01)
    assert thread.beats > beats  # owning again: it beats again
    h.end()
    store.close()
    assert not thread.is_alive()


def test_sessions_in_quick_succession_write_the_owner_row_once(db_path: str) -> None:
    """The owner row is not rewritten by a session started right after it was
    written (issue #15), and never gets older than half the lease for it."""
    store = tether.open_store(db_path, heartbeat_interval=1.0, owner_ttl=30, load_plugins=False)
    assert store.owner._fresh_window == 0.5
    statements: list[str] = []
    store.backend._writer.set_trace_callback(statements.append)

    def upserts_for_one_session() -> int:
        before = len(statements)
        h = store.session(source="quick")
        h.append("user", "x")
        h.end()
        return sum("INSERT INTO owners" in s for s in statements[before:])

    assert upserts_for_one_session() == 1
    assert upserts_for_one_session() == 0  # written a moment ago
    s = store.list_sessions(include_empty=True).items[0].session
    assert s.owner_id == store.owner_id  # still owned by this process's row
    time.sleep(0.6)
    assert upserts_for_one_session() == 1  # past the window: written again
    store.backend._writer.set_trace_callback(None)
    store.close()
    # A lease too short for a skip: always written.
    tight = tether.open_store(db_path, heartbeat_interval=10, owner_ttl=20, load_plugins=False)
    assert tight.owner._fresh_window == 0.0
    tight.close()


def test_heartbeat_is_one_write_per_tick_whatever_the_sessions(db_path: str) -> None:
    store = tether.open_store(db_path, heartbeat_interval=0.05, owner_ttl=5, load_plugins=False)
    handles = [store.session(source="many") for _ in range(200)]
    for h in handles:
        h.append("user", "x")
    statements: list[str] = []
    store.backend._writer.set_trace_callback(statements.append)
    thread = store._owner._thread
    beats_before = thread.beats
    time.sleep(0.5)
    store.backend._writer.set_trace_callback(None)
    beats = thread.beats - beats_before
    upserts = [s for s in statements if "INSERT INTO owners" in s]
    assert beats >= 3
    assert len(upserts) == beats  # one statement per tick, not one per session
    assert not any("UPDATE sessions" in s for s in statements)
    for h in handles:
        h.end()
    store.close()


def test_a_failing_beat_is_retried_never_raised(db_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store = tether.open_store(db_url, heartbeat_interval=0.05, owner_ttl=5, load_plugins=False)
    real = store.beat
    calls = {"n": 0}

    def flaky(row):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] <= 2:
            raise tether.StoreBusyError("simulated lock")
        real(row)

    monkeypatch.setattr(store, "beat", flaky)
    h = store.session(source="x")
    h.append("user", "x")
    deadline = time.time() + 10
    while store._owner._thread.beats < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert store._owner._thread.beats >= 2 and calls["n"] >= 4
    h.end()
    store.close()


# --- the reaper ---------------------------------------------------------------------


def test_remote_owner_is_reaped_only_after_the_ttl(store: Store, clock: tether.ManualClock) -> None:
    ids = owned_sessions(store, FAR, 3, heartbeat_at=clock.now())
    reaper = Reaper(store, clock=clock, ttl=30.0)
    clock.advance(29)
    assert reaper.sweep().reaped == []
    assert all(is_open(store, i) for i in ids)
    clock.advance(12)
    report = reaper.sweep()
    assert sorted(r.id for r in report.reaped) == sorted(ids)
    assert {r.detail for r in report.reaped} == {"heartbeat stale 41 s"}
    for sid in ids:
        s = store.get_session(sid)
        assert s.end_reason == "reaped" and s.end_detail == "heartbeat stale 41 s"
    assert reaper.sweep().reaped == []  # exactly once


def test_dead_pid_on_this_host_and_another_boot(store: Store, clock: tether.ManualClock) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = dataclasses.replace(ME, pid=child.pid, start_time=1)
    gone = owned_sessions(store, dead, 2, clock.now())
    reused = owned_sessions(
        store, dataclasses.replace(ME, start_time=(ME.start_time or 0) + 9), 1, clock.now()
    )
    other_boot = owned_sessions(store, dataclasses.replace(ME, boot_id="old-boot"), 1, clock.now())
    alive = owned_sessions(store, ME, 1, clock.now())  # this very process: never reaped
    report = Reaper(store, clock=clock).sweep()  # no lease needed: death is certain
    details = {r.id: r.detail for r in report.reaped}
    assert details == {
        **{i: f"pid {child.pid} gone" for i in gone},
        reused[0]: f"pid {os.getpid()} reused",
    }
    assert is_open(store, alive[0])
    assert is_open(store, other_boot[0])  # another boot: judged by its lease, not at once


def test_unowned_legacy_rows_are_never_reaped(store: Store, clock: tether.ManualClock) -> None:
    legacy = legacy_session(store, at=0.0)
    clock.advance(10**6)
    assert Reaper(store, clock=clock).sweep().reaped == []
    assert is_open(store, legacy)


def test_reaping_fires_interrupted_hooks(store: Store, clock: tether.ManualClock) -> None:
    seen = []

    class Hook:
        @tether.hookimpl
        def on_session_end(self, session, reason, interrupted):  # type: ignore[no-untyped-def]
            seen.append((session.id, reason, interrupted, session.end_detail))

    store.plugins.register(Hook())
    [sid] = owned_sessions(store, FAR, 1, heartbeat_at=clock.now())
    clock.advance(100)
    Reaper(store, clock=clock).sweep()
    assert seen == [(sid, "reaped", True, "heartbeat stale 100 s")]


def test_an_owner_that_beats_in_between_is_not_reaped(
    store: Store, clock: tether.ManualClock
) -> None:
    [sid] = owned_sessions(store, FAR, 1, heartbeat_at=clock.now())
    clock.advance(100)
    reaper = Reaper(store, clock=clock)
    [state] = reaper.classify()
    assert not state.verdict.alive
    # The owner beats after the reaper judged it, before the reaper writes.
    store.backend.write(
        lambda c: c.execute(
            "UPDATE owners SET heartbeat_at = ? WHERE id = ?", (clock.now(), state.owner_id)
        )
    )
    ended = store.reap([(state.owner_id, state.info.heartbeat_at, "stale")], prune_before=0)
    assert list(ended) == [] and is_open(store, sid)


def reap_events(store: Store, ids: list[str]) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """The events of these sessions: kind and data (parsed), per session."""
    rows = store.backend.read(
        lambda c: c.execute(
            f"SELECT session_id, kind, data FROM events WHERE session_id IN "
            f"({', '.join('?' * len(ids))}) ORDER BY id",
            ids,
        ).fetchall()
    )
    out: dict[str, list[tuple[str, dict[str, str]]]] = {i: [] for i in ids}
    for sid, kind, data in rows:
        out[sid].append((kind, data if isinstance(data, dict) else json.loads(data)))
    return out


def owner_of(store: Store, sid: str) -> str:
    owner = store.get_session(sid).owner_id
    assert owner is not None
    return owner


@pytest.mark.parametrize("batch", [None, 1, 2])
def test_a_sweep_ends_each_session_once_with_one_event(
    store: Store, clock: tether.ManualClock, batch: int | None
) -> None:
    owners = [owned_sessions(store, FAR, 3, heartbeat_at=clock.now()) for _ in range(5)]
    clock.advance(100)
    report = Reaper(store, clock=clock, batch=batch).sweep()
    ids = [i for group in owners for i in group]
    assert sorted(r.id for r in report.reaped) == sorted(ids) and report.dead_owners == 5
    events = reap_events(store, ids)
    for group in owners:
        owner = owner_of(store, group[0])
        for sid in group:
            s = store.get_session(sid)
            assert (s.end_reason, s.end_detail) == ("reaped", "heartbeat stale 100 s")
            assert events[sid] == [("reaped", {"owner": owner, "detail": "heartbeat stale 100 s"})]
    assert Reaper(store, clock=clock, batch=batch).sweep().reaped == []  # exactly once
    assert reap_events(store, ids) == events


def test_a_batched_sweep_runs_each_ends_hooks_once_and_leaves_none_due(
    store: Store, clock: tether.ManualClock
) -> None:
    seen = []

    class Hook:
        @tether.hookimpl
        def on_session_end(self, session, reason, interrupted):  # type: ignore[no-untyped-def]
            seen.append((session.id, reason, interrupted))

    store.plugins.register(Hook())
    ids = [i for _ in range(3) for i in owned_sessions(store, FAR, 2, heartbeat_at=clock.now())]
    clock.advance(100)
    assert sorted(r.id for r in Reaper(store, clock=clock, batch=2).sweep().reaped) == sorted(ids)
    assert sorted(seen) == sorted((i, "reaped", True) for i in ids)
    due = store.backend.read(
        lambda c: c.execute("SELECT COUNT(*) FROM events WHERE hooks_due_by IS NOT NULL").fetchone()
    )
    assert due[0] == 0


def test_a_batch_must_hold_an_owner(store: Store) -> None:
    with pytest.raises(ValueError, match="batch must be at least 1"):
        Reaper(store, batch=0)


def test_one_reap_spares_exactly_the_owners_no_longer_as_judged(
    store: Store, clock: tether.ManualClock
) -> None:
    dead = owned_sessions(store, FAR, 2, heartbeat_at=clock.now())
    beats = owned_sessions(store, FAR, 2, heartbeat_at=clock.now())
    ended_meanwhile = owned_sessions(store, FAR, 2, heartbeat_at=clock.now())
    missing = owned_sessions(store, FAR, 2, heartbeat_at=clock.now())
    back = owned_sessions(store, FAR, 1, heartbeat_at=clock.now())
    for sid in (missing[0], back[0]):  # owners whose rows are gone
        store.backend.write(
            lambda c, o=owner_of(store, sid): c.execute("DELETE FROM owners WHERE id = ?", (o,))
        )
    clock.advance(100)
    reaper = Reaper(store, clock=clock)
    states = {s.owner_id: s for s in reaper.classify()}
    assert not any(s.verdict.alive for s in states.values())
    # Between the verdicts and the reap: one owner beats, one session ends on its
    # own, and one missing owner row comes back.
    store.backend.write(
        lambda c: c.execute(
            "UPDATE owners SET heartbeat_at = ? WHERE id = ?",
            (clock.now(), owner_of(store, beats[0])),
        )
    )
    store.end_session(ended_meanwhile[0], "completed")
    store.backend.write(
        lambda c: c.execute(
            f"INSERT INTO owners (id, {sql.OWNER_COLUMNS}) VALUES (?, 'h', 'b', 1, 1, 'test', ?, ?,"
            " NULL, 30.0)",
            (owner_of(store, back[0]), clock.now(), clock.now()),
        )
    )
    judged = [
        (o, s.info.heartbeat_at if s.info else None, s.verdict.detail) for o, s in states.items()
    ]
    ended = store.reap(judged, prune_before=None)
    assert sorted(r[0] for r in ended) == sorted([*dead, ended_meanwhile[1], *missing])
    assert {r[0]: r[2] for r in ended}[missing[0]] == "owner record missing"
    assert all(is_open(store, i) for i in [*beats, *back])
    assert store.get_session(ended_meanwhile[0]).end_reason == "completed"  # the first end wins
    events = reap_events(store, [*beats, *back, ended_meanwhile[0]])
    assert [k for e in events.values() for k, _ in e if k == "reaped"] == []


def test_a_reap_leaves_nothing_behind_for_the_next(store: Store, clock: tether.ManualClock) -> None:
    first = owned_sessions(store, FAR, 1, heartbeat_at=clock.now())
    owner = owner_of(store, first[0])
    clock.advance(100)
    [state] = Reaper(store, clock=clock).classify()
    assert state.info is not None
    assert [
        r[0] for r in store.reap([(owner, state.info.heartbeat_at, "x")], prune_before=None)
    ] == first
    # The same owner, its heartbeat unchanged, gets a new open session (as a
    # takeover could leave it); reaping someone else must not touch it.
    [later] = owned_sessions(store, FAR, 1, heartbeat_at=clock.now())
    other = owner_of(store, later)
    store.backend.write(
        lambda c: c.execute("UPDATE sessions SET owner_id = ? WHERE id = ?", (owner, later))
    )
    [second] = owned_sessions(store, FAR, 1, heartbeat_at=clock.now())
    beat = store.backend.read(
        lambda c: c.execute(
            "SELECT heartbeat_at FROM owners WHERE id = ?", (owner_of(store, second),)
        ).fetchone()[0]
    )
    ended = store.reap([(owner_of(store, second), beat, "y")], prune_before=None)
    assert [r[0] for r in ended] == [second]
    assert is_open(store, later) and other != owner


def test_a_sqlite_reap_is_per_owner_and_returns_nothing_from_its_update(
    sqlite_store: Store, clock: tether.ManualClock
) -> None:
    """Issue #15: the reap's statements are per owner (no session id is ever a
    parameter, each looks its owners' sessions up in the open-sessions index,
    none scans them), and its UPDATE has no RETURNING: at 10,000 sessions that
    costs SQLite a third of the UPDATE again, where the sessions to end are read
    once, before."""
    store = sqlite_store
    ids = [i for _ in range(3) for i in owned_sessions(store, FAR, 4, heartbeat_at=clock.now())]
    clock.advance(100)
    statements: list[str] = []
    writer = store.backend._writer
    writer.set_trace_callback(statements.append)
    try:
        report = Reaper(store, clock=clock).sweep()
    finally:
        writer.set_trace_callback(None)
    assert sorted(r.id for r in report.reaped) == sorted(ids)
    assert all(store.get_session(i).end_reason == "reaped" for i in ids)
    assert not any(sid in s for s in statements for sid in ids)
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE SESSIONS")]
    assert updates and not any("RETURNING" in s.upper() for s in updates), updates
    reads = [s for s in statements if re.search(r"\bsessions\b", s) and "EXPLAIN" not in s]
    for statement in reads:
        plan = store.backend.write(
            lambda c, s=statement: [r[3] for r in c.execute("EXPLAIN QUERY PLAN " + s)]
        )
        assert not any(re.match(r"SCAN (s|sessions)\b", d) for d in plan), (statement, plan)


def test_concurrent_reapers_end_each_session_once(db_url: str) -> None:
    clock = tether.ManualClock()
    stores = [tether.open_store(db_url, clock=clock, load_plugins=False) for _ in range(4)]
    try:
        for round_ in range(5):
            ids = []
            for k in range(20):
                ident = ProcessIdentity(f"host-{round_}-{k}", "b", 100 + k, 1)
                ids += owned_sessions(stores[0], ident, 5, heartbeat_at=clock.now())
            clock.advance(60)
            barrier = threading.Barrier(len(stores))
            results: list[list[str]] = [[] for _ in stores]

            def sweep(i: int, barrier: threading.Barrier, results: list[list[str]]) -> None:
                barrier.wait()
                results[i] = [r.id for r in Reaper(stores[i], clock=clock).sweep().reaped]

            threads = [
                threading.Thread(target=sweep, args=(i, barrier, results))
                for i in range(len(stores))
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            everything = [x for r in results for x in r]
            assert sorted(everything) == sorted(ids)  # the counts add up, no session twice
            assert not any(is_open(stores[0], i) for i in ids)
    finally:
        for s in stores:
            s.close()


# --- several hosts, one database ------------------------------------------------------------


def _sweep_together(reapers: list[Reaper]) -> list[list[str]]:
    """Every reaper sweeps at the same moment, each from its own thread and store."""
    barrier = threading.Barrier(len(reapers))
    results: list[list[str]] = [[] for _ in reapers]

    def sweep(i: int) -> None:
        barrier.wait()
        results[i] = [r.id for r in reapers[i].sweep().reaped]

    threads = [threading.Thread(target=sweep, args=(i,)) for i in range(len(reapers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_reapers_on_several_hosts(db_url: str) -> None:
    """Hosts a, b and c share one database; reapers on a and b sweep at once.

    A reaper judges owners of its own host by their pid and owners of other
    hosts by their heartbeat only: it never probes (let alone reaps) a live
    owner elsewhere, and reaps a silent one only once the TTL has passed.
    """
    clock = tether.ManualClock()
    host = {
        name: ProcessIdentity(f"host-{name}", f"boot-{name}", 0, None) for name in ("a", "b", "c")
    }
    pids = iter(range(10_000, 20_000))
    sessions: dict[str, list[str]] = {}
    owners_of: dict[str, list[tuple[int, str]]] = {}
    stores = [tether.open_store(db_url, clock=clock, load_plugins=False) for _ in range(4)]
    try:
        for group, name, beat in (
            ("a_dead", "a", 0),  # pid gone on a
            ("a_live", "a", 0),  # running on a
            ("b_live", "b", 0),  # fresh heartbeat on b
            ("c_silent", "c", -100),  # stopped beating 100 s ago on c
        ):
            sessions[group], owners_of[group] = [], []
            for _ in range(5):
                pid = next(pids)
                ident = ProcessIdentity(host[name].host, host[name].boot_id, pid, 1)
                sessions[group] += owned_sessions(stores[0], ident, 3, clock.now() + beat)
                owners_of[group].append((pid, host[name].host))
        dead_pids = {pid for pid, _ in owners_of["a_dead"]}
        probed: dict[str, list[int]] = {"a": [], "b": []}

        def probe_on(name: str):  # type: ignore[no-untyped-def]
            def probe(pid: int, start: int | None) -> Probe:
                probed[name].append(pid)
                return Probe.GONE if pid in dead_pids else Probe.ALIVE

            return probe

        # Two reapers on host a and two on host b, each with a store of its own.
        reapers = [
            Reaper(s, clock=clock, ttl=30.0, identity=host[n], probe=probe_on(n))
            for s, n in zip(stores, "aabb", strict=True)
        ]
        results = _sweep_together(reapers)
        everything = sorted(x for r in results for x in r)
        assert everything == sorted(sessions["a_dead"] + sessions["c_silent"])  # each once
        assert not set(results[2] + results[3]) & set(sessions["a_dead"])  # b never probes a
        a_pids = {pid for pid, _ in owners_of["a_dead"] + owners_of["a_live"]}
        b_pids = {pid for pid, _ in owners_of["b_live"]}
        assert set(probed["a"]) <= a_pids and set(probed["b"]) <= b_pids
        assert all(is_open(stores[0], sid) for sid in sessions["a_live"] + sessions["b_live"])

        # Within the TTL nothing more is reaped; past it, the owners that stopped beating are.
        clock.advance(20)
        assert [x for r in _sweep_together(reapers) for x in r] == []
        stores[0].backend.write(  # the owners on a keep beating; those on b fell silent
            lambda c: c.execute(
                "UPDATE owners SET heartbeat_at = ? WHERE host = ?", (clock.now(), "host-a")
            )
        )
        clock.advance(15)
        second = sorted(x for r in _sweep_together(reapers) for x in r)
        assert second == sorted(sessions["b_live"])
        assert all(is_open(stores[0], sid) for sid in sessions["a_live"])
        details = {stores[0].get_session(sid).end_detail for sid in second}
        assert details == {"heartbeat stale 35 s"}
    finally:
        for s in stores:
            s.close()


REMOTE_REAPER = """
import json, sys, time, tether
from tether.liveness import ProcessIdentity, Reaper
store = tether.open_store(sys.argv[1], load_plugins=False)
reaper = Reaper(store, identity=ProcessIdentity(sys.argv[2], "boot", 1, None))
start = float(sys.argv[3])
while time.time() < start:
    pass
print(json.dumps([r.id for r in reaper.sweep().reaped]))
"""


@pytest.mark.slow
def test_reapers_in_several_processes_share_the_work(db_url: str) -> None:
    """Four processes, each a reaper on a host of its own, sweep one database at once."""
    import json

    store = tether.open_store(db_url, load_plugins=False)
    ids = []
    for k in range(40):  # silent owners of 40 hosts, 5 sessions each
        ident = ProcessIdentity(f"gone-{k}", "b", 100 + k, 1)
        ids += owned_sessions(store, ident, 5, heartbeat_at=time.time() - 600)
    live = owned_sessions(store, FAR, 5, heartbeat_at=time.time() + 3600)
    start = str(time.time() + 2.0)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", REMOTE_REAPER, db_url, f"reaper-{n}", start],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for n in range(4)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert sorted(x for r in results for x in r) == sorted(ids)  # each ended exactly once
    assert all(is_open(store, sid) for sid in live)
    assert store.census().end_reasons == {"reaped": len(ids)}
    store.close()


def test_reaper_loop_ends_a_killed_process_quickly(db_url: str) -> None:
    proc = spawn(
        """
        store = tether.open_store(sys.argv[1], heartbeat_interval=0.5, owner_ttl=5)
        h = store.session(source="victim")
        h.append("user", "acknowledged")
        print(h.id, flush=True)
        print("ready", flush=True)
        idle()
        """,
        db_url,
    )
    assert proc.stdout is not None
    sid = proc.stdout.readline().strip()
    wait_for_line(proc, "ready")
    store = tether.open_store(db_url, load_plugins=False)
    with ReaperLoop(store, interval=0.2):
        proc.kill()
        proc.wait()
        deadline = time.time() + 10
        while is_open(store, sid) and time.time() < deadline:
            time.sleep(0.05)
    s = store.get_session(sid)
    assert s.end_reason == "reaped" and s.end_detail == f"pid {proc.pid} gone"
    assert [m.content for m in store.get_messages(sid)] == ["acknowledged"]
    store.close()


def test_startup_sweep_reaps_dead_processes(db_url: str) -> None:
    proc = spawn(
        """
        store = tether.open_store(sys.argv[1])
        h = store.session(source="victim")
        h.append("user", "x")
        print(h.id, flush=True)
        os.kill(os.getpid(), 9)
        """,
        db_url,
    )
    out, _ = proc.communicate(timeout=20)
    sid = out.strip()
    store = tether.open_store(db_url, load_plugins=False)
    assert is_open(store, sid)
    h = store.session(source="next")
    h.append("user", "first write of a new process")  # starts the heartbeat + startup sweep
    deadline = time.time() + 10
    while is_open(store, sid) and time.time() < deadline:
        time.sleep(0.05)
    assert store.get_session(sid).end_reason == "reaped"
    h.end()
    store.close()


# --- a live owner is never reaped --------------------------------------------------------


BLOCKER = """
store = tether.open_store(sys.argv[1], heartbeat_interval=0.2, owner_ttl=1.0)
h = store.session(source="tool-call")
h.append("user", "run the long tool")
print(h.id, flush=True)
print("ready", flush=True)
time.sleep(float(sys.argv[2]))  # the main thread is busy in a "tool call"
h.append("tool", "done after a long time", tool_call_id="t1", tool_name="slow")
h.end()
print("finished", flush=True)
"""


@pytest.mark.slow
def test_a_process_blocked_in_a_long_tool_call_is_not_reaped(db_url: str) -> None:
    proc = spawn(BLOCKER, db_url, "3")
    assert proc.stdout is not None
    sid = proc.stdout.readline().strip()
    wait_for_line(proc, "ready")
    store = tether.open_store(db_url, load_plugins=False)
    # Judge it as a remote reaper would (heartbeat only) and as a local one (pid too).
    remote = Reaper(store, ttl=1.0, identity=FAR)
    local = Reaper(store, ttl=1.0)
    end = time.time() + 2.5
    while time.time() < end:  # well past the TTL, several times over
        assert remote.sweep().reaped == [] and local.sweep().reaped == []
        time.sleep(0.1)
    wait_for_line(proc, "finished")
    assert proc.wait(timeout=10) == 0
    s = store.get_session(sid)
    assert s.end_reason == "completed" and s.message_count == 2
    store.close()


@pytest.mark.slow
def test_a_frozen_process_reaped_from_another_host_is_fenced_when_it_wakes(db_url: str) -> None:
    """A reaper on another host cannot probe a stopped process: past its lease it is dead
    there. (Reapers on its own host find it and leave it: see test_liveness_faults.)"""
    import signal

    proc = spawn(
        """
        store = tether.open_store(sys.argv[1], heartbeat_interval=0.2, owner_ttl=1.0)
        h = store.session(source="frozen")
        h.append("user", "before")
        print(h.id, flush=True)
        print("ready", flush=True)
        time.sleep(1.5)  # frozen by SIGSTOP somewhere in here
        try:
            h.append("user", "after waking")
        except tether.SessionEndedError as exc:
            print("refused:", exc, flush=True)
        """,
        db_url,
    )
    assert proc.stdout is not None
    sid = proc.stdout.readline().strip()
    wait_for_line(proc, "ready")
    proc.send_signal(signal.SIGSTOP)  # its heartbeat thread stops too
    store = tether.open_store(db_url, load_plugins=False)
    reaper = Reaper(store, identity=FAR)
    deadline = time.time() + 10
    try:
        while is_open(store, sid) and time.time() < deadline:
            reaper.sweep()
            time.sleep(0.1)
        assert store.get_session(sid).end_detail.startswith("heartbeat stale")
    finally:
        proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=20)
    assert "refused: session" in out and "(reaped)" in out, (out, err)
    assert [m.content for m in store.get_messages(sid)] == ["before"]
    store.close()


# --- takeover and fencing ----------------------------------------------------------------


@pytest.mark.slow
def test_takeover_fences_the_previous_owner(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = spawn(
        """
        store = tether.open_store(sys.argv[1], heartbeat_interval=0.2, owner_ttl=5)
        h = store.session(source="first")
        for i in range(3):
            h.append("user", f"old owner {i}")
        print(h.id, flush=True)
        print("ready", flush=True)
        while not os.path.exists(sys.argv[2]):
            time.sleep(0.05)
        try:
            h.append("user", "late write")
        except tether.StaleOwnerError as exc:
            print("fenced:", exc, flush=True)
        print("end returns", h.end(), flush=True)
        """,
        db_url,
        str(tmp_path / "go"),
    )
    assert proc.stdout is not None
    sid = proc.stdout.readline().strip()
    wait_for_line(proc, "ready")
    store = tether.open_store(db_url, load_plugins=False)
    with pytest.raises(tether.OwnerAliveError, match="live process"):
        store.resume(sid)
    h = store.resume(sid, force=True)
    assert h.epoch == 1 and store.get_session(sid).owner_id == store.owner_id
    assert h.append("assistant", "new owner").seq == 4
    (tmp_path / "go").touch()
    out, err = proc.communicate(timeout=20)
    assert "fenced: session" in out and "epoch 0" in out, (out, err)
    assert "end returns False" in out  # the old owner cannot end what it no longer owns
    assert [m.content for m in store.get_messages(sid)] == [
        "old owner 0",
        "old owner 1",
        "old owner 2",
        "new owner",
    ]
    assert store.get_session(sid).is_open
    h.end()
    store.close()


def test_resume_after_the_owner_died_needs_no_force(db_url: str) -> None:
    proc = spawn(
        """
        store = tether.open_store(sys.argv[1])
        h = store.session(source="first")
        h.append("user", "before the crash")
        print(h.id, flush=True)
        os.kill(os.getpid(), 9)
        """,
        db_url,
    )
    sid = proc.communicate(timeout=20)[0].strip()
    store = tether.open_store(db_url, load_plugins=False, startup_sweep=False)
    h = store.resume(sid)
    assert h.epoch == 1
    h.append("assistant", "after the crash")
    assert [m.seq for m in store.get_messages(sid)] == [1, 2]
    h.end()
    with pytest.raises(tether.SessionEndedError):
        store.resume(sid)
    with pytest.raises(tether.SessionNotFoundError):
        store.resume("nope")
    store.close()


def test_resume_of_a_legacy_row_takes_ownership(store: Store) -> None:
    legacy = legacy_session(store, at=1.0)
    h = store.resume(legacy)
    assert h.append("user", "continued").seq == 1
    assert store.get_session(legacy).owner_id == store.owner_id
    h.end()


# --- legacy repair and the CLI ------------------------------------------------------------


def test_repair_unowned_dry_run_then_apply(store: Store) -> None:
    now = time.time()
    old, fresh = legacy_session(store, at=now - 7200), legacy_session(store, at=now - 60)
    assert [s.id for s in store.repair_unowned(3600)] == [old]
    assert is_open(store, old)  # a dry run changes nothing
    assert [s.id for s in store.repair_unowned(3600, apply=True)] == [old]
    s = store.get_session(old)
    assert s.end_reason == "abandoned" and "no owner" in s.end_detail
    assert is_open(store, fresh)


def test_cli_reap_and_doctor(db_url: str) -> None:
    from typer.testing import CliRunner

    from tether.cli.app import app

    store = tether.open_store(db_url, load_plugins=False)
    dead = owned_sessions(store, FAR, 2, heartbeat_at=time.time() - 600)
    live = owned_sessions(store, FAR, 1, heartbeat_at=time.time() + 3600)
    legacy = legacy_session(store, at=1.0)
    store.close()
    runner = CliRunner()
    import json

    doc = json.loads(runner.invoke(app, ["doctor", "--db", db_url, "--json"]).stdout)
    assert (doc["open_live_owner"], doc["open_dead_owner"], doc["open_no_owner"]) == (1, 2, 1)
    r = runner.invoke(app, ["reap", "--db", db_url, "--json"])
    data = json.loads(r.stdout)
    assert data["reaped"] == 2
    assert sorted(s["id"] for s in data["sessions"]) == sorted(dead)
    assert all(set(s) == {"id", "owner", "detail"} for s in data["sessions"])
    assert json.loads(runner.invoke(app, ["reap", "--db", db_url, "--json"]).stdout)["reaped"] == 0
    r = runner.invoke(app, ["doctor", "--db", db_url, "--repair", "--stale-after", "1h"])
    assert r.exit_code == 0 and f"would end {legacy}" in r.stdout
    r = runner.invoke(app, ["doctor", "--db", db_url, "--repair", "--stale-after", "1h", "--yes"])
    assert r.exit_code == 0 and "ended 1 session (" in r.stdout
    r = runner.invoke(app, ["doctor", "--db", db_url, "--repair"])
    assert r.exit_code != 0
    store = tether.open_store(db_url, load_plugins=False)
    assert store.get_session(legacy).end_reason == "abandoned"
    assert is_open(store, live[0])
    store.close()
