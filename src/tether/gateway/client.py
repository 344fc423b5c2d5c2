"""A small asyncio client of the gateway (used by ``tether chat``, the tests and the benchmark).

::

    client = await Client.connect("ws://127.0.0.1:8765/rpc", token)
    session = await client.call("session.create")
    await client.call("prompt.submit", session_id=session["session_id"], text="hi")
    method, params = await client.events.get()   # turn.start, message.delta, ...
    await client.close()

Notifications go to ``on_event`` if given, else to the ``events`` queue.
When the connection drops, pending calls fail with :class:`ConnectionLost`
and ``lost`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


class ConnectionLost(Exception):
    """The connection dropped before the reply came."""


class RemoteError(Exception):
    """The gateway answered with a JSON-RPC error."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", "error"))
        self.code: int | None = error.get("code")
        self.data: Any = error.get("data")


EventHandler = Callable[[str, dict[str, Any]], None]


class Client:
    def __init__(self, ws: ClientConnection, on_event: EventHandler | None = None) -> None:
        self.ws = ws
        self.events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._on_event = on_event or (lambda m, p: self.events.put_nowait((m, p)))
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.lost = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls,
        url: str,
        token: str | None,
        *,
        on_event: EventHandler | None = None,
        headers: dict[str, str] | None = None,
        open_timeout: float = 10,
    ) -> Client:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        ws = await connect(
            url,
            additional_headers=all_headers,
            open_timeout=open_timeout,
            max_size=None,
            compression=None,
        )
        return cls(ws, on_event)

    async def call(self, method: str, **params: Any) -> Any:
        """Send a request and wait for its result; :class:`RemoteError` on an error reply."""
        if self.lost.is_set():
            raise ConnectionLost(method)
        call_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = fut
        frame = {"jsonrpc": "2.0", "id": call_id, "method": method, "params": params}
        try:
            await self.ws.send(json.dumps(frame))
            return await fut
        except ConnectionClosed:
            raise ConnectionLost(method) from None
        finally:
            self._pending.pop(call_id, None)

    async def send_raw(self, frame: str | bytes) -> None:
        await self.ws.send(frame)

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                msg = json.loads(frame)
                for item in msg if isinstance(msg, list) else [msg]:
                    if "method" in item:
                        self._on_event(item["method"], item.get("params") or {})
                        continue
                    fut = self._pending.get(item.get("id"))
                    if fut is None or fut.done():
                        continue
                    if "error" in item:
                        fut.set_exception(RemoteError(item["error"]))
                    else:
                        fut.set_result(item.get("result"))
        except (ConnectionClosed, OSError):
            pass
        finally:
            self.lost.set()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionLost("connection"))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        with contextlib.suppress(Exception):
            await self.reader

    async def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (a crash, a lost network)."""
        transport = self.ws.transport
        if transport is not None:
            transport.abort()
        with contextlib.suppress(Exception):
            await self.reader
