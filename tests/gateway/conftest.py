"""A real ``tether serve`` on a free 127.0.0.1 port, and WebSocket clients for it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tether.gateway.client import Client

from ..conftest import child_env

TOKEN = "test-token-0123456789abcdef"


@dataclass
class Served:
    url: str
    db: str
    token: str
    proc: subprocess.Popen[str]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def client(self, **kw: Any) -> Client:
        return await Client.connect(self.url, self.token, **kw)

    async def raw(self) -> ClientConnection:
        """A bare WebSocket (send frames, read replies yourself)."""
        return await connect(self.url, additional_headers={"Authorization": f"Bearer {self.token}"})

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@contextlib.contextmanager
def serve(tmp: Path, *args: str, db: str | None = None, name: str = "gw") -> Iterator[Served]:
    """Start ``tether serve --port 0`` and wait for its address; always stopped afterwards."""
    db = db or str(tmp / "tether.db")
    log = tmp / f"{name}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tether", "serve", "--db", db, "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
            env=child_env(TETHER_TOKEN=TOKEN),
        )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line or line.startswith("tether gateway on "):
                break
        if not line.startswith("tether gateway on "):
            proc.kill()
            proc.wait()
            raise AssertionError(f"tether serve did not start: {log.read_text()}")
        url = line.split()[3]
        yield Served(url, db, TOKEN, proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Served]:
    """A gateway with a 1 s grace and an echo agent that takes 20 ms per word."""
    with serve(tmp_path, "--detach-grace", "1", "-o", "delay=0.02") as served:
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


def env_without_token() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TETHER_TOKEN", None)
    return env
