"""One client connection as the runtime sees it: an ordered, bounded outbox.

Frames are sent without waiting (the registry's actions are carried out
synchronously, so their order is the order on the wire): straight to the
socket when the transport can take it and nothing is queued before it
(``send_now``: no task switch per frame, which is most of a streamed token's
cost), else through the outbox, which a writer task drains.

A client that stops reading is disconnected (close code 1013) once its
outbox holds ``limit`` frames or ``max_bytes`` bytes, whichever comes first,
instead of growing the gateway's memory; it can re-attach with ``since`` and
get what it missed. Counting bytes matters: a few requests for long
histories weigh more than thousands of small events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger("tether.gateway")

SLOW_CLIENT = 1013  # "try again later"


class Connection:
    def __init__(
        self,
        conn_id: int,
        send: Callable[[str], Awaitable[None]],
        close: Callable[[int, str], Coroutine[Any, Any, None]],  # run as a task of its own
        *,
        limit: int,
        max_bytes: int = 8 * 1024 * 1024,
        send_now: Callable[[str], bool] | None = None,
    ) -> None:
        self.id = conn_id
        self._send = send
        # Writes a frame at once and says True, or says False (the transport is
        # paused, closing, not open yet): then the frame goes through the outbox.
        self._send_now = send_now
        self._busy = False  # the writer task holds a frame it has not finished sending
        self._close = close
        self._limit = limit
        self._max_bytes = max_bytes
        self.queued_bytes = 0  # characters of the frames waiting in the outbox
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self.closed = False
        self._closing: asyncio.Task[None] | None = None
        self._writer = asyncio.create_task(self._drain(), name=f"tether-conn-{conn_id}")

    def __repr__(self) -> str:
        return f"<Connection {self.id}{' closed' if self.closed else ''}>"

    @property
    def queued(self) -> int:
        return self._outbox.qsize()

    def send(self, frame: str) -> None:
        """Send or queue a frame; never waits."""
        if self.closed:
            return
        if self._send_now is not None and not self._busy and self._outbox.empty():
            try:
                if self._send_now(frame):
                    return
            except Exception:  # the socket is gone: the receive side notices and detaches
                self.closed = True
                return
        if self._outbox.qsize() >= self._limit or self.queued_bytes + len(frame) > self._max_bytes:
            log.warning(
                "connection %s: the client is not reading (%d frames, %d bytes queued); closing it",
                self.id,
                self._outbox.qsize(),
                self.queued_bytes,
            )
            self.closed = True
            while not self._outbox.empty():
                self._outbox.get_nowait()
            self.queued_bytes = 0
            # The writer may be stuck in a send the client never reads: stop it
            # and close from a task of its own (the closer cuts the socket if
            # the close frame cannot go out either).
            self._writer.cancel()
            self._closing = asyncio.create_task(
                self._close(SLOW_CLIENT, "client too slow: re-attach with since"),
                name=f"tether-close-{self.id}",
            )
            return
        self.queued_bytes += len(frame)
        self._outbox.put_nowait(frame)

    async def _drain(self) -> None:
        try:
            while True:
                frame = await self._outbox.get()
                self._busy = True
                self.queued_bytes -= len(frame)
                await self._send(frame)
                self._busy = False
        except asyncio.CancelledError:
            raise
        except Exception:  # the socket is gone; the receive side notices and detaches
            self.closed = True

    async def aclose(self) -> None:
        """Stop the writer (the transport is closed by its owner)."""
        self.closed = True
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        if self._closing is not None:
            with contextlib.suppress(Exception):
                await self._closing
