"""The lifecycle events feed behind ``/api/v1/events/stream`` (server-sent events).

One :class:`EventHub` per process follows the store and hands each new event
to every connected stream, in id order: on SQLite it reads the events table
after the last id it saw, every ``poll`` seconds (one indexed query, whatever
the number of clients; one writer, so ids commit in order). On PostgreSQL a
LISTEN notification wakes it (every host's events, at commit), and it reads the
table up to a commit-safe horizon (:class:`Horizon`): ids come from a sequence
and may commit out of order, so an id is streamed only once no transaction can
still commit a smaller one. One read per wake-up, none per client.

A stream first catches up from the table after the client's cursor (its
``Last-Event-ID``) up to the hub's last broadcast id, then follows the hub:
every event exactly once, in id order, and the client's cursor never passes an
id that can still appear. A cursor older than the oldest event kept, or newer
than the newest, gets an explicit ``reload`` event instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from ..compose import Store
from ..errors import InvalidInputError
from ..store.views import (
    EventRow,
    event_bounds,
    event_writers,
    events_after,
    events_and_writers,
    running_turns,
)

log = logging.getLogger("tether.web")

QUEUE_LIMIT = 10_000  # events a slow stream may lag behind before it is cut (it resumes)
CATCH_UP_PAGE = 500


def sse(event: EventRow) -> str:
    """One event in the SSE wire format; the SSE id is the event id."""
    data = json.dumps(event.to_dict(), separators=(",", ":"))
    return f"id: {event.id}\ndata: {data}\n\n"


def sse_reload(reason: str, newest: int) -> str:
    """Tell the client its cursor cannot be honoured: reload, then follow from ``newest``."""
    data = json.dumps({"reason": reason, "newest_id": newest})
    return f"id: {newest}\nevent: reload\ndata: {data}\n\n"


class TurnTracker:
    """Which open sessions have a running turn, kept up to date from the events.

    Rebuilt from the database when the hub starts (and when a LISTEN connection
    is made again), then moved by each event in commit order: ``turn_started``
    adds a session, ``turn_ended`` and its end remove it. Applying an event the
    rebuild already saw changes nothing in the end (the newest event of a
    session wins). Read from other threads as an immutable snapshot.
    """

    STARTS = frozenset({"turn_started"})
    STOPS = frozenset({"turn_ended", "ended", "reaped", "taken_over"})

    def __init__(self) -> None:
        # The running sessions as of event ``_upto`` (None: not known yet), replaced
        # as one tuple so that a reader on another thread sees a consistent pair.
        self._state: tuple[frozenset[str], int] | None = None

    def reset(self, running: frozenset[str], upto: int) -> None:
        self._state = (running, upto)

    def apply(self, event: EventRow) -> None:
        if self._state is not None:
            running, upto = self._state
            self._state = (moved(running, event), max(upto, event.id))

    def snapshot(self) -> tuple[frozenset[str], int] | None:
        """The running sessions' ids and the event id they are as of (None: not known)."""
        return self._state


def moved(running: frozenset[str], event: EventRow) -> frozenset[str]:
    """``running`` after ``event``: the newest turn event of a session wins."""
    sid = event.session_id
    if sid is None:
        return running
    if event.kind in TurnTracker.STARTS and sid not in running:
        return running | {sid}
    if event.kind in TurnTracker.STOPS and sid in running:
        return running - {sid}
    return running


class Horizon:
    """Which of the events read so far are final (PostgreSQL), as pure logic.

    PostgreSQL draws event ids from a sequence, so transactions can commit out
    of id order: id 7 may be visible while id 6 is still to commit. Every
    transaction that writes an event holds a write lock on the events table from
    before it draws the id until it ends (``sql_web.EVENT_WRITERS`` lists them).
    So after a read that saw ids up to ``m``, with the writers ``w`` listed after
    that snapshot, every id up to ``m`` is visible to any snapshot taken once all
    of ``w`` have ended: that read's events up to ``m`` are final, and can be
    delivered in id order without a later one ever appearing below them.

    A time-based hold (wait N ms before delivering) is not sound: a transaction
    may stay open for any time after drawing its id.
    """

    def __init__(self) -> None:
        # (highest id seen, writers then): final once those writers have ended
        self._barriers: list[tuple[int, frozenset[str]]] = []

    @property
    def waiting(self) -> bool:
        """Events were seen that are not known final yet."""
        return bool(self._barriers)

    @property
    def needs_writers(self) -> bool:
        """Whether :meth:`bound` needs the current writers (some barrier has some)."""
        return any(w for _, w in self._barriers)

    def bound(self, writers: frozenset[str]) -> int:
        """The highest id final for a snapshot taken after ``writers`` were listed
        (0: none): barriers whose writers are all gone are passed."""
        top = 0
        kept = []
        for upto, was in self._barriers:
            if was & writers:
                kept.append((upto, was))
            else:
                top = max(top, upto)
        # A later barrier's writers include every earlier one's still running, so
        # passing it passes the earlier ones too.
        self._barriers = [(u, w) for u, w in kept if u > top]
        return top

    def saw(self, upto: int, writers: frozenset[str]) -> None:
        """A read saw events up to ``upto``; ``writers`` were listed after it."""
        if not self._barriers or upto > self._barriers[-1][0]:
            self._barriers.append((upto, writers))
        else:  # the same ids again: keep the newer (smaller or equal) writer set
            last, was = self._barriers[-1]
            self._barriers[-1] = (last, was & writers)


class _Overflow:
    pass


OVERFLOW = _Overflow()


class EventHub:
    """Follows the store's events once per process and fans them out to the streams."""

    def __init__(self, store: Store, *, poll: float = 0.05, keepalive: float = 15.0) -> None:
        self.store = store
        self.poll = poll
        self.keepalive = keepalive
        self.last_id = 0
        self._subs: set[asyncio.Queue[EventRow | _Overflow]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self.delivered = 0  # events handed to streams (for tests and the bench)
        self.turns = TurnTracker()
        # Set once last_id is known: a stream catches up to it, then follows.
        self._ready = asyncio.Event()

    @property
    def clients(self) -> int:
        return len(self._subs)

    async def start(self) -> None:
        if self._task is not None:
            return
        loop = asyncio.get_running_loop()
        if self.store.backend.dialect == "postgresql":
            self._task = asyncio.create_task(self._listen(), name="tether-web-listen")
        else:
            # One snapshot: the running turns as of the newest event, followed from there.
            self.last_id, running = await loop.run_in_executor(None, running_turns, self.store)
            self.turns.reset(running, self.last_id)
            self._ready.set()
            self._task = asyncio.create_task(self._poll(), name="tether-web-poll")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for q in list(self._subs):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(OVERFLOW)

    def _broadcast(self, event: EventRow) -> None:
        self.last_id = max(self.last_id, event.id)
        self.turns.apply(event)
        for q in list(self._subs):
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:  # it resumes from the table with its Last-Event-ID
                self._subs.discard(q)
                q.get_nowait()
                q.put_nowait(OVERFLOW)
        self.delivered += 1

    def _rebuilt(self, newest: int, running: frozenset[str]) -> None:
        self.last_id = max(self.last_id, newest)
        self.turns.reset(running, newest)
        self._ready.set()

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                rows = await loop.run_in_executor(
                    None, events_after, self.store, self.last_id, CATCH_UP_PAGE
                )
                for row in rows:
                    self._broadcast(row)
                if len(rows) == CATCH_UP_PAGE:
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is briefly unavailable: try again
                log.warning("could not read the store's events: %s", exc)
            await asyncio.sleep(self.poll)

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()

        def follow() -> None:
            cursor: int | None = None  # the last id broadcast, kept across reconnects
            while not self._stop.is_set():
                try:
                    with self.store.listen() as listener:
                        # Listening already: rebuilt after, so no event falls in between.
                        newest, running = running_turns(self.store)
                        # Ids up to ``newest`` are final once the writers of that
                        # moment have ended: streams wait for it (catching up to it).
                        writers = event_writers(self.store)
                        while writers and not self._stop.is_set():
                            self._stop.wait(self.poll)
                            writers &= event_writers(self.store)
                        loop.call_soon_threadsafe(self._rebuilt, newest, running)
                        if cursor is None:
                            cursor = newest
                        horizon = Horizon()
                        wake = True
                        while not self._stop.is_set():
                            if wake or horizon.waiting:
                                cursor = self._advance(loop, horizon, cursor)
                            # A notification only wakes the hub: the rows are read
                            # from the table, in id order, up to the horizon.
                            wait = self.poll if horizon.waiting else 0.5
                            wake = any(True for _ in listener.events(timeout=wait, limit=1))
                except Exception as exc:
                    log.warning("lost the store's event feed: %s", exc)
                    self._stop.wait(1.0)

        thread = threading.Thread(target=follow, name="tether-web-listen", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                await asyncio.sleep(0.2)
        finally:
            self._stop.set()

    def _advance(self, loop: asyncio.AbstractEventLoop, horizon: Horizon, cursor: int) -> int:
        """One wake-up on PostgreSQL (in the listening thread): broadcast the final
        events after ``cursor`` in id order; returns the new cursor."""
        while True:
            # Listed before the snapshot below: a writer gone now is visible in it.
            gone = event_writers(self.store) if horizon.needs_writers else frozenset()
            top = horizon.bound(gone)
            rows, writers = events_and_writers(self.store, cursor, CATCH_UP_PAGE)
            for row in rows:
                if row.id > top:
                    break
                loop.call_soon_threadsafe(self._broadcast, row)
                cursor = row.id
            if rows and rows[-1].id > cursor:
                horizon.saw(rows[-1].id, writers)
                if not writers:  # final at the next read: do it now
                    continue
            elif len(rows) == CATCH_UP_PAGE:
                continue
            return cursor

    async def stream(self, cursor: int | None) -> AsyncIterator[str]:
        """The SSE body for one client: catch up after ``cursor`` (None: only new events)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[EventRow | _Overflow] = asyncio.Queue(QUEUE_LIMIT)
        try:
            yield "retry: 1000\n\n"
            await self._ready.wait()
            # Subscribed and the horizon read in one step (no await between): the
            # hub broadcasts in id order, so every event after ``upto`` reaches the
            # queue and every event up to it is final in the table.
            self._subs.add(queue)
            upto = self.last_id
            lo, hi = await loop.run_in_executor(None, event_bounds, self.store)
            if cursor is None:  # only what comes after the newest event now
                cursor = hi
            elif cursor > hi:
                yield sse_reload("the cursor is newer than the newest event", hi)
                cursor = hi
            elif cursor and lo and cursor < lo - 1:
                yield sse_reload("the events after the cursor are gone", hi)
                cursor = hi
            start = cursor
            while cursor < upto:
                rows = await loop.run_in_executor(
                    None, events_after, self.store, cursor, CATCH_UP_PAGE
                )
                for row in rows:
                    if row.id > upto:
                        break
                    yield sse(row)
                cursor = rows[-1].id if len(rows) == CATCH_UP_PAGE else upto
            start = max(start, upto)
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), self.keepalive)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if isinstance(item, _Overflow):
                    return  # the client reconnects with its Last-Event-ID
                if item.id <= start:  # caught up to it, or the client is ahead of this hub
                    continue
                yield sse(item)
        finally:
            self._subs.discard(queue)


def parse_cursor(value: Any) -> int:
    """A Last-Event-ID or ``after`` value: a non-negative 64-bit integer."""
    try:
        n = int(str(value).strip())
    except ValueError:
        raise InvalidInputError(f"not an event id: {str(value)[:40]!r}") from None
    if not 0 <= n < 2**63:
        raise InvalidInputError("an event id is between 0 and 2**63-1")
    return n
