"""SQLite backend: WAL, one writer connection per process, bounded readers.

Every write transaction starts with ``BEGIN IMMEDIATE`` so it takes the write
lock up front, where SQLite's busy handler applies; a deferred transaction
that reads and then writes can fail at once with SQLITE_BUSY no matter the
timeout. On top of the busy timeout, a whole transaction is retried with
jittered backoff until a time budget runs out, so concurrent writers never see
``database is locked``; past the budget the caller gets :class:`StoreBusyError`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import stat
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ...errors import (
    CommitUnknownError,
    ForeignDatabaseError,
    NotADatabaseError,
    StoreBusyError,
    StoreError,
    StoreOpenError,
)
from ...threads import PeriodicThread, abandon, at_fork_in_child
from ..group import Outcome, run_calls
from ..migrations import (
    MIGRATIONS_TABLE,
    SchemaState,
    known_version,
    pending,
    record_rows,
    state_after,
    too_new,
)
from ..sql import JSON_TYPE
from . import schema as ddl
from .schema import APPLICATION_ID

if TYPE_CHECKING:
    from .export_worker import ExportWorker

T = TypeVar("T")
log = logging.getLogger("tether.store.sqlite")

# What JSON_TYPE columns are decoded with: registered once per process, under a
# name only tether's statements use (converters are global to the sqlite3 module).
sqlite3.register_converter(JSON_TYPE, json.loads)

DURABILITY = {"normal": "NORMAL", "full": "FULL"}
_MAX_READERS = 4
# At durability "normal", WAL checkpoints run on a background thread, so an
# append never waits for the checkpoint's fsync (it otherwise lands on one
# commit in a few hundred and costs milliseconds: p99.9 3.6 ms -> 0.4 ms, and
# +15% throughput, see docs/benchmarks.md). The writer still checkpoints by
# itself past _WAL_BACKSTOP pages, should the thread fall behind. At "full"
# every commit fsyncs anyway and a concurrent checkpoint only competes for the
# disk (measured: -30%), so there SQLite checkpoints inline as usual.
_CHECKPOINT_EVERY = 256  # commits
# ... or sooner, after this many rows changed: a bulk writer's few large commits
# (a purge batch changes ~1,300 rows) otherwise fill the WAL to the backstop
# before 256 commits, and the writer checkpoints inline with the write lock
# held (a purge's longest batches: 60 to 77 ms every ~70 batches, median 5).
_CHECKPOINT_ROWS = 10_000
_CHECKPOINT_IDLE = 2.0  # seconds: also checkpoint after a quiet spell
_WAL_BACKSTOP = 8000  # pages
_backends: weakref.WeakSet[SQLiteBackend] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for backend in list(_backends):
        backend._forked = True


at_fork_in_child(_after_fork_in_child)


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


# A busy writer tries again after a jittered sleep of half this to this, then
# half as long again each time: 0.5, 0.75, 1.1, 1.7 ms...: a lock held for a
# few milliseconds is taken within about a third of its time (SQLite's own
# handler waited 1, 2, 5, 10 ms...), and a long one is polled every 50 ms at most.
_FIRST_RETRY = 0.0005
_LAST_RETRY = 0.05


def _backoff(delay: float, left: float) -> float:
    """Sleep about ``delay`` (jittered, at most ``left``) before trying again; the next delay."""
    time.sleep(max(0.0, min(random.uniform(delay / 2, delay), left)))
    return min(delay * 1.5, _LAST_RETRY)


def _is_busy(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


class SQLiteBackend:
    dialect = "sqlite"

    # Declared here, not where __init__ first assigns them: they are None
    # before _init_process_state() has run and again once the store is closed.
    _writer: sqlite3.Connection | None
    _wcur: sqlite3.Cursor | None
    _identity: tuple[int, int] | None

    def __init__(
        self,
        path: str,
        *,
        durability: str = "normal",
        busy_timeout: float = 5.0,
        write_budget: float = 60.0,
    ) -> None:
        if durability not in DURABILITY:
            raise StoreOpenError(
                f"invalid durability {durability!r}: expected one of {', '.join(DURABILITY)}"
            )
        self.path = path
        self.url = path
        self.durability = durability
        self.busy_timeout = busy_timeout
        self.write_budget = write_budget
        self._memory = path == ":memory:" or path.startswith("file::memory:")
        # Resolved once: a later chdir() must not move the database under us.
        self._file = path if self._memory else os.path.abspath(path)
        self._readonly: str | None = None  # why writes are refused, if they are
        self._immutable = False
        self._check_path()
        self._init_process_state()
        try:
            self._writer = self._open_read_only() if self._readonly else self._connect()
            self._wcur = self._writer.cursor()
            self._prepare(self._writer)
            self._identity = self._file_identity()
        except BaseException:
            self._close_all()
            raise

    # --- connections ------------------------------------------------------------

    def _init_process_state(self) -> None:
        self._pid = os.getpid()
        self._forked = False
        _backends.add(self)
        self._wlock = threading.Lock()
        # The reader pool: a plain lock (its ``with`` cannot be cut by a signal
        # handler's exception, a Condition's Python-level __enter__ can), and a
        # condition on it only for waiting when every reader is out.
        self._rlock = threading.Lock()
        self._rfree = threading.Condition(self._rlock)
        self._idle_readers: list[sqlite3.Connection] = []
        self._reader_count = 0
        self._writer = None
        self._wcur = None
        self._closed = False
        self._commits = 0
        self._changes = 0  # the writer's total_changes when the checkpointer was last woken
        self._checkpointer: _Checkpointer | None = None
        self._identity = None
        self._group_thread: int | None = None  # the thread whose writes join a group
        self._group_broken = False

    def _check_path(self) -> None:
        """Refuse what is not a database file, before SQLite creates anything beside it.

        Decides whether the database is read-only (a read-only mount, file or
        directory): it is then opened for reading only, and writes are refused
        with one clear error. A new file is created private (0600): it will
        hold every conversation; SQLite gives its -wal and -shm the same mode.
        """
        if self._memory:
            return
        path = os.path.abspath(self.path)
        parent = os.path.dirname(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise StoreOpenError(f"cannot open database {self.path}: {exc.strerror}") from None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise StoreOpenError(
                f"cannot open database {self.path}: it is {_file_kind(st.st_mode)}, "
                "not a database file"
            )
        if not os.path.isdir(parent):
            raise StoreOpenError(
                f"cannot open database {self.path}: directory {parent} does not exist"
            )
        if st is not None:
            if not os.access(path, os.R_OK):
                raise StoreOpenError(f"cannot open database {self.path}: permission denied")
            if not os.access(path, os.W_OK):
                self._readonly = "the file cannot be written"
            elif not os.access(parent, os.W_OK | os.X_OK) and not os.path.exists(path + "-wal"):
                # WAL needs its -wal and -shm files beside the database.
                self._readonly = f"directory {parent} is not writable"
            return
        if not os.access(parent, os.W_OK | os.X_OK):
            raise StoreOpenError(
                f"cannot create database {self.path}: directory {parent} is not writable"
            )
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            pass  # another process created it meanwhile: its mode is left alone
        except OSError as exc:
            raise StoreOpenError(f"cannot create database {self.path}: {exc.strerror}") from None

    def _file_identity(self) -> tuple[int, int] | None:
        """(device, inode) of the database file, to notice it being removed or replaced."""
        if self._memory:
            return None
        st = os.stat(self._file)
        return st.st_dev, st.st_ino

    def _check_identity(self) -> None:
        """Refuse to commit into a file that is no longer at our path.

        SQLite keeps writing to the inode it opened: after ``rm`` (or a file
        moved over ours) a commit would be acknowledged and then be nowhere
        anyone can read it. One ``stat`` per write transaction (about a
        microsecond) is the price of never acknowledging such a write.
        """
        try:
            st = os.stat(self._file)
        except OSError:
            found = None
        else:
            found = (st.st_dev, st.st_ino)
        if found != self._identity:
            what = "removed" if found is None else "replaced by another file"
            raise StoreError(
                f"database {self.path}: the database file was {what} while it was open; "
                "nothing was written (reopen the store)"
            )

    @property
    def _target(self) -> str:
        """The URI every connection opens: never one that creates the file.

        The file is created once, by :meth:`_check_path`; a connection opened
        after it was removed (a new reader, the checkpointer) must fail rather
        than create an empty database in its place. ``mode=ro`` reads a WAL
        database when its -shm can be used; on a read-only mount it cannot, and
        nothing can change the file there: ``immutable=1``.
        """
        if self._readonly is None:
            query = "mode=rw"
        else:
            query = "immutable=1" if self._immutable else "mode=ro"
        return f"{Path(self._file).as_uri()}?{query}"

    def _connect(self) -> sqlite3.Connection:
        target, uri = (self.path, False) if self._memory else (self._target, True)
        try:
            conn = sqlite3.connect(
                target,
                timeout=self.busy_timeout,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,  # guarded by our own locks
                cached_statements=256,
                uri=uri,
                # Only columns aliased "name [tether_json]" are converted (see JSON_TYPE).
                detect_types=sqlite3.PARSE_COLNAMES,
            )
        except sqlite3.Error as exc:
            if self._identity is not None and not os.path.exists(self._file):
                raise StoreError(
                    f"database {self.path}: the database file was removed while it was open"
                ) from None
            raise StoreOpenError(f"cannot open database {self.path}: {exc}") from None
        return conn

    def _open_read_only(self) -> sqlite3.Connection:
        conn = self._connect()
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            conn.close()
        self._immutable = True
        return self._connect()

    def _check_fork(self) -> None:
        if self._forked:
            # A forked child: abandon (never close) the parent's connections.
            abandon(self._writer, self._idle_readers)
            self._init_process_state()
            self._writer = self._connect()
            self._wcur = self._writer.cursor()
            self._configure(self._writer)
            self._identity = self._file_identity()

    # --- opening and migrating ---------------------------------------------------

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Check the file is ours (or empty) and usable here, set WAL, migrate if needed."""
        try:
            # One snapshot: another process may be migrating this file right now.
            conn.execute("BEGIN")
            try:
                app_id = conn.execute("PRAGMA application_id").fetchone()[0]
                tables = conn.execute(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                ).fetchone()[0]
                state, recorded = self._schema_state(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            msg = str(exc)
            if "not a database" in msg or "malformed" in msg or "encrypted" in msg:
                raise NotADatabaseError(
                    f"{self.path} is not a tether database (not a SQLite file, or corrupt); "
                    "it was left untouched"
                ) from None
            raise StoreOpenError(f"cannot read database {self.path}: {msg}") from None
        if app_id not in (0, APPLICATION_ID) or (app_id == 0 and tables > 0):
            raise ForeignDatabaseError(
                f"{self.path} is a SQLite database of another application; "
                "tether will not write to it"
            )
        known = known_version(ddl.MIGRATIONS)
        refused = too_new(str(self.path), state, known)
        if refused is not None:
            raise refused
        # A newer but compatible file is used as it is: this tether runs no step it
        # does not know, and newer steps only added what it never names.
        behind = state.version < known
        if self._readonly is not None:
            if behind:
                raise StoreOpenError(
                    f"database {self.path} is read-only ({self._readonly}) and "
                    + (
                        "has no tether tables yet"
                        if state.version == 0
                        else "needs a schema upgrade"
                    )
                )
            return
        self._set_wal(conn)
        self._configure(conn)
        if behind or not recorded:
            self._migrate(conn)

    @staticmethod
    def _schema_state(conn: sqlite3.Connection) -> tuple[SchemaState, bool]:
        """The file's schema state, and whether it has the record of applied steps.

        A file from before the record (``tether_migrations``) has only the legacy
        ``user_version``, which was then its schema version: every known step up to
        it ran. One whose version this tether does not know is taken as usable from
        that version on only (nothing says more).
        """
        legacy = conn.execute("PRAGMA user_version").fetchone()[0]
        has_record = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
            (MIGRATIONS_TABLE,),
        ).fetchone()[0]
        if has_record:
            row = conn.execute(ddl.READ_STATE).fetchone()
            return SchemaState(row[0], row[1]), True
        if legacy > known_version(ddl.MIGRATIONS):
            return SchemaState(legacy, legacy), False
        return state_after(ddl.MIGRATIONS, legacy), False

    def _set_wal(self, conn: sqlite3.Connection) -> None:
        if self._memory:
            return
        deadline = time.monotonic() + self.write_budget
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                if mode.lower() != "wal":
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise StoreOpenError(f"cannot switch {self.path} to WAL (mode is {mode})")
                return
            except sqlite3.OperationalError as exc:
                if _is_busy(exc) and time.monotonic() < deadline:
                    time.sleep(random.uniform(0.01, 0.05))
                    continue
                raise self._translate(exc) from None

    @property
    def _background_checkpoints(self) -> bool:
        return not self._memory and self.durability == "normal"

    def _configure(self, conn: sqlite3.Connection) -> None:
        """The writer's settings: durability, checkpoints, and no busy handler.

        SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25... ms between
        tries, so a writer arriving while another holds the lock for 4 ms waited
        8 ms (an appending agent's p99 beside prune: 9.6 ms against batches of
        5). :meth:`_run_write` tries again itself, from half a millisecond.
        """
        conn.execute(f"PRAGMA synchronous = {DURABILITY[self.durability]}")
        conn.execute("PRAGMA busy_timeout = 0")
        if self._background_checkpoints:
            conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_BACKSTOP}")

    def _committed(self, conn: sqlite3.Connection) -> None:
        """After a commit on the writer: wake the checkpointer every
        _CHECKPOINT_EVERY commits, or once _CHECKPOINT_ROWS rows changed."""
        self._commits += 1
        if (
            self._commits >= _CHECKPOINT_EVERY
            or conn.total_changes - self._changes >= _CHECKPOINT_ROWS
        ):
            self._request_checkpoint()

    def _request_checkpoint(self) -> None:
        self._commits = 0
        if self._writer is not None:
            self._changes = self._writer.total_changes
        if not self._background_checkpoints:
            return
        if self._checkpointer is None or not self._checkpointer.is_alive():
            self._checkpointer = _Checkpointer(self)
            self._checkpointer.start()
        self._checkpointer.wake()

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Apply the missing known steps, each recorded, in one ``BEGIN IMMEDIATE`` transaction."""

        def apply(c: sqlite3.Connection) -> None:
            # Re-read under the write lock: another process may have migrated meanwhile.
            state, recorded = self._schema_state(c)
            refused = too_new(str(self.path), state, known_version(ddl.MIGRATIONS))
            if refused is not None:
                raise refused
            steps = pending(ddl.MIGRATIONS, state)
            if recorded and not steps:
                return
            now = time.time()
            if not recorded:
                # A file from before the record: record the steps it already has.
                c.execute(ddl.CREATE_MIGRATIONS_TABLE)
                c.executemany(ddl.RECORD_STEP, record_rows(ddl.MIGRATIONS, state, now))
            compatible_with = state.compatible_with
            for m in steps:
                for stmt in m.statements:
                    c.execute(stmt)
                c.execute(ddl.RECORD_STEP, (m.version, m.compatible_with, now))
                compatible_with = m.compatible_with
                log.info("migrated %s to schema version %d", self.path, m.version)
            c.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            # The legacy record: tethers from before the record read it as the schema
            # version, so they open exactly the files compatible with them.
            c.execute(f"PRAGMA user_version = {compatible_with}")

        self._run_write(apply)

    # --- transactions ----------------------------------------------------------------

    def _translate(self, exc: sqlite3.Error) -> StoreError:
        msg = str(exc)
        low = msg.lower()
        if "readonly" in low or "read-only" in low:
            return StoreOpenError(f"database {self.path} is read-only: {msg}")
        if "unable to open" in low:
            return StoreOpenError(f"cannot open database {self.path}: {msg}")
        if "disk" in low and "full" in low:
            return StoreError(f"database {self.path}: the disk is full")
        return StoreError(f"database {self.path}: {msg}")

    def _run_write(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn`` in a write transaction on the writer, retrying while busy.

        ``fn`` gets the writer's cursor: one reused cursor instead of a new one
        per statement (``Connection.execute`` makes one each time).
        """
        conn = self._writer
        cur = self._wcur
        assert conn is not None and cur is not None
        deadline: float | None = None
        delay = _FIRST_RETRY
        while True:
            with self._wlock:
                busy: BaseException | None = None
                committing = False
                # One handler for everything between BEGIN and COMMIT, BaseException
                # included: a signal handler's KeyboardInterrupt or SystemExit can
                # surface right after any statement returns (BEGIN IMMEDIATE too),
                # and must never leave this connection inside a transaction that
                # holds the write lock. A try costs nothing when nothing is raised.
                try:
                    if conn.in_transaction:  # left by an exception inside a rollback
                        conn.execute("ROLLBACK")
                    cur.execute("BEGIN IMMEDIATE")
                    result = fn(cur)
                    if self._identity is not None:
                        self._check_identity()
                    committing = True
                    cur.execute("COMMIT")
                except BaseException as exc:
                    self._rollback(conn)
                    if _is_busy(exc):
                        busy = exc
                    elif isinstance(exc, sqlite3.IntegrityError):
                        raise
                    elif isinstance(exc, sqlite3.Error):
                        if committing:
                            # SQLite may have written the commit frame before failing
                            # (an I/O error on sync): the caller must find out.
                            raise CommitUnknownError(
                                f"database {self.path}: committing failed, the write may "
                                f"or may not have been applied ({exc})"
                            ) from None
                        raise self._translate(exc) from None
                    else:
                        raise
                else:
                    self._committed(conn)
                    return result
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.write_budget
            if now >= deadline:
                raise StoreBusyError(
                    f"database {self.path} stayed locked by another writer for "
                    f"{self.write_budget:.0f} s ({busy})"
                )
            delay = _backoff(delay, deadline - now)

    def _rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("rollback failed on %s", self.path)

    def write(self, fn: Callable[[Any], T]) -> T:
        if self._group_thread is not None and self._group_thread == threading.get_ident():
            return self._group_write(fn)  # inside write_group: a savepoint of its transaction
        if self._closed or self._forked or self._readonly is not None:
            if self._closed:
                raise StoreError(f"store {self.path} is closed")
            if self._readonly is not None:
                raise StoreOpenError(
                    f"database {self.path} is read-only ({self._readonly}): "
                    "it can be listed and read, not written"
                )
            self._check_fork()
        return self._run_write(fn)

    def _acquire_reader(self) -> sqlite3.Connection:
        with self._rlock:
            while not self._idle_readers and self._reader_count >= _MAX_READERS:
                self._rfree.wait()
            if self._idle_readers:
                return self._idle_readers.pop()
            self._reader_count += 1
        try:
            return self._connect()
        except BaseException:
            with self._rlock:
                self._reader_count -= 1
                self._rfree.notify()
            raise

    def _release_reader(self, conn: sqlite3.Connection) -> None:
        with self._rlock:
            if self._closed:
                conn.close()
                self._reader_count -= 1
            else:
                self._idle_readers.append(conn)
            self._rfree.notify()

    def read(self, fn: Callable[[Any], T]) -> T:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        if self._forked:
            self._check_fork()
        if self._memory:  # an in-memory database exists only on the writer connection
            with self._wlock:
                return self._read_on(self._writer, fn)  # type: ignore[arg-type]
        conn = self._acquire_reader()
        try:
            return self._read_on(conn, fn)
        finally:
            self._release_reader(conn)

    def _read_on(self, conn: sqlite3.Connection, fn: Callable[[Any], T]) -> T:
        # One snapshot for the whole read: a deferred transaction that only reads.
        # As for writes, BaseException included: a reader left inside its
        # transaction would pin an old snapshot and refuse every later BEGIN.
        try:
            if conn.in_transaction:  # left by an exception inside a rollback
                conn.execute("ROLLBACK")
            conn.execute("BEGIN")
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback(conn)
            if isinstance(exc, sqlite3.OperationalError):
                raise self._translate(exc) from None
            raise
        return result

    def export_worker(self) -> ExportWorker | None:
        """A process that reads and spells groups of an export beside this one (see
        :mod:`.export_worker`); None for an in-memory database or if it cannot start."""
        if self._memory or self._identity is None or self._closed:
            return None
        from .export_worker import ExportWorker

        return ExportWorker.start(self._target, self._file, self._identity)

    def close(self) -> None:
        if self._closed:
            return
        if self._forked:
            self._closed = True
            return
        with self._wlock:
            self._closed = True
            if self._checkpointer is not None:
                self._checkpointer.stop()
            if self._writer is not None:
                try:
                    self._writer.execute("PRAGMA optimize")
                    if not self._memory:
                        self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    pass
        self._close_all()

    def _close_all(self) -> None:
        with self._rlock:
            for conn in self._idle_readers:
                conn.close()
            self._reader_count -= len(self._idle_readers)
            self._idle_readers.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # --- group commit (see tether.store.group) ------------------------------------------

    def write_group(self, calls: Sequence[Callable[[], Any]]) -> list[Outcome] | None:
        """Run ``calls`` in one write transaction, each of their writes a savepoint.

        Returns their outcomes once committed, or None (nothing kept) if the
        transaction could not be begun, went bad or could not commit: the
        caller then runs each call on its own, with the usual retries.
        """
        if self._closed or self._forked or self._readonly is not None or self._memory:
            return None  # the one-by-one path says why, or (in memory) reads need the lock
        conn, cur = self._writer, self._wcur
        assert conn is not None and cur is not None
        outcomes: list[Outcome] = []
        with self._wlock:
            try:
                if conn.in_transaction:  # left by an exception inside a rollback
                    conn.execute("ROLLBACK")
                # Busy (another process writes): waited for as long as SQLite's own
                # handler would have; after that the calls go one by one, each
                # through _run_write's busy handling.
                self._begin_waiting(cur)
            except sqlite3.Error:
                self._rollback(conn)
                return None
            self._group_thread = threading.get_ident()
            self._group_broken = False
            try:
                outcomes = run_calls(calls, lambda: self._group_broken)
                if self._group_broken or not conn.in_transaction:
                    self._rollback(conn)
                    return None
                if self._identity is not None:
                    self._check_identity()
                cur.execute("COMMIT")
            except Exception:
                # The identity check or the commit failed (the outcome of a failed
                # COMMIT is unknown: the calls, run again, look before writing).
                self._rollback(conn)
                return None
            except BaseException:
                self._rollback(conn)
                raise
            finally:
                self._group_thread = None
            self._committed(conn)
        return outcomes

    def _begin_waiting(self, cur: sqlite3.Cursor) -> None:
        """``BEGIN IMMEDIATE``, tried again while another process holds the write lock
        (see _FIRST_RETRY) for at most ``busy_timeout`` seconds; then its busy error."""
        deadline: float | None = None
        delay = _FIRST_RETRY
        while True:
            try:
                cur.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                now = time.monotonic()
                deadline = now + self.busy_timeout if deadline is None else deadline
                if not _is_busy(exc) or now >= deadline:
                    raise
            delay = _backoff(delay, deadline - now)

    def _group_write(self, fn: Callable[[Any], T]) -> T:
        """One write inside :meth:`write_group`: its own savepoint, so that it fails alone."""
        conn, cur = self._writer, self._wcur
        assert conn is not None and cur is not None
        cur.execute("SAVEPOINT tether_group")
        try:
            result = fn(cur)
        except BaseException as exc:
            # A constraint (or no database error at all) is the call's own failure;
            # any other database error (I/O, a full disk) may have spoiled the whole
            # transaction: the group is given up and its calls run one by one.
            db_error = isinstance(exc, sqlite3.Error)
            db_error = db_error and not isinstance(exc, sqlite3.IntegrityError)
            own = not db_error and conn.in_transaction
            if own:
                try:
                    cur.execute("ROLLBACK TO tether_group")
                    cur.execute("RELEASE tether_group")
                except sqlite3.Error:
                    own = False
            if not own:
                self._group_broken = True
            if db_error:
                raise self._translate(exc) from None  # type: ignore[arg-type]
            raise
        cur.execute("RELEASE tether_group")
        return result


class _Checkpointer(PeriodicThread):
    """Runs PASSIVE WAL checkpoints on its own connection, off the append path."""

    def __init__(self, backend: SQLiteBackend) -> None:
        super().__init__(
            self._checkpoint,
            interval=_CHECKPOINT_IDLE,
            jitter=0.0,
            name=f"tether-checkpoint:{os.path.basename(backend.path)}",
            on_start=self._open,
            on_stop=self._close,
        )
        self.path = backend.path
        self.target = backend._target
        self.busy_timeout = backend.busy_timeout
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> None:
        try:
            self._conn = sqlite3.connect(
                self.target, timeout=self.busy_timeout, isolation_level=None, uri=True
            )
        except sqlite3.Error:
            log.exception("checkpointer cannot open %s", self.path)
            self.stop()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _checkpoint(self, woken: bool) -> None:
        if woken and self._conn is not None:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # busy or I/O: the backstop still holds
                log.debug("checkpoint of %s skipped: %s", self.path, exc)
