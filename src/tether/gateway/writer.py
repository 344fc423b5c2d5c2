"""The gateway's one writer thread, with group commit.

Every store write of the gateway runs here, in the order it was submitted
(one writer per process). When several are queued, say the prompts of fifty
connections arriving together, the consecutive ones that may share a
transaction (``groupable``: an idempotency-keyed append to a persisted
session, an event, a detach mark) are committed together in one, through
:func:`tether.store.group.write_group`, instead of one transaction after
another. Each caller's future is resolved only after that commit, so an
append is still committed when it is acknowledged; a write that fails fails
alone (its savepoint is rolled back), and if the shared transaction itself
fails, every write of it runs again on its own, as without a group.

Anything else (a session's first write, an end, a takeover) runs on its own,
between the groups, in its place in the order. Futures are resolved with one
wake-up of the event loop per group, not one per write. On a backend that
cannot group every write runs on its own, as before.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..store.backend import Backend
from ..store.group import Outcome, can_group, write_group
from ..threads import start

# A group holds at most this many writes: the first caller's wait stays bounded
# while a long queue drains (one transaction of 256 appends is a few ms).
MAX_GROUP = 256


@dataclass(slots=True)
class _Job:
    call: Callable[[], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    groupable: Callable[[], bool] | None  # asked on the writer thread, just before it runs


def _settle(done: list[tuple[_Job, Outcome]]) -> None:
    """On the event loop: hand each caller its outcome (unless it stopped waiting)."""
    for job, out in done:
        if job.future.done():
            continue
        if out.error is not None:
            job.future.set_exception(out.error)
        else:
            job.future.set_result(out.result)


class GroupWriter:
    """A single thread running store writes in order, grouping what may share a commit."""

    def __init__(self, backend: Backend, *, name: str = "tether-write") -> None:
        self._backend = backend
        self._grouping = can_group(backend)  # else every write runs on its own
        self._name = name
        self._jobs: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        # For gateway.info and the tests: transactions that held more than one write.
        self.groups = 0
        self.grouped = 0  # writes committed in those
        self.fallbacks = 0  # groups given up and run one by one

    def submit(
        self, call: Callable[[], Any], groupable: Callable[[], bool] | None = None
    ) -> asyncio.Future[Any]:
        """Queue ``call``; its future resolves on the running loop once it is committed.

        ``groupable`` (asked on the writer thread when the call's turn comes)
        says whether it may share a transaction with its neighbours. Raises
        RuntimeError once the writer is shut down.
        """
        loop = asyncio.get_running_loop()
        job = _Job(call, loop.create_future(), loop, groupable)
        with self._cond:
            if self._closed:
                raise RuntimeError("the gateway's writer is shut down")
            self._jobs.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                start(self._thread)  # with signals held (tether.interrupts)
            self._cond.notify()
        return job.future

    def shutdown(self) -> None:
        """Run what is queued, then stop the thread (new submissions are refused)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    # --- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return  # closed and drained
                jobs = list(self._jobs)
                self._jobs.clear()
            i = 0
            while i < len(jobs):
                group = self._take_group(jobs, i)
                if len(group) > 1:
                    done = self._run_group(group)
                else:
                    group = [jobs[i]]
                    done = [(group[0], self._run_one(group[0]))]
                i += len(group)
                self._hand_back(done)

    @staticmethod
    def _groupable(job: _Job) -> bool:
        try:
            return job.groupable is not None and job.groupable()
        except Exception:  # asking failed: run it alone, where its own error will show
            return False

    def _take_group(self, jobs: list[_Job], start: int) -> list[_Job]:
        group: list[_Job] = []
        if not self._grouping:
            return group
        for job in jobs[start : start + MAX_GROUP]:
            if not self._groupable(job):
                break
            group.append(job)
        return group

    def _run_group(self, group: list[_Job]) -> list[tuple[_Job, Outcome]]:
        try:
            outcomes = write_group(self._backend, [job.call for job in group])
        except BaseException as exc:  # interrupted: nothing of it was kept; tell every caller
            return [(job, Outcome(error=exc)) for job in group]
        if outcomes is None:  # nothing of it was kept: each write on its own, in order
            self.fallbacks += 1
            return [(job, self._run_one(job)) for job in group]
        self.groups += 1
        self.grouped += len(group)
        return list(zip(group, outcomes, strict=True))

    @staticmethod
    def _run_one(job: _Job) -> Outcome:
        try:
            return Outcome(job.call())
        except BaseException as exc:
            return Outcome(error=exc)

    @staticmethod
    def _hand_back(done: list[tuple[_Job, Outcome]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Outcome]]] = {}
        for job, out in done:
            by_loop.setdefault(job.loop, []).append((job, out))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass
