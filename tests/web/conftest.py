"""The live view served for real: ``tether.web`` on a free 127.0.0.1 port, and an HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.compose import Store
from tether.gateway.server import bind
from tether.web.server import serve

TOKEN = "web-test-token-0123456789"
ARTIFACTS = Path(__file__).resolve().parents[2] / "tmp" / "artifacts"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebServer:
    """A running live view: its port and token, and requests to it."""

    port: int
    token: str
    store: Store | None
    host_header: str = field(init=False)

    def __post_init__(self) -> None:
        self.host_header = f"127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(
        self, path: str, *, token: str | bool | None = True, headers: dict[str, str] | None = None
    ) -> Reply:
        """GET ``path`` with the bearer token (``token=False``: none; a string: that one)."""
        h = {"Host": self.host_header}
        if token is True:
            h["Authorization"] = f"Bearer {self.token}"
        elif isinstance(token, str):
            h["Authorization"] = f"Bearer {token}"
        h.update(headers or {})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path, headers=h)
            r = conn.getresponse()
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()


@contextlib.contextmanager
def run_web(store: Store, token: str = TOKEN, **kw: Any) -> Iterator[WebServer]:
    """Serve the live view of ``store`` on a thread of its own until the block ends."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    started = threading.Event()
    holder: dict[str, Any] = {}

    def main() -> None:
        async def go() -> None:
            holder["stop"] = asyncio.Event()
            holder["loop"] = asyncio.get_running_loop()
            await serve(
                store, token, sock=sock, stop=holder["stop"], ready=lambda _: started.set(), **kw
            )

        try:
            asyncio.run(go())
        except BaseException as exc:  # surfaced below
            holder["error"] = exc
            started.set()

    thread = threading.Thread(target=main, name="web-under-test", daemon=True)
    thread.start()
    assert started.wait(20), "the live view did not start"
    if "error" in holder:
        raise holder["error"]
    try:
        yield WebServer(port, token, store)
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(20)
        assert not thread.is_alive(), "the live view did not stop"


@pytest.fixture
def web(store: Store) -> Iterator[WebServer]:
    """The live view of a fresh store, on both backends."""
    with run_web(store) as served:
        yield served


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def make_session(store: Store, source: str = "cli", title: str = "hello") -> str:
    """A persisted open session owned by this process (one message)."""
    h = store.session(source=source, title=title)
    h.append("user", "hi")
    return h.id


__all__ = ["TOKEN", "Reply", "WebServer", "make_session", "run_web", "tether"]
