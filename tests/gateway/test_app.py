"""How the gateway's app resumes a frame's handler that it started by hand (``_finish``).

A frame taken directly is stepped by hand until it waits (a store write, a
read); ``_finish`` then does for it what a task would. These pin that it does
exactly that, and that a finished wait resumes the handler in one turn of the
event loop (the prompt's path to its reply and first token crosses it).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tether.gateway.app import _finish


def _started(coro: Any) -> tuple[Any, Any]:
    """Step ``coro`` by hand until it first waits, as the app's ``direct`` does."""
    return coro, coro.send(None)


def _finishing(coro: Any) -> asyncio.Future[None]:
    """``coro`` started by hand, then handed to ``_finish`` in a task (as ``direct`` does)."""
    return asyncio.ensure_future(_finish(*_started(coro)))


async def _turns_until(done: list[Any]) -> int:
    """Turns of the event loop until ``done`` holds something (at most 10)."""
    for n in range(1, 11):
        await asyncio.sleep(0)
        if done:
            return n
    return -1


def test_a_finished_wait_resumes_the_handler_in_one_turn() -> None:
    async def main() -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        got: list[int] = []

        async def handler() -> None:
            got.append(await fut)

        task = _finishing(handler())
        await asyncio.sleep(0)  # the task now waits on the future
        fut.set_result(7)
        turns = await _turns_until(got)
        await task
        assert got == [7]
        return turns

    assert asyncio.run(main()) == 1


def test_the_futures_error_is_raised_in_the_handler_not_in_finish() -> None:
    async def main() -> list[str]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        seen: list[str] = []

        async def handler() -> None:
            try:
                await fut
            except ValueError as exc:
                seen.append(f"handler: {exc}")

        task = _finishing(handler())
        await asyncio.sleep(0)
        fut.set_exception(ValueError("no such session"))
        await task  # does not raise: the handler dealt with it
        return seen

    assert asyncio.run(main()) == ["handler: no such session"]


def test_cancelling_finish_cancels_the_wait_and_the_handler_sees_it() -> None:
    async def main() -> tuple[list[str], bool]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        seen: list[str] = []

        async def handler() -> None:
            try:
                await fut
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        task = _finishing(handler())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen, fut.cancelled()

    assert asyncio.run(main()) == (["cancelled"], True)


def test_a_handler_may_catch_the_cancellation_and_finish() -> None:
    async def main() -> list[str]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        seen: list[str] = []

        async def handler() -> None:
            try:
                await fut
            except asyncio.CancelledError:
                seen.append("cleaned up")

        task = _finishing(handler())
        await asyncio.sleep(0)
        task.cancel()
        await task  # the handler returned: so does _finish
        return seen

    assert asyncio.run(main()) == ["cleaned up"]


def test_cancelled_after_the_wait_finished_throws_into_the_handler() -> None:
    """The future is done (its wake-up pending) when the cancellation comes: as a
    task would, the handler gets CancelledError rather than the result."""

    async def main() -> list[str]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        seen: list[str] = []

        async def handler() -> None:
            try:
                seen.append(f"result {await fut}")
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        task = _finishing(handler())
        await asyncio.sleep(0)
        fut.set_result(1)
        task.cancel()  # before the task's wake-up ran
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen

    assert asyncio.run(main()) == ["cancelled"]


def test_a_bare_yield_lets_the_loop_run_once_and_a_cancel_is_thrown_in() -> None:
    async def main() -> tuple[list[str], list[str]]:
        ran: list[str] = []

        async def polite() -> None:
            await asyncio.sleep(0)
            ran.append("resumed")

        coro, waiting = _started(polite())
        assert waiting is None
        await _finish(coro, waiting)

        seen: list[str] = []

        async def cancelled() -> None:
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        task = _finishing(cancelled())
        await asyncio.sleep(0)  # the task now sits in its bare yield
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return ran, seen

    assert asyncio.run(main()) == (["resumed"], ["cancelled"])


def test_several_waits_in_a_row() -> None:
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in range(3)]
        got: list[int] = []

        async def handler() -> None:
            for f in futs:
                got.append(await f)

        task = _finishing(handler())
        for i, f in enumerate(futs):
            await asyncio.sleep(0)
            f.set_result(i)
        await task
        return got

    assert asyncio.run(main()) == [0, 1, 2]
