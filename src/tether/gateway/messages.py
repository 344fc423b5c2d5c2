"""How a turn's messages are keyed in the store, and how they are shown to clients.

Every message a turn stores carries the idempotency key
``turn:<turn_id>:<n>`` (``n`` = 0 for the prompt), which makes a retried write
a no-op, and the meta ``{"turn_id": <turn_id>}`` (schema 4), plus
``"interrupted": true`` or ``"error": true`` on the partial reply of a turn
that did not complete: durably and in the message itself, which turn produced
it and how that turn ended. Gateways before schema 4 put the mark in the key
(``turn:<turn_id>:<n>:interrupted``); such rows are still read.
"""

from __future__ import annotations

from typing import Any

from ..model import Message

PREFIX = "turn:"


def turn_key(turn_id: str, index: int) -> str:
    """The idempotency key of a turn's ``index``-th message (0: the prompt)."""
    return f"{PREFIX}{turn_id}:{index}"


def turn_meta(turn_id: str, mark: str | None = None) -> dict[str, Any]:
    """The meta of a turn's message: its turn, and ``mark`` (interrupted, error) if any."""
    meta: dict[str, Any] = {"turn_id": turn_id}
    if mark:
        meta[mark] = True
    return meta


def parse_key(key: str | None) -> tuple[str | None, str | None]:
    """``(turn_id, mark)`` of a turn key (a mark only in keys from before schema 4);
    ``(None, None)`` for anything else."""
    if not key or not key.startswith(PREFIX):
        return None, None
    parts = key[len(PREFIX) :].split(":")
    if len(parts) < 2:
        return None, None
    return parts[0], parts[2] if len(parts) > 2 else None


def message_view(m: Message) -> dict[str, Any]:
    """A stored message as clients see it: the CLI's JSON shape plus its turn."""
    d = m.to_dict()
    turn_id, mark = parse_key(m.idem_key)
    meta = m.meta or {}
    d["turn_id"] = meta.get("turn_id", turn_id)
    d["interrupted"] = meta.get("interrupted") is True or mark == "interrupted"
    return d
