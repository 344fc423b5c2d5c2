"""This process as the owner of sessions in one store.

The owner row is written in the same transaction as the first session that
refers to it, so an open session never points at a missing owner. There is one
owner id per process and store, however many threads write their first
sessions at once. The row carries the lease the owner promises (the store's
``owner_ttl``): every reaper judges it by that lease.

The heartbeat beats while the process owns at least one open session; its
thread starts with the first one and then stays (idle, writing nothing) until
the store closes, so a process that runs one session after another does not
start and join a thread per session. The first time it starts, it runs one
cheap sweep for sessions of dead processes (the startup sweep). The owner
knows when its lease is at risk: when its last successful heartbeat is older
than half its lease, it logs an error and :attr:`ProcessOwner.lease_ok`
turns False. On a clean exit (or when the store is closed) the heartbeat and
any reaper loop on the store stop, and the row is deleted once nothing open
refers to it. After ``fork()`` the child is a new owner.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import TetherError
from ..ids import new_id
from ..lifecycle import exits
from ..threads import at_fork_in_child, join, start
from ..validate import check_liveness, check_source
from .heartbeat import HeartbeatThread
from .identity import ProcessIdentity
from .loops import stop_loops

if TYPE_CHECKING:
    from ..store import StoreCore

log = logging.getLogger("tether.liveness")

# The upsert's parameters: id, then sql.OWNER_COLUMNS.
OwnerRow = tuple[Any, ...]

# Owners that may need closing at exit. Weak: a closed (or dropped) store is
# released, never kept alive until exit by this list.
_owners: weakref.WeakSet[ProcessOwner] = weakref.WeakSet()
_exit_hooked = False
_registry_lock = threading.Lock()


def _close_owners_at_exit() -> None:
    for owner in list(_owners):
        owner.close()


def _after_fork_in_child() -> None:
    # The exit hooks were cleared in the child (lifecycle.exits): register anew on first use.
    global _exit_hooked
    _exit_hooked = False
    _owners.clear()


at_fork_in_child(_after_fork_in_child)


@dataclass(frozen=True, slots=True)
class OwnerOptions:
    """How this process owns sessions in a store: checked once, then handed down whole
    (``open_store`` -> ``Store`` -> ``ProcessOwner``) instead of four keywords each.

    ``kind`` names the process in the ``owners`` table; it heartbeats every
    ``heartbeat_interval`` seconds while it owns sessions; ``owner_ttl`` is the
    lease its row promises; ``startup_sweep``: the first time it owns a session,
    sweep once for sessions of dead processes.
    """

    kind: str = "process"
    heartbeat_interval: float = 10.0
    owner_ttl: float = 30.0
    startup_sweep: bool = True

    def __post_init__(self) -> None:
        check_liveness(self.heartbeat_interval, self.owner_ttl)
        object.__setattr__(self, "kind", check_source(self.kind))


class ProcessOwner:
    """This process's owner identity, heartbeat and lease in one store."""

    def __init__(self, store: StoreCore, options: OwnerOptions) -> None:
        # Weak, so that a store dropped without close() is still released (the
        # heartbeat thread holds this owner, and this owner must not hold the store).
        self._store_ref = weakref.ref(store)
        self.options = options
        self.kind = options.kind
        self.heartbeat_interval = options.heartbeat_interval
        self.lease = float(options.owner_ttl)
        self.startup_sweep = options.startup_sweep
        # How long after a write of the owner row a new session may skip writing it.
        # Bounded so that the row never gets older than half the lease because of a
        # skip: the heartbeat writes at most 1.2 intervals (its jitter) after the
        # new session, and half a lease is where :attr:`lease_ok` turns False.
        # Computed once (the options are frozen): every first append asks.
        interval = self.heartbeat_interval
        self._fresh_window = max(0.0, min(interval / 2, self.lease / 2 - 1.2 * interval))
        self._lock = threading.RLock()
        self._swept = False
        self._at_risk_logged = False
        self._reset()

    @property
    def _store(self) -> StoreCore:
        store = self._store_ref()
        if store is None:
            raise RuntimeError("the store of this owner is gone")
        return store

    def _reset(self) -> None:
        self._pid = os.getpid()
        self.identity: ProcessIdentity | None = None
        self.id: str | None = None
        self.started_at = 0.0
        self._sessions: set[str] = set()
        self._thread: HeartbeatThread | None = None
        self._last_beat: float | None = None  # monotonic time of the last row write
        # Monotonic time the owner row was last written by a committed transaction
        # (a beat, a first session, a takeover): see row_due.
        self._row_at: float | None = None
        # Delivers the hooks dead processes owed, once per store and process.
        self._delivery: threading.Thread | None = None
        # In _owners (closed at exit) in this process: acquire() adds it once, not
        # per session (a weak set's add and a second lock cost ~1 us).
        self._registered = False

    def ensure(self) -> str:
        """This process's owner id (made on first use, and anew after fork).

        Locked: threads that write their first sessions at the same moment
        must all get the same id, or the process registers several owners and
        only one of them gets heartbeats. Once made, it is read without the lock
        (every session asks, twice): the id is set last, and only in this process.
        """
        owner_id = self.id
        if owner_id is not None and self._pid == os.getpid():
            return owner_id
        with self._lock:
            if self._pid != os.getpid():
                self._reset()
                self._swept = False
            if self.id is None:
                self.identity = ProcessIdentity.current()
                self.started_at = self._store.clock.now()
                self.id = new_id()
            return self.id

    def row(self, now: float) -> OwnerRow:
        """The owner row to upsert, with ``now`` as its heartbeat.

        On a store whose heartbeats are stamped by the database server, the
        heartbeat is left NULL for the server to fill in.
        """
        with self._lock:
            owner_id = self.ensure()
            ident = self.identity
            started_at = self.started_at
        if ident is None:  # ensure() sets it before the id, under the lock
            raise RuntimeError("owner identity missing")
        heartbeat = None if self._store.server_clock else now
        return (
            owner_id,
            ident.host,
            ident.boot_id,
            ident.pid,
            ident.start_time,
            self.kind,
            started_at,
            heartbeat,
            ident.pid_ns,
            self.lease,
        )

    def row_due(self, now: float) -> OwnerRow | None:
        """The owner row for a transaction that starts a session, or None when the
        row was written so recently that writing it again says nothing new.

        A process that runs one short session after another would otherwise
        rewrite it with each (one statement of the seven of a first append).
        """
        at = self._row_at
        if (
            at is not None
            and self._store.clock.monotonic() - at < self._fresh_window
            and self._pid == os.getpid()  # a system call: asked last
        ):
            return None
        return self.row(now)

    @property
    def beating(self) -> bool:
        """The heartbeat writes: its thread runs and this process owns open sessions."""
        return bool(self._sessions) and self._thread is not None and self._thread.is_alive()

    def _owns_sessions(self) -> bool:
        """Whether the heartbeat should write this tick (asked by its thread)."""
        if self._store_ref() is None:  # dropped without close(): let the thread go
            self._stop_thread()
            return False
        return bool(self._sessions)

    def _stop_thread(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.stop()

    @property
    def owned(self) -> int:
        return len(self._sessions)

    @property
    def lease_ok(self) -> bool:
        """False when this process owns sessions and its last heartbeat is older than
        half its lease: a reaper elsewhere may soon judge it dead."""
        if not self._sessions or self._pid != os.getpid():
            return True
        last = self._last_beat
        if last is None:
            return True
        age = self._store.clock.monotonic() - last
        if age <= self.lease / 2:
            return True
        self._lease_at_risk(age)
        return False

    def _lease_at_risk(self, age: float) -> None:
        if not self._at_risk_logged:
            self._at_risk_logged = True
            log.error(
                "lease at risk: the last heartbeat of owner %s landed %.1f s ago (lease %.0f s);"
                " other hosts may soon judge this process dead and reap its sessions",
                self.id,
                age,
                self.lease,
            )

    def wrote_row(self) -> None:
        """The owner row was just written (a heartbeat, or with a session)."""
        self._last_beat = self._row_at = self._store.clock.monotonic()
        if self._at_risk_logged:
            self._at_risk_logged = False
            log.warning("lease of owner %s is safe again: a heartbeat landed", self.id)

    def acquire(self, session_id: str, *, row_written: bool = True) -> None:
        """A handle of this process now owns ``session_id``: keep the heartbeat going.

        ``row_written``: the transaction that gave it the session also wrote the
        owner row (False when :meth:`row_due` said it was fresh enough).
        """
        global _exit_hooked
        with self._lock:
            self.ensure()  # after a fork this resets the owner, _registered included
            if not self._registered:
                _owners.add(self)
                with _registry_lock:
                    if not _exit_hooked:
                        exits.after_handles(_close_owners_at_exit)
                        _exit_hooked = True
                self._registered = True
            if row_written:
                self.wrote_row()  # the row was written with the session, just now
            elif not self._sessions and self._last_beat is None:
                self._last_beat = self._row_at  # the row's last write, a moment ago
            self._sessions.add(session_id)
            if self._thread is None or not self._thread.is_alive():
                sweep = None
                if self.startup_sweep and not self._swept:
                    self._swept = True
                    sweep = self._startup_sweep
                self._thread = HeartbeatThread(
                    self.beat,
                    interval=self.heartbeat_interval,
                    on_start=sweep,
                    on_slow=self._beat_failed,
                    slow_after=self.lease / 2,
                    active=self._owns_sessions,
                    name=f"tether-heartbeat-{self.id}",
                )
                self._thread.start()

    def release(self, session_id: str) -> None:
        """``session_id`` is no longer owned here; after the last one the heartbeat
        idles (its thread stays for the next session, see the top)."""
        with self._lock:
            self._sessions.discard(session_id)
            if not self._sessions:
                self._last_beat = None

    def beat(self) -> None:
        store = self._store_ref()
        if store is None:  # dropped without close(): nothing left to keep alive
            self._stop_thread()
            return
        store.beat(self.row(store.clock.now()))
        self.wrote_row()

    def _beat_failed(self) -> None:
        """A beat failed or is slow: log once if the lease is at risk by now."""
        if self._store_ref() is not None:
            self.lease_ok  # noqa: B018 (the property logs when it turns False)

    def _startup_sweep(self) -> None:
        # Loaded on first use, for start-up speed: `tether ls` opens a store, never sweeps.
        from .reaper import Reaper

        report = Reaper(self._store).sweep()
        if report.reaped:
            log.info("startup sweep ended %d sessions of dead processes", len(report.reaped))

    # --- hooks that dead processes owed (see tether.liveness.deliveries) ------------------

    def deliver_due_hooks(self, limit: int = 100) -> int:
        """Run the ``on_session_end`` hooks dead processes owed in this store; how many ends."""
        # Loaded on first use, for start-up speed: read-only commands (tether ls, show)
        # never deliver.
        from .deliveries import deliver_due_hooks

        return deliver_due_hooks(self._store, limit)

    def deliver_due_hooks_soon(self) -> None:
        """Once per store (and process), in the background: deliver what dead processes owed."""
        store = self._store_ref()
        if store is None or not store.plugins.implemented("on_session_end"):
            return
        with self._lock:  # two threads writing their first sessions at once start one
            if self._pid != os.getpid():
                self.ensure()  # a forked child starts afresh
            if self._delivery is not None:
                return
            thread = threading.Thread(
                target=self._deliver_in_background, name="tether-hook-delivery", daemon=True
            )
            self._delivery = thread
        start(thread)

    def _deliver_in_background(self) -> None:
        try:
            n = self.deliver_due_hooks()
        except TetherError as exc:
            log.warning("could not deliver due on_session_end hooks: %s", exc)
        except Exception:
            log.exception("could not deliver due on_session_end hooks")
        else:
            if n:
                log.info("delivered the on_session_end hooks of %d ends owed by dead processes", n)

    def stop_delivery(self, timeout: float = 5.0) -> None:
        """Wait (up to ``timeout`` s) for a background delivery to finish."""
        thread = self._delivery
        if thread is not None and thread is not threading.current_thread():
            join(thread, timeout)

    def close(self) -> None:
        """Stop the reaper loops and the heartbeat, and drop the owner row if nothing
        open refers to it. The threads are joined before this returns, so the store
        can close its connections under no one."""
        store = self._store_ref()
        if store is not None:
            stop_loops(store)
        self.stop_delivery()  # a delivery under way finishes its hooks first
        with self._lock:
            thread, self._thread = self._thread, None
            owner_id = self.id if self._pid == os.getpid() else None
            self._last_beat = self._row_at = None
        if thread is not None:
            thread.stop()
        _owners.discard(self)
        self._registered = False
        if owner_id is not None and store is not None and not store.closed:
            try:
                store.drop_owner(owner_id)
            except Exception as exc:  # exiting: the reaper prunes it later
                log.debug("could not drop owner row %s: %s", owner_id, exc)
