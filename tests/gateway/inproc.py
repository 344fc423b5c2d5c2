"""The gateway runtime in this process, with real stores and no sockets.

A :class:`Peer` is one client connection as the runtime sees it (the same
``Gateway.connect`` the WebSocket endpoint uses); requests go through
``methods.receive`` and every frame the gateway sends is kept, in order.
Faults (a held write lock, a full gateway, a shutdown mid-request) are set up
precisely here, where a child process could only be timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from tether.agents.echo import EchoAgent
from tether.compose import Store
from tether.gateway.methods import receive
from tether.gateway.runtime import Gateway, GatewayConfig


class CallError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error['code']}: {error['message']}")
        self.code: int = error["code"]
        self.message: str = error["message"]
        self.data: Any = error.get("data")


class Peer:
    """One in-process connection: call methods, read the events it was sent."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.closed: tuple[int, str] | None = None
        self._ids = itertools.count(1)
        self._replies: dict[Any, dict[str, Any]] = {}

        async def send(text: str) -> None:
            await self.frames.put(json.loads(text))

        async def close(code: int, reason: str) -> None:
            self.closed = (code, reason)

        self.conn = gw.connect(send, close)

    async def call(self, method: str, timeout: float = 10, **params: Any) -> Any:
        """Send one request and wait for its reply; raise :class:`CallError` for an error."""
        id_ = next(self._ids)
        frame = {"jsonrpc": "2.0", "id": id_, "method": method, "params": params}
        await receive(self.gw, self.conn, json.dumps(frame))
        reply = await self._reply(id_, timeout)
        if "error" in reply:
            raise CallError(reply["error"])
        return reply["result"]

    async def _reply(self, id_: Any, timeout: float) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while id_ not in self._replies:
                self._take(await self.frames.get())
        return self._replies.pop(id_)

    def _take(self, frame: dict[str, Any]) -> None:
        if "method" in frame:
            self.events.append((frame["method"], frame["params"]))
        else:
            self._replies[frame.get("id")] = frame

    async def event(self, method: str, timeout: float = 10) -> dict[str, Any]:
        """The first event named ``method`` not yet returned by this call."""
        async with asyncio.timeout(timeout):
            while True:
                for i, (m, params) in enumerate(self.events):
                    if m == method:
                        del self.events[i]
                        return params
                self._take(await self.frames.get())

    async def drop(self) -> None:
        await self.gw.disconnect(self.conn)


@contextlib.asynccontextmanager
async def running(store: Store, *, delay: float = 0.0, **config: Any) -> AsyncIterator[Gateway]:
    """A started gateway on ``store`` with an echo agent; shut down (and checked) after."""
    gw = Gateway(store, EchoAgent(delay=delay), GatewayConfig(**config))
    await gw.start()
    try:
        yield gw
    finally:
        if not gw.stopping:
            await gw.shutdown()


async def until(check: Callable[[], Any | Awaitable[Any]], timeout: float = 10) -> Any:
    """Wait for ``check()`` to be truthy (sync or async), polling, within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)
