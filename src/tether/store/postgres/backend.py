"""PostgreSQL backend: psycopg 3 and a small connection pool, for fleets of hosts.

Transactions are explicit (``BEGIN`` ... ``COMMIT`` on autocommit
connections): writes run at READ COMMITTED, where every statement the store
uses either checks its own conditions in its WHERE clause (re-evaluated on the
newest row version after a lock wait) or locks the row it depends on first
(``SELECT ... FOR UPDATE``, see :mod:`tether.store.sql`); reads run in one
REPEATABLE READ, READ ONLY snapshot. A write is retried whole on a
serialization failure, a deadlock, or a connection lost before ``COMMIT`` was
sent; a connection lost *during* ``COMMIT`` leaves the outcome unknown, so that
one is reported rather than retried (re-running a write that did commit could
append a message twice).

The main thread, where Python runs signal handlers, uses a connection of its
own outside the pool (see :meth:`PostgresBackend._run_main`); other threads
borrow from the pool. Nothing relies on session state across transactions (the migration lock is
transaction-scoped; no temporary tables; prepared statements can be turned off
with ``?prepare_threshold=none``), so the backend works behind a
transaction-mode pooler. LISTEN needs a session of its own: see
:mod:`tether.store.postgres.listen`.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg import sql as pg_sql
from psycopg_pool import ConnectionPool, PoolTimeout

from ...errors import (
    CommitUnknownError,
    ForeignDatabaseError,
    InvalidInputError,
    StoreBusyError,
    StoreError,
    StoreOpenError,
    StoreUnavailableError,
    TetherError,
)
from ...threads import abandon
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
from . import schema as ddl
from . import url as pg_url
from .schema import LOCK_CLASS, VERSION_TABLE

T = TypeVar("T")
log = logging.getLogger("tether.store.postgres")

# Session and message timestamps come from each host's clock (heartbeats from the
# server's), so hosts sharing a database should agree on the time: a skew beyond
# this is logged at open.
CLOCK_SKEW_WARNING = 5.0  # seconds

_BEGIN_WRITE = "BEGIN"
_BEGIN_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
# The listing walks an index in its ORDER BY order; before the first ANALYZE
# of a fresh schema the planner guesses a handful of root rows and sorts them
# all instead (17 ms at 8,000 sessions, not 0.5). With sorts priced out, the
# plan no longer depends on statistics. Same round trip: two commands, sent
# unprepared.
_BEGIN_READ_ORDERED = _BEGIN_READ + "; SET LOCAL enable_sort = off"
# The export's lines spell floats as the server prints them (the shortest exact
# digits, as Python's repr), which needs extra_float_digits >= 1: PostgreSQL's
# default since 12, set here in case a server or role configures less.
_BEGIN_READ_ORDERED += "; SET LOCAL extra_float_digits = 1"
_BEGIN_WRITE_ORDERED = _BEGIN_WRITE + "; SET LOCAL enable_sort = off"
# A COMMIT that returns before the server has flushed it (see write_unflushed).
_UNFLUSHED = "; SET LOCAL synchronous_commit = off"
# Retrying these can only help: nothing was committed.
_TRANSIENT = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)
_MAIN_THREAD = threading.main_thread().ident
_ROWS_PER_INSERT = 500  # rows per multi-row INSERT (PostgreSQL takes 65,535 parameters)


# A named parameter: ``:name``, not a cast (``::type``) nor inside a word.
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@functools.lru_cache(maxsize=2048)
def to_pg(query: str) -> str:
    """SQLite's placeholders -> psycopg's, once per distinct statement.

    ``?`` -> ``%s``; a statement without ``?`` may use ``:name`` -> ``%(name)s``
    (store/sql.py never mixes the two in one statement). A literal ``%`` is escaped.
    """
    query = query.replace("%", "%%")
    if "?" in query:
        return query.replace("?", "%s")
    return _NAMED.sub(r"%(\1)s", query)


def _numbered(group: str, k: int) -> str:
    """A VALUES group's ``:name`` placeholders renamed ``:name_k`` (row ``k`` of many)."""
    return _NAMED.sub(lambda m: f":{m.group(1)}_{k}", group)


def one_line(exc: BaseException) -> str:
    """libpq's multi-line message as one line, without the connection preamble."""
    msg = " ".join(str(exc).split())
    if msg.startswith("connection failed: ") or "connection to server" in msg:
        msg = msg.rsplit("failed: ", 1)[-1]
    return msg.removeprefix("FATAL: ").removeprefix("ERROR: ")


class PgConn:
    """The ``Conn`` a transaction function gets: ``?`` SQL on one psycopg cursor."""

    __slots__ = ("_cur",)

    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    def execute(
        self, query: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> psycopg.Cursor[Any]:
        return self._cur.execute(to_pg(query), params)

    def executemany(
        self, query: str, seq: Iterable[Sequence[Any] | Mapping[str, Any]]
    ) -> psycopg.Cursor[Any]:
        """Run ``query`` for each parameter row: one multi-row INSERT where possible.

        Not psycopg's ``executemany``: it enters pipeline mode, and an
        interrupt (Ctrl+C) landing inside that bookkeeping leaves psycopg's
        own ``AssertionError`` instead of the KeyboardInterrupt. An INSERT
        ending in one ``VALUES (...)`` group is sent once with a group per
        row (one round trip as well); anything else runs row by row.
        """
        rows = list(seq)
        head, sep, group = query.rstrip().rpartition("VALUES")
        if not sep or not group.strip().startswith("(") or not group.strip().endswith(")"):
            for row in rows:
                self._cur.execute(to_pg(query), row)
            return self._cur
        group = group.strip()
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start : start + _ROWS_PER_INSERT]
            if chunk and isinstance(chunk[0], Mapping):  # named: one name per row and field
                groups = ", ".join(_numbered(group, k) for k in range(len(chunk)))
                named = {
                    f"{n}_{k}": v
                    for k, row in enumerate(chunk)
                    for n, v in cast("Mapping[str, Any]", row).items()
                }
                self._cur.execute(to_pg(f"{head}VALUES {groups}"), named)
                continue
            statement = f"{head}VALUES {', '.join([group] * len(chunk))}"
            self._cur.execute(to_pg(statement), [v for row in chunk for v in row])
        return self._cur


class _CommitUnknown(Exception):
    """The connection broke while COMMIT was in flight."""


class PostgresBackend:
    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        write_budget: float = 30.0,
        pool_timeout: float = 10.0,
    ) -> None:
        self.target = pg_url.parse(url)
        self.url = self.target.display
        self.write_budget = write_budget
        self.pool_timeout = pool_timeout
        self._closed = False
        self._lock = threading.Lock()
        self._main_conn: psycopg.Connection[Any] | None = None  # see _run_main
        self._main_pid = 0
        self._main_busy = False
        with self.connect() as conn:
            self.schema = self._prepare(conn)
        self._pid = os.getpid()
        self._pool = self._new_pool()

    # --- connections ------------------------------------------------------------------

    def connect(self) -> psycopg.Connection[Any]:
        """A new autocommit connection outside the pool (for opening, LISTEN, bulk loads).

        A failure is one clear line: :class:`StoreUnavailableError`.
        """
        try:
            return psycopg.connect(self.target.conninfo, **self.target.kwargs)
        except psycopg.Error as exc:
            raise StoreUnavailableError(
                f"cannot connect to PostgreSQL {self.url}: {one_line(exc)}"
            ) from None

    def _new_pool(self) -> ConnectionPool:
        pool: ConnectionPool = ConnectionPool(
            self.target.conninfo,
            kwargs=self.target.kwargs,
            min_size=1,
            max_size=self.target.pool_size,
            open=False,
            name=f"tether:{self.url}",
            timeout=self.pool_timeout,
            max_idle=300.0,
            num_workers=2,
        )
        pool.open(wait=False)
        return pool

    def _check_fork(self) -> None:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    # The parent's sockets are shared with it: abandon them, never close them.
                    abandon(self._pool)
                    self._pool = self._new_pool()
                    self._pid = os.getpid()

    # --- opening and migrating -----------------------------------------------------------

    def _prepare(self, conn: psycopg.Connection[Any]) -> str:
        """Check the clock and the schema; migrate if needed. Returns the schema's name."""
        try:
            self._check_clock(conn)
            schema, state, recorded = self._inspect(conn)
            # A newer but compatible schema is used as it is (_inspect refused the rest):
            # this tether runs no step it does not know.
            if state.version < known_version(ddl.MIGRATIONS) or not recorded:
                schema = self._migrate(conn, schema or self.target.schema)
            return schema or "public"
        except TetherError:
            raise
        except pg_errors.InsufficientPrivilege as exc:
            raise StoreOpenError(
                f"no permission to create tether's tables in {self.url}: {one_line(exc)}"
            ) from None
        except psycopg.Error as exc:
            raise StoreOpenError(f"cannot open {self.url}: {one_line(exc)}") from None

    def _check_clock(self, conn: psycopg.Connection[Any]) -> None:
        t0 = time.time()
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
        t1 = time.time()
        assert row is not None
        skew = row[0] - (t0 + t1) / 2
        if abs(skew) > CLOCK_SKEW_WARNING + (t1 - t0) / 2:
            log.warning(
                "this host's clock is %.1f s %s the database server's: tether stamps sessions "
                "and messages with this host's time (heartbeats use the server's), so activity "
                "from hosts whose clocks disagree is ordered wrongly; synchronize the clocks (NTP)",
                abs(skew),
                "behind" if skew > 0 else "ahead of",
            )

    def _inspect(self, conn: psycopg.Connection[Any]) -> tuple[str | None, SchemaState, bool]:
        """The current schema (None if it does not exist yet), its tether schema state, and
        whether it has the record of applied steps; raises if this tether cannot use it.

        A schema from before the record (``tether_migrations``) has only the legacy
        ``tether_schema``, whose greatest version was then its schema version: every
        known step up to it ran. One whose version this tether does not know is taken
        as usable from that version on only (nothing says more).
        """
        row = conn.execute(
            f"""
            SELECT current_schema(),
                to_regclass(quote_ident(current_schema()) || '.{VERSION_TABLE}') IS NOT NULL,
                to_regclass(quote_ident(current_schema()) || '.sessions') IS NOT NULL,
                to_regclass(quote_ident(current_schema()) || '.{MIGRATIONS_TABLE}') IS NOT NULL
            """
        ).fetchone()
        assert row is not None
        schema, ours, has_sessions, recorded = row
        if schema is None:
            return None, SchemaState(0, 0), False
        where = f"schema {schema} of database {self.target.dbname}"
        if not ours:
            if has_sessions:
                raise ForeignDatabaseError(
                    f"{where} has a sessions table of another application; tether will not "
                    "write to it (add ?schema=NAME to the URL for a schema of tether's own)"
                )
            return schema, SchemaState(0, 0), False
        known = known_version(ddl.MIGRATIONS)
        if recorded:
            state_row = conn.execute(
                pg_sql.SQL(
                    "SELECT coalesce(max(version), 0), coalesce(max(compatible_with), 0) FROM {}.{}"
                ).format(pg_sql.Identifier(schema), pg_sql.Identifier(MIGRATIONS_TABLE))
            ).fetchone()
            assert state_row is not None
            state = SchemaState(int(state_row[0]), int(state_row[1]))
        else:
            version_row = conn.execute(
                pg_sql.SQL("SELECT coalesce(max(version), 0) FROM {}.{}").format(
                    pg_sql.Identifier(schema), pg_sql.Identifier(VERSION_TABLE)
                )
            ).fetchone()
            legacy = int(version_row[0]) if version_row else 0
            state = (
                SchemaState(legacy, legacy)
                if legacy > known
                else state_after(ddl.MIGRATIONS, legacy)
            )
        refused = too_new(where, state, known)
        if refused is not None:
            raise refused
        return schema, state, bool(recorded)

    def _migrate(self, conn: psycopg.Connection[Any], schema: str | None) -> str:
        """Apply missing known steps, each in one transaction with its record rows."""
        if schema is None:
            raise StoreOpenError(
                f"{self.url}: no schema of the search_path exists to create tether's tables "
                "in; add ?schema=NAME to the URL"
            )
        while True:
            with conn.transaction():
                # Transaction-scoped: released at COMMIT, so no session state outlives it.
                conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS, schema))
                if self._create_schema(conn, schema):
                    log.info("created schema %s in %s", schema, self.url)
                # Re-read under the lock: another process may have migrated meanwhile.
                _, state, recorded = self._inspect(conn)
                steps = pending(ddl.MIGRATIONS, state)
                if recorded and not steps:
                    return schema
                now = time.time()
                if not recorded:
                    # A schema from before the record: record the steps it already has.
                    conn.execute(ddl.CREATE_MIGRATIONS_TABLE)
                    for row in record_rows(ddl.MIGRATIONS, state, now):
                        conn.execute(ddl.RECORD_STEP, row)
                compatible_with = state.compatible_with
                if steps:
                    step = steps[0]
                    for stmt in step.statements:
                        conn.execute(stmt)
                    conn.execute(ddl.RECORD_STEP, (step.version, step.compatible_with, now))
                    compatible_with = step.compatible_with
                    log.info("migrated %s to schema version %d", self.url, step.version)
                # The legacy record (migration 1 creates it): tethers from before the
                # record read its greatest version as the schema version, so they open
                # exactly the schemas compatible with them.
                conn.execute(ddl.LEGACY_TRIM, (compatible_with,))
                conn.execute(ddl.LEGACY_RECORD, (compatible_with, compatible_with))

    def _create_schema(self, conn: psycopg.Connection[Any], schema: str) -> bool:
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        if exists.fetchone() is not None:
            return False
        try:
            conn.execute(pg_sql.SQL("CREATE SCHEMA {}").format(pg_sql.Identifier(schema)))
        except pg_errors.InsufficientPrivilege as exc:
            raise StoreOpenError(
                f"schema {schema} does not exist in {self.url} and this role may not create "
                f"it: {one_line(exc)}"
            ) from None
        return True

    # --- transactions ----------------------------------------------------------------------

    def _translate(self, exc: psycopg.Error) -> StoreError:
        msg = one_line(exc)
        if isinstance(exc, pg_errors.InsufficientPrivilege):
            return StoreOpenError(f"no permission in {self.url}: {msg}")
        if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
            return StoreOpenError(f"database {self.url} is read-only: {msg}")
        if isinstance(exc, pg_errors.DiskFull):
            return StoreError(f"database {self.url}: the server's disk is full")
        return StoreError(f"database {self.url}: {msg}")

    def _run(self, fn: Callable[[PgConn], T], begin: str | None) -> T:
        """One attempt: borrow a connection, run ``fn`` between BEGIN and COMMIT.

        With ``begin=None``, ``fn`` runs one statement on its own (autocommit),
        which is atomic by itself: one round trip instead of three.
        """
        if threading.get_ident() == _MAIN_THREAD and not self._main_busy:
            return self._run_main(fn, begin)
        # getconn/putconn rather than pool.connection(): its bookkeeping after
        # the block can itself fail when a signal lands there.
        pool = self._pool
        conn = pool.getconn()
        try:
            return self._run_on(conn, fn, begin)
        finally:
            pool.putconn(conn)

    def _run_main(self, fn: Callable[[PgConn], T], begin: str | None) -> T:
        """:meth:`_run` on the main thread, on a connection of its own, outside the pool.

        Python runs signal handlers on the main thread only, between any two
        bytecodes: a KeyboardInterrupt (or a handler's exception) landing inside
        the pool's checkout loses the connection for good, and a few thousand
        interrupts drain the pool. A connection held here can only be left
        unusable, never lost: it is checked before every use and replaced.
        """
        conn = self._main_conn
        if conn is None or conn.closed or conn.broken or self._main_pid != os.getpid():
            if conn is not None:
                if self._main_pid == os.getpid():
                    conn.close()
                else:  # the parent's socket, shared after fork(): never close it here
                    abandon(conn)
            self._main_conn = None
            conn = psycopg.connect(self.target.conninfo, **self.target.kwargs)
            self._main_conn, self._main_pid = conn, os.getpid()
        elif conn.info.transaction_status != pq.TransactionStatus.IDLE and not (
            self._discard_if_busy(conn)  # closed: the retry takes a new one
        ):
            conn.execute("ROLLBACK")  # an exception landed where nothing could clean up
        self._main_busy = True
        try:
            return self._run_on(conn, fn, begin)
        finally:
            self._main_busy = False

    def _run_on(
        self, conn: psycopg.Connection[Any], fn: Callable[[PgConn], T], begin: str | None
    ) -> T:
        cur = conn.cursor()
        if begin is None:
            try:
                return fn(PgConn(cur))
            except psycopg.OperationalError as exc:
                if conn.broken:  # it may or may not have committed
                    raise _CommitUnknown(one_line(exc)) from None
                raise
            except BaseException:
                self._discard_if_busy(conn)
                raise
        # BaseException included: a KeyboardInterrupt or a signal handler's
        # SystemExit can land after any statement, BEGIN and COMMIT too; the
        # connection goes back to the pool idle, never inside a transaction
        # that holds row locks.
        committing = False
        try:
            cur.execute(begin, prepare=False)
            result = fn(PgConn(cur))
            committing = True
            cur.execute("COMMIT")
        except BaseException as exc:
            if conn.broken:
                if committing and isinstance(exc, psycopg.OperationalError):
                    raise _CommitUnknown(one_line(exc)) from None
            elif (
                not self._discard_if_busy(conn)
                and conn.info.transaction_status != pq.TransactionStatus.IDLE
            ):
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error:  # the pool discards a connection it cannot reset
                    log.debug("rollback failed on %s", self.url, exc_info=True)
            raise
        return result

    def _discard_if_busy(self, conn: psycopg.Connection[Any]) -> bool:
        """Close a connection left mid-query by an exception (the pool replaces it).

        psycopg cancels a query interrupted by KeyboardInterrupt, but any other
        exception raised by a signal handler leaves the query running: the
        connection can take no ROLLBACK until it is read to the end.
        """
        if conn.info.transaction_status != pq.TransactionStatus.ACTIVE:
            return False
        conn.close()  # the server rolls the transaction back
        return True

    def _transact(self, fn: Callable[[PgConn], T], begin: str | None, *, retry_commit: bool) -> T:
        if self._closed:
            raise StoreError(f"store {self.url} is closed")
        self._check_fork()
        deadline: float | None = None
        delay = 0.01
        while True:
            try:
                return self._run(fn, begin)
            except _TRANSIENT as exc:
                why: BaseException = exc
                busy = True
            except _CommitUnknown as exc:
                if not retry_commit:
                    raise CommitUnknownError(
                        f"lost the connection to {self.url} while committing; "
                        f"the write may or may not have been applied ({exc})"
                    ) from None
                why, busy = exc, False
            except PoolTimeout as exc:
                why, busy = exc, False
            except psycopg.OperationalError as exc:
                # A connection that broke before COMMIT was sent: nothing was applied.
                if not _is_disconnect(exc):
                    raise self._translate(exc) from None
                why, busy = exc, False
            except psycopg.IntegrityError:
                raise
            except psycopg.DataError as exc:
                if "NUL" in str(exc):  # refused by psycopg before anything was sent
                    raise InvalidInputError(
                        "text contains a NUL character, which PostgreSQL cannot store"
                    ) from None
                raise self._translate(exc) from None
            except psycopg.Error as exc:
                raise self._translate(exc) from None
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.write_budget
            if now >= deadline:
                if busy:
                    raise StoreBusyError(
                        f"database {self.url}: conflicting writers for "
                        f"{self.write_budget:.0f} s ({one_line(why)})"
                    )
                raise StoreUnavailableError(
                    f"lost the connection to PostgreSQL {self.url} for "
                    f"{self.write_budget:.0f} s: {one_line(why) or type(why).__name__}"
                )
            log.debug("retrying a transaction on %s: %s", self.url, why)
            time.sleep(min(random.uniform(delay / 2, delay), deadline - now))
            delay = min(delay * 2, 1.0)

    def write(self, fn: Callable[[PgConn], T]) -> T:
        group = self._group
        if group is not None and group[0] == threading.get_ident():
            return self._group_write(fn)  # inside write_group: a savepoint of its transaction
        return self._transact(fn, _BEGIN_WRITE, retry_commit=False)

    def write_ordered(self, fn: Callable[[PgConn], T]) -> T:
        """:meth:`write` for queries that must follow an index's order, never sort
        (purge's batches: a sort would read the whole trash for each batch)."""
        group = self._group
        if group is not None and group[0] == threading.get_ident():
            return self._group_write(fn)
        return self._transact(fn, _BEGIN_WRITE_ORDERED, retry_commit=False)

    def write_unflushed(self, fn: Callable[[PgConn], T], *, ordered: bool = False) -> T:
        """:meth:`write` (:meth:`write_ordered` if ``ordered``) whose COMMIT does not
        wait for the server to flush it to disk, for batches that a crash may undo
        and that are then simply done again (prune's and purge's).

        Such a commit is visible to others at once. The server flushes it within
        a fraction of a second, and any later ordinary commit flushes it too: a
        run of batches ends with one. During a checkpoint a flush took 100 ms on a
        slow disk, the batch's row locks held all along. ``fn`` must not take an
        id a client may see from a sequence (an event's): after a crash the
        server could hand it out again.
        """
        group = self._group
        if group is not None and group[0] == threading.get_ident():
            return self._group_write(fn)
        begin = _BEGIN_WRITE_ORDERED if ordered else _BEGIN_WRITE
        return self._transact(fn, begin + _UNFLUSHED, retry_commit=False)

    def write_statement(self, query: str, params: Sequence[Any]) -> int:
        """Run one write statement atomically on its own; return its row count."""
        group = self._group
        if group is not None and group[0] == threading.get_ident():
            return self._group_write(lambda c: c.execute(query, params).rowcount)
        return self._transact(lambda c: c.execute(query, params).rowcount, None, retry_commit=False)

    # --- group commit (see tether.store.group) ------------------------------------------

    _group: tuple[int, psycopg.Connection[Any], psycopg.Cursor[Any]] | None = None
    _group_broken = False

    def write_group(self, calls: Sequence[Callable[[], Any]]) -> list[Outcome] | None:
        """Run ``calls`` in one write transaction, each of their writes a savepoint.

        Returns their outcomes once committed, or None (nothing kept) if the
        transaction could not be begun, went bad (a serialization failure, a
        lost connection) or could not commit: the caller then runs each call
        on its own, with the usual retries. Not on the main thread, whose
        writes use a connection of their own (see :meth:`_run_main`).
        """
        if self._closed or threading.get_ident() == _MAIN_THREAD:
            return None
        self._check_fork()
        pool = self._pool
        try:
            conn = pool.getconn()
        except PoolTimeout:
            return None
        outcomes: list[Outcome] = []
        try:
            cur = conn.cursor()
            try:
                cur.execute(_BEGIN_WRITE, prepare=False)
                self._group = (threading.get_ident(), conn, cur)
                self._group_broken = False
                outcomes = run_calls(calls, lambda: self._group_broken)
                intrans = conn.info.transaction_status == pq.TransactionStatus.INTRANS
                if self._group_broken or not intrans:
                    self._group_rollback(conn)
                    return None
                cur.execute("COMMIT", prepare=False)
            except Exception:
                # BEGIN or COMMIT failed (a COMMIT's outcome may be unknown: the
                # calls, run again, look before writing).
                self._group_rollback(conn)
                return None
            except BaseException:
                self._group_rollback(conn)
                raise
            finally:
                self._group = None
        finally:
            pool.putconn(conn)
        return outcomes

    def _group_rollback(self, conn: psycopg.Connection[Any]) -> None:
        if conn.broken or self._discard_if_busy(conn):
            return
        if conn.info.transaction_status != pq.TransactionStatus.IDLE:
            try:
                conn.execute("ROLLBACK")
            except psycopg.Error:  # the pool discards a connection it cannot reset
                log.debug("rollback failed on %s", self.url, exc_info=True)

    def _group_write(self, fn: Callable[[PgConn], T]) -> T:
        """One write inside :meth:`write_group`: its own savepoint, so that it fails alone."""
        assert self._group is not None
        _, conn, cur = self._group
        cur.execute("SAVEPOINT tether_group", prepare=False)
        try:
            result = fn(PgConn(cur))
        except BaseException as exc:
            # A constraint, bad data or no database error at all is the call's own
            # failure: back to its savepoint. A serialization failure, a deadlock or
            # a lost connection spoils the whole transaction: the group is given up.
            own = not isinstance(exc, (*_TRANSIENT, psycopg.OperationalError)) and not conn.broken
            if own:
                try:
                    cur.execute("ROLLBACK TO SAVEPOINT tether_group", prepare=False)
                    cur.execute("RELEASE SAVEPOINT tether_group", prepare=False)
                except psycopg.Error:
                    own = False
            if not own:
                self._group_broken = True
            if isinstance(exc, psycopg.Error) and not isinstance(exc, psycopg.IntegrityError):
                if isinstance(exc, psycopg.DataError) and "NUL" in str(exc):
                    raise InvalidInputError(
                        "text contains a NUL character, which PostgreSQL cannot store"
                    ) from None
                raise self._translate(exc) from None
            raise
        cur.execute("RELEASE SAVEPOINT tether_group", prepare=False)
        return result

    def read(self, fn: Callable[[PgConn], T]) -> T:
        return self._transact(fn, _BEGIN_READ, retry_commit=True)

    def read_statement(self, query: str, params: Sequence[Any]) -> Any:
        """Run one read statement on its own (its own snapshot, one round trip); its first row."""
        return self._transact(
            lambda c: c.execute(query, params).fetchone(), None, retry_commit=True
        )

    def read_ordered(self, fn: Callable[[PgConn], T]) -> T:
        """:meth:`read` for queries that must follow an index's order, never sort."""
        return self._transact(fn, _BEGIN_READ_ORDERED, retry_commit=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pid == os.getpid():
            self._pool.close(timeout=5.0)
        main, self._main_conn = self._main_conn, None
        if main is not None and self._main_pid == os.getpid():
            main.close()

    # --- LISTEN/NOTIFY ------------------------------------------------------------------------

    def listen(self) -> Any:
        """A connected :class:`~tether.store.postgres.listen.EventListener` on this store."""
        from .listen import EventListener

        return EventListener(self.connect(), self.schema)


def _is_disconnect(exc: psycopg.OperationalError) -> bool:
    """Did the connection itself fail (rather than the statement)?"""
    if isinstance(exc, pg_errors.AdminShutdown | pg_errors.CannotConnectNow):
        return True
    return exc.sqlstate is None or exc.sqlstate.startswith("08")
