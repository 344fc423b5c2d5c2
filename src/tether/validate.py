"""Input validation: everything is checked before anything is written.

Text must be valid Unicode that every backend can store: no NUL characters
(PostgreSQL ``text`` rejects them, many SQLite tools truncate at them) and no
lone surrogates (they cannot be encoded as UTF-8). We refuse such input with a
clear error rather than silently altering a transcript.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import InvalidInputError
from .model import MESSAGE_STATES

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})

# End reasons used by tether itself and by the field (see docs/lifecycle.md).
END_REASONS = frozenset(
    {
        # ours
        "completed",
        "error",
        "signal",
        "process_exit",
        "reaped",
        "abandoned",
        "manual",
        # the field's vocabulary
        "cli_close",
        "tui_close",
        "new_session",
        "resumed_other",
        "branched",
        "compression",
        "cron_complete",
        "session_reset",
        "idle_timeout",
        "lru_evict",
        "ws_disconnect",
    }
)

_REASON_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_BAD_CHAR_RE = re.compile("[\x00\ud800-\udfff]")  # only to say where, once found


def bad_text(value: str) -> bool:
    """True if ``value`` holds a NUL character or a lone surrogate (no backend
    can store either).

    Every append runs this on its content, so it is built from one-pass C
    string operations: a search for NUL, then (for non-ASCII text only: a
    string's ASCII flag costs nothing to read) an encode to UTF-8, which fails
    exactly on a lone surrogate. A regex character class with the surrogate
    range costs about 30 ns a character, 8 µs of a 240-character message.
    """
    if "\x00" in value:
        return True
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


BAD_TEXT_SEARCH = bad_text  # truthy if a string holds NUL or a lone surrogate
_MAX_DETAIL = 4000


def check_text(value: Any, field: str, *, required: bool = False) -> str | None:
    """Return ``value`` if it is storable text (or None when allowed)."""
    if value is None:
        if required:
            raise InvalidInputError(f"{field} is required")
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{field} must be a string, not {type(value).__name__}")
    if bad_text(value):
        bad = _BAD_CHAR_RE.search(value)
        assert bad is not None
        ch = bad.group()
        what = "a NUL character" if ch == "\x00" else f"a lone surrogate (U+{ord(ch):04X})"
        raise InvalidInputError(f"{field} contains {what} at offset {bad.start()}")
    return value


def check_role(role: Any) -> str:
    if role not in ROLES:
        raise InvalidInputError(
            f"invalid role {role!r}: expected one of {', '.join(sorted(ROLES))}"
        )
    return role


def check_reason(reason: Any) -> str:
    """End reasons are short snake_case words; unknown words are allowed."""
    if type(reason) is str and reason in END_REASONS:  # the usual case, without the regex
        return reason
    if not isinstance(reason, str) or not _REASON_RE.fullmatch(reason):
        raise InvalidInputError(
            f"invalid end reason {reason!r}: use a lowercase word such as 'completed' "
            "(letters, digits, underscores; at most 64 characters)"
        )
    return reason


def check_detail(detail: Any) -> str | None:
    detail = check_text(detail, "end detail")
    if detail is not None and len(detail) > _MAX_DETAIL:
        detail = detail[: _MAX_DETAIL - 1] + "…"
    return detail


def _walk_json(value: Any, field: str, path: str) -> None:
    # Leaves are checked in place and a path is only formatted where it is needed
    # (an error, or a container to descend into): tool calls and metadata of a
    # million imported rows go through here. Same checks, same order, same errors.
    if isinstance(value, str):
        if BAD_TEXT_SEARCH(value):
            check_text(value, f"{field}{path}")
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidInputError(f"{field}{path} has a non-string key {k!r}")
            if BAD_TEXT_SEARCH(k):
                check_text(k, f"{field}{path} key")
            if isinstance(v, str):
                if BAD_TEXT_SEARCH(v):
                    check_text(v, f"{field}{path}.{k}")
            elif v is not None and not isinstance(v, bool | int | float):
                _walk_json(v, field, f"{path}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            if isinstance(v, str):
                if BAD_TEXT_SEARCH(v):
                    check_text(v, f"{field}{path}[{i}]")
            elif v is not None and not isinstance(v, bool | int | float):
                _walk_json(v, field, f"{path}[{i}]")
    elif value is None or isinstance(value, bool | int | float):
        return
    else:
        raise InvalidInputError(f"{field}{path} is not JSON-serialisable ({type(value).__name__})")


def encode_json(value: Any, field: str) -> str | None:
    """Validate and serialise a JSON payload (metadata, tool calls)."""
    if value is None:
        return None
    _walk_json(value, field, "")
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:  # NaN / Infinity
        raise InvalidInputError(f"{field} is not valid JSON: {exc}") from None


def check_tool_calls(tool_calls: Any) -> str | None:
    if tool_calls is None:
        return None
    if not isinstance(tool_calls, list | tuple):
        raise InvalidInputError("tool_calls must be a list")
    return encode_json(list(tool_calls), "tool_calls")


def check_metadata(metadata: Any) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise InvalidInputError("metadata must be a dict")
    return encode_json(metadata, "metadata")


def check_meta(meta: Any) -> str | None:
    """A message's meta (schema 4): a JSON object, or None."""
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise InvalidInputError("meta must be a dict")
    return encode_json(meta, "meta")


def check_payload(payload: Any) -> str | None:
    """A foreign framework's item (schema 4): a JSON object or array, or None.

    Scalars are refused: a JSON string would read back ambiguously (text on
    SQLite, decoded on PostgreSQL), and the items frameworks hand over are
    objects.
    """
    if payload is None:
        return None
    if not isinstance(payload, dict | list | tuple):
        raise InvalidInputError("payload must be a dict or a list")
    return encode_json(list(payload) if isinstance(payload, tuple) else payload, "payload")


def check_states(states: Any) -> tuple[str, ...]:
    """Which message states a reader wants: a non-empty collection of MESSAGE_STATES."""
    if isinstance(states, str):
        states = (states,)
    try:
        wanted = tuple(dict.fromkeys(states))
    except TypeError:
        raise InvalidInputError("states must be a list of message states") from None
    bad = [s for s in wanted if s not in MESSAGE_STATES]
    if not wanted or bad:
        raise InvalidInputError(
            f"invalid message states {list(bad or wanted)!r}: "
            f"expected some of {', '.join(MESSAGE_STATES)}"
        )
    return wanted


def check_source(source: Any) -> str:
    source = check_text(source, "source", required=True)
    assert source is not None
    if not source or len(source) > 64 or source.strip() != source:
        raise InvalidInputError(
            f"invalid source {source!r}: a short name such as 'cli' is expected"
        )
    return source


def check_liveness(heartbeat_interval: float, owner_ttl: float) -> None:
    """An owner must beat (several times) before its heartbeat counts as stale."""
    if not 0 < heartbeat_interval < owner_ttl:
        raise InvalidInputError("heartbeat_interval must be positive and below owner_ttl")


# SQLite INTEGER and PostgreSQL bigint: what a database column can hold.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_int(value: Any, field: str, *, minimum: int = INT64_MIN, maximum: int = INT64_MAX) -> int:
    """An integer within ``minimum`` .. ``maximum`` (by default what a 64-bit column holds).

    A float with an integral value is accepted (JSON has one number type);
    booleans, NaN, infinities and fractions are not.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{field} must be an integer, not {type(value).__name__}")
    if isinstance(value, float):
        if not value.is_integer():  # NaN and infinities are not integers either
            raise InvalidInputError(f"{field} must be an integer, not {value!r}")
        value = int(value)
    if not minimum <= value <= maximum:
        raise InvalidInputError(f"{field} must be between {minimum} and {maximum}")
    return value


def check_duration(value: Any, field: str) -> float:
    """A finite, non-negative number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{field} must be a number of seconds, not {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond float's range
        raise InvalidInputError(f"{field} is too large") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidInputError(f"{field} must be a finite number of seconds >= 0, not {value!r}")
    return seconds


def check_timestamp(value: Any, field: str) -> float:
    """A finite time in seconds since the epoch (negative is allowed: it is only a time)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{field} must be a time in seconds, not {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:
        raise InvalidInputError(f"{field} is out of range") from None
    if not math.isfinite(seconds):
        raise InvalidInputError(f"{field} must be a finite time, not {value!r}")
    return seconds


def check_id(value: Any, field: str = "session id") -> str:
    """A session id (or prefix) as given by a caller: storable, non-empty text."""
    text = check_text(value, field, required=True)
    if not text:
        raise InvalidInputError(f"{field} must not be empty")
    return text


# The fields an imported message may carry (see Store.import_session).
IMPORT_MESSAGE_FIELDS = frozenset(
    {
        "key",
        "role",
        "content",
        "tool_calls",
        "tool_call_id",
        "tool_name",
        "created_at",
        "meta",
        "payload",
    }
)


def check_import_message(
    m: Any,
) -> tuple[str, str | None, str | None, str | None, str | None, float, str, str | None, str | None]:
    """An imported message (a mapping) as a row ready to insert; its ``key`` is required.

    The key (the source's message id) becomes the idempotency key, so
    importing the same message again writes nothing.
    """
    if not isinstance(m, dict):
        raise InvalidInputError("an imported message must be a dict")
    if not IMPORT_MESSAGE_FIELDS.issuperset(m):
        unknown = sorted(map(str, set(m) - IMPORT_MESSAGE_FIELDS))
        raise InvalidInputError(f"unknown imported message fields: {', '.join(unknown)}")
    # An importer's hot path (a million rows): plain values are checked inline (the
    # same tests as the checkers'); anything else takes the checkers, which raise
    # precisely.
    key = m.get("key")
    if type(key) is not str or not key or BAD_TEXT_SEARCH(key):
        key = check_text(key, "message key", required=True)
        assert key is not None
        if not key:
            raise InvalidInputError("message key must not be empty")
    if "created_at" not in m:
        raise InvalidInputError("an imported message needs created_at")
    role = check_role(m.get("role"))
    content = m.get("content")
    if content is not None and (type(content) is not str or BAD_TEXT_SEARCH(content)):
        content = check_text(content, "content")
    calls = m.get("tool_calls")
    if calls is not None:
        calls = check_tool_calls(calls)
    tool_call_id = _text_or_none(m.get("tool_call_id"), "tool_call_id")
    tool_name = _text_or_none(m.get("tool_name"), "tool_name")
    created = m["created_at"]
    if type(created) is not float or not math.isfinite(created):
        created = check_timestamp(created, "message created_at")
    meta = m.get("meta")
    payload = m.get("payload")
    return (
        role,
        content,
        calls,
        tool_call_id,
        tool_name,
        created,
        key,
        None if meta is None else check_meta(meta),
        None if payload is None else check_payload(payload),
    )


def _text_or_none(value: Any, field: str) -> str | None:
    return None if value is None else check_text(value, field)


def check_origin(origin: Any) -> str:
    """An imported session's origin: its source and id there (``"hermes:<id>"``)."""
    text = check_text(origin, "origin", required=True)
    if not text or len(text) > 1000:
        raise InvalidInputError("origin must be non-empty text of at most 1000 characters")
    return text
