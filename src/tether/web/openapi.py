"""The OpenAPI 3.1 description of ``/api/v1`` (served at ``/api/v1/openapi.json``).

Kept by hand, small, and checked by tests/web/test_openapi.py: every route
answers every documented and hostile query with a response matching it.
"""

from __future__ import annotations

from typing import Any

_TS = {"type": ["string", "null"], "description": "ISO 8601 UTC"}
_STR = {"type": "string"}
_OSTR = {"type": ["string", "null"]}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_OBJ = {"type": "object"}


def _obj(required: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": required, **extra}


ERROR = _obj({"error": _obj({"status": _INT, "message": _STR})})

SESSION = _obj(
    {
        "id": _STR,
        "source": _STR,
        "model": _OSTR,
        "title": _OSTR,
        "cwd": _OSTR,
        "parent_id": _OSTR,
        "root_id": _STR,
        "origin": _OSTR,
        "created_at": _TS,
        "last_active_at": _TS,
        "ended_at": _TS,
        "end_reason": _OSTR,
        "end_detail": _OSTR,
        "message_count": _INT,
        "owner_id": _OSTR,
        "epoch": _INT,
        "detached_at": _TS,
        "metadata": {"type": ["object", "null"]},
    }
)

STATE = {"type": "string", "enum": ["working", "idle", "detached", "orphaned", "external"]}
COUNTS_BY_STATE = {"type": "object", "additionalProperties": _INT}

OWNER = _obj(
    {
        "id": _STR,
        "host": _OSTR,
        "pid": {"type": ["integer", "null"]},
        "kind": _OSTR,
        "heartbeat_age_s": {"type": ["number", "null"]},
        "lease_s": {"type": ["number", "null"]},
        "alive": {"type": "boolean"},
        "hung": {"type": "boolean"},
    }
)

LIVE_ROW = _obj(
    {
        "id": _STR,
        "source": _STR,
        "title": _OSTR,
        "chain_id": _STR,
        "origin": _OSTR,
        "state": STATE,
        "why": _STR,
        "owner": {"oneOf": [OWNER, {"type": "null"}]},
        "created_at": _TS,
        "last_active_at": _TS,
        "detached_at": _TS,
        "message_count": _INT,
    }
)

COUNTS = _obj(
    {
        "open": _INT,
        "active": _INT,
        "by_state": COUNTS_BY_STATE,
        "by_source": {"type": "object", "additionalProperties": COUNTS_BY_STATE},
        "by_host": {"type": "object", "additionalProperties": COUNTS_BY_STATE},
    }
)

EVENT = _obj(
    {
        "id": _INT,
        "at": _NUM,
        "kind": _STR,
        "session_id": _OSTR,
        "data": {"type": ["object", "null"]},
    }
)

CENSUS = _obj(
    {
        "total": _INT,
        "open": _INT,
        "ended": _INT,
        "ghosts": _INT,
        "end_reasons": COUNTS_BY_STATE,
        "by_source": {"type": "object"},
        "oldest_open": {"type": ["object", "null"]},
        "open_live_owner": _INT,
        "open_dead_owner": _INT,
        "open_no_owner": _INT,
        "open_external": _INT,
        "open_hung_owner": _INT,
    }
)

PAGE = _obj(
    {
        "items": {"type": "array", "items": _OBJ},
        "next_cursor": _OSTR,
    }
)

TRANSCRIPT = _obj(
    {
        "session": SESSION,
        "chain": {"type": "array", "items": _OBJ},
        "messages": {"type": "array", "items": _OBJ},
        "next_after_seq": {"type": ["integer", "null"]},
    }
)


def _q(name: str, schema: dict[str, Any], doc: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": doc}


def _get(summary: str, schema: dict[str, Any], params: list[dict[str, Any]], **more: Any) -> Any:
    responses: dict[str, Any] = {
        "200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
        "400": {"description": "bad input", "content": {"application/json": {"schema": ERROR}}},
        "401": {
            "description": "no or wrong token",
            "content": {"application/json": {"schema": ERROR}},
        },
        "403": {
            "description": "Host or Origin refused",
            "content": {"application/json": {"schema": ERROR}},
        },
        "404": {"description": "not found", "content": {"application/json": {"schema": ERROR}}},
    }
    responses.update(more)
    return {"get": {"summary": summary, "parameters": params, "responses": responses}}


_STATE_Q = _q("state", STATE, "only sessions in this state")
_SOURCE_Q = _q("source", _STR, "only this source")

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "tether live view",
        "version": "1",
        "description": "Read-only: sessions, census, live state, lifecycle events.",
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "cookie": {"type": "apiKey", "in": "cookie", "name": "tether_token"},
        }
    },
    "security": [{"bearer": []}, {"cookie": []}],
    "paths": {
        "/api/v1/sessions": _get(
            "The resumable listing (the `tether ls --json` shape), keyset-paged.",
            PAGE,
            [
                _q(
                    "state", {"type": "string", "enum": ["all", "open", "ended"]}, "chain tip state"
                ),
                _SOURCE_Q,
                _q("cwd", _STR, "only this working directory"),
                _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "rows per page"),
                _q("cursor", _STR, "next_cursor of the previous page"),
                _q("all", {"type": "boolean"}, "include sessions without messages"),
            ],
        ),
        "/api/v1/sessions/{session_id}": {
            "get": {
                **_get(
                    "One session, its chain and its messages (paged by seq).",
                    TRANSCRIPT,
                    [
                        {"name": "session_id", "in": "path", "required": True, "schema": _STR},
                        _q(
                            "after_seq",
                            {"type": "integer", "minimum": 0},
                            "messages after this seq",
                        ),
                        _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "messages"),
                    ],
                )["get"]
            }
        },
        "/api/v1/census": _get("The `tether doctor --json` census.", CENSUS, []),
        "/api/v1/live": _get(
            "Every open session with its owner and state, and counts per state, source, host.",
            _obj(
                {
                    "now": _NUM,
                    "counts": COUNTS,
                    "sessions": {"type": "array", "items": LIVE_ROW},
                    "next_cursor": _OSTR,
                }
            ),
            [
                _STATE_Q,
                _SOURCE_Q,
                _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "rows per page"),
                _q("cursor", _STR, "next_cursor of the previous page"),
            ],
        ),
        "/api/v1/activity": _get(
            "A stable projection of /live for visualizers.",
            _obj(
                {
                    "now": _NUM,
                    "counts": COUNTS_BY_STATE,
                    "sessions": {
                        "type": "array",
                        "items": _obj(
                            {
                                "id": _STR,
                                "source": _STR,
                                "title": _OSTR,
                                "state": STATE,
                                "last_active_at": _TS,
                                "host": _OSTR,
                            }
                        ),
                    },
                    "next_cursor": _OSTR,
                }
            ),
            [
                _STATE_Q,
                _SOURCE_Q,
                _q("limit", {"type": "integer", "minimum": 1, "maximum": 10000}, "rows per page"),
                _q("cursor", _STR, "next_cursor of the previous page"),
            ],
        ),
        "/api/v1/events": _get(
            "Lifecycle events after an id (reload: true when those events are gone).",
            _obj(
                {
                    "events": {"type": "array", "items": EVENT},
                    "last_id": _INT,
                    "newest_id": _INT,
                    "reload": {"type": "boolean"},
                }
            ),
            [
                _q("after", {"type": "integer", "minimum": 0}, "the last event id seen"),
                _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "events"),
            ],
        ),
        "/api/v1/events/stream": {
            "get": {
                "summary": "Server-sent events: each lifecycle event with its id as the SSE id; "
                "resumes after Last-Event-ID exactly once, or sends a `reload` event.",
                "parameters": [
                    _q("after", {"type": "integer", "minimum": 0}, "as Last-Event-ID"),
                    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": _INT},
                ],
                "responses": {
                    "200": {"description": "the stream", "content": {"text/event-stream": {}}},
                    "400": {
                        "description": "bad cursor",
                        "content": {"application/json": {"schema": ERROR}},
                    },
                    "401": {
                        "description": "no token",
                        "content": {"application/json": {"schema": ERROR}},
                    },
                },
            }
        },
    },
}
