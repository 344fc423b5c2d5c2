"""Running the live view on its own (``tether web``): uvicorn on a socket we bind."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import uvicorn

from .. import gcpolicy
from ..compose import Store
from ..gateway.security import Policy, bind_hosts
from ..gateway.server import bind
from .api import Web
from .service import LiveView


def login_url(host: str, port: int, token: str) -> str:
    """The address that logs a browser in (it sets the cookie and goes to the dashboard)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
    shown = f"[{shown}]" if ":" in shown and not shown.startswith("[") else shown
    return f"http://{shown}:{port}/login?token={token}"


class _Server(uvicorn.Server):
    web: Web | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.web is not None:
            await self.web.stop()  # event streams end, so the stop does not wait for them
        await super().shutdown(sockets)


async def serve(
    store: Store,
    token: str,
    *,
    host: str = "127.0.0.1",
    sock: socket.socket,
    allowed_hosts: tuple[str, ...] = (),
    allowed_origins: tuple[str, ...] = (),
    ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the live view of ``store`` on ``sock`` until SIGINT/SIGTERM or ``stop``."""
    port = sock.getsockname()[1]
    policy = Policy(
        token=token,
        port=port,
        allowed_hosts=bind_hosts(host, allowed_hosts),
        allowed_origins=frozenset(allowed_origins),
    )
    web = Web(LiveView(store), policy)
    config = uvicorn.Config(
        web.app(),
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
    )
    server = _Server(config)
    server.web = web
    task = asyncio.create_task(server.serve(sockets=[sock]))
    watcher = None
    if stop is not None:

        async def watch() -> None:
            await stop.wait()
            server.should_exit = True

        watcher = asyncio.create_task(watch())
    try:
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started and ready is not None:
            ready(port)
        await task
    finally:
        if watcher is not None:
            watcher.cancel()
        sock.close()


def run(
    store: Store,
    token: str,
    *,
    host: str,
    port: int,
    allowed_hosts: tuple[str, ...] = (),
    allowed_origins: tuple[str, ...] = (),
    ready: Callable[[int], None] | None = None,
) -> None:
    """Blocking entry point of ``tether web``."""
    sock = bind(host, port)
    gcpolicy.tune_for_server()  # see tether.gcpolicy: no full walks of start-up's objects
    asyncio.run(
        serve(
            store,
            token,
            host=host,
            sock=sock,
            allowed_hosts=allowed_hosts,
            allowed_origins=allowed_origins,
            ready=ready,
        )
    )
