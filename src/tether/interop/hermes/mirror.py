"""``tether hermes mirror``: a long-running follower of live Hermes stores.

Between passes it asks each store one cheap question, ``PRAGMA data_version``
on a long-lived ``mode=ro`` connection that holds no transaction (a few
microseconds; it moves on every commit by another process), and runs a pass
(:class:`~tether.interop.hermes.importer.StoreSync`) only when it moved. Each
pass's tether transactions hold the data and the cursor together, so a mirror
killed at any moment resumes exactly once. The mirror never writes to, or
deletes from, a Hermes store.

:func:`mirrors` lists the mirrors running in this process, for ``/metrics``:
each has ``lag_seconds``, ``cursor`` and ``source_deleted_total``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import TetherError
from ...store import StoreCore
from .importer import PAGE_MESSAGES, StoreSync, SyncReport
from .store import discover

log = logging.getLogger("tether.interop.hermes")

_RUNNING: weakref.WeakSet[HermesMirror] = weakref.WeakSet()


def mirrors() -> list[HermesMirror]:
    """The mirrors running in this process (``tether serve --mirror-hermes``, say)."""
    return list(_RUNNING)


@dataclass(frozen=True, slots=True)
class MirrorStatus:
    """What a mirror reports after each pass (and ``/metrics`` exports)."""

    lag_seconds: float  # how far behind Hermes the last pass was (0: nothing was pending)
    cursor: int  # summed over stores: the greatest Hermes message id mirrored
    source_deleted_total: int
    passes: int
    idle_checks: int


class HermesMirror:
    """Follows ``paths`` into ``store`` until :meth:`stop` (or ``max_passes``).

    ``on_pass`` is called after every pass with its reports (the CLI prints them).
    """

    def __init__(
        self,
        store: StoreCore,
        paths: Sequence[str | Path] = (),
        *,
        interval: float = 0.5,
        page: int = PAGE_MESSAGES,
        on_pass: Callable[[list[SyncReport]], None] | None = None,
    ) -> None:
        self.store = store
        self.interval = interval
        self.on_pass = on_pass
        self.paths = discover(paths)
        self.page = page
        self.syncs: list[StoreSync] = []
        self._versions: list[int | None] = []
        self._stop = threading.Event()
        self._runner: threading.Thread | None = None
        self._cursors: dict[str, int] = {}
        self.lag_seconds = 0.0
        self.source_deleted_total = 0
        self.passes = 0
        self.idle_checks = 0
        self.errors = 0

    @property
    def cursor(self) -> int:
        """The greatest Hermes message id mirrored, summed over the stores."""
        return sum(self._cursors.values())

    def status(self) -> MirrorStatus:
        return MirrorStatus(
            self.lag_seconds, self.cursor, self.source_deleted_total, self.passes, self.idle_checks
        )

    def check(self) -> None:
        """Open and recognise every store now (raises as ``tether hermes census`` does)."""
        self.open()

    def open(self) -> None:
        """Open and recognise every store (done by the first :meth:`step` otherwise)."""
        if not self.syncs:
            for path in self.paths:
                self.syncs.append(StoreSync(self.store, path, page=self.page))
            self._versions = [None] * len(self.syncs)

    def step(self) -> list[SyncReport]:
        """One round: a pass over each store whose data_version moved (the first round
        passes over all of them). Returns the passes' reports (empty when idle)."""
        self.open()
        reports = []
        for n, sync in enumerate(self.syncs):
            version = sync.reader.data_version()
            if version == self._versions[n]:
                self.idle_checks += 1
                continue
            # Read the version before the pass: a commit during the pass moves it
            # again, and the next round passes once more.
            self._versions[n] = version
            report = sync.run_pass()
            self._cursors[sync.key] = report.cursor
            reports.append(report)
            self.source_deleted_total += report.marked_deleted
        if reports:
            self.passes += 1
            lags = [lag for r in reports for lag in r.lags]
            self.lag_seconds = max(lags) if lags else 0.0
            if self.on_pass is not None:
                self.on_pass(reports)
        return reports

    def run(self, *, max_seconds: float | None = None) -> None:
        """Follow until :meth:`stop` is called (or ``max_seconds`` passed)."""
        _RUNNING.add(self)
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            while not self._stop.is_set():
                try:
                    self.step()
                except (sqlite3.Error, TetherError) as exc:
                    # A busy or briefly unreadable store, a tether store restarting:
                    # the next round retries from the committed cursors.
                    self.errors += 1
                    log.warning("hermes mirror: a pass failed (retried): %s", exc)
                if deadline is not None and time.monotonic() >= deadline:
                    return
                self._stop.wait(self.interval)
        finally:
            _RUNNING.discard(self)

    def start(self) -> threading.Thread:
        """Follow in a daemon thread (what ``tether serve --mirror-hermes`` does)."""
        self._runner = threading.Thread(target=self.run, name="tether-hermes-mirror", daemon=True)
        self._runner.start()
        return self._runner

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Stop (waiting for a pass under way to commit) and close the stores' connections."""
        self.stop()
        if self._runner is not None:
            self._runner.join(60)
            self._runner = None
        for sync in self.syncs:
            sync.close()
        self.syncs = []
