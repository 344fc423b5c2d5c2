"""Following lifecycle events live with LISTEN/NOTIFY.

Every row written to ``events`` (created, ended, reaped, taken_over, ...) is
published by a trigger with ``pg_notify`` in the transaction that writes it, so
a listener hears an event exactly when it commits, from every host that shares
the database, and never one that was rolled back. The payload is JSON: the
event's ``id``, ``at``, ``kind``, ``session_id`` and ``data`` (``data`` is left
out, null, above 4,000 bytes; the ``events`` row has it all).

LISTEN lasts as long as the session that issued it, so a listener holds a
direct connection of its own: not one from the pool, and not through a
transaction-mode pooler (which cannot carry LISTEN; point it at the server or
at a session-mode pool).

Example, a live feed of a fleet::

    store = tether.open_store("postgresql://db.internal/tether")
    with store.listen() as listener:
        for event in listener.events():
            print(event.kind, event.session_id, event.data)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql as pg_sql

from ...errors import StoreUnavailableError
from .schema import events_channel


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """One row of ``events`` as published: what happened to which session, and when."""

    id: int
    at: float
    kind: str
    session_id: str | None
    data: dict[str, Any] | None

    @classmethod
    def from_payload(cls, payload: str) -> LifecycleEvent:
        d = json.loads(payload)
        return cls(int(d["id"]), float(d["at"]), d["kind"], d.get("session_id"), d.get("data"))


class EventListener:
    """A connection LISTENing to one store's events; already listening once made.

    Events committed after the constructor returns are queued on the
    connection until read, so nothing is missed between creating the listener
    and iterating it.
    """

    def __init__(self, conn: psycopg.Connection[Any], schema: str) -> None:
        self.channel = events_channel(schema)
        self._conn = conn
        try:
            conn.execute(pg_sql.SQL("LISTEN {}").format(pg_sql.Identifier(self.channel)))
        except psycopg.Error as exc:
            conn.close()
            raise StoreUnavailableError(f"cannot LISTEN on {self.channel}: {exc}") from None

    def events(
        self, timeout: float | None = None, limit: int | None = None
    ) -> Iterator[LifecycleEvent]:
        """Yield events as they arrive, for at most ``timeout`` seconds in all
        (None: until closed) and at most ``limit`` events (None: no limit)."""
        if limit is not None and limit <= 0:
            return
        try:
            for notify in self._conn.notifies(timeout=timeout, stop_after=limit):
                if notify.channel == self.channel:
                    yield LifecycleEvent.from_payload(notify.payload)
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(f"lost the LISTEN connection: {exc}") from None

    def __iter__(self) -> Iterator[LifecycleEvent]:
        return self.events()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> EventListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
