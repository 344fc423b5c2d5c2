"""The ASGI transport: one WebSocket route, ``/rpc``, checked before it is accepted.

Host, Origin and token are checked on the handshake (see :mod:`.security`);
a refused client gets an HTTP error and never reaches a method. Each accepted
connection's frames go to the runtime one at a time, in order.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .runtime import Gateway
from .security import Policy, check_handshake

log = logging.getLogger("tether.gateway")

PATH = "/rpc"


def build_app(gateway: Gateway, policy: Policy) -> Starlette:
    async def rpc_endpoint(ws: WebSocket) -> None:
        refusal = check_handshake(ws.headers, ws.query_params, policy)
        if refusal is not None:
            log.warning("refused a connection from %s: %s", ws.client, refusal.reason)
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
        conn = gateway.connect(ws.send_text, _closer(ws))
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                await gateway.receive(conn, data)
        except WebSocketDisconnect:
            pass
        finally:
            await gateway.disconnect(conn)

    return Starlette(routes=[WebSocketRoute(PATH, rpc_endpoint)])


def _closer(ws: WebSocket):  # type: ignore[no-untyped-def]
    async def close(code: int, reason: str) -> None:
        try:
            await ws.close(code=code, reason=reason)
        except RuntimeError:  # already closed
            pass

    return close
