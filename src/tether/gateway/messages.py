"""How a turn's messages are keyed in the store, and how they are shown to clients.

Every message a turn stores carries the idempotency key
``turn:<turn_id>:<n>`` (``n`` = 0 for the prompt), plus ``:interrupted`` or
``:error`` on the partial reply of a turn that did not complete. The key
makes a retried write a no-op and records, durably and in the message
itself, which turn produced it and how that turn ended.
"""

from __future__ import annotations

from typing import Any

from ..model import Message

PREFIX = "turn:"


def turn_key(turn_id: str, index: int, mark: str | None = None) -> str:
    key = f"{PREFIX}{turn_id}:{index}"
    return f"{key}:{mark}" if mark else key


def parse_key(key: str | None) -> tuple[str | None, str | None]:
    """``(turn_id, mark)`` of a turn key; ``(None, None)`` for anything else."""
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
    d["turn_id"] = turn_id
    d["interrupted"] = mark == "interrupted"
    return d
