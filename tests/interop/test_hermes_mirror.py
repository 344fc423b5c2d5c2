"""``tether hermes mirror`` against a live Hermes: concurrency, the 004 race, SIGKILL.

Hermes is the real package, writing through its own SessionDB in another
process; every expectation is counted by plain SQL or from the writer's own
report. Each test is bounded to a few seconds.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import tether
from tether.interop.hermes.gc import gc_stores
from tether.interop.hermes.mirror import HermesMirror, mirrors

from ..conftest import child_env
from .conftest import generate, start_writer, writer_report
from .sync_helpers import (
    churn_report,
    hermes_copy,
    hermes_ops,
    replaced_states,
    rows,
    start_churn,
    tether_messages,
)


def follow(mirror: HermesMirror, stop: threading.Event, interval: float) -> None:
    """Step until ``stop``, then once more (whatever the last step missed), in this
    thread (the mirror's connections stay in the thread that opened them)."""
    while not stop.is_set():
        mirror.step()
        stop.wait(interval)
    mirror.step()
    mirror.close()


def test_a_live_writer_loses_nothing_and_every_message_is_mirrored(
    hermes_python: Path, hermes_store: Path, tmp_path: Path
) -> None:
    path = hermes_copy(hermes_store, tmp_path)
    db = tmp_path / "t.db"
    with tether.open_store(db) as store:
        mirror = HermesMirror(store, [path], interval=0.05)
        writer = start_writer(hermes_python, path, seconds=2.5, rate=100)
        thread = mirror.start()
        try:
            report = writer_report(writer)
            time.sleep(0.3)
            assert mirror in mirrors()
            assert mirror.status().lag_seconds < 5
        finally:
            mirror.stop()
            thread.join(10)
        assert report["failures"] == 0, report["errors"]
        mirror.step()  # whatever the last pass may have missed
        mirror.close()
    live = rows(path, "SELECT id FROM sessions WHERE id LIKE 'live_%'")[0][0]
    got = tether_messages(db)[f"hermes:{live}"]
    assert len(got) == report["appended"] > 100
    assert [g[2] for g in got] == [f"live {n}" for n in range(report["appended"])]
    assert (
        len(tether_messages(db))
        == rows(path, "SELECT count(DISTINCT session_id) FROM messages")[0][0]
    )


def test_the_004_race_through_gc_loses_nothing(hermes_python: Path, tmp_path: Path) -> None:
    path = generate(hermes_python, tmp_path / "hermes" / "state.db", seed=3, conversations=5)
    db = tmp_path / "t.db"
    stop = threading.Event()
    deleted: list[str] = []
    with tether.open_store(db) as store:
        mirror = HermesMirror(store, [path], interval=0.05)

        def deleter() -> None:
            # What the web UI's deleter should have been: ended in Hermes and in
            # tether, every message held, checked in the deleting transaction.
            while not stop.is_set():
                for r in gc_stores(store, [path], older_than=0, yes=True):
                    deleted.extend(r.deleted)
                stop.wait(0.1)

        churn = start_churn(hermes_python, path, "--sessions", "12", "--messages", "6")
        threads = [
            threading.Thread(target=follow, args=(mirror, stop, 0.05)),
            threading.Thread(target=deleter),
        ]
        for t in threads:
            t.start()
        try:
            report = churn_report(churn)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
    assert report["failures"] == 0, report["errors"]
    churned = report["sessions"]
    assert any(sid.startswith("churn_") for sid in deleted)
    got = tether_messages(db)
    for sid, n in churned.items():
        assert len(got[f"hermes:{sid}"]) == n == 6, sid  # nothing lost, counts equal
    ended = dict(
        rows(db, "SELECT origin, end_reason FROM sessions WHERE origin LIKE 'hermes:churn_%'")
    )
    assert set(ended.values()) == {"user_exit"}
    left = {r[0] for r in rows(path, "SELECT id FROM sessions")}
    assert all(f"hermes:{sid}" in got for sid in deleted)
    assert not set(deleted) & left


def test_the_004_race_deleting_directly_never_leaves_a_partial_session(
    hermes_python: Path, tmp_path: Path
) -> None:
    path = generate(hermes_python, tmp_path / "hermes" / "state.db", seed=4, conversations=5)
    db = tmp_path / "t.db"
    stop = threading.Event()
    with tether.open_store(db) as store:
        mirror = HermesMirror(store, [path], interval=0.2)
        churn = start_churn(
            hermes_python,
            path,
            "--sessions",
            "15",
            "--messages",
            "6",
            "--delete-after-ms",
            "0",
            "500",
        )
        thread = threading.Thread(target=follow, args=(mirror, stop, 0.2))
        thread.start()
        try:
            report = churn_report(churn)
        finally:
            stop.set()
            thread.join(10)
    assert report["failures"] == 0, report["errors"]
    assert len(report["deleted"]) == len(report["sessions"])
    got = tether_messages(db)
    marked = {
        r[0]
        for r in rows(
            db,
            "SELECT s.origin FROM events e JOIN sessions s ON s.id = e.session_id "
            "WHERE e.kind = 'source_deleted'",
        )
    }
    states = dict(rows(db, "SELECT origin, end_reason FROM sessions"))
    seen = [sid for sid in report["sessions"] if f"hermes:{sid}" in states]
    assert seen  # the mirror saw sessions before they went
    for sid in seen:
        origin = f"hermes:{sid}"
        complete = len(got.get(origin, [])) == report["sessions"][sid]
        assert complete or origin in marked, (sid, len(got.get(origin, [])))
        if not complete:
            assert states[origin] == "source_deleted"
        # Whatever the mirror holds is a prefix of what Hermes had, never a gap.
        assert [g[2] for g in got.get(origin, [])] == [
            f"m {int(sid.rsplit('_', 1)[1])} {k}" for k in range(len(got.get(origin, [])))
        ]


def _cursor(db: Path) -> str | None:
    """The mirror's cursor in the tether file, None before it has one."""
    if not db.exists():
        return None
    try:
        position = rows(db, "SELECT position FROM import_cursors")
    except sqlite3.Error:  # the file exists, its tables not yet
        return None
    return position[0][0] if position else None


def test_a_mirror_killed_mid_page_resumes_with_no_duplicate_and_no_gap(
    hermes_python: Path, tmp_path: Path
) -> None:
    path = generate(hermes_python, tmp_path / "hermes" / "state.db", seed=5, conversations=300)
    db = tmp_path / "t.db"
    total = rows(path, "SELECT count(*) FROM messages")[0][0]
    args = [sys.executable, "-m", "tether", "hermes", "mirror", str(path), "--db", str(db)]
    args += ["--page", "7", "--interval", "0.05"]
    cursors: list[str | None] = []
    for _ in range(3):
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("mirroring"), proc.stderr
        # Killed as soon as its cursor moved (a page committed, ~330 to go), not after
        # a fixed delay: a fast import could be done by then, and nothing killed mid-way.
        before = cursors[-1] if cursors else None
        deadline = time.monotonic() + 60
        while _cursor(db) == before and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        cursors.append(_cursor(db))
    done = subprocess.run(
        [*args, "--for", "0.5"], capture_output=True, text=True, env=child_env(), timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert cursors[0] is not None  # the first kill was mid-import: after a page, before the end
    assert cursors[0] != f'{{"last_message_id": {total}}}', cursors
    got = tether_messages(db)
    hermes = {}
    for sid, mid in rows(path, "SELECT session_id, id FROM messages ORDER BY id"):
        hermes.setdefault(f"hermes:{sid}", []).append(f"hermes:{mid}")
    assert {o: [g[7] for g in v] for o, v in got.items()} == hermes
    for v in got.values():
        assert [g[0] for g in v] == list(range(1, len(v) + 1))
    assert (
        rows(db, "SELECT position FROM import_cursors")[0][0] == f'{{"last_message_id": {total}}}'
    )


def test_an_idle_mirror_asks_one_cheap_question_per_interval(
    hermes_python: Path, hermes_store: Path, tmp_path: Path
) -> None:
    path = hermes_copy(hermes_store, tmp_path)
    with tether.open_store(tmp_path / "t.db") as store:
        mirror = HermesMirror(store, [path])
        assert mirror.step()  # the first round passes
        for _ in range(5):
            assert mirror.step() == []  # data_version unchanged: no pass at all
        assert (mirror.passes, mirror.idle_checks) == (1, 5)
        sid = rows(path, "SELECT id FROM sessions WHERE ended_at IS NULL ORDER BY id")[0][0]
        hermes_ops(hermes_python, path, [{"op": "append", "sid": sid, "content": "one more"}])
        reports = mirror.step()
        assert [r.messages for r in reports] == [1] and mirror.passes == 2
        mirror.close()


def test_serve_mirrors_hermes_too(hermes_store: Path, tmp_path: Path) -> None:
    path = hermes_copy(hermes_store, tmp_path)
    db = tmp_path / "t.db"
    args = [sys.executable, "-m", "tether", "serve", "--db", str(db), "--port", "0"]
    proc = subprocess.Popen(
        [*args, "--mirror-hermes", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(TETHER_TOKEN="t"),
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert "tether gateway on" in banner, proc.stderr
        expected = rows(path, "SELECT count(*) FROM messages")[0][0]
        deadline = time.monotonic() + 20
        got = 0
        while time.monotonic() < deadline and got < expected:
            time.sleep(0.1)
            got = sum(len(v) for v in tether_messages(db).values()) if db.exists() else 0
        assert got == expected
        # /metrics reports the mirror (its cursor is Hermes' greatest message id).
        port = int(banner.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1].split()[0])
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer t"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            metrics = response.read().decode()
        top = rows(path, "SELECT max(id) FROM messages")[0][0]
        assert f'tether_hermes_mirror_cursor{{stores="{path}"}} {float(top)}' in metrics
        assert "tether_hermes_mirror_lag_seconds{" in metrics
        assert "tether_gateway_replay_buffer_events 0.0" in metrics
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    bad = subprocess.run(
        [*args, "--mirror-hermes", str(db)],
        capture_output=True,
        text=True,
        env=child_env(TETHER_TOKEN="t"),
        timeout=60,
    )
    assert bad.returncode == 1 and "not a Hermes state.db" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_mirror_follows_retitles_and_compactions_of_imported_sessions(
    hermes_python: Path, hermes_store: Path, tmp_path: Path
) -> None:
    path = hermes_copy(hermes_store, tmp_path)
    db = tmp_path / "t.db"
    ended = rows(
        path,
        "SELECT id FROM sessions s WHERE ended_at IS NOT NULL AND end_reason != 'compression' "
        "AND EXISTS (SELECT 1 FROM messages m WHERE m.session_id = s.id AND m.active = 1) "
        "ORDER BY id LIMIT 1",
    )[0][0]
    live = rows(
        path,
        "SELECT id FROM sessions s WHERE ended_at IS NULL "
        "AND EXISTS (SELECT 1 FROM messages m WHERE m.session_id = s.id AND m.active = 1) "
        "ORDER BY id LIMIT 1",
    )[0][0]
    with tether.open_store(db) as store:
        mirror = HermesMirror(store, [path], interval=0.05)
        first = mirror.step()
        assert first[0].titles == first[0].restated == 0
        active = rows(
            path, "SELECT count(*) FROM messages WHERE session_id = ? AND active = 1", (live,)
        )[0][0]
        hermes_ops(
            hermes_python,
            path,
            [
                {"op": "title", "sid": ended, "title": "Renamed live"},
                {"op": "compact", "sid": live, "summary": "the summary"},
            ],
        )
        (report,) = mirror.step()
        assert (report.titles, report.restated, report.messages) == (1, active, 1)
        assert mirror.step() == []  # nothing moved since
        hermes_ops(hermes_python, path, [{"op": "append", "sid": live, "content": "x"}])
        (report,) = mirror.step()
        assert (report.titles, report.restated, report.messages) == (0, 0, 1)
        mirror.close()
    got = rows(
        db,
        "SELECT m.idem_key, m.state FROM messages m JOIN sessions s ON s.id = m.session_id "
        "WHERE s.origin LIKE ? ORDER BY m.created_at, m.seq",
        (f"hermes:{live}%",),
    )
    want = rows(
        path,
        "SELECT id, active, compacted FROM messages WHERE session_id = ? ORDER BY id",
        (live,),
    )
    assert sorted(got) == sorted(
        (f"hermes:{m}", "active" if a else "compacted" if c else "retracted") for m, a, c in want
    )
    assert rows(db, "SELECT title FROM sessions WHERE origin = ?", (f"hermes:{ended}",)) == [
        ("Renamed live",)
    ]


def test_the_mirror_retracts_rows_replace_messages_deleted(
    hermes_python: Path, hermes_store: Path, tmp_path: Path
) -> None:
    """/retry, /undo and /compress rewrite a session through Hermes' destructive
    replace_messages: a running mirror retracts the rows gone (open, ended and reopened
    sessions, an emptied one too) and imports the new ones; an idle round after writes
    nothing."""
    path = hermes_copy(hermes_store, tmp_path)
    db = tmp_path / "t.db"
    live, emptied = (
        r[0]
        for r in rows(
            path,
            "SELECT id FROM sessions s WHERE ended_at IS NULL AND EXISTS "
            "(SELECT 1 FROM messages m WHERE m.session_id = s.id) ORDER BY id LIMIT 2",
        )
    )
    ended, split = (
        r[0]
        for r in rows(
            path,
            "SELECT id FROM sessions s WHERE end_reason = 'user_exit' AND EXISTS "
            "(SELECT 1 FROM messages m WHERE m.session_id = s.id) ORDER BY id LIMIT 2",
        )
    )
    new = [{"role": "user", "content": "again"}, {"role": "assistant", "content": "better"}]
    with tether.open_store(db) as store:
        mirror = HermesMirror(store, [path], interval=0.05)
        mirror.step()
        hermes_ops(
            hermes_python,
            path,
            [{"op": "reopen", "sid": split}, {"op": "append", "sid": split, "content": "back"}],
        )
        (report,) = mirror.step()
        assert report.continuations == 1
        held = rows(
            db,
            "SELECT count(*) FROM messages m JOIN sessions s ON s.id = m.session_id "
            "WHERE m.state <> 'retracted' AND (s.origin LIKE ? OR s.origin LIKE ? "
            "OR s.origin LIKE ? OR s.origin LIKE ?)",
            tuple(f"hermes:{sid}%" for sid in (live, emptied, ended, split)),
        )[0][0]
        hermes_ops(
            hermes_python,
            path,
            [
                {"op": "replace", "sid": live, "messages": new},
                {"op": "replace", "sid": emptied, "messages": []},
                {"op": "replace", "sid": ended, "messages": new[:1]},
                {"op": "replace", "sid": split, "messages": new},
            ],
        )
        (report,) = mirror.step()
        assert (report.messages, report.restated) == (5, held)
        assert mirror.step() == []  # nothing moved since
        hermes_ops(hermes_python, path, [{"op": "append", "sid": live, "content": "more"}])
        (report,) = mirror.step()
        assert (report.messages, report.restated) == (1, 0)
        mirror.close()
        # A restarted mirror's first pass compares every session: nothing to write.
        again = HermesMirror(store, [path], interval=0.05)
        (report,) = again.step()
        assert (report.messages, report.restated, report.titles) == (0, 0, 0)
        again.close()
    for sid in (live, emptied, ended, split):
        replaced_states(db, path, sid)
