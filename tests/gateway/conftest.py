"""A real ``tether serve`` on a free 127.0.0.1 port, and WebSocket clients for it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tether.gateway.client import Client
from tether.gateway.process import Child, spawn_gateway

from ..conftest import child_env

TOKEN = "test-token-0123456789abcdef"


class Served(Child):
    """A gateway child with client helpers."""

    async def client(self, **kw: Any) -> Client:
        return await Client.connect(self.url, self.token, **kw)

    async def raw(self) -> ClientConnection:
        """A bare WebSocket (send frames, read replies yourself)."""
        return await connect(self.url, additional_headers={"Authorization": f"Bearer {self.token}"})

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


@contextlib.contextmanager
def serve(
    tmp: Path,
    *args: str,
    db: str | None = None,
    name: str = "gw",
    preexec_fn: Callable[[], object] | None = None,
) -> Iterator[Served]:
    """Start ``tether serve --port 0`` and wait for its address; always stopped afterwards."""
    with spawn_gateway(
        tmp, *args, token=TOKEN, db=db, name=name, env=child_env(), preexec_fn=preexec_fn
    ) as child:
        served = Served(child.url, child.db, child.token, child.proc, child.log)
        yield served


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Served]:
    """A gateway with a 2 s grace and an echo agent that takes 20 ms per word."""
    with serve(tmp_path, "--detach-grace", "2", "-o", "delay=0.02") as served:
        yield served


def run(coro: Any, timeout: float = 120) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def next_event(
    client: Client, method: str, session_id: str | None = None, timeout: float = 10
) -> dict[str, Any]:
    """Skip events until one named ``method`` (of ``session_id``, if given) arrives."""
    while True:
        m, params = await asyncio.wait_for(client.events.get(), timeout)
        if m == method and session_id in (None, params["session_id"]):
            return params


async def info(served: Served) -> dict[str, Any]:
    c = await served.client()
    try:
        return await c.call("gateway.info")
    finally:
        await c.close()


async def wait_until(check: Any, timeout: float = 20, every: float = 0.05) -> Any:
    """Poll an async predicate (for the gateway's own timers, which run in real time)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(every)
