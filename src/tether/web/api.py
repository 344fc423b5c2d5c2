"""The live view over HTTP: ``/api/v1/...`` (read-only JSON), SSE, ``/metrics``, the dashboard.

Every request passes the gateway's Host allowlist and Origin check; every
``/api/`` route and ``/metrics`` need the token (bearer header or the cookie
set by ``/login?token=``). Errors are JSON ``{"error": {"status", "message"}}``
with a 4xx status, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ..errors import (
    InvalidInputError,
    SessionNotFoundError,
    StoreBusyError,
    StoreUnavailableError,
    TetherError,
)
from ..gateway.security import Policy, token_ok
from ..store.views import event_bounds, events_after
from ..validate import check_int
from . import metrics
from .auth import COOKIE, check_request
from .feed import EventHub, parse_cursor
from .live import STATES
from .openapi import OPENAPI
from .service import LiveView

log = logging.getLogger("tether.web")

API = "/api/v1"
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
    "/static/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
SECURITY_HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
PAGE_HEADERS = {
    **SECURITY_HEADERS,
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-frame-options": "DENY",
}


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"status": status, "message": message}}, status, headers=SECURITY_HEADERS
    )


ANY = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]  # others get a JSON 405
Handler = Callable[[Request], Awaitable[Response]]


class Web:
    """The live view's routes and the event hub they share (started with the server)."""

    def __init__(self, view: LiveView, policy: Policy, hub: EventHub | None = None) -> None:
        self.view = view
        self.store = view.store
        self.policy = policy
        self.hub = hub or EventHub(view.store)
        if view.running is None:  # the hub follows the turns: no per-session probe
            view.running = self.hub.turns.snapshot
        self._static = {
            path: ((resources.files(__package__) / "static" / name).read_bytes(), media)
            for path, (name, media) in STATIC_FILES.items()
        }

    async def start(self) -> None:
        await self.hub.start()

    async def stop(self) -> None:
        await self.hub.stop()

    # --- plumbing ------------------------------------------------------------------------

    def guard(self, fn: Handler, *, need_token: bool = True) -> Handler:
        async def endpoint(request: Request) -> Response:
            refusal = check_request(
                request.headers, request.cookies, self.policy, need_token=need_token
            )
            if refusal is not None:
                return error(refusal.status, refusal.reason)
            if request.method not in ("GET", "HEAD"):
                return error(405, "read-only: GET only")
            try:
                return await fn(request)
            except SessionNotFoundError as exc:
                return error(404, str(exc))
            except InvalidInputError as exc:
                return error(400, str(exc))
            except (StoreUnavailableError, StoreBusyError) as exc:
                return error(503, str(exc))
            except TetherError as exc:
                return error(400, str(exc))
            except Exception:  # a bug: logged with its traceback here, one line to the client
                log.exception("%s %s failed", request.method, request.url.path)
                return error(500, "internal error (logged by the server)")

        return endpoint

    def routes(self) -> list[BaseRoute]:
        g = self.guard
        api = [
            ("/sessions", self.sessions),
            ("/sessions/{session_id}", self.session),
            ("/census", self.census),
            ("/live", self.live),
            ("/activity", self.activity),
            ("/events", self.events),
            ("/events/stream", self.stream),
            ("/openapi.json", self.openapi),
        ]
        routes: list[BaseRoute] = [Route(API + path, g(fn), methods=ANY) for path, fn in api]
        routes.append(Route("/metrics", g(self.metrics), methods=ANY))
        routes.append(Route("/login", g(self.login, need_token=False), methods=ANY))
        for path in STATIC_FILES:
            routes.append(Route(path, g(self.static, need_token=False), methods=ANY))
        # Last: anything else is a JSON 404 (after the Host/Origin checks), never a page.
        routes.append(Route("/{path:path}", g(self.not_found, need_token=False), methods=ANY))
        return routes

    def app(self) -> Starlette:
        """A standalone app (``tether web``): the routes plus JSON errors for unknown paths."""
        return Starlette(
            routes=self.routes(),
            exception_handlers={HTTPException: json_http_error},
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    # --- the routes ----------------------------------------------------------------------

    async def not_found(self, request: Request) -> Response:
        return error(404, f"no such path: {request.url.path[:200]}")

    async def static(self, request: Request) -> Response:
        body, media = self._static[request.url.path]
        return Response(body, media_type=media, headers=PAGE_HEADERS)

    async def login(self, request: Request) -> Response:
        token = request.query_params.get("token")
        if not token:
            return error(400, "usage: /login?token=TOKEN (tether web --print-url prints it)")
        if not token_ok(token, self.policy):
            return error(401, "wrong token")
        # The token leaves the address bar at once: the redirect drops it.
        response = RedirectResponse("/", 303, headers=SECURITY_HEADERS)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return response

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(OPENAPI, headers=SECURITY_HEADERS)

    async def sessions(self, request: Request) -> Response:
        q = request.query_params
        state = q.get("state", "all")
        if state not in ("all", "open", "ended"):
            raise InvalidInputError("state is one of all, open, ended")
        limit = _int(q.get("limit"), "limit", 20, 1, 1000)
        include_empty = _bool(q.get("all"), "all")
        page = await run_in_threadpool(
            self.store.list_sessions,
            source=q.get("source"),
            cwd=q.get("cwd"),
            state=state,
            limit=limit,
            cursor=q.get("cursor"),
            include_empty=include_empty,
        )
        return JSONResponse(page.to_dict(), headers=SECURITY_HEADERS)

    async def session(self, request: Request) -> Response:
        sid = request.path_params["session_id"]
        q = request.query_params
        after = _int(q.get("after_seq"), "after_seq", 0, 0, 2**63 - 1)
        limit = _int(q.get("limit"), "limit", 200, 1, 1000)

        def read() -> dict[str, Any]:
            session = self.store.get_session(sid)
            chain = self.store.get_chain(sid)
            messages = self.store.get_messages(sid, after_seq=after, limit=limit + 1)
            more = len(messages) > limit
            messages = messages[:limit]
            return {
                "session": session.to_dict(),
                "chain": [
                    {
                        "id": s.id,
                        "title": s.title,
                        "created_at": s.to_dict()["created_at"],
                        "ended_at": s.to_dict()["ended_at"],
                        "end_reason": s.end_reason,
                        "message_count": s.message_count,
                    }
                    for s in chain
                ],
                "messages": [m.to_dict() for m in messages],
                "next_after_seq": messages[-1].seq if more and messages else None,
            }

        return JSONResponse(await run_in_threadpool(read), headers=SECURITY_HEADERS)

    async def census(self, request: Request) -> Response:
        return JSONResponse(
            await run_in_threadpool(self.view.census_dict), headers=SECURITY_HEADERS
        )

    def _filters(self, request: Request, default: int, most: int) -> dict[str, Any]:
        q = request.query_params
        state = q.get("state")
        if state is not None and state not in STATES:
            raise InvalidInputError(f"state is one of {', '.join(STATES)}")
        source = q.get("source")
        return {
            "state": state,
            "source": source,
            "limit": _int(q.get("limit"), "limit", default, 1, most),
            "cursor": q.get("cursor"),
        }

    async def live(self, request: Request) -> Response:
        filters = self._filters(request, 100, 1000)
        snap = await run_in_threadpool(lambda: self.view.snapshot(**filters))
        body = {
            "now": snap.now,
            "counts": snap.counts,
            "sessions": [r.to_dict(snap.now) for r in snap.rows],
            "next_cursor": snap.next_cursor,
        }
        return _json(body)

    async def activity(self, request: Request) -> Response:
        filters = self._filters(request, 1000, 10_000)
        snap = await run_in_threadpool(lambda: self.view.snapshot(**filters))
        body = {
            "now": snap.now,
            "counts": snap.counts["by_state"],
            "sessions": [r.activity() for r in snap.rows],
            "next_cursor": snap.next_cursor,
        }
        return _json(body)

    async def events(self, request: Request) -> Response:
        q = request.query_params
        after = parse_cursor(q.get("after", "0"))
        limit = _int(q.get("limit"), "limit", 100, 1, 1000)

        def read() -> dict[str, Any]:
            lo, hi = event_bounds(self.store)
            if after > hi:
                raise InvalidInputError(f"after={after} is beyond the newest event ({hi})")
            reload = bool(after and lo and after < lo - 1)
            rows = events_after(self.store, hi if reload else after, limit)
            return {
                "events": [r.to_dict() for r in rows],
                "last_id": rows[-1].id if rows else (hi if reload else after),
                "newest_id": hi,
                "reload": reload,
            }

        return _json(await run_in_threadpool(read))

    async def stream(self, request: Request) -> Response:
        raw = request.headers.get("last-event-id") or request.query_params.get("after")
        cursor = parse_cursor(raw) if raw is not None else None
        return StreamingResponse(
            self.hub.stream(cursor),
            media_type="text/event-stream",
            headers={**SECURITY_HEADERS, "x-accel-buffering": "no"},
        )

    async def metrics(self, request: Request) -> Response:
        body = await run_in_threadpool(metrics.render, self.view)
        return Response(body, media_type=CONTENT_TYPE_LATEST, headers=SECURITY_HEADERS)


def _json(body: dict[str, Any]) -> Response:
    # Compact separators: /live at 10,000 sessions is a few MB less to send.
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(data, media_type="application/json", headers=SECURITY_HEADERS)


def _int(raw: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInputError(f"{name} must be an integer, not {raw[:40]!r}") from None
    return check_int(value, name, minimum=lo, maximum=hi)


def _bool(raw: str | None, name: str) -> bool:
    if raw is None:
        return False
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise InvalidInputError(f"{name} is true or false")


async def json_http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return error(status, str(detail))
