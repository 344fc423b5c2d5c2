"""Hermes rows to tether imports: pure functions, no I/O (tested on their own).

A Hermes row maps to one tether session imported from ``hermes:<id>``; each
message row to one imported message keyed ``hermes:<message id>``. What
tether has a column for goes there; the rest of what matters goes to
``metadata`` (sessions) or ``meta`` (messages), and nothing is rewritten: the
source, model and title are Hermes' own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...store.imports import ImportItem

ORIGIN_PREFIX = "hermes:"
# Hermes stores list and dict content as this prefix + JSON (hermes_state._CONTENT_JSON_PREFIX).
CONTENT_JSON_PREFIX = "\x00json:"
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
SKIPPED_ROLES = frozenset({"session_meta"})  # the gateway's bookkeeping; Hermes' readers skip it
END_DETAIL = "imported from hermes"
_REASON = re.compile(r"[a-z][a-z0-9_]{0,63}")  # what tether takes as an end reason

# Columns read when the generation has them (missing ones take the defaults below).
SESSION_FIELDS = (
    "id",
    "source",
    "model",
    "model_config",
    "title",
    "cwd",
    "parent_session_id",
    "started_at",
    "ended_at",
    "end_reason",
    "user_id",
    "session_key",
    "chat_id",
    "chat_type",
    "profile_name",
    "archived",
)
MESSAGE_FIELDS = (
    "id",
    "session_id",
    "role",
    "content",
    "tool_call_id",
    "tool_calls",
    "tool_name",
    "timestamp",
    "token_count",
    "finish_reason",
    "reasoning",
    "active",
    "compacted",
)
DEFAULTS: dict[str, Any] = {"active": 1, "compacted": 0, "archived": 0}
# A message row as the importer reads it: a tuple in MESSAGE_FIELDS order (a column
# the generation lacks is read as its default), so no dict is built per row.
(M_ID, M_SESSION, M_ROLE, M_CONTENT, M_CALL_ID, M_CALLS, M_TOOL, M_TS) = range(8)
(M_TOKENS, M_FINISH, M_REASONING, M_ACTIVE, M_COMPACTED) = range(8, 13)
# Session columns that go to metadata, as they are.
METADATA_FIELDS = ("user_id", "session_key", "chat_id", "chat_type", "profile_name", "archived")
# Message columns that go to meta, as they are, when set.
META_FIELDS = ("token_count", "finish_reason", "reasoning")


def origin_of(session_id: str) -> str:
    return ORIGIN_PREFIX + session_id


def message_key(message_id: int) -> str:
    return f"hermes:{message_id}"


@dataclass(slots=True)
class Decoded:
    """A message's content as tether stores it, and what decoding found."""

    content: str | None
    meta: dict[str, Any]
    replaced_surrogates: int = 0


def _scrub(text: str) -> tuple[str, int]:
    """Lone surrogates (which tether refuses) replaced by U+FFFD, and how many."""
    try:
        text.encode("utf-8")  # at C speed: fails only on a lone surrogate
        return text, 0
    except UnicodeEncodeError:
        pass
    out = [("\ufffd" if "\ud800" <= ch <= "\udfff" else ch) for ch in text]
    return "".join(out), sum(1 for ch in text if "\ud800" <= ch <= "\udfff")


def decode_content(raw: Any) -> Decoded:
    """Hermes' stored content as text: NULL stays NULL; encoded parts are decoded.

    A list of parts becomes its joined ``text`` parts, the original kept in
    ``meta.content_parts``; a dict its ``text`` (else its JSON), the original
    kept in ``meta.content_json``.
    """
    if raw is None:
        return Decoded(None, {})
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    text = str(raw)
    meta: dict[str, Any] = {}
    if text.startswith(CONTENT_JSON_PREFIX):
        try:
            value = json.loads(text[len(CONTENT_JSON_PREFIX) :])
        except ValueError:
            value = None
            text = text[len(CONTENT_JSON_PREFIX) :]
            meta["content_undecodable"] = True
        if isinstance(value, list):
            parts = [p.get("text") for p in value if isinstance(p, dict)]
            text = "".join(p for p in parts if isinstance(p, str))
            meta["content_parts"] = value
        elif isinstance(value, dict):
            inner = value.get("text")
            text = inner if isinstance(inner, str) else json.dumps(value)
            meta["content_json"] = value
        elif value is not None:
            text = value if isinstance(value, str) else json.dumps(value)
    if "\x00" in text:
        text = text.replace("\x00", "")
    text, replaced = _scrub(text)
    if meta:
        meta = json.loads(_scrub(json.dumps(meta))[0])
    return Decoded(text, meta, replaced)


def _tool_calls(raw: Any, meta: dict[str, Any]) -> list[Any] | None:
    if raw is None or raw == "":
        return None
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        meta["tool_calls_raw"] = str(raw)
        return None
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return value
    meta["tool_calls_raw"] = raw
    return None


def _plain(raw: Any) -> bool:
    """Content stored as it is: text that is not encoded and holds nothing tether
    refuses (the bulk of a store: decoding is skipped for it)."""
    if type(raw) is not str or "\x00" in raw:
        return False
    try:
        raw.encode("utf-8")  # at C speed: fails only on a lone surrogate
    except UnicodeEncodeError:
        return False
    return True


def map_message(row: Mapping[str, Any]) -> tuple[dict[str, Any] | None, int]:
    """One Hermes message row (a mapping of its columns) as an imported message (None:
    a role that is skipped), and how many lone surrogates were replaced."""
    return map_row(tuple(row.get(f, DEFAULTS.get(f)) for f in MESSAGE_FIELDS))


_META_AT = ((M_TOKENS, "token_count"), (M_FINISH, "finish_reason"), (M_REASONING, "reasoning"))


def map_row(row: Sequence[Any]) -> tuple[dict[str, Any] | None, int]:
    """:func:`map_message` of a row read in MESSAGE_FIELDS order (the importer's)."""
    role = row[M_ROLE]
    if role in SKIPPED_ROLES:
        return None, 0
    raw = row[M_CONTENT]
    replaced = 0
    meta: dict[str, Any] = {}
    if raw is None or _plain(raw):  # "\x00json:..." starts with a NUL: it is not plain
        content = raw
    else:
        decoded = decode_content(raw)
        content, replaced = decoded.content, decoded.replaced_surrogates
        meta.update(decoded.meta)  # the Hermes id is in the key (hermes:<id>)
    if role not in ROLES:
        meta["origin_role"] = role
        role = "system"
    for at, name in _META_AT:
        if row[at] is not None:
            meta[name] = row[at]
    out: dict[str, Any] = {
        "key": f"hermes:{row[M_ID]}",
        "role": role,
        "content": content,
        "created_at": float(row[M_TS]),
    }
    raw_calls = row[M_CALLS]
    if raw_calls is not None and raw_calls != "":
        calls = _tool_calls(raw_calls, meta)
        if calls is not None:
            out["tool_calls"] = calls
    if row[M_CALL_ID] is not None:
        out["tool_call_id"] = _scrub(str(row[M_CALL_ID]))[0]
    if row[M_TOOL] is not None:
        out["tool_name"] = _scrub(str(row[M_TOOL]))[0]
    if isinstance(meta.get("reasoning"), str):
        meta["reasoning"] = _scrub(meta["reasoning"])[0]
    out["meta"] = meta or None
    active = row[M_ACTIVE]
    if active is not None and not active:  # absent means active (spares the store a copy)
        out["state"] = "compacted" if row[M_COMPACTED] else "retracted"
    return out, replaced


def model_config(row: Mapping[str, Any]) -> dict[str, Any]:
    raw = row.get("model_config")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def is_branch(row: Mapping[str, Any], parent: Mapping[str, Any] | None) -> bool:
    """A /branch or delegate child starts its own chain; a compression child continues."""
    config = model_config(row)
    if "_branched_from" in config or "_delegate_from" in config:
        return True
    return parent is not None and parent.get("end_reason") == "branched"


def session_item(
    row: Mapping[str, Any],
    parent: Mapping[str, Any] | None,
    messages: list[dict[str, Any]],
    store_key: str,
) -> ImportItem:
    """One Hermes session row and its new messages as a batch item."""
    metadata: dict[str, Any] = {"hermes_id": row["id"], "hermes_store": store_key}
    for name in METADATA_FIELDS:
        if row.get(name) is not None:
            metadata[name] = row[name]
    if row.get("parent_session_id"):
        metadata["hermes_parent"] = row["parent_session_id"]
    ended = row.get("ended_at") is not None
    reason, detail = end_reason(row.get("end_reason"))
    return ImportItem(
        origin=origin_of(row["id"]),
        source=(row.get("source") or "unknown").strip() or "unknown",
        created_at=float(row.get("started_at") or 0.0),
        model=row.get("model"),
        title=row.get("title"),
        cwd=row.get("cwd"),
        parent_origin=origin_of(row["parent_session_id"]) if row.get("parent_session_id") else None,
        branch=is_branch(row, parent),
        metadata=metadata,
        messages=messages,
        ended_at=float(row["ended_at"]) if ended else None,
        end_reason=reason if ended else None,
        end_detail=detail if ended else None,
    )


def end_reason(raw: Any) -> tuple[str, str]:
    """Hermes' end reason verbatim when tether can hold it as a reason word, else a
    word made of it (the original kept in the detail)."""
    text = "" if raw is None else str(raw)
    if _REASON.fullmatch(text):
        return text, END_DETAIL
    word = re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")[:64]
    if not word or not word[0].isalpha():
        word = ("reason_" + word)[:64] if word else "unknown"
    return word, f"{END_DETAIL} (end_reason {text[:200]!r})"


def deleted_item(session_id: str) -> ImportItem:
    return ImportItem(origin=origin_of(session_id), source_deleted=True)
