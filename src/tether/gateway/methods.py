"""The JSON-RPC methods (documented, with examples, in docs/protocol.md).

Each handler checks its params (declared next to it), asks the registry, and
uses the store through the runtime's threads. Foreseeable failures become
JSON-RPC errors with one line of text; anything else is logged here and the
client gets a bare "internal error", never a traceback.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .. import __version__, gcpolicy
from ..errors import (
    InvalidInputError,
    OwnerAliveError,
    SessionEndedError,
    SessionNotFoundError,
    StaleOwnerError,
    StoreError,
    TetherError,
)
from ..store.listing import decode_cursor
from ..validate import check_reason, check_text
from . import rpc
from .connection import Connection
from .messages import message_view
from .registry import Busy, Closing, Full, NotAttached, NotLive, RegistryError, TooMany
from .rpc import Param, RpcError
from .runtime import Gateway

log = logging.getLogger("tether.gateway")

HISTORY_LIMIT = 200
MAX_PAGE = 1000
MAX_CURSOR_TIME = 1e11  # seconds since the epoch: past year 5000, no cursor of ours


@dataclass(frozen=True, slots=True)
class Reply:
    """A result plus what must be sent right after it (before any later event)."""

    result: Any
    after: Callable[[], None] | None = None


Handler = Callable[[Gateway, Connection, dict[str, Any]], Awaitable[Any]]
METHODS: dict[str, tuple[tuple[Param, ...], Handler]] = {}


def method(name: str, *params: Param) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        METHODS[name] = (params, fn)
        return fn

    return register


# Foreseeable failures and their codes; the first matching class wins.
_CODES: tuple[tuple[type[Exception], int], ...] = (
    (NotLive, rpc.NOT_ATTACHED),
    (NotAttached, rpc.NOT_ATTACHED),
    (Closing, rpc.SESSION_ENDED),
    (Full, rpc.GATEWAY_FULL),
    (TooMany, rpc.GATEWAY_FULL),
    (RegistryError, rpc.INVALID_REQUEST),
    (SessionNotFoundError, rpc.SESSION_NOT_FOUND),
    (StaleOwnerError, rpc.SESSION_ENDED),
    (OwnerAliveError, rpc.OWNER_ALIVE),
    (InvalidInputError, rpc.INVALID_PARAMS),
    (TetherError, rpc.INTERNAL_ERROR),
)


def to_rpc_error(exc: Exception) -> RpcError:
    """The JSON-RPC error for an exception (one line; internal details stay in the log)."""
    if isinstance(exc, RpcError):
        return exc
    if isinstance(exc, Busy):
        return RpcError(rpc.BUSY, str(exc), {"turn_id": exc.turn_id})
    if isinstance(exc, SessionEndedError):
        return RpcError(rpc.SESSION_ENDED, str(exc), {"reason": exc.reason})
    if isinstance(exc, InvalidInputError):  # bad input, whichever layer found it
        return RpcError(rpc.INVALID_PARAMS, str(exc))
    if isinstance(exc, StoreError):
        return RpcError(rpc.STORE_UNAVAILABLE, f"store unavailable: {exc}")
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return RpcError(code, str(exc))
    log.exception("internal error while handling a request")
    return RpcError(rpc.INTERNAL_ERROR, "internal error (see the gateway's log)")


async def call(
    gw: Gateway, conn: Connection, req: rpc.Request
) -> tuple[dict[str, Any] | None, Callable[[], None] | None]:
    """Run one request; the reply (None for a notification) and what must follow it."""
    after = None
    try:
        entry = METHODS.get(req.method)
        if entry is None:
            raise RpcError(rpc.METHOD_NOT_FOUND, f"unknown method {req.method[:64]!r}")
        spec, handler = entry
        out = await handler(gw, conn, rpc.check_params(req.params, spec))
        if isinstance(out, Reply):
            out, after = out.result, out.after
        reply = rpc.result(req.id, out)
    except Exception as exc:
        reply = rpc.error(req.id, to_rpc_error(exc))
    return (None if req.is_notification else reply), after


async def receive(gw: Gateway, conn: Connection, data: str | bytes) -> None:
    """Handle one frame: reply to every request in it; never raises for bad input."""
    items, batch = rpc.parse(data)
    replies: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, dict):
            replies.append(item)
            continue
        reply, after = await call(gw, conn, item)
        if batch:
            # In a batch the reply waits for the others; what must follow a
            # reply (a replay) goes out now, before any later event.
            if after is not None:
                after()
            if reply is not None:
                replies.append(reply)
        else:
            if reply is not None:
                conn.send(rpc.dumps(reply))
            if after is not None:
                after()
    if replies:
        conn.send(rpc.dumps(replies if batch else replies[0]))


def _replay(conn: Connection, frames: list[str]) -> Callable[[], None] | None:
    if not frames:
        return None

    def send() -> None:
        for frame in frames:
            conn.send(frame)

    return send


# --- sessions ---------------------------------------------------------------------------


@method(
    "session.create",
    Param("title", "str"),
    Param("parent_id", "str"),
    Param("cwd", "str"),
    Param("metadata", "object"),
    Param("source", "str"),
    Param("model", "str"),
)
async def session_create(gw: Gateway, conn: Connection, p: dict[str, Any]) -> Any:
    attached = await gw.create(
        conn,
        source=p["source"],
        model=p["model"],
        title=p["title"],
        cwd=p["cwd"],
        parent_id=p["parent_id"],
        metadata=p["metadata"],
    )
    return attached.to_result()


@method(
    "session.resume",
    Param("session_id", "str", required=True),
    Param("since", "int", minimum=0),
    Param("stream", "str"),
)
async def session_resume(gw: Gateway, conn: Connection, p: dict[str, Any]) -> Any:
    attached, replay = await gw.resume(conn, p["session_id"], since=p["since"], stream=p["stream"])
    return Reply(attached.to_result(), _replay(conn, replay))


@method(
    "session.close",
    Param("session_id", "str", required=True),
    Param("reason", "str"),
    Param("if_alone", "bool"),
)
async def session_close(gw: Gateway, conn: Connection, p: dict[str, Any]) -> Any:
    reason = check_reason(p["reason"] or "completed")
    return await gw.close_session(conn, p["session_id"], reason, if_alone=bool(p["if_alone"]))


@method(
    "session.list",
    Param("source", "str"),
    Param("cwd", "str"),
    Param("state", "str"),
    Param("limit", "int", minimum=1, maximum=MAX_PAGE),
    Param("cursor", "str"),
    Param("include_empty", "bool"),
)
async def session_list(gw: Gateway, conn: Connection, p: dict[str, Any]) -> Any:
    state = p["state"] or "all"
    if state not in ("all", "open", "ended"):
        raise RpcError(rpc.INVALID_PARAMS, "state must be 'all', 'open' or 'ended'")
    if p["cursor"] is not None:
        _check_cursor(p["cursor"])
    page = await gw.read(
        gw.store.list_sessions,
        source=p["source"],
        cwd=p["cwd"],
        state=state,
        limit=p["limit"] or 50,
        cursor=p["cursor"],
        include_empty=bool(p["include_empty"]),
    )
    return page.to_dict()


def _check_cursor(cursor: str) -> None:
    """A listing cursor must be one the gateway could have made (a finite time, an id)."""
    ts, _ = decode_cursor(cursor)  # InvalidInputError (-32602) if it is not a cursor at all
    if not math.isfinite(ts) or abs(ts) > MAX_CURSOR_TIME:
        raise RpcError(rpc.INVALID_PARAMS, f"invalid listing cursor {cursor[:64]!r}")


@method("session.active_list")
async def session_active_list(gw: Gateway, conn: Connection, p: dict[str, Any]) -> Any:
    return {"sessions": gw.active()}


@method(
    "session.history",
    Param("session_id", "str", required=True),
    Param("after_seq", "int", minimum=0),
    Param("limit", "int", minimum=1, maximum=MAX_PAGE),
)
async def session_history(gw: Gateway, conn: Connection, p: dict[str, Any]) -> Any:
    sid, limit = p["session_id"], p["limit"] or HISTORY_LIMIT
    if gw.unwritten(sid):
        return {"messages": [], "next_after_seq": None}  # live, but nothing said yet
    msgs = await gw.read(gw.store.get_messages, sid, p["after_seq"], limit + 1)
    more = len(msgs) > limit
    msgs = msgs[:limit]
    return {
        "messages": [message_view(m) for m in msgs],
        "next_after_seq": msgs[-1].seq if more else None,
    }


@method("session.interrupt", Param("session_id", "str", required=True))
async def session_interrupt(gw: Gateway, conn: Connection, p: dict[str, Any]) -> Any:
    turn_id = gw.interrupt(conn, p["session_id"])
    return {"interrupted": turn_id is not None, "turn_id": turn_id}


# --- turns ------------------------------------------------------------------------------


@method(
    "prompt.submit",
    Param("session_id", "str", required=True),
    Param("text", "str", required=True),
)
async def prompt_submit(gw: Gateway, conn: Connection, p: dict[str, Any]) -> Any:
    text = check_text(p["text"], "text", required=True) or ""
    if not text.strip():
        raise RpcError(rpc.INVALID_PARAMS, "text must not be empty")
    turn_id, seq, start = await gw.submit(conn, p["session_id"], text)
    return Reply({"turn_id": turn_id, "seq": seq}, start)


# --- the gateway ------------------------------------------------------------------------


@method("ping")
async def ping(gw: Gateway, conn: Connection, p: dict[str, Any]) -> Any:
    return {"pong": True, "time": gw.clock.now()}


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@method("gateway.info")
async def gateway_info(gw: Gateway, conn: Connection, p: dict[str, Any]) -> Any:
    import asyncio

    return {
        "version": __version__,
        "agent": gw.agent.name,
        "model": gw.agent.model,
        "pid": os.getpid(),
        "started_at": gw.started_at,
        "detach_grace": gw.config.detach_grace,
        "idle_timeout": gw.config.idle_timeout,
        "max_live_sessions": gw.config.max_live_sessions,
        "methods": sorted(METHODS),
        "stats": {
            **gw.stats(),
            "tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(),
            "rss_bytes": _rss_bytes(),
            **gcpolicy.stats(),
        },
    }
