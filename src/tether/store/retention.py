"""Retention with consent: prune to a trash, restore, purge, claims and a policy.

Mixed into :class:`~tether.store.StoreCore` (schema 5). The rules:

* ``prune`` moves whole chains to the trash (``sessions.trashed_at``): they
  leave every listing, the census counts them apart, ``restore`` brings them
  back unchanged. Without ``apply`` it only measures (a dry run).
* Never touched: open sessions, chains with an open member, sessions whose
  owner (another process: the pruner's own are its to judge) is alive by its
  own promise (heartbeat within its lease), and sessions
  a reader has **claimed**: a lease row in ``claims`` with an expiry, so a
  reader that dies releases its claims by expiry.
* A claim and a prune decide in one transaction each, and they exclude each
  other: on SQLite every write transaction excludes every other; on
  PostgreSQL a claim reads its sessions ``FOR SHARE`` and a prune locks the
  members of its chains ``FOR UPDATE SKIP LOCKED`` before checking claims
  again in a fresh statement. So a session is either claimed (and skipped) or
  trashed (and the claim refused), whatever the timing (field report 004).
* ``purge`` deletes trashed chains for good, with their messages, claims and
  events, in batches short enough to keep the write lock for milliseconds,
  then gives the space back (:meth:`Retention.reclaim_space`). The highest
  deleted event id is kept as ``compacted_through``: an event cursor below it
  may have missed something and must reload.

Durations are seconds here; the command line parses ``90d`` and the like.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError, SessionNotFoundError
from ..validate import check_id, check_source, check_text
from . import sql
from . import sql_retention as q
from .backend import Conn

if TYPE_CHECKING:
    from ..clock import Clock
    from .backend import Backend

log = logging.getLogger("tether.store")

# Chains per prune transaction, sessions per purge transaction: small enough that
# a batch holds the write lock for a few milliseconds (see bench/retention.py).
PRUNE_BATCH = 200
PURGE_BATCH = 100

POLICY_KEY = "retention"
COMPACTED_KEY = "events_compacted_through"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration (``7776000`` -> ``90d``)."""
    for unit in ("w", "d", "h", "m"):
        n = seconds / _UNITS[unit]
        if n >= 1 and n.is_integer():
            return f"{int(n)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What a prune found (a dry run) or moved to the trash (``applied``)."""

    chains: int = 0
    sessions: int = 0
    messages: int = 0
    bytes: int = 0
    applied: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What a purge deleted for good."""

    chains: int = 0
    sessions: int = 0
    messages: int = 0
    events: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """The store's retention policy, applied by ``tether serve``: trash chains
    that ended more than ``keep`` seconds ago; purge the trash after ``purge_after``."""

    keep: float
    source: str | None = None
    reason: str | None = None
    purge_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        text = f"trash chains ended more than {format_duration(self.keep)} ago"
        if self.source is not None:
            text += f" (source {self.source})"
        if self.reason is not None:
            text += f" (end reason {self.reason})"
        if self.purge_after is not None:
            text += f"; purge the trash after {format_duration(self.purge_after)}"
        return text


@dataclass(frozen=True, slots=True)
class ReclaimReport:
    """Space given back to the file system (SQLite: file bytes; PostgreSQL: not measured)."""

    before: int | None
    after: int | None
    method: str


Progress = Callable[[int, int | None], None]

# What one batch may hold the write lock for. Batches are sized to half of the
# 50 ms budget, so a slow one (a cold cache, a busy disk) still stays within it.
BATCH_TARGET = 0.025


class BatchSizer:
    """How many items the next batch takes, from how long the last one held the lock.

    Pure: given durations, it halves after a batch slower than the target and
    grows by half after one faster than half of it (a batch grown so stays
    under the target), between 1 and ``most``,
    from ``start`` (default ``most``). Prune and purge start at half: the
    first batch is the one whose cost is unknown (a cold cache, statements not
    yet planned), and a blind first batch of ``most`` was the longest of a run.
    """

    def __init__(
        self, most: int, target: float = BATCH_TARGET, *, start: int | None = None
    ) -> None:
        self.most = max(1, most)
        self.size = self.most if start is None else max(1, min(self.most, start))
        self.target = target

    def pause(self, seconds: float) -> float:
        """How long to leave the lock free after a batch that held it ``seconds``.

        SQLite's waiting writers poll with a growing sleep: a pruner that takes
        the lock again at once starves them. Leaving it free three times as long
        as it was held (at most 0.1 s) caps prune at a quarter of the lock time.
        """
        return min(0.1, 3 * seconds)

    def took(self, seconds: float) -> int:
        """Record the last batch's duration; return the next batch's size."""
        if seconds > self.target:
            self.size = max(1, self.size // 2)
        elif seconds < self.target / 2:
            self.size = min(self.most, self.size + max(1, self.size // 2))
        return self.size


class Retention:
    """Prune, trash, restore, purge, claims and policy (mixed into :class:`StoreCore`)."""

    backend: Backend
    clock: Clock

    if TYPE_CHECKING:  # provided by StoreCore, Ownership and MessageWrites

        @property
        def owner_id(self) -> str | None: ...

        def _liveness_now(self, c: Conn) -> float: ...

        def _event(
            self, c: Conn, session_id: str | None, kind: str, data: dict[str, Any]
        ) -> None: ...

    # --- prune ----------------------------------------------------------------------

    def prune(
        self,
        ended_before: float,
        *,
        source: str | None = None,
        reason: str | None = None,
        apply: bool = False,
        batch: int = PRUNE_BATCH,
        progress: Progress | None = None,
        held: list[float] | None = None,
    ) -> PruneReport:
        """Chains whose members all ended more than ``ended_before`` seconds ago.

        Without ``apply``, a dry run: counts sessions, messages and bytes. With
        it, moves them to the trash in batches of at most ``batch`` chains, each in
        one transaction that rechecks every rule (see the module docstring); a
        batch that held the write lock longer than BATCH_TARGET halves the next.
        ``held``, if given, gets each batch's duration in seconds (benchmarks).
        """
        source = None if source is None else check_source(source)
        reason = check_text(reason, "reason")
        cutoff = self.clock.now() - ended_before
        dialect = self.backend.dialect
        extra: list[Any] = [x for x in (source, reason) if x is not None]
        find = q.prune_candidates(dialect, source=source is not None, reason=reason is not None)
        after: tuple[float, str] = (-math.inf, "")
        totals = [0, 0, 0, 0]  # chains, sessions, messages, bytes
        sizer = BatchSizer(batch, start=batch // 2)
        pace = self.backend.dialect == "sqlite"  # one write lock for the whole file
        me = self.owner_id or ""  # this process's own sessions are its to judge

        def candidates(c: Conn) -> list[Any]:
            now = self._liveness_now(c)
            limit = sizer.size
            params = (cutoff, *after, cutoff, now, me, now, *extra, limit)
            return c.execute(find, params).fetchall()

        def measure(c: Conn, roots: list[str]) -> tuple[int, int, int]:
            row = c.execute(
                q.chains_size(dialect, len(roots)), q.chains_size_params(dialect, roots)
            ).fetchone()
            return int(row[0]), int(row[1]), int(row[2])

        def trash(c: Conn) -> tuple[list[Any], int, tuple[int, int, int]]:
            rows = candidates(c)
            roots = self._lock_whole_chains(c, [r[0] for r in rows]) if rows else []
            if roots:
                # Recheck under the locks, in a fresh statement (PostgreSQL reads
                # claims committed until now): what a claim won is skipped.
                now = self._liveness_now(c)
                recheck = q.prune_recheck(
                    dialect, source=source is not None, reason=reason is not None, ids=len(roots)
                )
                rules = (cutoff, cutoff, now, me, now, *extra)
                ids = q.ids_param(dialect, roots)
                params = (*ids, *rules) if dialect == "postgresql" else (*rules, *ids)
                roots = [r[0] for r in c.execute(recheck, params).fetchall()]
            size = (0, 0, 0)
            if roots:
                size = measure(c, roots)
                c.execute(q.trash_chains(len(roots)), (self.clock.now(), *roots))
            return rows, len(roots), size

        def look(c: Conn) -> tuple[list[Any], int, tuple[int, int, int]]:
            rows = candidates(c)
            return rows, len(rows), measure(c, [r[0] for r in rows]) if rows else (0, 0, 0)

        finished = False
        try:
            while True:
                limit = sizer.size
                started = time.perf_counter()
                rows, chains, size = self._write_batch(trash) if apply else self.backend.read(look)
                took = time.perf_counter() - started
                sizer.took(took)
                if held is not None:
                    held.append(took)
                if not rows:
                    break
                if apply and pace:
                    time.sleep(sizer.pause(took))
                after = (rows[-1][1], rows[-1][0])
                for i, n in enumerate((chains, *size)):
                    totals[i] += n
                if progress is not None:
                    progress(totals[1], None)
                if len(rows) < limit:
                    break
            finished = True
        finally:
            if apply and totals[0]:
                summary = {"chains": totals[0], "sessions": totals[1]}
                self._log_run("trashed", summary, finished=finished)
        return PruneReport(totals[0], totals[1], totals[2], totals[3], applied=apply)

    def _write_batch(self, fn: Callable[[Conn], Any], *, ordered: bool = False) -> Any:
        """One prune or purge batch: on PostgreSQL its COMMIT does not wait for the
        disk (a batch a crash undoes is done again by the next run); a run ends
        with :meth:`_log_run`, whose commit does, and flushes every batch before it."""
        unflushed = getattr(self.backend, "write_unflushed", None)
        if unflushed is not None:
            return unflushed(fn, ordered=ordered)
        return self._write_ordered(fn) if ordered else self.backend.write(fn)

    def _log_run(self, kind: str, data: dict[str, Any], *, finished: bool) -> None:
        """The one event of a prune or purge run that did something, written (and
        flushed) when it ends, also when it was interrupted. Its batches write no
        event: an id from the events' sequence must never be taken in a commit
        that is not flushed (see ``write_unflushed``)."""
        try:
            self.backend.write(lambda c: self._event(c, None, kind, data))
        except Exception:
            if finished:
                raise
            # What interrupted the run is the error to report; this one follows from it.
            log.debug("could not log the %s event of an interrupted run", kind, exc_info=True)

    def _lock_whole_chains(self, c: Conn, roots: list[str]) -> list[str]:
        """Lock every member of these chains (PostgreSQL); the chains fully locked."""
        dialect = self.backend.dialect
        if dialect != "postgresql":
            return roots
        locked: dict[str, int] = {}
        for _sid, root in c.execute(q.lock_members(dialect, len(roots)), roots).fetchall():
            locked[root] = locked.get(root, 0) + 1
        totals = dict(c.execute(q.members_total(len(roots)), roots).fetchall())
        return [r for r in roots if locked.get(r, 0) == totals.get(r, -1)]

    # --- restore --------------------------------------------------------------------

    def restore(self, session_id: str) -> int:
        """Bring a trashed chain back (any member's id); return its sessions restored.

        Raises :class:`SessionNotFoundError` for an unknown id; 0 if it was not trashed.
        """
        session_id = check_id(session_id)

        def tx(c: Conn) -> int:
            row = c.execute(sql.SELECT_ROOT_OF, (session_id,)).fetchone()
            if row is None:
                raise SessionNotFoundError(session_id)
            n = c.execute(q.restore_chains(1), (row[0],)).rowcount
            if n:
                self._event(c, row[0], "restored", {"sessions": n})
            return int(n)

        return self.backend.write(tx)

    def restore_all(self, *, batch: int = PRUNE_BATCH) -> int:
        """Bring every trashed chain back; return the sessions restored."""
        total = 0
        while True:

            def tx(c: Conn) -> int:
                roots = [
                    r[0] for r in c.execute(q.TRASHED_ROOTS, (-math.inf, "", batch)).fetchall()
                ]
                if not roots:
                    return -1
                n = c.execute(q.restore_chains(len(roots)), roots).rowcount
                self._event(c, None, "restored", {"chains": len(roots), "sessions": n})
                return int(n)

            n = self._write_ordered(tx)  # see _write_ordered: TRASHED_ROOTS too
            if n < 0:
                return total
            total += n

    def trashed_chains(self, limit: int = 1000) -> list[tuple[str, float]]:
        """Roots of trashed chains with the time they were trashed, oldest first."""
        return [
            (r[0], float(r[1]))
            for r in self._read_ordered(
                lambda c: c.execute(q.TRASHED_ROOTS, (-math.inf, "", limit)).fetchall()
            )
        ]

    # --- purge ----------------------------------------------------------------------

    def purge(
        self,
        trashed_before: float,
        *,
        batch: int = PURGE_BATCH,
        progress: Progress | None = None,
        held: list[float] | None = None,
    ) -> PurgeReport:
        """Delete for good the chains trashed more than ``trashed_before`` seconds ago.

        Messages, claims and events go with their sessions, at most ``batch``
        chains per transaction (fewer after a slow one, as in :meth:`prune`).
        Call :meth:`reclaim_space` afterwards to give the space back to the
        file system.
        """
        cutoff = self.clock.now() - trashed_before
        dialect = self.backend.dialect
        totals = [0, 0, 0, 0]
        sizer = BatchSizer(batch, start=batch // 2)
        pace = dialect == "sqlite"  # one write lock for the whole file (see BatchSizer.pause)

        finished = False
        try:
            while True:
                limit = sizer.size
                started = time.perf_counter()
                batch_of = functools.partial(
                    self._purge_batch, cutoff=cutoff, batch=limit, dialect=dialect
                )
                done = self._write_batch(batch_of, ordered=True)
                took = time.perf_counter() - started
                sizer.took(took)
                if held is not None:
                    held.append(took)
                if done is None:
                    break
                for i, n in enumerate(done):
                    totals[i] += n
                if progress is not None:
                    progress(totals[1], None)
                if pace:
                    time.sleep(sizer.pause(took))
            finished = True
        finally:
            if totals[0]:
                self._log_run("purged", PurgeReport(*totals).to_dict(), finished=finished)
        return PurgeReport(*totals)

    def purge_preview(self, trashed_before: float, *, batch: int = PRUNE_BATCH) -> PurgeReport:
        """What :meth:`purge` would delete now (events are not counted: 0)."""
        cutoff = self.clock.now() - trashed_before
        dialect = self.backend.dialect
        totals = [0, 0, 0]
        after: tuple[float, str] = (-math.inf, "")
        while True:

            def look(c: Conn, a: tuple[float, str] = after) -> tuple[list[Any], Any]:
                now = self._liveness_now(c)
                rows = c.execute(q.purge_candidates(dialect), (cutoff, *a, now, batch)).fetchall()
                roots = [r[0] for r in rows]
                size = (
                    c.execute(
                        q.chains_size(dialect, len(roots)), q.chains_size_params(dialect, roots)
                    ).fetchone()
                    if roots
                    else (0, 0, 0)
                )
                return rows, size

            rows, size = self._read_ordered(look)
            if not rows:
                break
            totals[0] += len(rows)
            totals[1] += int(size[0])
            totals[2] += int(size[1])
            after = (rows[-1][1], rows[-1][0])
            if len(rows) < batch:
                break
        return PurgeReport(totals[0], totals[1], totals[2], 0)

    # purge_candidates walks the trash by (trashed_at, id). The index holds
    # trashed_at alone, so PostgreSQL's planner, which guesses a handful of
    # trashed rows, sorts the whole trash for each batch: 60 ms a batch at
    # 10,000 trashed sessions on a busy machine, a purge quadratic in the trash
    # (and BatchSizer, seeing slow batches, shrinks them to one chain each).
    # With sorts priced out it sorts only the ties of the index's order
    # (incremental sort): under a millisecond, whatever the size of the trash.
    def _write_ordered(self, fn: Callable[[Conn], Any]) -> Any:
        return getattr(self.backend, "write_ordered", self.backend.write)(fn)

    def _read_ordered(self, fn: Callable[[Conn], Any]) -> Any:
        return getattr(self.backend, "read_ordered", self.backend.read)(fn)

    def _purge_batch(
        self, c: Conn, cutoff: float, batch: int, dialect: str
    ) -> tuple[int, int, int, int] | None:
        now = self._liveness_now(c)
        find = q.purge_candidates(dialect)
        rows = c.execute(find, (cutoff, -math.inf, "", now, batch)).fetchall()
        if not rows:
            return None
        roots = self._lock_whole_chains(c, [r[0] for r in rows])
        if not roots:
            return None  # every candidate is locked by someone else: try again later
        ids = [r[0] for r in c.execute(q.chain_members(len(roots)), roots).fetchall()]
        top = c.execute(q.max_event_of(len(ids)), ids).fetchone()[0]
        messages = c.execute(q.delete_messages(len(ids)), ids).rowcount
        events = c.execute(q.delete_events(len(ids)), ids).rowcount
        c.execute(q.delete_claims(len(ids)), ids)
        sessions = c.execute(q.delete_sessions(len(ids)), ids).rowcount
        if top is not None:
            known = c.execute(q.GET_SETTING, (COMPACTED_KEY,)).fetchone()
            if known is None or int(known[0]) < int(top):
                c.execute(q.PUT_SETTING, (COMPACTED_KEY, str(int(top))))
        return (len(roots), int(sessions), int(messages), int(events))

    def reclaim_space(self, progress: Progress | None = None) -> ReclaimReport:
        """Give the space of deleted rows back to the file system.

        SQLite: the first time, ``VACUUM`` into incremental auto-vacuum mode (one
        rewrite of the file, with ``progress``); from then on
        ``PRAGMA incremental_vacuum`` in short steps, so appenders wait for
        milliseconds at a time. PostgreSQL: plain ``VACUUM`` of the tables
        (space goes back to the table for reuse; the files shrink only at their end).
        """
        if self.backend.dialect == "postgresql":
            run = getattr(self.backend, "write_statement")  # noqa: B009  (PostgreSQL only)
            for table in ("messages", "events", "sessions", "claims"):
                run(f"VACUUM {table}", ())
            return ReclaimReport(None, None, "vacuum")
        path = getattr(self.backend, "path", None)
        if path is None or path == ":memory:":
            return ReclaimReport(None, None, "none")
        return _sqlite_reclaim(str(path), progress)

    # --- claims ---------------------------------------------------------------------

    def claim(self, session_ids: Sequence[str], holder: str, ttl: float) -> list[str]:
        """Claim these sessions for a reader for ``ttl`` seconds; return those claimed.

        A session in the trash or gone is not claimed (the reader must skip
        it). Claiming again extends the lease. Prune and purge leave claimed
        sessions alone until the claim is released or expires.
        """
        ids = [check_id(s) for s in session_ids]
        holder_text = check_text(holder, "holder", required=True) or ""  # required: never None
        if not math.isfinite(ttl) or ttl <= 0:
            raise InvalidInputError(f"claim ttl must be a positive number of seconds, not {ttl!r}")
        return self._claim_ids(ids, holder_text, ttl)

    def _claim_ids(self, ids: list[str], holder: str, ttl: float) -> list[str]:
        """:meth:`claim` of ids as the database spells them (an export's pages)."""
        if not ids:
            return []
        dialect = self.backend.dialect

        def tx(c: Conn) -> list[str]:
            # One statement: an upsert per row is a round trip each on PostgreSQL.
            expires = self._liveness_now(c) + ttl
            params = [*q.ids_json_param(dialect, ids), holder, expires]
            claimed = c.execute(q.claim_rows(dialect, len(ids)), params)
            return [r[0] for r in claimed.fetchall()]

        return self.backend.write(tx)

    def _release_ids(self, ids: list[str], holder: str) -> int:
        """Drop ``holder``'s claims on these sessions (ids as the database spells
        them: an export's written pages); return how many."""
        if not ids:
            return 0
        dialect = self.backend.dialect
        query = q.release_some(dialect, len(ids))
        params = [holder, *q.ids_json_param(dialect, ids)]
        return int(self.backend.write(lambda c: c.execute(query, params).rowcount))

    def release(self, holder: str) -> int:
        """Drop every claim of ``holder``; return how many."""
        holder_text = check_text(holder, "holder", required=True)
        return int(
            self.backend.write(lambda c: c.execute(q.RELEASE_CLAIMS, (holder_text,)).rowcount)
        )

    def expire_claims(self) -> int:
        """Delete expired claims (they no longer protect anything); return how many."""

        def tx(c: Conn) -> int:
            return int(c.execute(q.DELETE_EXPIRED_CLAIMS, (self._liveness_now(c),)).rowcount)

        return self.backend.write(tx)

    # --- events behind compaction -----------------------------------------------------

    def compacted_through(self) -> int:
        """The highest event id purge deleted (0: none). A cursor below it must reload."""
        row = self.backend.read(lambda c: c.execute(q.GET_SETTING, (COMPACTED_KEY,)).fetchone())
        return 0 if row is None else int(row[0])

    def oldest_event_id(self) -> int | None:
        """The oldest event still stored (None: no events)."""
        row = self.backend.read(lambda c: c.execute(q.OLDEST_EVENT).fetchone())
        return None if row is None or row[0] is None else int(row[0])

    # --- policy ---------------------------------------------------------------------

    def set_retention_policy(self, policy: RetentionPolicy | None) -> None:
        """Store the retention policy (None: remove it)."""

        def tx(c: Conn) -> None:
            if policy is None:
                c.execute(q.DELETE_SETTING, (POLICY_KEY,))
            else:
                value = json.dumps(policy.to_dict(), sort_keys=True)
                c.execute(q.PUT_SETTING, (POLICY_KEY, value))

        self.backend.write(tx)

    def retention_policy(self) -> RetentionPolicy | None:
        """The stored retention policy, or None."""
        row = self.backend.read(lambda c: c.execute(q.GET_SETTING, (POLICY_KEY,)).fetchone())
        if row is None:
            return None
        data = json.loads(row[0])
        return RetentionPolicy(
            keep=float(data["keep"]),
            source=data.get("source"),
            reason=data.get("reason"),
            purge_after=None if data.get("purge_after") is None else float(data["purge_after"]),
        )

    def apply_retention_policy(self) -> tuple[PruneReport, PurgeReport] | None:
        """Apply the stored policy once (what ``tether serve`` does periodically)."""
        policy = self.retention_policy()
        if policy is None:
            return None
        pruned = self.prune(policy.keep, source=policy.source, reason=policy.reason, apply=True)
        purged = PurgeReport()
        if policy.purge_after is not None:
            purged = self.purge(policy.purge_after)
        self.expire_claims()
        return pruned, purged

    # --- census ---------------------------------------------------------------------

    def trash_census(self) -> tuple[int, int]:
        """Sessions in the trash and their messages."""
        row = self.backend.read(lambda c: c.execute(q.CENSUS_TRASH).fetchone())
        return int(row[0]), int(row[1])


def _sqlite_reclaim(path: str, progress: Progress | None) -> ReclaimReport:
    """Incremental vacuum (after a one-time ``VACUUM`` into that mode), then a checkpoint."""
    before = os.path.getsize(path)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        mode = conn.execute("PRAGMA auto_vacuum").fetchone()[0]
        if mode != 2:  # 2: incremental
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            ticks = [0]

            def tick() -> int:
                ticks[0] += 1
                if progress is not None:
                    progress(min(ticks[0], pages), pages)
                return 0  # 0: go on

            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.set_progress_handler(tick, 10_000)
            conn.execute("VACUUM")
            conn.set_progress_handler(None, 0)
            if progress is not None:
                progress(pages, pages)
            method = "vacuum"
        else:
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            done = 0
            while True:
                left = conn.execute("PRAGMA freelist_count").fetchone()[0]
                if left == 0:
                    break
                conn.execute("PRAGMA incremental_vacuum(256)").fetchall()
                done = free - conn.execute("PRAGMA freelist_count").fetchone()[0]
                if progress is not None:
                    progress(done, free)
            method = "incremental_vacuum"
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()
    return ReclaimReport(before, os.path.getsize(path), method)
