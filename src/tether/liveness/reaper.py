"""The reaper: ends the open sessions of dead owners, exactly once, with a reason.

``Reaper.sweep()`` reads the owners of open sessions (O(open)), judges each
with :func:`tether.liveness.policy.judge`, and in one write transaction (or
one per ``batch`` of dead owners) ends the dead owners' open sessions with
reason ``reaped`` and a detail that says why (``pid 1234 gone``, ``pid 1234
reused``, ``heartbeat stale 41 s``), with one ``reaped`` event each. The
statements are set-based (per owner, never per session: see
:meth:`tether.store.StoreCore.reap`). Each re-checks ``ended_at IS NULL`` and
that the owner's heartbeat is still the one judged (under a row lock on
PostgreSQL), so any number of reapers can sweep at once: each session is
ended by exactly one of them, and the counts they report add up.
``on_session_end(..., interrupted=True)`` fires in the reaping process; the
ends are marked as owing those hooks in the reap's transaction, so a reaper
killed before they ran leaves them to the next process
(:mod:`tether.liveness.deliveries`).

Heartbeat ages are measured on the clock the heartbeats were written with:
the database server's on PostgreSQL (unless the store was given a clock of
its own, as tests do), the store's clock on SQLite. A reaper that notices a
pause of its own (:class:`~tether.liveness.policy.PauseDetector`) gives no
heartbeat verdict until a full lease has passed since.

``ReaperLoop`` runs sweeps on a daemon thread (every 2 s by default) for
long-lived processes such as the gateway; it stops when its store is closed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..clock import Clock, SystemClock
from ..model import Census
from ..threads import PeriodicThread
from . import loops
from .identity import Probe, ProcessIdentity, probe_pid
from .policy import OwnerInfo, PauseDetector, Verdict, judge

if TYPE_CHECKING:
    from ..store import StoreCore

log = logging.getLogger("tether.liveness")

# Owner rows with nothing open and no heartbeat for this long are deleted.
OWNER_RETENTION = 3600.0


@dataclass(frozen=True, slots=True)
class ReapedSession:
    id: str
    owner: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "owner": self.owner, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class ReapReport:
    reaped: list[ReapedSession] = field(default_factory=list)
    dead_owners: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"reaped": len(self.reaped), "sessions": [r.to_dict() for r in self.reaped]}


@dataclass(frozen=True, slots=True)
class OwnerState:
    """An owner of open sessions and what the reaper thinks of it."""

    owner_id: str
    info: OwnerInfo | None  # None: its row is missing
    verdict: Verdict
    open_sessions: int


MISSING = Verdict(False, "owner record missing")


class Reaper:
    """Judges the owners of open sessions and ends the dead ones' sessions.

    ``ttl`` is this reaper's own grace for owners judged by heartbeat: it can
    lengthen an owner's lease, never shorten it (None: each owner's lease).
    ``batch`` is how many dead owners one write transaction reaps (None: all of
    them in one): smaller batches hold SQLite's write lock for less time at
    once, so appenders wait less behind a large sweep, and cost more in total.
    """

    def __init__(
        self,
        store: StoreCore,
        *,
        ttl: float | None = None,
        clock: Clock | None = None,
        identity: ProcessIdentity | None = None,
        probe: Callable[[int, int | None], Probe] = probe_pid,
        batch: int | None = None,
    ) -> None:
        if batch is not None and batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        self.store = store
        self.batch = batch
        self.ttl = ttl
        self.clock = clock or store.clock
        self.identity = identity or ProcessIdentity.current()
        self.probe = probe
        self.pauses = PauseDetector()
        # Ages are measured on the clock heartbeats are stamped with: the server's
        # on PostgreSQL, unless this reaper runs on a clock of its own (tests).
        self._server_time = store.server_clock and isinstance(self.clock, SystemClock)

    def _quiet_for(self) -> float:
        return self.pauses.observe(wall=self.clock.now(), mono=self.clock.monotonic())

    def verdict(
        self, owner_id: str, info: OwnerInfo | None, now: float, quiet_for: float = math.inf
    ) -> Verdict:
        """This reaper's verdict on owner ``owner_id`` (its row ``info``, None if missing).

        ``now`` is on the clock heartbeats are stamped with; ``quiet_for`` is
        how long since this reaper last noticed a pause of its own (infinity:
        none). A missing row is dead, this process alive; anyone else is
        judged by :func:`~tether.liveness.policy.judge` from this reaper's
        identity, with its ``ttl``.
        """
        if info is None:
            return MISSING
        if owner_id == self.store.owner_id:
            return Verdict(True, "this process")
        me = self.identity
        return judge(
            info,
            host=me.host,
            boot_id=me.boot_id,
            pid_ns=me.pid_ns,
            now=now,
            ttl=self.ttl,
            probe=self.probe,
            quiet_for=quiet_for,
        )

    def classify(self) -> list[OwnerState]:
        """Every owner of an open session, with its verdict and open-session count."""
        quiet_for = self._quiet_for()
        now, rows = self.store.owners_of_open_sessions(server_time=self._server_time)
        now = now if now is not None else self.clock.now()
        return [
            OwnerState(owner_id, info, self.verdict(owner_id, info, now, quiet_for), count)
            for owner_id, info, count in rows
        ]

    def sweep(self) -> ReapReport:
        """End every open session whose owner is dead; report what this call ended."""
        quiet_for = self._quiet_for()
        now, candidates = self.store.sweep_candidates(
            self.identity.host,
            self.ttl or 0.0,
            None if self._server_time else self.clock.now(),
        )
        # (owner id, judged heartbeat or None if its row is missing, detail) of each
        # dead owner, and how the report names it: tuples, not OwnerState objects
        # (a mass death judges thousands of owners per sweep).
        judged: list[tuple[str, float | None, str]] = []
        names: dict[str, str] = {}
        verdict = self.verdict
        for owner_id, info in candidates:
            v = verdict(owner_id, info, now, quiet_for)
            if not v.alive:
                if info is None:
                    judged.append((owner_id, None, v.detail))
                    names[owner_id] = owner_id
                else:
                    judged.append((owner_id, info.heartbeat_at, v.detail))
                    names[owner_id] = info.describe()
        if not judged:
            return ReapReport()
        # With on_session_end hooks, each end is marked as owed by this process in
        # the reap's transaction, and the mark cleared once its hooks ran: killed
        # in between, another process delivers them (tether.liveness.deliveries).
        due_by = self.store.hooks_due_by()
        size = self.batch or len(judged)
        reaped: list[ReapedSession] = []
        for i in range(0, len(judged), size):
            last = i + size >= len(judged)
            ended = self.store.reap(
                judged[i : i + size],
                prune_before=now - OWNER_RETENTION if last else None,
                hooks_due_by=due_by,
            )
            batch = [ReapedSession(sid, names[owner], why) for sid, owner, why in ended]
            # Each batch's hooks run once it committed: a later batch that fails
            # cannot leave them owed by this process, which is alive. Each mark is
            # cleared as soon as its hooks ran, one write per end, so a process
            # killed mid-way owes only the ends whose hooks had not run
            # (tests/test_hooks.py); at 10,000 ends those writes are most of the
            # sweep (docs/benchmarks.md, the sweep with a hook).
            if batch and due_by is not None:
                for session in self.store.sessions_by_id([r.id for r in batch]):
                    self.store.fire_end(session, "reaped", True)
                    self.store.mark_hooks_delivered(session.id, due_by)
            reaped += batch
        if reaped:
            log.info("reaped %d sessions of %d dead owners", len(reaped), len(judged))
        return ReapReport(reaped, len(judged))

    def census(self) -> Census:
        """The store's census with open sessions split by their owner's liveness."""
        return self.breakdown()[0]

    def breakdown(self) -> tuple[Census, int]:
        """The census (split by owner liveness) and how many open sessions have a
        hung owner: alive by its pid on this host, but without heartbeat for
        longer than its lease (stopped, or stuck). Hung owners are reported,
        never reaped."""
        census = self.store.census()
        live = dead = hung = 0
        for s in self.classify():
            if s.verdict.alive:
                live += s.open_sessions
                hung += s.open_sessions if s.verdict.hung else 0
            else:
                dead += s.open_sessions
        return dataclasses.replace(census, open_live_owner=live, open_dead_owner=dead), hung


class ReaperLoop:
    """Sweeps every ``interval`` seconds (jittered) on a daemon thread until stopped."""

    def __init__(self, store: StoreCore, interval: float = 2.0, **reaper_options: Any) -> None:
        self.reaper = Reaper(store, **reaper_options)
        loops.register(store, self)  # closing the store stops this loop
        self.interval = interval
        self.sweeps = 0
        self.reaped = 0
        self._thread: PeriodicThread | None = None

    def start(self) -> ReaperLoop:
        if self._thread is None or not self._thread.is_alive():
            self._thread = PeriodicThread(
                self._sweep, interval=self.interval, name="tether-reaper", first_at_once=True
            )
            self._thread.start()
        return self

    def stop(self, wait: float = 5.0) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.stop(wait)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _sweep(self, woken: bool) -> None:
        thread = self._thread
        if self.reaper.store.closed:
            if thread is not None:
                thread.stop()
            return
        try:
            report = self.reaper.sweep()
            self.reaped += len(report.reaped)
        except Exception as exc:  # a busy or unreachable database: try again next tick
            if thread is None or thread.stopping or self.reaper.store.closed:
                return  # the store is closing under this sweep
            log.warning("reaper sweep failed: %s", exc)
        self.sweeps += 1

    def __enter__(self) -> ReaperLoop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
