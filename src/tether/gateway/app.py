"""The ASGI transport: one WebSocket route, ``/rpc``, checked before it is accepted.

Host, Origin and token are checked on the handshake (see :mod:`.security`);
a refused client gets an HTTP error and never reaches a method. Each accepted
connection's frames go to the runtime one at a time, in order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .methods import receive
from .runtime import Gateway
from .security import Policy, check_handshake

log = logging.getLogger("tether.gateway")

PATH = "/rpc"
CLOSE_WAIT = 2.0  # seconds a close may wait for a client that stopped reading; then cut it


def build_app(gateway: Gateway, policy: Policy, extra: Sequence[BaseRoute] = ()) -> Starlette:
    """The gateway's app; ``extra`` routes (the live view of ``tether serve``) follow ``/rpc``."""

    async def rpc_endpoint(ws: WebSocket) -> None:
        refusal = check_handshake(ws.headers, ws.query_params, policy)
        if refusal is not None:
            # One line per refusal, never the token (uvicorn's own lines are silenced).
            log.warning("refused a connection from %s: %s", _peer(ws), refusal.reason)
            if "websocket.http.response" in ws.scope.get("extensions", {}):
                await ws.send_denial_response(
                    PlainTextResponse(refusal.reason + "\n", status_code=refusal.status)
                )
            else:  # the server cannot send a body: a bare 403
                await ws.close(code=1008)
            return
        if gateway.stopping:
            await ws.close(code=1012)
            return
        await ws.accept()
        conn = gateway.connect(ws.send_text, _closer(ws), ws.scope.get("tether.send_now"))
        # Frames are handled one at a time, in order: by this loop, or, when it is
        # idle and nothing is queued, at once by `direct` (called by the protocol as
        # the frame arrives). A frame that must wait for something (the store)
        # finishes in a task of its own (`started`), which this loop awaits before
        # the next frame.
        busy = False
        started: asyncio.Future[None] | None = None

        def direct(text: str) -> bool:
            nonlocal started
            if busy or (started is not None and not started.done()):
                return False
            coro = receive(gateway, conn, text)
            try:
                waiting = coro.send(None)
            except StopIteration:
                return True  # answered already: ping, a read from memory, an error
            except BaseException:
                log.exception("handling a frame failed")
                coro.close()
                return True
            started = asyncio.ensure_future(_finish(coro, waiting))
            return True

        offer = ws.scope.get("tether.direct")
        if offer is not None:
            offer(direct)
        try:
            while True:
                message = await ws.receive()
                busy = True
                if started is not None:
                    await started  # a frame taken directly, before this one
                    started = None
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                await receive(gateway, conn, data)
                busy = False
        except WebSocketDisconnect:
            pass
        finally:
            busy = True  # nothing more is taken directly
            if started is not None:
                await asyncio.gather(started, return_exceptions=True)
            await gateway.disconnect(conn)

    return Starlette(routes=[WebSocketRoute(PATH, rpc_endpoint), *extra])


async def _finish(coro: Coroutine[Any, None, None], waiting: Any) -> None:
    """Run on a coroutine that was started by hand and is waiting on ``waiting``.

    What a task does for a coroutine it steps (asyncio's ``Task.__step``): wait
    for the future it yielded (a bare ``yield``, as in ``sleep(0)``, just lets
    the loop run once), then resume it; if this is cancelled meanwhile, the
    future is cancelled, which the coroutine sees as it resumes.

    The future is awaited directly, so its completion wakes this task at once:
    one turn of the event loop, not the two of ``asyncio.wait`` (its callback,
    then this task). Its outcome, error or cancellation included, is the
    coroutine's to see: it is not raised here.
    """
    while True:
        step: Callable[[], Any] = functools.partial(coro.send, None)
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                waiting._asyncio_future_blocking = False
                await waiting
        except asyncio.CancelledError:
            # This task was cancelled. Its cancellation cancelled the future, which
            # the coroutine sees as it resumes; unless there was none (a bare
            # yield) or it had finished already: then the cancellation is thrown
            # into the coroutine, as a task would.
            if waiting is None or not waiting.cancelled():
                step = functools.partial(coro.throw, asyncio.CancelledError())
        except BaseException:
            pass  # the future's own failure: the coroutine raises it as it resumes
        try:
            waiting = step()
        except StopIteration:
            return


def _peer(ws: WebSocket) -> str:
    return f"{ws.client.host}:{ws.client.port}" if ws.client else "an unknown peer"


def _closer(ws: WebSocket) -> Callable[[int, str], Coroutine[Any, Any, None]]:
    async def close(code: int, reason: str) -> None:
        try:
            # A client that stopped reading never lets the close frame out: cut it.
            await asyncio.wait_for(ws.close(code=code, reason=reason), CLOSE_WAIT)
        except RuntimeError:  # already closed
            pass
        except TimeoutError:
            abort = ws.scope.get("tether.abort")
            if abort is not None:
                abort()

    return close
