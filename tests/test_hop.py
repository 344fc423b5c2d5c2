"""tether.interop.hop: the event loop's hop to a worker thread and back."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading

import pytest

from tether.interop import hop

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def test_results_exceptions_and_the_callers_context_come_through() -> None:
    async def main() -> None:
        VAR.set("caller")
        assert await hop.run(lambda a, b: (a + b, VAR.get()), 2, 3) == (5, "caller")
        assert await hop.run(threading.get_ident) != threading.get_ident()

        def fail() -> None:
            raise KeyError("boom")

        with pytest.raises(KeyError, match="boom"):
            await hop.run(fail)

    asyncio.run(main())


def test_calls_in_flight_never_wait_for_each_other() -> None:
    """Each call in flight gets a thread, up to MAX_WORKERS: calls that each wait for all."""
    n = hop.MAX_WORKERS
    barrier = threading.Barrier(n, timeout=10)

    async def main() -> list[int]:
        return await asyncio.gather(*(hop.run(barrier.wait) for _ in range(n)))

    assert sorted(asyncio.run(main())) == list(range(n))


def test_a_cancelled_caller_leaves_the_call_to_finish() -> None:
    """A cancelled future is settled by nobody; the thread goes back to work."""
    started, release, done = threading.Event(), threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(10)
        done.set()
        return "late"

    async def main() -> str:
        fut = hop.run(slow)
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        fut.cancel()
        release.set()
        await asyncio.get_running_loop().run_in_executor(None, done.wait, 10)
        await asyncio.sleep(0.05)  # the settle callback runs, and finds it cancelled
        assert fut.cancelled()
        return await hop.run(lambda: "next")

    assert asyncio.run(main()) == "next"


def test_a_call_ending_after_its_loop_closed_is_dropped_quietly() -> None:
    release = threading.Event()
    finished = threading.Event()

    def slow() -> None:
        release.wait(10)

    async def main() -> None:
        hop.run(slow)  # never awaited: the loop closes first

    asyncio.run(main())
    release.set()

    # The worker's delivery to the closed loop raises nothing into it: it takes the next job.
    async def after() -> None:
        await hop.run(finished.set)

    asyncio.run(after())
    assert finished.is_set()


def test_a_forked_child_hops_on_threads_of_its_own() -> None:
    asyncio.run(_warm())
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's threads do not exist here
        try:
            ok = asyncio.run(_warm()) == 42
            os.write(w, b"ok" if ok else b"no")
        finally:
            os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.read(r, 2) == b"ok" and status == 0
    os.close(r)


async def _warm() -> int:
    return await hop.run(lambda: 42)
