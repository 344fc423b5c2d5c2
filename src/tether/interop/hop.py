"""One hop from an event loop to a worker thread and back, for blocking store calls.

``loop.run_in_executor`` (and ``asyncio.to_thread``) pays for a
``concurrent.futures`` future, its chaining to an asyncio future and the
thread pool's bookkeeping: about 50 µs a round trip here, against about 30 µs
for a queue and ``call_soon_threadsafe`` (measured in the same run). An async
session makes one hop per call, and for a one-row SQLite commit the hop is a
third of the time, so the adapters hop through :func:`run` instead.

The pool grows on demand up to :data:`MAX_WORKERS` threads (one per call in
flight; beyond that, calls queue, as with the default executor), threads are started with
termination signals held (:func:`tether.threads.start`), and a forked child
starts afresh (it inherits no thread). Threads are daemons: a call still
running when the loop is torn down is awaited by its task (``_mutate`` in
the SDK adapter waits for its work even when cancelled), and a write cut by
the process's end is rolled back by the database, never half-written.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..threads import at_fork_in_child, start

T = TypeVar("T")

MAX_WORKERS = min(32, (os.cpu_count() or 1) + 4)  # as concurrent.futures' default

_Job = tuple[
    asyncio.AbstractEventLoop,
    "asyncio.Future[Any]",
    contextvars.Context,
    Callable[..., Any],
    tuple[Any, ...],
]


class _Pool:
    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.threads = 0
        self.idle = 0

    def submit(self, job: _Job) -> None:
        # ``idle``: threads waiting for a job, less the jobs queued for them. A new
        # thread takes its first job without counting itself idle first.
        with self.lock:
            grow = self.idle <= 0 and self.threads < MAX_WORKERS
            if grow:
                self.threads += 1
            else:
                self.idle -= 1
        self.jobs.put(job)
        if grow:
            start(threading.Thread(target=self.work, name="tether-hop", daemon=True))

    def work(self) -> None:
        jobs = self.jobs
        while True:
            job = jobs.get()  # threads live as long as the process (daemons)
            loop, fut, context, fn, args = job
            try:
                _deliver(loop, fut, context.run(fn, *args), None)
            except BaseException as exc:  # handed to the awaiting task, as an executor does
                _deliver(loop, fut, None, exc)
            del job, loop, fut, context, fn, args  # nothing kept alive while idle
            with self.lock:
                self.idle += 1


def _deliver(
    loop: asyncio.AbstractEventLoop,
    fut: asyncio.Future[Any],
    result: Any,
    exc: BaseException | None,
) -> None:
    try:
        loop.call_soon_threadsafe(_settle, fut, result, exc)
    except RuntimeError:
        pass  # the loop is closed: nobody is waiting any more


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():  # cancelled by its caller meanwhile
        return
    if exc is None:
        fut.set_result(result)
    else:
        fut.set_exception(exc)


_pool = _Pool()


def _reset_after_fork() -> None:
    global _pool
    _pool = _Pool()  # the parent's threads do not exist here


at_fork_in_child(_reset_after_fork)


def run(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``fn(*args)`` on a worker thread, in a copy of the caller's context.

    Returns a future of the running loop, settled with the result or the
    exception. Cancelling the future does not stop the call: wrap it in
    :func:`asyncio.shield` and wait for it where the outcome must be known.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()
    _pool.submit((loop, fut, contextvars.copy_context(), fn, args))
    return fut
