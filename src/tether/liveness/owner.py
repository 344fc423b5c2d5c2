"""This process as the owner of sessions in one store.

The owner row is written in the same transaction as the first session that
refers to it, so an open session never points at a missing owner. The
heartbeat thread runs while the process owns at least one open session; the
first time it starts, it runs one cheap sweep for sessions of dead processes
(the startup sweep). On a clean exit the row is deleted once nothing open
refers to it. After ``fork()`` the child is a new owner.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING

from ..ids import new_id
from .heartbeat import HeartbeatThread
from .identity import ProcessIdentity

if TYPE_CHECKING:
    from ..store.core import Store

log = logging.getLogger("tether.liveness")

OwnerRow = tuple[str, str, str, int, int | None, str, float, float]


class ProcessOwner:
    def __init__(
        self, store: Store, *, kind: str, heartbeat_interval: float, startup_sweep: bool = True
    ) -> None:
        self._store = store
        self.kind = kind
        self.heartbeat_interval = heartbeat_interval
        self.startup_sweep = startup_sweep
        self._lock = threading.Lock()
        self._swept = False
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self.identity: ProcessIdentity | None = None
        self.id: str | None = None
        self.started_at = 0.0
        self._sessions: set[str] = set()
        self._thread: HeartbeatThread | None = None
        self._exit_hooked = False

    def ensure(self) -> str:
        """This process's owner id (made on first use, and anew after fork)."""
        if self._pid != os.getpid():
            self._reset()
            self._swept = False
        if self.id is None:
            self.identity = ProcessIdentity.current()
            self.id = new_id()
            self.started_at = self._store.clock.now()
        return self.id

    def row(self, now: float) -> OwnerRow:
        owner_id = self.ensure()
        ident = self.identity
        assert ident is not None
        return (
            owner_id,
            ident.host,
            ident.boot_id,
            ident.pid,
            ident.start_time,
            self.kind,
            self.started_at,
            now,
        )

    @property
    def beating(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def owned(self) -> int:
        return len(self._sessions)

    def acquire(self, session_id: str) -> None:
        """A handle of this process now owns ``session_id``: keep the heartbeat going."""
        with self._lock:
            self.ensure()
            if not self._sessions and not self._exit_hooked:
                from ..lifecycle import exits

                exits.after_handles(self.close)
                self._exit_hooked = True
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
                    name=f"tether-heartbeat-{self.id}",
                )
                self._thread.start()

    def release(self, session_id: str) -> None:
        """``session_id`` is no longer owned here; the last one stops the heartbeat."""
        with self._lock:
            self._sessions.discard(session_id)
            thread = self._thread if not self._sessions else None
            if thread is not None:
                self._thread = None
        if thread is not None:
            thread.stop()

    def beat(self) -> None:
        self._store._beat(self.row(self._store.clock.now()))

    def _startup_sweep(self) -> None:
        from .reaper import Reaper

        report = Reaper(self._store).sweep()
        if report.reaped:
            log.info("startup sweep ended %d sessions of dead processes", len(report.reaped))

    def close(self) -> None:
        """Stop beating and drop the owner row if nothing open refers to it."""
        with self._lock:
            thread, self._thread = self._thread, None
            owner_id = self.id if self._pid == os.getpid() else None
        if thread is not None:
            thread.stop()
        if owner_id is not None:
            try:
                self._store._drop_owner(owner_id)
            except Exception as exc:  # exiting: the reaper prunes it later
                log.debug("could not drop owner row %s: %s", owner_id, exc)
