"""Running the gateway: uvicorn on a socket we bind, the store, the reaper, a graceful stop.

Signals: uvicorn's own handlers would, after a graceful stop, restore the
previous handlers and re-raise the signal, which (SIGTERM's default) kills
the process before it has ended its sessions. So :class:`_Server` leaves
signals to us: SIGTERM, SIGINT or SIGHUP (the terminal closed) asks uvicorn
to stop (a second one stops it without waiting for connections), then the
gateway ends every live session exactly once, with reason
``gateway_shutdown``, and the process exits 0.

Hostile or broken clients (see :class:`_Http` and :class:`_WebSocket`, thin
subclasses of uvicorn's protocols): a connection that has not completed its
WebSocket handshake within ``handshake_timeout`` seconds (silent, or stopped
halfway through its headers) is closed; a client that floods pings without
reading the pongs is dropped once its unsent bytes pass ``max_unsent``; a
refused handshake is logged once by us, at WARNING, never as a uvicorn
ERROR. Running out of file descriptors is logged once per burst (asyncio
retries the accept every second), and the gateway serves again as soon as
descriptors free up.
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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import uvicorn
from starlette.routing import BaseRoute
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from .. import gcpolicy
from ..agents import Agent
from ..compose import Store
from ..liveness import ReaperLoop
from .app import PATH, build_app
from .runtime import Gateway, GatewayConfig
from .security import Policy, bind_hosts

log = logging.getLogger("tether.gateway")

# Frames a connection may have read ahead of the app before reading pauses. uvicorn
# pauses (and then resumes) reading after every frame: two epoll calls per request.
READ_AHEAD = 4

# What one read of a WebSocket connection takes at most (asyncio's default). The
# default read allocates a bytes object this large per read, which glibc maps,
# shrinks and unmaps: three system calls and a page fault per frame, 14 of a
# ping's 31 µs of server CPU at 50 connections. The connections of a server read
# into one buffer instead (see _protocols), and only the bytes read are copied.
READ_BUFFER = 256 * 1024

SHUTDOWN_REASON = "gateway_shutdown"


@dataclass(frozen=True, slots=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8765
    max_frame: int = 1024 * 1024
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    reaper_interval: float = 2.0
    handshake_timeout: float = 5.0
    max_unsent: int = 8 * 1024 * 1024  # bytes a client may leave unread (pongs) before it is cut
    gateway: GatewayConfig = field(default_factory=GatewayConfig)


class Mount(Protocol):
    """Routes served beside ``/rpc`` on the gateway's port (the live view, ``tether.web``),
    started once the gateway runs and stopped before it ends its sessions."""

    def routes(self) -> list[BaseRoute]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


# Builds the mounted routes once the gateway and its security policy exist.
MountFactory = Callable[[Gateway, Policy], Mount]


class _AcceptErrors:
    """Log running out of descriptors once per burst, not a traceback per accept retry.

    asyncio reports every failed ``accept()`` (up to the backlog per wake-up,
    retried every second); one warning starts a burst, one line ends it, and
    a burst lasts until ``quiet`` seconds pass without a failure.
    """

    def __init__(self, quiet: float = 30.0) -> None:
        self.quiet = quiet
        self.failed = 0  # failures in the current burst
        self.last_failure = -float("inf")

    def handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not context.get("message", "").startswith("socket.accept() out of system resource"):
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self.last_failure > self.quiet:
            self.failed = 0
        if not self.failed:
            log.warning(
                "cannot accept connections: %s; retrying every second until descriptors free up",
                context.get("exception"),
            )
        self.failed += 1
        self.last_failure = now

    def accepted(self) -> None:
        if self.failed and time.monotonic() - self.last_failure > self.quiet:
            log.warning("accepting connections again (%d failed accepts)", self.failed)
            self.failed = 0


def _protocols(options: ServeOptions, accepts: _AcceptErrors) -> tuple[type, type]:
    """uvicorn's HTTP and WebSocket protocols with the limits above (see the module docstring)."""
    # One receive buffer for every connection of this server: asyncio fills it and
    # calls buffer_updated at once, in the loop's thread, so no two reads share it.
    received = memoryview(bytearray(READ_BUFFER))

    class _WebSocket(WebSocketsSansIOProtocol, asyncio.BufferedProtocol):
        def get_buffer(self, sizehint: int) -> memoryview:
            return received

        def buffer_updated(self, nbytes: int) -> None:
            self.data_received(bytes(received[:nbytes]))

        def handle_connect(self, event: Any) -> None:
            super().handle_connect(event)
            scope = getattr(self, "scope", None)
            if scope is not None:  # lets the app cut a client that stopped reading
                scope["tether.abort"] = self._abort
                scope["tether.send_now"] = self._send_now
                scope["tether.direct"] = self._set_direct

        _flush_due = False  # a _flush is scheduled
        _direct: Callable[[str], bool] | None = None
        _direct_budget = 0

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            # The scope holds bound methods of this protocol, which holds the scope:
            # a cycle that left each closed connection's whole object graph (about
            # a hundred objects) to the cycle collector, whose passes pause the loop.
            scope = getattr(self, "scope", None)
            if scope is not None:
                for key in ("tether.abort", "tether.send_now", "tether.direct"):
                    scope.pop(key, None)
            self._direct = None

        def data_received(self, data: bytes) -> None:
            # At most READ_AHEAD frames of one read are handled on the spot: a
            # client sending thousands at once is queued (and its reading paused)
            # like any app that falls behind, so the loop serves the others.
            self._direct_budget = READ_AHEAD
            super().data_received(data)

        def _set_direct(self, handler: Callable[[str], bool]) -> None:
            """Offer each text frame to ``handler`` first (see send_receive_event_to_app)."""
            self._direct = handler

        def _send_now(self, text: str) -> bool:
            """Frame ``text`` now, as the ASGI send would, if nothing stands in the way.

            False (the caller then uses the ASGI send, which waits): before the
            handshake, once closing, or while the transport asks writers to wait.
            The frame's bytes reach the socket at the end of this turn of the
            event loop, with every other frame framed in it: a reply and the
            events that follow it leave in one write (one system call, one TCP
            segment) instead of one each. Anything uvicorn writes itself (a
            pong, a close) drains the same buffer first, so the order holds.
            """
            if (
                not self.handshake_complete
                or self.close_sent
                or self.disconnected
                or not self.writable.is_set()
                or self.transport.is_closing()
            ):
                return False
            self.conn.send_text(text.encode())
            # Not written at once, even for a reply given on the spot: with many
            # connections, writing after every read has been handled wakes the
            # clients once per loop turn, not once per read (measured: 17.5k
            # against 12.5k pings/s at 50 connections, 34 against 44 µs each).
            if not self._flush_due:
                self._flush_due = True
                self.loop.call_soon(self._flush)
            return True

        def _flush(self) -> None:
            self._flush_due = False
            data = self.conn.data_to_send()
            if data and not self.transport.is_closing():
                self.transport.write(b"".join(data))

        def send_receive_event_to_app(self) -> None:
            # A text frame with nothing queued before it goes straight to the app's
            # handler, which takes it if the app is idle: no queue, no task switch
            # per request (about a third of a `ping`'s cost). Else it is queued, in
            # order, as uvicorn does.
            direct = self._direct
            if (
                direct is not None
                and self._direct_budget > 0
                and self.curr_msg_data_type == "text"
                and not self.close_sent
                and self.queue.empty()
            ):
                data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
                try:
                    text = data.decode()
                except UnicodeDecodeError:
                    pass  # uvicorn's own path closes the connection with 1007
                else:
                    if direct(text):
                        self._direct_budget -= 1
                        self.frames = []
                        return
            if self.read_paused or self.queue.qsize() + 1 >= READ_AHEAD:
                super().send_receive_event_to_app()  # the app is behind: pause reading
                return
            # Keeping up: let uvicorn queue the frame without pausing reading.
            self.read_paused = True
            try:
                super().send_receive_event_to_app()
            finally:
                self.read_paused = False

        def _abort(self) -> None:
            if not self.transport.is_closing() or self.transport.get_write_buffer_size():
                self.transport.abort()

        def handle_ping(self) -> None:
            if self.transport.get_write_buffer_size() > options.max_unsent:
                log.warning(
                    "connection from %s: pings with no pongs read (%d bytes unsent); dropping it",
                    self.client,
                    self.transport.get_write_buffer_size(),
                )
                self.transport.abort()
                return
            super().handle_ping()

        async def send(self, message: Any) -> None:
            await super().send(message)
            if message["type"] == "websocket.http.response.body" and not message.get(
                "more_body", False
            ):
                # A refused handshake is complete once its response is sent
                # (uvicorn would log "returned without completing handshake").
                self.handshake_complete = True

    class _Http(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            accepts.accepted()
            self._handshake_timer: asyncio.TimerHandle | None = self.loop.call_later(
                options.handshake_timeout, self._handshake_expired
            )

        def _handshake_expired(self) -> None:
            self._handshake_timer = None
            if self.transport.get_protocol() is self and not self.transport.is_closing():
                log.info(
                    "closing a connection from %s: no WebSocket handshake within %ss",
                    self.client,
                    options.handshake_timeout,
                )
                self.transport.abort()

        def _stop_timer(self) -> None:
            if self._handshake_timer is not None:
                self._handshake_timer.cancel()
                self._handshake_timer = None

        def handle_websocket_upgrade(self, event: Any) -> None:
            self._stop_timer()
            super().handle_websocket_upgrade(event)

        def handle_events(self) -> None:
            super().handle_events()
            # A complete plain HTTP request (the live view's pages, its event
            # stream): the handshake deadline no longer applies; uvicorn's
            # keep-alive timeout covers the idle connection after it.
            if getattr(self, "cycle", None) is not None:
                self._stop_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_timer()
            super().connection_lost(exc)

    return _Http, _WebSocket


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

    mounted: Mount | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Mounted routes stop first: their endless responses (event streams) end,
        # so the graceful stop does not wait for them.
        if self.mounted is not None:
            await self.mounted.stop()
        await super().shutdown(sockets)

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
    mount: MountFactory | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM/SIGHUP (``handle_signals``) or ``stop``; then end sessions.

    ``mount`` adds routes beside ``/rpc`` (``tether serve`` mounts the live view).
    """
    sock = sock or bind(options.host, options.port)
    policy = Policy(
        token=token,
        port=sock.getsockname()[1],
        allowed_hosts=bind_hosts(options.host, options.allowed_hosts),
        allowed_origins=frozenset(options.allowed_origins),
    )
    gateway = Gateway(store, agent, options.gateway)
    mounted = mount(gateway, policy) if mount is not None else None
    accepts = _AcceptErrors()
    http_protocol, ws_protocol = _protocols(options, accepts)
    config = uvicorn.Config(
        build_app(gateway, policy, mounted.routes() if mounted is not None else ()),
        http=http_protocol,
        ws=ws_protocol,
        lifespan="off",
        log_level="warning",
        access_log=False,
        ws_max_size=options.max_frame,
        ws_per_message_deflate=False,  # no compression bombs; 14 KiB per connection, not 64
        # Annotated int, but uvicorn hands it to asyncio.wait_for, which takes any float.
        timeout_graceful_shutdown=options.gateway.shutdown_timeout,  # type: ignore[arg-type]
    )
    server = _Server(config)
    server.mounted = mounted
    loop = asyncio.get_running_loop()
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(accepts.handler)
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, server.request_stop)
    watcher = asyncio.create_task(_watch(stop, server)) if stop is not None else None
    # Ends the sessions of dead processes (a SIGKILLed gateway's, say) on this database.
    reaper = ReaperLoop(store, interval=options.reaper_interval).start()
    await gateway.start()
    if mounted is not None:
        await mounted.start()
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
        if mounted is not None:
            await mounted.stop()  # already stopped by the server's shutdown, unless it failed
        await gateway.shutdown(SHUTDOWN_REASON)
        reaper.stop()
        if watcher is not None:
            watcher.cancel()
        for sig in signals:
            loop.remove_signal_handler(sig)
        loop.set_exception_handler(previous_handler)
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
    mount: MountFactory | None = None,
) -> None:
    """Blocking entry point of ``tether serve``: serves until SIGINT, SIGTERM or SIGHUP."""
    sock = bind(options.host, options.port)
    gcpolicy.tune_for_server()  # see tether.gcpolicy: no full walks of start-up's objects
    asyncio.run(
        serve(
            store,
            agent,
            token,
            options,
            sock=sock,
            ready=ready,
            handle_signals=True,
            mount=mount,
        )
    )
