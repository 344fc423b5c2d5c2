"""JSON-RPC 2.0 framing, without I/O: parse a frame, check params, encode replies.

Everything a client can send is answered with a result or a JSON-RPC error;
nothing here raises on bad input. Requests take named parameters only (an
object); a batch is answered with an array of the non-notification replies.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..validate import bad_text

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# Application errors (the -32000..-32099 range is reserved for servers).
SESSION_NOT_FOUND = -32001
SESSION_ENDED = -32002
BUSY = -32003
NOT_ATTACHED = -32004
GATEWAY_FULL = -32005
OWNER_ALIVE = -32006
STORE_UNAVAILABLE = -32007

MAX_BATCH = 100

# What a parameter may hold anywhere inside it: integers that fit 64 bits (the
# store's columns), and text without NUL or lone surrogates (neither can be
# stored or encoded as UTF-8).
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
_MAX_DEPTH = 32

# ASCII-only output: a client may send text with lone surrogates, and a reply that
# echoes it must still encode as a WebSocket text frame.
_ascii_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _dumps(obj: Any) -> str:
    """A frame's JSON: orjson's (UTF-8, a tenth of the json module's time: 9 frames
    a turn), or the json module's, escaped to ASCII, for what orjson refuses (a
    lone surrogate, an integer beyond 64 bits, a key that is not a string)."""
    try:
        return orjson.dumps(obj).decode()
    except (TypeError, ValueError):  # orjson.JSONEncodeError is a TypeError
        return _ascii_dumps(obj)


Id = str | int | None


class RpcError(Exception):
    """An error to send back as a JSON-RPC error object (one line, never a traceback)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    params: dict[str, Any]
    id: Id
    is_notification: bool


def dumps(obj: Any) -> str:
    return _dumps(obj)


def result(id_: Id, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "result": value}


def error(id_: Id, err: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "error": err.to_dict()}


def notification(method: str, params: Mapping[str, Any]) -> str:
    return _dumps({"jsonrpc": "2.0", "method": method, "params": params})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every frame: json.loads with a keyword builds a new one per call.
_loads = json.JSONDecoder(parse_constant=_reject_constant).decode


def _valid_id(value: Any) -> bool:
    if value is None or isinstance(value, str):
        return True
    return isinstance(value, int) and not isinstance(value, bool)


def _request(obj: Any) -> Request | dict[str, Any]:
    """A checked request, or the error reply for an invalid one."""
    if not isinstance(obj, dict):
        return error(None, RpcError(INVALID_REQUEST, "a request must be a JSON object"))
    id_ = obj.get("id")
    if not _valid_id(id_):
        return error(None, RpcError(INVALID_REQUEST, "id must be a string, an integer or null"))
    if obj.get("jsonrpc") != "2.0":
        return error(id_, RpcError(INVALID_REQUEST, 'jsonrpc must be "2.0"'))
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        return error(id_, RpcError(INVALID_REQUEST, "method must be a non-empty string"))
    params = obj.get("params", {})
    if params is None:
        params = {}
    if isinstance(params, list):
        return error(id_, RpcError(INVALID_PARAMS, "params must be an object (named parameters)"))
    if not isinstance(params, dict):
        return error(id_, RpcError(INVALID_REQUEST, "params must be an object"))
    return Request(method, params, id_, "id" not in obj)


def parse(text: str | bytes) -> tuple[list[Request | dict[str, Any]], bool]:
    """Split a frame into requests (or ready error replies); True if it was a batch."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        obj = _loads(text)
    except (ValueError, RecursionError) as exc:
        reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else "not valid JSON"
        return [error(None, RpcError(PARSE_ERROR, f"parse error: the frame is {reason}"))], False
    if isinstance(obj, list):
        if not obj:
            return [
                error(None, RpcError(INVALID_REQUEST, "an empty batch is not a request"))
            ], False
        if len(obj) > MAX_BATCH:
            msg = f"a batch holds at most {MAX_BATCH} requests"
            return [error(None, RpcError(INVALID_REQUEST, msg))], False
        return [_request(o) for o in obj], True
    return [_request(obj)], False


# --- parameters -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Param:
    """One named parameter: its type check and whether it must be given."""

    name: str
    kind: str  # "str", "int", "bool", "object"
    required: bool = False
    minimum: int | None = None
    maximum: int | None = None


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
}


def check_params(params: dict[str, Any], spec: tuple[Param, ...]) -> dict[str, Any]:
    """Return the params with every optional one present (None if absent), or raise -32602."""
    known = {p.name for p in spec}
    unknown = sorted(set(params) - known)
    if unknown:
        raise RpcError(INVALID_PARAMS, f"unknown parameter {unknown[0]!r}")
    out: dict[str, Any] = {}
    for p in spec:
        value = params.get(p.name)
        if value is None:
            if p.required:
                raise RpcError(INVALID_PARAMS, f"missing parameter {p.name!r}")
            out[p.name] = None
            continue
        if not _CHECKS[p.kind](value) or (isinstance(value, float) and not math.isfinite(value)):
            raise RpcError(INVALID_PARAMS, f"parameter {p.name!r} must be of type {p.kind}")
        problem = _unstorable(value)
        if problem is not None:
            raise RpcError(INVALID_PARAMS, f"parameter {p.name!r} {problem}")
        if p.minimum is not None and value < p.minimum:
            raise RpcError(INVALID_PARAMS, f"parameter {p.name!r} must be at least {p.minimum}")
        if p.maximum is not None and value > p.maximum:
            raise RpcError(INVALID_PARAMS, f"parameter {p.name!r} must be at most {p.maximum}")
        out[p.name] = value
    return out


def _unstorable(value: Any, depth: int = 0) -> str | None:
    """Why ``value`` (or anything inside it) cannot be stored, or None."""
    if isinstance(value, str):
        if not bad_text(value):  # the cheap check first; the regex only says where
            return None
        bad = _BAD_TEXT.search(value)
        assert bad is not None
        ch = bad.group()
        what = "a NUL character" if ch == "\x00" else f"a lone surrogate (U+{ord(ch):04X})"
        return f"contains {what} at offset {bad.start()}"
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        if INT_MIN <= value <= INT_MAX:
            return None
        return "holds an integer beyond 64 bits"
    if isinstance(value, float):
        return None if math.isfinite(value) else "holds a number that is not finite"
    if depth >= _MAX_DEPTH:
        return "is nested too deeply"
    if isinstance(value, dict):
        for k, v in value.items():
            problem = _unstorable(k, depth + 1) or _unstorable(v, depth + 1)
            if problem is not None:
                return problem
    elif isinstance(value, list):
        for v in value:
            problem = _unstorable(v, depth + 1)
            if problem is not None:
                return problem
    return None
