"""Running the gateway: uvicorn on a socket we bind, the store, the reaper, a graceful stop.

Signals: uvicorn's own handlers would, after a graceful stop, restore the
previous handlers and re-raise the signal, which (SIGTERM's default) kills
the process before it has ended its sessions. So :class:`_Server` leaves
signals to us: SIGTERM or SIGINT asks uvicorn to stop (a second one stops it
without waiting for connections), then the gateway ends every live session
exactly once, with reason ``gateway_shutdown``, and the process exits 0.
The loop's signal handlers work through its wakeup fd, so they still fire
when tether's exit-path handlers (installed with the first session handle)
sit on top of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from ..agents import Agent
from ..liveness import ReaperLoop
from ..store import Store
from .app import PATH, build_app
from .runtime import Gateway, GatewayConfig
from .security import Policy, bind_hosts

log = logging.getLogger("tether.gateway")

SHUTDOWN_REASON = "gateway_shutdown"


@dataclass(frozen=True, slots=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8765
    max_frame: int = 1024 * 1024
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    reaper_interval: float = 2.0
    gateway: GatewayConfig = field(default_factory=GatewayConfig)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets
    # only when the proto says TCP. Without it Nagle holds the frame after a
    # reply until the client's delayed ACK, 40 ms later.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"ws://{shown}:{port}{PATH}"


class _Server(uvicorn.Server):
    """uvicorn without its signal handling (see the module docstring)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def request_stop(self, *_: Any) -> None:
        """First call: stop gracefully; second: stop without waiting for connections."""
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True


async def serve(
    store: Store,
    agent: Agent,
    token: str,
    options: ServeOptions,
    *,
    sock: socket.socket | None = None,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = False,
) -> None:
    """Serve until SIGINT/SIGTERM (with ``handle_signals``) or ``stop``, then end every session."""
    sock = sock or bind(options.host, options.port)
    policy = Policy(
        token=token,
        port=sock.getsockname()[1],
        allowed_hosts=bind_hosts(options.host, options.allowed_hosts),
        allowed_origins=frozenset(options.allowed_origins),
    )
    gateway = Gateway(store, agent, options.gateway)
    config = uvicorn.Config(
        build_app(gateway, policy),
        ws="websockets-sansio",
        lifespan="off",
        log_level="warning",
        access_log=False,
        ws_max_size=options.max_frame,
        ws_per_message_deflate=False,  # no compression bombs; 14 KiB per connection, not 64
        timeout_graceful_shutdown=options.gateway.shutdown_timeout,
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, server.request_stop)
    watcher = asyncio.create_task(_watch(stop, server)) if stop is not None else None
    # Ends the sessions of dead processes (a SIGKILLed gateway's, say) on this database.
    reaper = ReaperLoop(store, interval=options.reaper_interval).start()
    await gateway.start()
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if server.started and ready is not None:
            ready(url_of(sock))
        await serving
    finally:
        if not serving.done():
            server.should_exit = True
            await asyncio.gather(serving, return_exceptions=True)
        await gateway.shutdown(SHUTDOWN_REASON)
        reaper.stop()
        if watcher is not None:
            watcher.cancel()
        for sig in signals:
            loop.remove_signal_handler(sig)
        sock.close()


async def _watch(stop: asyncio.Event, server: _Server) -> None:
    await stop.wait()
    server.request_stop()


def run(
    store: Store,
    agent: Agent,
    token: str,
    options: ServeOptions,
    *,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Blocking entry point of ``tether serve``: serves until SIGINT or SIGTERM."""
    sock = bind(options.host, options.port)
    asyncio.run(serve(store, agent, token, options, sock=sock, ready=ready, handle_signals=True))
