"""Faults around the store: signals inside transactions, commits of unknown
outcome, files that vanish or cannot be written, hostile input.

Every test here runs on real databases (SQLite files, the test PostgreSQL);
a fault is injected at one precise point of a real transaction, never by
replacing the database.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import sqlite3
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.compose import Store
from tether.lifecycle import exits

from .conftest import drop_schemas, dump_stacks_and_kill, spawn, wait_for_line, with_params


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh PostgreSQL schema of this test's own (for PostgreSQL-only tests)."""
    schema = f"tether_faults_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    yield with_params(pg_server, schema=schema)
    drop_schemas(schema)


# --- a signal never leaves a transaction open ---------------------------------------------


class _InterruptAfter(sqlite3.Cursor):
    """The writer's real cursor, raising KeyboardInterrupt right after one statement ran.

    This is where a Ctrl+C lands when its handler runs as ``execute`` returns:
    the statement took effect, the exception comes before the next line.
    """

    statement = "BEGIN IMMEDIATE"
    armed = 0

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:  # type: ignore[override]
        result = super().execute(sql, params)
        if _InterruptAfter.armed and sql.strip().startswith(_InterruptAfter.statement):
            _InterruptAfter.armed -= 1
            raise KeyboardInterrupt
        return result


def _interrupt_writer(store: Store, after: str, times: int = 1) -> None:
    backend: Any = store.backend
    _InterruptAfter.statement = after
    _InterruptAfter.armed = times
    backend._wcur = _InterruptAfter(backend._writer)


def _other_process_can_write(db: str) -> None:
    """A second store (its own connections, as another process has) writes at once."""
    if not db.startswith("postgresql://"):
        raw = sqlite3.connect(db, timeout=0.5, isolation_level=None)
        raw.execute("BEGIN IMMEDIATE")  # "database is locked" if the writer kept its lock
        raw.execute("ROLLBACK")
        raw.close()
    other = tether.open_store(db, load_plugins=False)
    other.backend.write_budget = 2.0  # type: ignore[attr-defined]
    try:
        with other.session(source="other") as h:
            h.append("user", "the write lock is free")
    finally:
        other.close()


@pytest.mark.parametrize("after", ["BEGIN IMMEDIATE", "UPDATE", "INSERT INTO messages", "COMMIT"])
def test_an_interrupt_at_any_point_of_a_write_leaves_no_transaction_open(
    db_path: str, after: str
) -> None:
    """KeyboardInterrupt right after BEGIN, mid-transaction or after COMMIT:
    the writer is rolled back (or committed), the lock is free, writes go on."""
    s = tether.open_store(db_path, load_plugins=False)
    h = s.session(source="sig")
    h.append("user", "first")
    _interrupt_writer(s, after, times=40)
    interrupted = 0
    for i in range(40):
        try:
            h.append("user", f"m{i}")
        except KeyboardInterrupt:
            interrupted += 1
    assert interrupted == 40
    backend: Any = s.backend
    assert not backend._writer.in_transaction
    _other_process_can_write(db_path)
    h.append("user", "after the interrupts")
    h.buffer("assistant", "buffered")
    h.flush()
    session = s.get_session(h.id)
    stored = s.get_messages(h.id)
    assert session.message_count == len(stored) == stored[-1].seq
    assert [m.content for m in stored[-2:]] == ["after the interrupts", "buffered"]
    assert h.end() is True
    s.close()


def test_an_interrupt_right_after_begin_of_a_flush_keeps_the_buffer(db_path: str) -> None:
    s = tether.open_store(db_path, load_plugins=False)
    h = s.session(source="sig")
    h.buffer("user", "kept")
    _interrupt_writer(s, "BEGIN IMMEDIATE")
    with pytest.raises(KeyboardInterrupt):
        h.flush()
    assert h.pending == 1
    assert [m.content for m in h.flush()] == ["kept"]
    assert h.end() is True
    _other_process_can_write(db_path)
    s.close()


class _InterruptAfterBegin(sqlite3.Connection):
    """A real reader connection, raising KeyboardInterrupt right after its BEGIN ran."""

    armed = 0

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:  # type: ignore[override]
        result = super().execute(sql, params)
        # Only the test's own reads: the heartbeat thread's startup sweep reads too,
        # and must not take an interrupt meant for the main thread.
        main = threading.current_thread() is threading.main_thread()
        if _InterruptAfterBegin.armed and sql == "BEGIN" and main:
            _InterruptAfterBegin.armed -= 1
            raise KeyboardInterrupt
        return result


def test_an_interrupt_right_after_a_read_begins_leaves_no_snapshot_open(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader left inside its transaction would fail every later read on it
    and pin an old snapshot (stale reads, a WAL that cannot be checkpointed)."""
    s = tether.open_store(db_path, load_plugins=False)
    h = s.session(source="sig")
    h.append("user", "first")
    backend: Any = s.backend
    for conn in backend._idle_readers:  # new readers come from the patched connect
        conn.close()
    backend._reader_count -= len(backend._idle_readers)
    backend._idle_readers.clear()
    real_connect = sqlite3.connect
    monkeypatch.setattr(
        sqlite3, "connect", lambda *a, **k: real_connect(*a, factory=_InterruptAfterBegin, **k)
    )
    _InterruptAfterBegin.armed = 3
    for _ in range(3):
        with pytest.raises(KeyboardInterrupt):
            s.get_session(h.id)
    h.append("user", "second")
    assert [m.content for m in s.get_messages(h.id)] == ["first", "second"]
    assert s.get_session(h.id).message_count == 2
    assert all(not c.in_transaction for c in backend._idle_readers)
    h.end()
    s.close()


def test_an_interrupt_inside_a_postgres_transaction_rolls_it_back(pg_url: str) -> None:
    """The same on PostgreSQL: the connection goes back to the pool idle, never
    inside a transaction, and its row locks are released."""
    url = pg_url
    s = tether.open_store(url, load_plugins=False)
    h = s.session(source="sig")
    h.append("user", "first")

    def interrupted(c: Any) -> None:
        c.execute("UPDATE sessions SET title = 'never' WHERE id = ?", (h.id,))
        raise KeyboardInterrupt

    for _ in range(3):
        with pytest.raises(KeyboardInterrupt):
            s.backend.write(interrupted)
    assert s.get_session(h.id).title is None
    _other_process_can_write(url)
    h.append("user", "second")
    assert h.end() is True
    s.close()


SIGNALLED_WRITER = """
import random
N = int(sys.argv[3])
armed = False  # the program raises only around its writes (as a loop catching Ctrl+C does)

class Interrupted(BaseException):  # as SystemExit: libraries' `except Exception` let it through
    pass

def on_signal(signum, frame):
    if armed:
        raise KeyboardInterrupt if signum == signal.SIGINT else Interrupted

signal.signal(getattr(signal, sys.argv[2]), on_signal)
store = tether.open_store(sys.argv[1], load_plugins=False)
rnd = random.Random(7)
handles = [store.session(source="signalled", title=f"s{k}") for k in range(25)]
for h in handles:  # the owner and its heartbeat thread exist before the first signal
    h.persist()
errors, interrupts, done = [], 0, 0
print("ready", flush=True)
while done < N:
    h = handles[done % len(handles)]
    buffered = rnd.random() < 0.3
    try:
        armed = True
        if buffered:
            h.buffer("assistant", f"b{done}")
            h.flush()
        else:
            h.append("user", f"m{done}")
        armed = False
        done += 1
        if done % 50 == 0:
            print("progress", done, flush=True)
    except (KeyboardInterrupt, Interrupted):
        armed = False
        interrupts += 1
    except tether.TetherError as exc:
        armed = False
        errors.append(repr(exc))
        done += 1
print("writes-done", flush=True)
for h in handles:
    while True:  # a signal may land inside end(): it is retried, never lost
        try:
            armed = True
            h.end()
            armed = False
            break
        except (KeyboardInterrupt, Interrupted):
            armed = False
            interrupts += 1
        except tether.TetherError as exc:
            armed = False
            errors.append(repr(exc))
            break
print("interrupts", interrupts, flush=True)
print("errors", len(errors), *errors[:3], flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_signals_at_random_points_of_thousands_of_writes(db_url: str, signame: str) -> None:
    """A program that catches its signals and goes on writing: every later
    write works, every session ends, and other processes can write."""
    tether.open_store(db_url, load_plugins=False).close()  # migrate before the clock starts
    postgres = db_url.startswith("postgresql://")
    # A signal every few writes on average: a PostgreSQL write takes round trips,
    # and one interrupted mid-query costs a cancel or a new connection.
    gap, writes = (0.02, "4000") if postgres else (0.001, "6000")
    proc = spawn(SIGNALLED_WRITER, db_url, signame, writes)
    wait_for_line(proc, "ready")
    lines: list[str] = []
    writes_done = threading.Event()
    progressed = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.strip())
            if line.startswith("progress"):
                progressed.set()
            if line.strip() == "writes-done":
                writes_done.set()
                progressed.set()

    errs: list[str] = []

    def drain() -> None:
        # Read stderr as it comes: a child logging more than a pipe holds (64 KiB
        # of warnings under load) would otherwise block in write() and never exit.
        assert proc.stderr is not None
        errs.extend(proc.stderr)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stderr_reader = threading.Thread(target=drain, daemon=True)
    stderr_reader.start()
    rnd = random.Random(signame)
    sent = since_progress = 0
    deadline = time.monotonic() + 90
    while not writes_done.is_set() and proc.poll() is None and time.monotonic() < deadline:
        if progressed.is_set():
            progressed.clear()
            since_progress = 0
        elif since_progress >= 200:
            # Signals faster than a write can finish (a loaded machine, a PostgreSQL
            # reconnect) would starve the writer by the test's own doing: hold off, and
            # a writer that still makes no progress without signals is hung.
            assert progressed.wait(30), "the writer made no progress while no signal came"
            continue
        proc.send_signal(getattr(signal, signame))
        sent += 1
        since_progress += 1
        time.sleep(rnd.uniform(0, gap))
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        dump_stacks_and_kill(proc)
        proc.wait()
        stderr_reader.join(timeout=10)
        stacks = "".join(errs[-200:])
        pytest.fail(f"the writer hung; writes done: {writes_done.is_set()}; {lines[-3:]}\n{stacks}")
    stderr_reader.join(timeout=10)
    assert code == 0, "".join(errs[-50:])
    assert writes_done.is_set(), "the writer never finished its writes"
    reader.join(timeout=10)
    interrupts = int(next(x for x in lines if x.startswith("interrupts")).split()[1])
    assert next(x for x in lines if x.startswith("errors")) == "errors 0"
    assert sent > 100 and interrupts > 20  # signals did land inside the writes
    s = tether.open_store(db_url, load_plugins=False)
    sessions = s.list_sessions(include_empty=True, limit=100).items
    assert len(sessions) == 25
    assert all(c.session.ended_at is not None for c in sessions)
    for c in sessions:
        stored = s.get_messages(c.session.id)
        assert c.session.message_count == len(stored) == (stored[-1].seq if stored else 0)
    s.close()
    _other_process_can_write(db_url)


# --- a commit of unknown outcome is resolved by the store -----------------------------------


class _Rollback(Exception):
    pass


def _lose_next_commit(store: Store, monkeypatch: pytest.MonkeyPatch, *, landed: bool) -> None:
    """The next write transaction runs for real, then its commit's outcome is lost.

    ``landed``: it committed; otherwise it was rolled back. Either way the
    caller gets CommitUnknownError, as when the connection breaks during COMMIT.
    """
    real = store.backend.write
    left = [1]

    def write(fn: Any) -> Any:
        if not left:
            return real(fn)
        left.clear()
        if landed:
            real(fn)
        else:

            def then_roll_back(c: Any) -> None:
                fn(c)
                raise _Rollback

            with pytest.raises(_Rollback):
                real(then_roll_back)
        raise tether.CommitUnknownError("lost the connection while committing")

    monkeypatch.setattr(store.backend, "write", write)


def _transcript(store: Store, session_id: str) -> list[str | None]:
    stored = store.get_messages(session_id)
    assert store.get_session(session_id).message_count == len(stored)
    assert [m.seq for m in stored] == list(range(1, len(stored) + 1))
    return [m.content for m in stored]


@pytest.mark.parametrize("landed", [True, False], ids=["landed", "not-landed"])
def test_an_append_whose_commit_is_unknown_is_stored_once(
    store: Store, monkeypatch: pytest.MonkeyPatch, landed: bool
) -> None:
    """The transaction path of ``append`` (SQLite's hot path; PostgreSQL's path
    when the listing's activity moves) finds out instead of guessing."""
    h = store.session(source="unknown")
    h.append("user", "first")
    _lose_next_commit(store, monkeypatch, landed=landed)
    h._w.activity_at = 0.0  # the listing is due: PostgreSQL takes the transaction too
    assert h.append("assistant", "second").seq == 2
    assert h.append("user", "third").seq == 3
    assert _transcript(store, h.id) == ["first", "second", "third"]
    h.end()


@pytest.mark.parametrize("landed", [True, False], ids=["landed", "not-landed"])
def test_a_flush_whose_commit_is_unknown_is_stored_once(
    store: Store, monkeypatch: pytest.MonkeyPatch, landed: bool
) -> None:
    h = store.session(source="unknown")
    h.append("user", "first")
    h.buffer("assistant", "b1")
    h.buffer("assistant", "b2")
    _lose_next_commit(store, monkeypatch, landed=landed)
    assert [m.seq for m in h.flush()] == [2, 3]
    assert h.pending == 0
    h.flush()
    assert _transcript(store, h.id) == ["first", "b1", "b2"]
    h.end()


@pytest.mark.parametrize("landed", [True, False], ids=["landed", "not-landed"])
def test_a_first_write_whose_commit_is_unknown_creates_the_session_once(
    store: Store, monkeypatch: pytest.MonkeyPatch, landed: bool
) -> None:
    """The first message also writes the session row (and, with buffered
    messages pending, a message without key): neither is doubled."""
    h = store.session(source="unknown")
    h.buffer("user", "buffered")
    _lose_next_commit(store, monkeypatch, landed=landed)
    assert h.append("assistant", "no key").seq == 2
    h.append("user", "after")
    assert _transcript(store, h.id) == ["buffered", "no key", "after"]
    assert len(store.list_sessions(include_empty=True).items) == 1
    assert h.end() is True


# --- storage faults: files that vanish, cannot be written, or are no files -----------------


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_database_file_removed_while_open_refuses_the_next_write(
    tmp_path: Path, how: str
) -> None:
    """No acknowledgement of a message that is then nowhere: the write fails,
    and no new empty database appears in the file's place."""
    db = tmp_path / "tether.db"
    s = tether.open_store(db, load_plugins=False)
    h = s.session(source="doomed")
    h.append("user", "stored")
    for suffix in ("", "-wal", "-shm"):
        if (tmp_path / f"tether.db{suffix}").exists():
            (tmp_path / f"tether.db{suffix}").unlink()
    if how == "replaced":
        tether.open_store(db, load_plugins=False).close()  # another, empty database
    else:
        # A new connection (a reader, the checkpointer) must not create an empty
        # database in its place: it fails instead.
        backend: Any = s.backend
        for conn in backend._idle_readers:
            conn.close()
        backend._reader_count -= len(backend._idle_readers)
        backend._idle_readers.clear()
        with pytest.raises(tether.StoreError, match="database file was removed"):
            s.get_session(h.id)
        assert not db.exists()
    with pytest.raises(tether.StoreError, match=f"database file was {how}"):
        h.append("user", "never acknowledged")
    h.buffer("user", "buffered")
    with pytest.raises(tether.StoreError, match=f"database file was {how}"):
        h.flush()
    assert db.exists() == (how == "replaced")
    if how == "replaced":
        fresh = tether.open_store(db, load_plugins=False)
        assert fresh.list_sessions(include_empty=True).items == []
        fresh.close()
    h._pending.clear()  # nothing can be written anywhere: let the store close quietly
    s.close()
    exits.untrack(h)  # its end cannot be recorded anywhere: not at exit either


@pytest.mark.parametrize("target", ["/dev/null", "/dev/zero", "fifo", "directory"])
def test_a_path_that_is_no_regular_file_is_refused_and_nothing_is_created(
    tmp_path: Path, target: str
) -> None:
    if target == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)
    elif target == "directory":
        path = tmp_path / "dir.db"
        path.mkdir()
    else:
        path = Path(target)
    before = sorted(os.listdir(path.parent))
    with pytest.raises(tether.StoreOpenError) as info:
        tether.open_store(path, load_plugins=False)
    message = str(info.value)
    assert "\n" not in message and "not a database file" in message
    assert sorted(os.listdir(path.parent)) == before  # no -journal, -wal or -shm beside it


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[tuple[Path, Any]]:
    """A directory that becomes read-only for real when the returned function is called:
    a tmpfs remounted read-only (as root), else a directory and file without write bits."""
    root = os.geteuid() == 0
    where = tmp_path / "mnt"
    where.mkdir()
    if root:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], check=True)

    def make_read_only() -> None:
        if root:
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        else:
            for p in where.iterdir():
                p.chmod(0o400)
            where.chmod(0o500)

    try:
        yield where, make_read_only
    finally:
        if root:
            subprocess.run(["umount", str(where)], check=True)
        else:
            where.chmod(0o700)


def test_a_closed_database_on_a_read_only_mount_is_read_and_refuses_writes(
    read_only_dir: tuple[Path, Any],
) -> None:
    where, make_read_only = read_only_dir
    db = where / "tether.db"
    s = tether.open_store(db, load_plugins=False)
    with s.session(source="ro", title="kept") as h:
        h.append("user", "hello")
    s.close()
    make_read_only()
    files = sorted(os.listdir(where))
    s = tether.open_store(db, load_plugins=False)
    [chain] = s.list_sessions().items
    assert chain.session.title == "kept"
    assert [m.content for m in s.get_messages(chain.session.id)] == ["hello"]
    assert s.census().total == 1
    assert s.get_session(chain.session.id).end_reason == "completed"
    h = s.session(source="ro")
    with pytest.raises(tether.StoreOpenError, match="read-only") as info:
        h.append("user", "refused")
    assert "\n" not in str(info.value)
    with pytest.raises(tether.StoreOpenError, match="read-only"):
        s.end_session(chain.session.id, "manual")
    s.close()
    assert sorted(os.listdir(where)) == files


def test_a_new_database_and_its_wal_are_private(tmp_path: Path) -> None:
    db = tmp_path / "private.db"
    s = tether.open_store(db, load_plugins=False)
    with s.session(source="mode") as h:
        h.append("user", "secret")
        for suffix in ("", "-wal", "-shm"):
            assert stat.S_IMODE((tmp_path / f"private.db{suffix}").stat().st_mode) == 0o600
    s.close()


def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    tether.open_store(db, load_plugins=False).close()
    db.chmod(0o640)
    s = tether.open_store(db, load_plugins=False)
    with s.session(source="mode") as h:
        h.append("user", "shared on purpose")
    s.close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o640


def test_the_default_directory_is_created_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TETHER_DB", raising=False)
    s = tether.open_store(load_plugins=False)
    s.close()
    data = tmp_path / "xdg" / "tether"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "tether.db").stat().st_mode) == 0o600


# --- hostile input: one clear InvalidInputError, on both backends --------------------------


def _one_line_invalid(call: Any) -> str:
    with pytest.raises(tether.InvalidInputError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message
    return message


NUL_AND_SURROGATES = ["a\x00b", "\ud800", "x\udfffy"]


@pytest.mark.parametrize("bad", NUL_AND_SURROGATES, ids=["nul", "high-surrogate", "low-surrogate"])
def test_bad_text_in_ids_and_filters_is_invalid_input(store: Store, bad: str) -> None:
    """Never "store unavailable", UnicodeEncodeError or a driver's error."""
    calls = [
        lambda: store.get_session(bad),
        lambda: store.get_chain(bad),
        lambda: store.get_messages(bad),
        lambda: store.attach(bad),
        lambda: store.end_session(bad, "manual"),
        lambda: store.mark_detached(bad, None),
        lambda: store.resolve_id(bad),
        lambda: store.list_sessions(source=bad),
        lambda: store.list_sessions(cwd=bad),
        lambda: store.session(source="ok", parent_id=bad).append("user", "x"),
    ]
    for call in calls:
        _one_line_invalid(call)
    with store.session(source="ok") as h:  # the store is as usable as before
        h.append("user", "fine")


def _cursor(payload: str) -> str:
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor('[NaN,"01ABC"]'),
        _cursor('[Infinity,"01ABC"]'),
        _cursor('[-Infinity,"01ABC"]'),
        _cursor('[1e999,"01ABC"]'),
        _cursor(f'[{10**400},"01ABC"]'),
        _cursor('[1.5,"a\\u0000b"]'),
        _cursor('[1.5,"\\ud800"]'),
        _cursor('[true,"01ABC"]'),
        _cursor('["1.5","01ABC"]'),
        _cursor("[1.5]"),
        _cursor("{}"),
        _cursor("[" * 100000),
        "not base64 at all!",
        "é",
        "\ud800",
        "x" * 5000,
    ],
    ids=lambda c: c[:12],
)
def test_a_bad_cursor_is_invalid_input_never_a_page(store: Store, cursor: str) -> None:
    with store.session(source="ok") as h:
        h.append("user", "listed")
    _one_line_invalid(lambda: store.list_sessions(cursor=cursor))
    assert len(store.list_sessions().items) == 1


def test_numbers_beyond_64_bits_nan_and_fractions_are_invalid_input(store: Store) -> None:
    with store.session(source="ok") as h:
        h.append("user", "one")
        for after in (2**63, -(2**63) - 1, 10**30, float("nan"), float("inf"), 1.5, "3", True):
            _one_line_invalid(lambda after=after: store.get_messages(h.id, after_seq=after))
        for limit in (2**63, 10**30, -1, float("nan"), 2.5, "1"):
            _one_line_invalid(lambda limit=limit: store.get_messages(h.id, limit=limit))
        for limit in (0, 10**30, True, 2.0):
            _one_line_invalid(lambda limit=limit: store.list_sessions(limit=limit))
        for at in (float("nan"), float("inf"), 10**400, "now"):
            _one_line_invalid(lambda at=at: store.mark_detached(h.id, at))
        # The largest values that fit still work.
        assert store.get_messages(h.id, after_seq=2**63 - 1, limit=2**63 - 1) == []
        assert [m.seq for m in store.get_messages(h.id, after_seq=0.0, limit=1.0)] == [1]


@pytest.mark.parametrize(
    "stale_after",
    [float("nan"), float("inf"), -1, 10**400, "1", None],
    ids=["nan", "inf", "negative", "10**400", "string", "none"],
)
def test_repair_unowned_refuses_durations_that_are_no_durations(
    store: Store, stale_after: Any
) -> None:
    for apply in (False, True):
        _one_line_invalid(lambda apply=apply: store.repair_unowned(stale_after, apply=apply))


def test_the_last_code_point_is_stored_like_any_other(store: Store) -> None:
    """U+10FFFF (and other noncharacters, astral characters) are valid text."""
    text = "\U0010ffff \U0001f600 \ufffe"
    with store.session(source="ok", title=text, metadata={"k": text}) as h:
        h.append("user", text, tool_calls=[{"name": text}])
        h.buffer("assistant", text, idem_key=text)
        h.flush()
    assert store.get_session(h.id).title == text
    assert [m.content for m in store.get_messages(h.id)] == [text, text]
    assert store.list_sessions().items[0].session.title == text


# --- PostgreSQL: the listing's plan does not depend on statistics ---------------------------


def test_the_postgres_listing_walks_its_index_on_a_fresh_schema(pg_url: str) -> None:
    """Before any ANALYZE (a fresh schema, autovacuum not yet run), every
    listing but the open one walks its index: no sort over all chains."""
    from tether.store import listing

    s = tether.open_store(pg_url, load_plugins=False)
    s.backend.write(
        lambda c: c.execute(
            """INSERT INTO sessions (id, source, cwd, root_id, created_at, last_active_at,
                message_count, chain_tip_id, chain_message_count, chain_last_active_at, ended_at)
            SELECT lpad(g::text, 26, '0'), 'cli', '/w', lpad(g::text, 26, '0'), g, g, 2,
                lpad(g::text, 26, '0'), 2, g, CASE WHEN g % 2 = 0 THEN g END
            FROM generate_series(1, 5000) g"""
        )
    )
    analyzed = s.backend.read(
        lambda c: c.execute(
            "SELECT last_analyze, last_autoanalyze FROM pg_stat_user_tables"
            " WHERE relname = 'sessions' AND schemaname = current_schema()"
        ).fetchone()
    )
    assert analyzed in (None, (None, None))  # no statistics yet
    first = s.list_sessions(limit=2)
    cursor = first.next_cursor
    assert cursor is not None
    for q in [
        listing.ListQuery(),
        listing.ListQuery(cursor=cursor),
        listing.ListQuery(state="ended"),
        listing.ListQuery(source="cli"),
        listing.ListQuery(cwd="/w", cursor=cursor),
    ]:
        query, params = listing.build(q)
        plan = "\n".join(
            r[0]
            for r in s._list_reader(q.state)(
                lambda c, query=query, params=params: c.execute(
                    "EXPLAIN " + query, params
                ).fetchall()
            )
        )
        assert "Sort" not in plan, plan
        assert "Index Scan Backward using sessions_listing" in plan, plan
    assert [c.session.id for c in first.items] == ["0" * 22 + "5000", "0" * 22 + "4999"]
    assert [c.session.id for c in s.list_sessions(state="ended", limit=1).items] == [
        "0" * 22 + "5000"
    ]
    s.close()
