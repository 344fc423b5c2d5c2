"""Retention with consent (issue 14): prune to a trash, restore, purge, claims, policy.

Sessions are written by one store that is then closed (its owner gone), and
judged by a second store whose clock stands 100 days later: what ended then
is old enough to prune, and the writer's owner is long silent.
"""

from __future__ import annotations

import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

import tether
from tether.compose import Store
from tether.store.retention import RetentionPolicy

from .conftest import child_env, run_cli, spawn, wait_for_line

DAY = 86400.0


def write_chain(store: Store, n: int = 3, *, members: int = 1, end: bool = True, **kw: Any) -> str:
    """A chain of ``members`` sessions with ``n`` messages each; the root's id."""
    parent = None
    root = ""
    for k in range(members):
        h = store.session(source=kw.get("source", "cli"), parent_id=parent)
        for i in range(n):
            h.append("user" if i % 2 == 0 else "assistant", f"message {i} of {h.id} é")
        if end or k < members - 1:
            h.end(kw.get("reason", "completed"))
        root = root or h.id
        parent = h.id
    return root


def later(url: str, days: float = 100) -> Store:
    return tether.open_store(
        url, load_plugins=False, clock=tether.ManualClock(time.time() + days * DAY)
    )


def snapshot(store: Store, root: str) -> list[Any]:
    return [
        (s, store.get_messages(s.id, states=("active", "compacted", "retracted")))
        for s in store.get_chain(root)
    ]


def message_rows(store: Store, ids: list[str]) -> int:
    marks = ", ".join("?" * len(ids))
    return int(
        store.backend.read(
            lambda c: c.execute(
                f"SELECT COUNT(*) FROM messages WHERE session_id IN ({marks})", ids
            ).fetchone()[0]
        )
    )


def event_rows(store: Store, ids: list[str]) -> int:
    marks = ", ".join("?" * len(ids))
    return int(
        store.backend.read(
            lambda c: c.execute(
                f"SELECT COUNT(*) FROM events WHERE session_id IN ({marks})", ids
            ).fetchone()[0]
        )
    )


def test_prune_is_a_dry_run_then_trashes_exactly_what_may_go(db_url: str) -> None:
    with tether.open_store(db_url, load_plugins=False) as w:
        old = [write_chain(w), write_chain(w, members=3)]
        other_source = write_chain(w, source="web")
    # Open sessions: their writer stays open (closing would end them).
    holder = tether.open_store(db_url, load_plugins=False)
    open_one = write_chain(holder, end=False)
    open_member = write_chain(holder, members=2, end=False)
    open_ids = [holder.get_chain(open_member)[-1].id, open_one]
    with holder, later(db_url) as store:
        before = {r: snapshot(store, r) for r in [*old, other_source]}
        listed = {c.root_id for c in store.list_sessions().items}
        dry = store.prune(90 * DAY, source="cli")
        assert (dry.chains, dry.sessions, dry.messages) == (2, 4, 12)
        assert dry.bytes > 12 * len("message 0 of ")
        assert not dry.applied
        assert {c.root_id for c in store.list_sessions().items} == listed  # nothing moved
        # Not old enough yet: nothing.
        assert store.prune(101 * DAY).chains == 0
        done = store.prune(90 * DAY, source="cli", apply=True)
        assert (done.chains, done.sessions, done.messages) == (2, 4, 12)
        remaining = {c.root_id for c in store.list_sessions().items}
        assert remaining == listed - set(old)
        assert open_one in remaining and open_member in remaining and other_source in remaining
        census = store.census()
        assert (census.trashed, census.trashed_messages) == (4, 12)
        assert census.total == 5 - 2 + 1  # two open chains (3 sessions) and the web one
        for sid in open_ids:
            assert store.get_session(sid).ended_at is None
        # Restore returns exactly what was trashed.
        assert store.restore(old[1]) == 3
        assert store.restore(old[1]) == 0
        assert store.restore_all() == 1
        assert {c.root_id for c in store.list_sessions().items} == listed
        for root, snap in before.items():
            assert snapshot(store, root) == snap
        assert store.census().trashed == 0


def test_owner_alive_and_claims_are_never_pruned(db_url: str) -> None:
    with tether.open_store(db_url, load_plugins=False) as live:
        mine = write_chain(live)  # ended, but its owner (the `live` store) is alive
        with tether.open_store(db_url, load_plugins=False) as other:
            assert other.owner_id != live.owner_id
            assert other.prune(0, apply=True).chains == 0
        # Its own sessions are the owner's to judge (`tether serve` applying a policy).
        assert live.prune(0).chains == 1
    with tether.open_store(db_url, load_plugins=False) as w:
        claimed = write_chain(w)
        free = write_chain(w)
    with later(db_url) as store:
        assert store.claim([claimed], "mirror-1", ttl=60) == [claimed]
        done = store.prune(DAY, apply=True)
        assert done.chains == 2  # `mine` (owner gone now) and `free`
        trashed = {r for r, _ in store.trashed_chains()}
        assert trashed == {mine, free}
        # A trashed session cannot be claimed: the reader must skip it.
        assert store.claim([free], "mirror-1", ttl=60) == []
        # Released (or expired), the claim protects nothing.
        assert store.release("mirror-1") == 1
        assert store.claim([claimed], "mirror-2", ttl=1) == [claimed]
        store.clock.advance(2)  # type: ignore[attr-defined]
        assert store.prune(DAY, apply=True).chains == 1
        assert store.expire_claims() == 1


def test_purge_deletes_everything_and_tells_cursors_to_reload(db_url: str) -> None:
    with tether.open_store(db_url, load_plugins=False) as w:
        gone = write_chain(w, members=2)
        kept = write_chain(w)
    with later(db_url) as store:
        gone_ids = [s.id for s in store.get_chain(gone)]
        top_event = store.backend.read(
            lambda c: c.execute(
                f"SELECT max(id) FROM events WHERE session_id IN ({', '.join('?' * 2)})", gone_ids
            ).fetchone()[0]
        )
        assert store.compacted_through() == 0
        store.claim([kept], "reader", ttl=60)
        assert store.prune(DAY, apply=True).chains == 1
        assert store.purge_preview(0).sessions == 2
        assert store.purge(DAY).sessions == 0  # trashed just now: not a day ago
        report = store.purge(0)
        assert (report.chains, report.sessions, report.messages) == (1, 2, 6)
        assert report.events >= 4
        for sid in gone_ids:
            with pytest.raises(tether.SessionNotFoundError):
                store.get_session(sid)
        assert message_rows(store, gone_ids) == 0 and event_rows(store, gone_ids) == 0
        assert store.compacted_through() >= top_event
        oldest = store.oldest_event_id()
        assert oldest is not None
        # The kept chain is whole.
        s = store.get_session(kept)
        assert len(store.get_messages(kept)) == s.message_count == 3


@pytest.mark.parametrize("buffered", [False, True])
def test_a_handle_whose_session_was_ended_elsewhere_and_purged_ends_quietly(
    db_url: str, buffered: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing is left to end: end() says so (False) and the handle is done; before,
    it raised SessionNotFoundError, stayed open, and the store's close and the
    process's exit each logged an error trying to end it again."""
    store = tether.open_store(db_url, load_plugins=False)
    h = store.session(source="cli")
    h.append("user", "hi")
    store.end_session(h.id, "cli_close")
    assert store.prune(0, apply=True).sessions == 1 and store.purge(0).sessions == 1
    if buffered:  # a message it can no longer store: lost, and said so
        h.buffer("assistant", "late")
        with pytest.raises(tether.MessagesLostError) as lost:
            h.end()
        assert lost.value.ended is False
    else:
        assert h.end() is False
    assert h.end() is False  # and it stays done
    store.close()
    assert [r.getMessage() for r in caplog.records if "could not end" in r.getMessage()] == []


def test_purge_gives_the_space_back_to_the_file_system(db_path: str) -> None:
    big = "x" * 2000
    with tether.open_store(db_path, load_plugins=False) as w:
        for _ in range(40):
            h = w.session(source="cli")
            for _ in range(20):
                h.append("user", big)
            h.end("completed")
    with later(db_path) as store:
        store.prune(DAY, apply=True)
        store.purge(0)
        first = store.reclaim_space()
        assert first.method == "vacuum"
        assert first.before is not None and first.after is not None
        assert first.after < first.before / 4, first
        assert os.path.getsize(db_path) == first.after
        write_chain(store, 2)  # the store still works
    with tether.open_store(db_path, load_plugins=False) as w:
        for _ in range(20):
            h = w.session(source="cli")
            for _ in range(20):
                h.append("user", big)
            h.end("completed")
    with later(db_path) as store:
        store.prune(DAY, apply=True)
        store.purge(0)
        size = os.path.getsize(db_path)
        ticks: list[int] = []
        second = store.reclaim_space(lambda done, total: ticks.append(done))
        assert second.method == "incremental_vacuum" and ticks
        assert second.after is not None and second.after < size / 2


def test_policy_is_stored_and_applied(store: Store) -> None:
    assert store.retention_policy() is None
    assert store.apply_retention_policy() is None
    policy = RetentionPolicy(keep=90 * DAY, source="cli", purge_after=30 * DAY)
    store.set_retention_policy(policy)
    assert store.retention_policy() == policy
    assert "90d" in policy.describe() and "30d" in policy.describe()
    pruned, purged = store.apply_retention_policy() or (None, None)
    assert pruned is not None and purged is not None and pruned.applied
    store.set_retention_policy(None)
    assert store.retention_policy() is None


def test_cli_prune_restore_purge(db_path: str) -> None:
    with tether.open_store(db_path, load_plugins=False) as w:
        root = write_chain(w)
    db = ["--db", db_path]
    dry = run_cli(*db, "prune", "--ended-before", "0s")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would move 1 chain to the trash: 1 session, 3 messages, ")
    moved = run_cli(*db, "prune", "--ended-before", "0s", "--yes")
    assert moved.stdout.startswith("moved 1 chain to the trash")
    assert root not in run_cli(*db, "ls").stdout
    assert '"trashed": 1' in run_cli(*db, "doctor", "--json").stdout
    assert run_cli(*db, "restore", root[:12]).stdout.strip() == "restored 1 session"
    assert root in run_cli(*db, "ls").stdout
    run_cli(*db, "prune", "--ended-before", "0s", "--yes")
    shown = run_cli(*db, "purge", "--trashed-before", "0s")
    assert shown.stdout.startswith("would delete 1 chain for good")
    gone = run_cli(*db, "purge", "--trashed-before", "0s", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout.startswith("deleted 1 chain: 1 session, 3 messages")
    assert "database file:" in gone.stdout
    policy = run_cli(*db, "prune", "--keep", "90d", "--purge-after", "30d", "--set-policy")
    assert "retention policy set: trash chains ended more than 90d ago" in policy.stdout
    doctor = run_cli(*db, "doctor")
    assert "retention policy: trash chains ended more than 90d ago" in doctor.stdout
    assert "would trash 0 sessions" in doctor.stdout


@pytest.mark.parametrize("bad", ["90x", "nan", "-3d", "inf", ""])
def test_cli_refuses_bad_durations(db_path: str, bad: str) -> None:
    tether.open_store(db_path, load_plugins=False).close()
    result = run_cli("--db", db_path, "prune", "--ended-before", bad)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --ended-before:") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_unknown_ids_and_usage(db_path: str) -> None:
    tether.open_store(db_path, load_plugins=False).close()
    unknown = run_cli("--db", db_path, "restore", "01NOPE")
    assert unknown.returncode == 1 and "01NOPE" in unknown.stderr
    both = run_cli("--db", db_path, "restore")
    assert both.returncode == 2


# --- prune against concurrent readers, with SIGKILLs ---------------------------------

READER = """
import random
db, name = sys.argv[1], sys.argv[2]
store = tether.open_store(db, load_plugins=False)
print("ready", flush=True)
n = 0
while True:
    ids = open(sys.argv[3]).read().split()  # the test writes new chains for purged ones
    got = store.claim(random.sample(ids, 8), name, ttl=1.5)
    for sid in got:
        # Claimed: it must be complete, whatever prune and purge do meanwhile.
        try:
            s = store.get_session(sid)
            msgs = store.get_messages(sid)
        except tether.SessionNotFoundError:
            print("BAD gone", sid, flush=True)
            continue
        if len(msgs) != s.message_count or s.message_count != 4:
            print("BAD", sid, len(msgs), s.message_count, flush=True)
        n += 1
    store.release(name)
    print("ok", n, flush=True)
"""

# Trashes everything it may, brings it back, and now and then purges the
# trash: sessions keep moving under the readers' claims.
PRUNER = """
import random
store = tether.open_store(sys.argv[1], load_plugins=False)
print("ready", flush=True)
while True:
    store.prune(0, apply=True, batch=7)
    if random.random() < 0.2:
        store.purge(0, batch=5)
        print("purged", flush=True)
    store.restore_all(batch=9)
"""


POPULATION = 100  # chains the readers pick from while the pruners purge


def top_up(store: Store, roots: list[str], id_file: Any) -> None:
    """Write a new chain for each one purged, and publish every id to the readers.

    Each purge deletes every chain no reader holds at that moment, so without
    new ones the readers soon had nothing left to claim: readers started after
    that (every replacement of a killed one) checked nothing, and on a loaded
    machine, where the first claims come late, no reader ever did.
    """
    held = store.backend.read(
        lambda c: c.execute("SELECT COUNT(*) FROM sessions WHERE parent_id IS NULL").fetchone()
    )[0]
    if held < POPULATION:
        roots.extend(write_chain(store, 4) for _ in range(POPULATION - held))
        # Whole or not at all: a reader never sees half an id.
        tmp = id_file.with_suffix(".tmp")
        tmp.write_text("\n".join(roots))
        os.replace(tmp, id_file)


def test_prune_against_readers_with_sigkills(db_url: str, tmp_path: Any) -> None:
    with tether.open_store(db_url, load_plugins=False) as w:
        roots: list[str] = []
        id_file = tmp_path / "ids"
        top_up(w, roots, id_file)
        rng = random.Random(14)
        procs: list[tuple[str, subprocess.Popen[str]]] = []
        outputs: list[str] = []

        def start(kind: str, k: int) -> None:
            if kind == "reader":
                p = spawn(READER, db_url, f"reader-{k}", str(id_file))
            else:
                p = spawn(PRUNER, db_url)
            procs.append((kind, p))

        errors: list[str] = []

        def kill(p: subprocess.Popen[str]) -> None:
            p.send_signal(signal.SIGKILL)
            out, err = p.communicate()
            outputs.append(out)
            errors.append(err[-2000:])  # why a child died, if one did

        for k in range(2):
            start("reader", k)
        start("pruner", 0)
        start("pruner", 1)
        for _kind, p in procs:  # started together; each at work before the first kill
            wait_for_line(p, "ready")
        killed = 0
        for k in range(10, 14):  # four kills, each at a random moment
            until = time.monotonic() + rng.uniform(0.2, 0.7)
            while time.monotonic() < until:
                top_up(w, roots, id_file)
                time.sleep(0.05)
            kind, victim = procs.pop(rng.randrange(len(procs)))
            kill(victim)
            killed += 1
            start(kind, k)
        # A reader started after the kills must check claimed sessions too: the
        # chains it picks from are kept coming.
        readers = [p for kind, p in procs if kind == "reader"]
        read: list[str] = []
        deadline = time.monotonic() + 60
        checked = False
        while time.monotonic() < deadline and not checked:
            for p in readers:
                assert p.stdout is not None
                line = p.stdout.readline()  # each loop of a reader prints a line
                read.append(line)
                checked = checked or (line.startswith("ok") and line.strip() != "ok 0")
            top_up(w, roots, id_file)
        outputs.append("".join(read))
        for _kind, p in procs:
            kill(p)
        assert killed >= 4
        bad = [line for o in outputs for line in o.splitlines() if line.startswith("BAD")]
        assert not bad, bad
        assert checked, ("no living reader checked a claimed session", read[-4:], errors)
        assert any("purged" in o for o in outputs)  # the trash moved under the readers
        # Claims of killed readers expire; then everything can go, and goes whole.
        time.sleep(1.6)
        w.restore_all()
        survivors = [r for r in roots if _exists(w, r)]
        for r in survivors:  # every session still here is complete
            s = w.get_session(r)
            assert len(w.get_messages(r)) == s.message_count == 4
        w.prune(0, apply=True)
        w.purge(0)
        count = w.backend.read(lambda c: c.execute("SELECT COUNT(*) FROM sessions").fetchone())
        assert count[0] == 0
        assert message_rows(w, roots) == 0 and event_rows(w, roots) == 0
        w.expire_claims()
        left = w.backend.read(lambda c: c.execute("SELECT COUNT(*) FROM claims").fetchone())
        assert left[0] == 0


def _exists(store: Store, sid: str) -> bool:
    try:
        store.get_session(sid)
    except tether.SessionNotFoundError:
        return False
    return True


# --- the README's retention section, as shown ---------------------------------------


def readme_store(path: str) -> None:
    """The store the README's retention section runs on: conversations that ended
    100 days ago (one continued once, one with a call unanswered in its middle and
    one at its tail, killed mid tool call) and a new one."""
    past = tether.open_store(
        path, load_plugins=False, clock=tether.ManualClock(time.time() - 100 * DAY)
    )
    with past:
        a = past.session(source="cli", title="Fix the build")
        a.append("user", "Why does make fail?")
        a.append("assistant", "The generated header is missing: run `make gen` first.")
        a.end("completed")
        b = past.session(source="cli", parent_id=a.id)
        b.append("user", "And now?")
        b.append("assistant", "It builds.")
        b.end("cli_close")
        c = past.session(source="web", title="Disk usage")
        for prompt, call in (("What fills the disk?", "c1"), ("Still there?", "c2")):
            # The first call is left unanswered in the middle (a turn interrupted
            # mid tool, then another prompt), the second at the tail.
            c.append("user", prompt)
            c.append(
                "assistant",
                None,
                tool_calls=[
                    {"id": call, "type": "function", "function": {"name": "du", "arguments": "{}"}}
                ],
            )
        c.end("reaped", "killed during a tool call")
        log = past.session(source="cli", title="Long build log")
        for i in range(300):
            log.append("tool" if i % 2 else "user", f"line {i}: " + "x" * 1000)
        log.end("completed")
    with tether.open_store(path, load_plugins=False) as now:
        d = now.session(source="cli", title="Today")
        d.append("user", "hello")
        d.end("completed")


def test_readme_retention_section_runs_as_shown(tmp_path: Any) -> None:
    from .test_readme import blocks, console_steps, pattern

    [block] = [b for b in blocks("console") if "tether prune" in b]
    readme_store(str(tmp_path / "sessions.db"))
    for command, expected in console_steps(block):
        result = subprocess.run(
            [sys.executable, "-m", "tether", *command.split()[1:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=60,
        )
        shown = [_loose(line) for line in expected if line.strip()]
        got = [_loose(line) for line in (result.stdout + result.stderr).splitlines()]
        got = [line for line in got if line.strip()]
        assert len(got) == len(shown), (command, got)
        for want, line in zip(shown, got, strict=True):
            assert pattern(want).fullmatch(line.strip()), (command, want, line)


def _loose(line: str) -> str:
    """Ids and file sizes differ from run to run: the README's stand for any."""
    line = re.sub(r"\b01[0-9A-HJKMNP-TV-Z]{24}\b", "ID", line)
    return re.sub(r"\d+(\.\d+)? (B|kB|MB)\b", "SIZE", line)


def test_batch_sizer_keeps_batches_under_the_target() -> None:
    from tether.store.retention import BatchSizer

    sizer = BatchSizer(200, target=0.025)
    assert sizer.size == 200
    assert sizer.took(0.060) == 100  # too slow: halve
    assert sizer.took(0.030) == 50
    assert sizer.took(0.015) == 50  # within the target: keep
    assert sizer.took(0.001) == 75  # fast: grow by half
    for _ in range(10):
        sizer.took(0.001)
    assert sizer.size == 200  # never above the most
    for _ in range(20):
        sizer.took(1.0)
    assert sizer.size == 1  # never below one
    assert sizer.pause(0.005) == pytest.approx(0.015)  # the lock is free 3/4 of the time
    assert sizer.pause(1.0) == 0.1


def test_batch_sizer_starts_at_its_start_and_grows_to_the_most() -> None:
    from tether.store.retention import BatchSizer

    sizer = BatchSizer(200, target=0.025, start=50)
    assert sizer.size == 50
    assert [sizer.took(0.001) for _ in range(4)] == [75, 112, 168, 200]
    assert BatchSizer(3, start=0).size == 1 and BatchSizer(3, start=9).size == 3


def test_prune_and_purge_start_with_half_a_batch(db_url: str) -> None:
    """The first batch is the one whose cost is unknown (a cold cache, statements
    not yet planned): it takes half of ``batch``, and the sizer grows from
    there. On PostgreSQL a blind first batch of 200 chains held the write lock
    58 ms, beside later ones of 10 to 25 ms."""
    with tether.open_store(db_url, load_plugins=False) as w:
        roots = [write_chain(w, n=1) for _ in range(12)]
    with later(db_url) as store:
        seen: list[int] = []
        report = store.prune(90 * DAY, apply=True, batch=8, progress=lambda n, _: seen.append(n))
        assert report.chains == 12 and seen[0] == 4 and seen[-1] == 12
        seen.clear()
        assert store.purge(0, batch=8, progress=lambda n, _: seen.append(n)).sessions == 12
        assert seen[0] == 4 and seen[-1] == 12
        assert not {r for r, _ in store.trashed_chains()} & set(roots)


def _rows_read(plan: dict[str, Any], relation: str) -> int:
    """Rows the scans of ``relation`` (by its alias) returned in all, in an EXPLAIN ANALYZE plan."""
    own = 0
    if plan.get("Alias") == relation:
        own = int(plan.get("Actual Rows", 0)) * int(plan.get("Actual Loops", 1))
    return own + sum(_rows_read(p, relation) for p in plan.get("Plans", []))


# PostgreSQL: 3,000 trashed chains of one session each, ten trashed at each time.
TRASHED_ROOTS_3000 = """
INSERT INTO sessions (id, source, root_id, created_at, last_active_at, ended_at, end_reason,
    message_count, trashed_at, chain_tip_id, chain_last_active_at)
SELECT 'T' || lpad(i::text, 25, '0'), 'cli', 'T' || lpad(i::text, 25, '0'),
    1, 1, 1, 'completed', 0, 1000 + i / 10, 'T' || lpad(i::text, 25, '0'), 1
FROM generate_series(1, 3000) AS i
"""


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_purge_batch_reads_its_share_of_the_trash_not_all_of_it(db_url: str) -> None:
    """PostgreSQL: the statement that picks a purge batch walks the trash index in
    order, stops after the batch, and looks each candidate's claims up by session,
    whatever other readers claim. Sorting the whole trash for each batch, and
    reading every claim for each candidate, made purge quadratic: 10,000 trashed
    sessions beside an agent took 206 s, and 263 s after exports had claimed and
    released 10,000 sessions a few times (14 minutes on a busier machine)."""
    from tether.store import sql_retention as q

    with later(db_url) as store:
        far = store.clock.now() + 1e6

        def fill(c: Any) -> None:
            c.execute(TRASHED_ROOTS_3000)
            # A mirror's live claims on 20,000 other sessions.
            c.execute(
                "INSERT INTO claims (session_id, holder, expires_at)"
                " SELECT 'M' || i, 'mirror', ? FROM generate_series(1, 20000) AS i",
                (far,),
            )

        store.backend.write(fill)
        now = store.clock.now()

        def plan(c: Any) -> dict[str, Any]:
            query = "EXPLAIN (ANALYZE, FORMAT JSON) " + q.purge_candidates("postgresql")
            found = c.execute(query, (now, -math.inf, "", now, 10)).fetchone()[0]
            return dict(found[0]["Plan"])

        tree = store._write_ordered(plan)
        assert 10 <= _rows_read(tree, "r") <= 20  # ten, and the ties of the tenth
        assert _rows_read(tree, "k") == 0  # no claim on any of them, none read
        assert store.purge(0).sessions == 3000


def _scanned(plan: dict[str, Any], relation: str) -> int:
    """Rows the scans of table ``relation`` read in all (returned or filtered out)."""
    own = 0
    if plan.get("Relation Name") == relation:
        read = int(plan.get("Actual Rows", 0)) + int(plan.get("Rows Removed by Filter", 0))
        own = read * int(plan.get("Actual Loops", 1))
    return own + sum(_scanned(p, relation) for p in plan.get("Plans", []))


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_purge_batch_locks_its_chains_by_index_not_the_whole_table(db_url: str) -> None:
    """PostgreSQL: a purge batch runs with sorts priced out (its trash walk must follow
    the index), and its lock of the chains' members asked for them in id order:
    the planner then walked every session by primary key to spare a sort of a
    few rows. 47 ms a chain at 100,000 sessions: the sizer shrank batches to one
    chain each, and the benchmark's purge of 100,000 chains ran at 33 a second."""
    from tether.store import sql_retention as q

    with later(db_url) as store:

        def fill(c: Any) -> None:
            c.execute(TRASHED_ROOTS_3000)
            # Each one's events, the trash's oldest first, then newer ones of others.
            c.execute(
                "INSERT INTO events (at, session_id, kind) SELECT 1, 'T' || lpad(i::text, 25, '0'),"
                " 'created' FROM generate_series(1, 3000) AS i"
            )
            c.execute(
                "INSERT INTO events (at, session_id, kind)"
                " SELECT 2, 'N' || i, 'created' FROM generate_series(1, 3000) AS i"
            )
            c.execute("ANALYZE events")

        store.backend.write(fill)
        roots = ["T" + "1500".rjust(25, "0")]
        plans = {}
        for name, query, table in (
            ("lock", q.lock_members("postgresql", 1), "sessions"),
            ("total", q.members_total(1), "sessions"),
            ("members", q.chain_members(1), "sessions"),
            ("top event", q.max_event_of(1), "events"),
        ):

            def plan(c: Any, query: str = query) -> dict[str, Any]:
                found = c.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + query, roots).fetchone()
                return dict(found[0][0]["Plan"])

            plans[name] = _scanned(store._write_ordered(plan), table)
        assert plans == {"lock": 1, "total": 1, "members": 1, "top event": 1}
        assert store.purge(0).sessions == 3000


def _relation_rows(plan: dict[str, Any], relation: str) -> int:
    """Rows the scans of table ``relation`` returned in all, in an EXPLAIN ANALYZE plan."""
    own = 0
    if plan.get("Relation Name") == relation:
        own = int(plan.get("Actual Rows", 0)) * int(plan.get("Actual Loops", 1))
    return own + sum(_relation_rows(p, relation) for p in plan.get("Plans", []))


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_prune_batch_measures_its_chains_by_index_not_every_message(db_url: str) -> None:
    """PostgreSQL: a batch's size (sessions, messages, bytes of its chains) reads the
    messages of those chains through the index, whatever the batch's size. The
    planner hash-joined 200 chains against a scan of every message: the first
    prune batch (200 chains) of the 10,000-session benchmark held the write lock
    48 to 117 ms, four times the later batches of 100, and it grows with the table."""
    from tether.store import sql_retention as q

    with later(db_url) as store:

        def fill(c: Any) -> None:
            c.execute(
                """
                INSERT INTO sessions (id, source, root_id, created_at, last_active_at,
                    ended_at, end_reason, message_count, chain_tip_id, chain_last_active_at)
                SELECT 'S' || lpad(i::text, 25, '0'), 'cli', 'S' || lpad(i::text, 25, '0'),
                    1, 1, 1, 'completed', 10, 'S' || lpad(i::text, 25, '0'), 1
                FROM generate_series(1, 3000) AS i
                """
            )
            c.execute(
                """
                INSERT INTO messages (session_id, seq, role, content, created_at)
                SELECT 'S' || lpad(i::text, 25, '0'), j, 'user', 'héllo ' || j, 1
                FROM generate_series(1, 3000) AS i, generate_series(1, 10) AS j
                """
            )
            c.execute("ANALYZE sessions")
            c.execute("ANALYZE messages")

        store.backend.write(fill)
        roots = [f"S{i:025d}" for i in range(1, 201)]
        query = q.chains_size("postgresql", len(roots))
        params = q.chains_size_params("postgresql", roots)

        def plan(c: Any) -> tuple[dict[str, Any], Any]:
            found = c.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + query, params).fetchone()[0]
            return dict(found[0]["Plan"]), c.execute(query, params).fetchone()

        tree, size = store.backend.read(plan)
        assert _relation_rows(tree, "messages") == 2000  # their 200 x 10, no other
        bytes_each = sum(len(f"héllo {j}".encode()) for j in range(1, 11))
        assert tuple(map(int, size)) == (200, 2000, 200 * bytes_each)
        assert store.prune(DAY).sessions == 3000  # the dry run, batch after batch


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_prune_recheck_looks_its_chains_up_not_the_trash_before_them(db_url: str) -> None:
    """PostgreSQL: the recheck of a batch's chains under their locks reads those
    chains' rows, in the generic plan of a prepared statement (psycopg prepares
    a statement run five times) and in a one-shot plan, never the listing index
    from its start, where every chain trashed so far still lies. Ordered and
    limited, the recheck's generic plan walked it: in a prune of 100,000 chains
    it grew from 0.4 ms to 78 ms a batch, the longest batches of the run; by
    ``id = ANY(?)`` the one-shot plan walked it too (6 to 20 ms a batch)."""
    from psycopg import sql

    from tether.store import sql_retention as q

    from .conftest import pg_connect

    with later(db_url) as store:
        cutoff = now = store.clock.now()

        def fill(c: Any) -> None:
            c.execute(
                """
                INSERT INTO sessions (id, source, root_id, created_at, last_active_at,
                    ended_at, end_reason, message_count, chain_tip_id, chain_last_active_at)
                SELECT 'S' || lpad(i::text, 25, '0'), 'cli', 'S' || lpad(i::text, 25, '0'),
                    1, 1, 1, 'completed', 0, 'S' || lpad(i::text, 25, '0'), i
                FROM generate_series(1, 20100) AS i
                """
            )
            c.execute("ANALYZE sessions")  # then the first 20,000 pruned: stale statistics
            c.execute("UPDATE sessions SET trashed_at = 5 WHERE chain_last_active_at <= 20000")

        store.backend.write(fill)
        roots = [f"S{i:025d}" for i in range(20001, 20101)]
        query = q.prune_recheck("postgresql", source=False, reason=False, ids=len(roots))
        params = [*q.ids_param("postgresql", roots), cutoff, cutoff, now, "", now]
        numbered = iter(range(1, query.count("?") + 1))
        prepared = re.sub(r"\?", lambda _: f"${next(numbered)}", query)
        with pg_connect(db_url) as conn:
            conn.execute("SET plan_cache_mode = force_generic_plan")
            conn.execute(f"PREPARE recheck AS {prepared}")
            args = sql.SQL(", ").join(map(sql.Literal, params)).as_string(conn)
            found = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE recheck({args})")
            tree = dict(found.fetchone()[0][0]["Plan"])
            rows = conn.execute(f"EXECUTE recheck({args})").fetchall()
        assert sorted(r[0] for r in rows) == roots
        assert _rows_read(tree, "r") <= len(roots), tree

        def custom(c: Any) -> dict[str, Any]:  # planned for these values (one-shot)
            found = c.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + query, params).fetchone()[0]
            return dict(found[0]["Plan"])

        tree = store.backend.read(custom)
        assert _rows_read(tree, "r") <= len(roots), tree


def _retention_events(store: Store) -> list[tuple[str, dict[str, Any]]]:
    from tether.store.views import events_after

    return [(e.kind, e.data) for e in events_after(store, 0) if e.kind in ("trashed", "purged")]


def test_a_prune_and_a_purge_log_one_event_for_their_whole_run(db_url: str) -> None:
    """Their batches write no event (on PostgreSQL they commit without waiting for
    the disk, and an event id a crash could hand out again must not reach a
    client): one event for the whole run, written when it ends, even when it was
    interrupted midway, counts what was done."""
    with tether.open_store(db_url, load_plugins=False) as w:
        for _ in range(12):
            write_chain(w, n=1)
    with later(db_url) as store:
        assert store.prune(90 * DAY, apply=True, batch=8).chains == 12
        assert _retention_events(store) == [("trashed", {"chains": 12, "sessions": 12})]
        assert store.restore_all() == 12

        def stop(n: int, _: int | None) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            store.prune(90 * DAY, apply=True, batch=8, progress=stop)
        trashed = len(store.trashed_chains())
        assert trashed == 4  # the first batch, half of 8
        assert _retention_events(store)[1:] == [
            ("trashed", {"chains": trashed, "sessions": trashed})
        ]
        store.prune(90 * DAY, apply=True, batch=8)
        report = store.purge(0, batch=8)
        assert report.sessions == 12
        assert _retention_events(store)[-1] == ("purged", report.to_dict())
        assert store.purge(0).sessions == 0  # nothing purged: no event
        assert len(_retention_events(store)) == 4


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_prune_and_purge_batches_commit_without_waiting_for_the_disk(db_url: str) -> None:
    """PostgreSQL: a batch's COMMIT waited for the server's WAL flush, which took
    92 to 102 ms during a checkpoint on a slow disk (the batch target is 50 ms),
    with the batch's row locks held all along. A batch is redone if a crash
    undoes it, so it commits with ``synchronous_commit`` off; the run's last
    write (its event) is flushed, and that flushes every batch before it: when
    prune or purge returns, all it did is on disk."""
    from tether.store.postgres.backend import PgConn

    with tether.open_store(db_url, load_plugins=False) as w:
        for _ in range(12):
            write_chain(w, n=1)
    seen: list[tuple[str, str, str]] = []
    execute = PgConn.execute

    def spy(self: PgConn, query: str, params: Any = ()) -> Any:
        out = execute(self, query, params)
        if query.startswith(("UPDATE sessions SET trashed_at = ?", "DELETE FROM sessions")):
            setting, lsn = self._cur.connection.execute(  # a cursor of its own
                "SELECT current_setting('synchronous_commit'), pg_current_wal_insert_lsn()"
            ).fetchone()
            seen.append((query.split()[0], setting, str(lsn)))
        return out

    def flushed(store: Store) -> bool:
        lsn = seen[-1][2]
        return bool(
            store.backend.read(
                lambda c: c.execute(
                    "SELECT pg_current_wal_flush_lsn() >= ?::pg_lsn", (lsn,)
                ).fetchone()[0]
            )
        )

    with later(db_url) as store:
        PgConn.execute = spy  # type: ignore[method-assign]
        try:
            store.prune(90 * DAY, apply=True, batch=8)
            assert flushed(store)
            store.purge(0, batch=8)
            assert flushed(store)
        finally:
            PgConn.execute = execute  # type: ignore[method-assign]
    assert {s[:2] for s in seen} == {("UPDATE", "off"), ("DELETE", "off")}
