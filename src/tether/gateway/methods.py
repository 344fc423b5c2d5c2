"""The JSON-RPC methods (documented, with examples, in docs/protocol.md).

Each handler checks its params (declared next to it), asks the registry, and
uses the store through the runtime's threads. Foreseeable failures become
JSON-RPC errors with one line of text; anything else is logged here and the
client gets a bare "internal error", never a traceback.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..errors import (
    InvalidInputError,
    OwnerAliveError,
    SessionEndedError,
    SessionNotFoundError,
    StaleOwnerError,
    StoreError,
    TetherError,
)
from ..ids import new_id
from ..lifecycle import SessionHandle
from ..validate import check_reason, check_text
from . import rpc
from .connection import Connection
from .messages import message_view, turn_key
from .registry import Busy, Closing, Full, NotAttached, NotLive, RegistryError
from .rpc import Param, RpcError
from .runtime import Gateway, _Running

log = logging.getLogger("tether.gateway")

HISTORY_LIMIT = 200
MAX_PAGE = 1000


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


def _live_handle(gw: Gateway, session_id: str) -> SessionHandle:
    h = gw.handles.get(session_id)
    if h is None or session_id not in gw.registry:
        raise NotLive(session_id)
    return h


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
)
async def session_create(gw: Gateway, conn: Connection, p: dict[str, Any]) -> Any:
    if gw.stopping:
        raise RpcError(rpc.GATEWAY_FULL, "the gateway is shutting down")
    if p["parent_id"] is not None:
        await gw.read(gw.store.get_session, p["parent_id"])  # SessionNotFoundError if unknown
    handle = gw.store.session(  # writes nothing until the first message (no ghosts)
        source=gw.config.source,
        model=gw.agent.model,
        title=p["title"],
        cwd=p["cwd"],
        parent_id=p["parent_id"],
        metadata=p["metadata"],
    )
    try:
        attached, actions = gw.registry.open(handle.id, conn.id)
    except Full:
        handle.end()  # never written: nothing to end, just forget it
        raise
    gw.handles[handle.id] = handle
    gw.run(actions)
    return attached.to_result()


@method(
    "session.resume",
    Param("session_id", "str", required=True),
    Param("since", "int", minimum=0),
    Param("stream", "str"),
)
async def session_resume(gw: Gateway, conn: Connection, p: dict[str, Any]) -> Any:
    sid, since, stream = p["session_id"], p["since"], p["stream"]
    if sid not in gw.registry:
        async with gw.cold_lock:
            if sid in gw.finalizing:  # being ended right now: let that finish first
                await gw.finalizing[sid]
            if sid not in gw.registry:
                return await _resume_cold(gw, conn, sid, since)
    attached, actions = gw.registry.attach(sid, conn.id, since=since, stream=stream)
    gw.run(actions)
    return Reply(attached.to_result(), _replay(conn, attached.replay))


async def _resume_cold(gw: Gateway, conn: Connection, sid: str, since: int | None) -> Any:
    """Load an open session from the store (after a restart, or another process's)."""
    if gw.stopping:
        raise RpcError(rpc.GATEWAY_FULL, "the gateway is shutting down")
    session = await gw.read(gw.store.get_session, sid)
    if session.ended_at is not None:
        raise SessionEndedError(sid, session.end_reason)
    if not gw.registry.has_room():
        raise Full(gw.config.max_live_sessions or 0)
    # Takes ownership if the owner is dead (epoch bump: its late writes are
    # refused); OwnerAliveError if another live process holds it.
    handle = await gw.write(gw.store.resume, sid)
    try:
        attached, actions = gw.registry.open(sid, conn.id, since=since)
    except Full:  # filled up while we took it over: end it rather than hold it unseen
        await gw.write(handle.end, "lru_evict")
        raise
    gw.handles[sid] = handle
    gw.run(actions)
    return attached.to_result()


@method(
    "session.close",
    Param("session_id", "str", required=True),
    Param("reason", "str"),
)
async def session_close(gw: Gateway, conn: Connection, p: dict[str, Any]) -> Any:
    sid = p["session_id"]
    reason = check_reason(p["reason"] or "completed")
    if sid in gw.registry:
        handle = gw.handles.get(sid)
        ended = gw.when_ended(sid)
        # A running turn is interrupted first; it stores what it had, then the end follows.
        gw.run(gw.registry.close(sid, reason))
        return {"ended": await ended, "persisted": bool(handle and handle.persisted)}
    fut = gw.finalizing.get(sid)
    if fut is not None:
        await fut
        return {"ended": False, "persisted": True}
    ended = await gw.write(gw.store.end_session, sid, reason)
    return {"ended": ended, "persisted": True}


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


@method("session.active_list")
async def session_active_list(gw: Gateway, conn: Connection, p: dict[str, Any]) -> Any:
    return {"sessions": gw.registry.active()}


@method(
    "session.history",
    Param("session_id", "str", required=True),
    Param("after_seq", "int", minimum=0),
    Param("limit", "int", minimum=1, maximum=MAX_PAGE),
)
async def session_history(gw: Gateway, conn: Connection, p: dict[str, Any]) -> Any:
    sid, limit = p["session_id"], p["limit"] or HISTORY_LIMIT
    h = gw.handles.get(sid)
    if h is not None and not h.persisted:
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
    actions = gw.registry.interrupt(p["session_id"])
    gw.run(actions)
    return {"interrupted": bool(actions), "turn_id": actions[0].turn_id if actions else None}


# --- turns ------------------------------------------------------------------------------


@method(
    "prompt.submit",
    Param("session_id", "str", required=True),
    Param("text", "str", required=True),
)
async def prompt_submit(gw: Gateway, conn: Connection, p: dict[str, Any]) -> Any:
    sid = p["session_id"]
    text = check_text(p["text"], "text", required=True) or ""
    if not text.strip():
        raise RpcError(rpc.INVALID_PARAMS, "text must not be empty")
    handle = _live_handle(gw, sid)
    turn_id = new_id()
    gw.registry.begin_turn(sid, conn.id, turn_id)  # Busy if a turn runs
    running = _Running(turn_id, handle)
    gw.turns[sid] = running
    try:
        msg = await gw.write(handle.append, "user", text, idem_key=turn_key(turn_id, 0))
    except BaseException:
        gw.turns.pop(sid, None)
        gw.run(gw.registry.end_turn(sid, turn_id, "error", announce=False))
        raise

    def start() -> None:
        gw.emit(sid, "turn.start", {"turn_id": turn_id})
        gw.emit(sid, "message", {"turn_id": turn_id, "message": message_view(msg)})
        gw.start_turn(sid, running, text)

    return Reply({"turn_id": turn_id, "seq": msg.seq}, start)


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
        },
    }
