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
from ..store.listing import decode_cursor
from ..validate import check_reason, check_source, check_text
from . import rpc
from .connection import Connection
from .messages import message_view, turn_key, turn_meta
from .registry import Busy, Closing, Full, NotAttached, NotLive, RegistryError, TooMany
from .rpc import Param, RpcError
from .runtime import Gateway, _Running

log = logging.getLogger("tether.gateway")

HISTORY_LIMIT = 200
MAX_PAGE = 1000
MAX_CURSOR_TIME = 1e11  # seconds since the epoch: past year 5000, no cursor of ours
TITLE_CHARS = 60  # a title made from the first prompt: one line, at most this long


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
    Param("source", "str"),
    Param("model", "str"),
)
async def session_create(gw: Gateway, conn: Connection, p: dict[str, Any]) -> Any:
    if gw.stopping:
        raise RpcError(rpc.GATEWAY_FULL, "the gateway is shutting down")
    source = check_source(gw.config.source if p["source"] is None else p["source"])  # tui, web...
    model = check_text(p["model"], "model") or gw.agent.model
    if p["parent_id"] is not None:
        await gw.read(gw.store.get_session, p["parent_id"])  # SessionNotFoundError if unknown
    handle = gw.store.session(  # writes nothing until the first message (no ghosts)
        source=source,
        model=model,
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
    if p["title"] is None:
        gw.untitled.add(handle.id)  # titled from its first prompt
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
    if since and stream is None:
        # A seq means nothing without the stream it counts in: replaying from
        # it could skip events, so the client reloads instead. (since=0, "I saw
        # nothing", needs no stream: the whole buffer, or reload, is right.)
        stream = ""  # names no stream
    if sid not in gw.registry:
        async with gw.cold_lock:
            _refuse_ending(gw, sid)  # its end is being recorded: -32002, never -32006
            if sid not in gw.registry:
                return await _resume_cold(gw, conn, sid, since)
    attached, actions = gw.registry.attach(sid, conn.id, since=since, stream=stream)
    gw.run(actions)
    return Reply(attached.to_result(), _replay(conn, attached.replay))


def _refuse_ending(gw: Gateway, sid: str) -> None:
    """A session whose end is decided but not yet recorded cannot be resumed."""
    if gw.registry.is_ending(sid):
        raise RpcError(
            rpc.SESSION_ENDED,
            f"session {sid} is ending: its end could not be recorded yet and is being retried",
            {"reason": None},
        )


async def _resume_cold(gw: Gateway, conn: Connection, sid: str, since: int | None) -> Any:
    """Load an open session from the store (after a restart, or another process's)."""
    if gw.stopping:
        raise RpcError(rpc.GATEWAY_FULL, "the gateway is shutting down")
    session = await gw.read(gw.store.get_session, sid)
    if session.ended_at is not None:
        raise SessionEndedError(sid, session.end_reason)
    # Take the place in the registry first (Full, or an idle session evicted,
    # before anything is written), then take ownership: a gateway that filled
    # up meanwhile can never leave a session taken over and ended unseen.
    attached, actions = gw.registry.open(sid, conn.id, since=since, reserve=True)
    gw.run(actions)  # an idle session evicted to make room ends now
    try:
        # Takes ownership if the owner is dead (epoch bump: its late writes are
        # refused); OwnerAliveError if another live process holds it.
        handle = await gw.write(gw.store.resume, sid)
    except BaseException:
        gw.registry.forget(sid)
        raise
    if sid not in gw.registry:  # closed by a client while it was being taken over
        await gw.write(handle.end, "completed")
        raise SessionEndedError(sid, "completed")
    gw.registry.confirm(sid)
    gw.handles[sid] = handle
    return attached.to_result()


@method(
    "session.close",
    Param("session_id", "str", required=True),
    Param("reason", "str"),
    Param("if_alone", "bool"),
)
async def session_close(gw: Gateway, conn: Connection, p: dict[str, Any]) -> Any:
    sid = p["session_id"]
    reason = check_reason(p["reason"] or "completed")
    if sid in gw.registry:
        handle = gw.handles.get(sid)
        others = len(gw.registry.session(sid).conns - {conn.id})
        if p["if_alone"] and others:
            # Other clients still use it: only this connection lets go.
            gw.run(gw.registry.detach(sid, conn.id))
            return {"ended": False, "others_attached": others, "detached": True}
        ended = gw.when_ended(sid)
        # A running turn is interrupted first; it stores what it had, then the end follows.
        gw.run(gw.registry.close(sid, reason))
        outcome = await ended
        out = {
            "ended": bool(outcome),
            "others_attached": others,
            "persisted": bool(handle and handle.persisted),
        }
        if outcome is None:  # the store could not take it: retried until it does
            out["ending"] = True
        return out
    if gw.registry.is_ending(sid):  # its end is decided; recording it is being retried
        return {"ended": False, "others_attached": 0, "persisted": True, "ending": True}
    # Not live here: end it only if no live process owns it (never another
    # gateway's live session): taking it over says so (OwnerAliveError, -32006).
    try:
        handle = await gw.write(gw.store.resume, sid)
    except SessionEndedError:
        return {"ended": False, "others_attached": 0, "persisted": True}
    recorded = await gw.write(handle.end, reason)
    return {"ended": recorded, "others_attached": 0, "persisted": True}


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
    sid = p["session_id"]
    if conn.id not in gw.registry.session(sid).conns:
        raise NotAttached(sid)
    actions = gw.registry.interrupt(sid)
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
    if gw.stopping:
        raise RpcError(rpc.SESSION_ENDED, "the gateway is shutting down", {"reason": None})
    handle = _live_handle(gw, sid)
    turn_id = new_id()
    gw.registry.begin_turn(sid, conn.id, turn_id)  # Busy if a turn runs
    running = _Running(turn_id, handle)
    gw.turns[sid] = running
    if sid in gw.untitled:
        gw.untitled.discard(sid)
        if not handle.persisted:
            handle.set_title(title_of(text))
    try:
        msg = await gw.write(
            handle.append, "user", text, idem_key=turn_key(turn_id, 0), meta=turn_meta(turn_id)
        )
    except BaseException:
        gw.turns.pop(sid, None)
        gw.run(gw.registry.end_turn(sid, turn_id, "error", announce=False))
        raise
    if running.interrupted or gw.stopping:
        # Closed (or the gateway began stopping) while the prompt was being
        # stored: the prompt is kept, but no turn starts on an ending session.
        gw.turns.pop(sid, None)
        gw.run(gw.registry.end_turn(sid, turn_id, "interrupted"))
        return {"turn_id": turn_id, "seq": msg.seq}

    def start() -> None:
        gw.emit(sid, "turn.start", {"turn_id": turn_id})
        gw.emit(sid, "message", {"turn_id": turn_id, "message": message_view(msg)})
        gw.start_turn(sid, running, text)

    return Reply({"turn_id": turn_id, "seq": msg.seq}, start)


def title_of(text: str) -> str:
    """A session title from a prompt: its first non-empty line, whitespace collapsed, shortened."""
    line = next((ln for ln in text.splitlines() if ln.strip()), text)
    line = " ".join(line.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "\u2026"


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
