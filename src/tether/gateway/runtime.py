"""The asyncio layer over the registry: it carries out actions, runs turns, calls the store.

The :class:`~tether.gateway.registry.Registry` decides; this module only does
what it says, in the order it says it:

* ``Deliver`` queues a frame on each connection (synchronously, so frames keep
  the registry's order);
* ``MarkDetached`` and ``Finalize`` go to the store on one writer thread, so
  they reach the database in order and never block the event loop (the
  writer commits queued appends and events together: :mod:`.writer`);
* ``Interrupt`` cancels the agent's iteration; the turn then stores what it
  had and ends by itself.

An end that cannot be recorded (the store raised :class:`StoreError`) keeps
the session's handle and goes back to the registry (``end_failed``), whose
timer asks for it again with backoff until it is stored. A watcher follows
the store's events (SQLite: the events table, polled by id; PostgreSQL:
LISTEN/NOTIFY), so a session ended or taken over anywhere else leaves this
registry at once and its attached clients get ``session.ended``.

Store calls are blocking (SQLite here, PostgreSQL over the network later):
writes run on a single thread (one writer per process, in order), reads on
a small pool. Nothing here keeps a reference to a finalized session, so the
registry, the tasks and the threads return to their baseline when every
session has ended.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..agents import Agent, AgentError, TextDelta, ToolCalls, ToolResult, Turn
from ..clock import SYSTEM_CLOCK, Clock
from ..compose import Store
from ..errors import (
    MessagesLostError,
    SessionEndedError,
    StaleOwnerError,
    StoreError,
    TetherError,
)
from ..ids import new_id
from ..lifecycle import SessionHandle
from ..model import Message
from ..store.toolrepair import answered_history
from ..validate import check_source, check_text
from . import rpc
from .connection import Connection
from .messages import message_view, turn_key, turn_meta
from .registry import (
    Action,
    Attached,
    ConnId,
    Deliver,
    Finalize,
    Full,
    Interrupt,
    MarkDetached,
    NotAttached,
    NotLive,
    Registry,
)
from .rpc import RpcError
from .writer import GroupWriter

log = logging.getLogger("tether.gateway")
T = TypeVar("T")

TITLE_CHARS = 60  # a title made from the first prompt: one line, at most this long
# Expired sessions finalized per turn of the event loop (each about 50 µs): a
# reconnect storm's thousands of expiries take many short turns, not one long one.
TICK_BATCH = 64


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The gateway's limits and timers (``tether serve`` options set some of them)."""

    detach_grace: float = 120.0
    idle_timeout: float | None = None
    # Caps, so that one client cannot open thousands of sessions: past
    # max_live_sessions the least recently active idle session is evicted.
    max_live_sessions: int | None = 1000
    max_sessions_per_connection: int | None = 100
    replay_events: int = 2048
    replay_bytes: int = 512 * 1024
    outbox_frames: int = 10_000
    outbox_bytes: int = 8 * 1024 * 1024  # a client that stops reading is closed past this
    shutdown_timeout: float = 5.0
    end_retry: float = 0.5  # first retry of an end that could not be recorded; doubles
    end_retry_max: float = 30.0
    events_poll: float = 0.5  # SQLite: how often the events table is read for outside ends
    source: str = "gateway"


# Events of the store that take a session away from this gateway.
_ENDING_EVENTS = ("ended", "reaped", "taken_over")


@dataclass(frozen=True, slots=True)
class _Stop:
    status: str  # completed | interrupted | error
    error: str | None = None


def title_of(text: str) -> str:
    """A session title from a prompt: its first non-empty line, whitespace collapsed, shortened."""
    line = next((ln for ln in text.splitlines() if ln.strip()), text)
    line = " ".join(line.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "\u2026"


@dataclass(slots=True)
class _Running:
    """A turn in progress: its runner (never cancelled) and the agent's pump (cancellable)."""

    turn_id: str
    handle: SessionHandle
    task: asyncio.Task[None] | None = None
    pump: asyncio.Task[None] | None = None
    interrupted: bool = False
    index: int = 1  # the prompt is message 0 of the turn
    parts: list[str] = field(default_factory=list)  # text streamed since the last stored message
    busy: bool = False  # the runner is handling an event (storing, perhaps): the pump queues

    def interrupt(self) -> None:
        self.interrupted = True
        if self.pump is not None:
            self.pump.cancel()


def _stopped_unstarted(queue: asyncio.Queue[Any], pump: asyncio.Task[None]) -> None:
    """A pump cancelled before it ran: the runner is told the turn was interrupted."""
    if pump.cancelled():
        queue.put_nowait(_Stop("interrupted"))


def _pass_result(waiter: asyncio.Future[bool | None], fut: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False if fut.cancelled() or fut.exception() else fut.result())


def _json(data: Any) -> dict[str, Any] | None:
    if data is None or isinstance(data, dict):
        return data
    try:
        out = json.loads(data)
    except ValueError:
        return None
    return out if isinstance(out, dict) else None


def _always() -> bool:
    return True


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class Gateway:
    """Live sessions of one gateway process, driven by JSON-RPC requests and timers."""

    def __init__(
        self,
        store: Store,
        agent: Agent,
        config: GatewayConfig | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.agent = agent
        self.config = config or GatewayConfig()
        self.clock = clock
        self.registry = Registry(
            clock=clock,
            detach_grace=self.config.detach_grace,
            idle_timeout=self.config.idle_timeout,
            max_live=self.config.max_live_sessions,
            max_per_conn=self.config.max_sessions_per_connection,
            end_retry=self.config.end_retry,
            end_retry_max=self.config.end_retry_max,
            replay_events=self.config.replay_events,
            replay_bytes=self.config.replay_bytes,
        )
        self.handles: dict[str, SessionHandle] = {}
        self.turns: dict[str, _Running] = {}
        self.untitled: set[str] = set()  # sessions created without a title and no prompt yet
        # Resolves once the session's end is recorded (True: this gateway recorded it).
        self.finalizing: dict[str, asyncio.Future[bool]] = {}
        self._waiters: dict[str, list[asyncio.Future[bool | None]]] = {}
        self.conns: dict[ConnId, Connection] = {}
        self._conn_ids = itertools.count(1)
        self._writer = GroupWriter(store.backend, name="tether-write")
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="tether-read")
        self._pending: set[asyncio.Future[Any]] = set()
        self._wake = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._lag: asyncio.Task[None] | None = None
        self._events: asyncio.Task[None] | None = None
        self._events_stop = threading.Event()
        self.loop_lag_max = 0.0  # seconds: the worst late wake-up of the event loop
        self._recent_lags: collections.deque[float] = collections.deque(maxlen=8)  # last ~2 s
        self.cold_lock = asyncio.Lock()
        self.started_at = clock.now()
        self.stopping = False

    # --- store access ------------------------------------------------------------------

    def write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """Run a store write on the writer thread; submitted now, so writes keep their order."""
        return self._writer.submit(functools.partial(fn, *args, **kwargs))

    def write_event(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """As :meth:`write`, for a write that may share its neighbours' transaction (an
        event, a detach mark: harmless to run again if a shared commit fails)."""
        return self._writer.submit(functools.partial(fn, *args, **kwargs), _always)

    def append(
        self, handle: SessionHandle, role: str, content: str | None, **fields: Any
    ) -> asyncio.Future[Message]:
        """Store one message of a turn on the writer thread; resolves once committed.

        The prompts and replies of many sessions queued together share one
        transaction (group commit). A turn's messages carry idempotency keys,
        so running one again after a shared commit failed never doubles it;
        a session's first message (it writes the session's row and starts its
        heartbeat) runs on its own.
        """
        if fields.get("idem_key") is None:
            raise ValueError("a turn's message needs an idempotency key")

        def groupable() -> bool:
            return handle.persisted and not handle.ended and not handle.pending

        return self._writer.submit(
            functools.partial(handle.append, role, content, **fields), groupable
        )

    def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._readers, functools.partial(fn, *args, **kwargs))

    def _background(self, fut: asyncio.Future[Any], what: str) -> None:
        self._pending.add(fut)

        def done(f: asyncio.Future[Any]) -> None:
            self._pending.discard(f)
            exc = None if f.cancelled() else f.exception()
            if exc is not None:
                log.error("%s failed: %s", what, one_line(exc))

        fut.add_done_callback(done)

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._timer = asyncio.create_task(self._timers(), name="tether-timers")
        self._lag = asyncio.create_task(self._watch_lag(), name="tether-loop-lag")
        self._events = asyncio.create_task(self._watch_events(), name="tether-events")

    async def _watch_lag(self, every: float = 0.25) -> None:
        """Measure how late the loop wakes up: store calls must never stall it."""
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(every)
            lag = loop.time() - t - every
            self.loop_lag_max = max(self.loop_lag_max, lag)
            self._recent_lags.append(lag)

    async def shutdown(self, reason: str = "gateway_shutdown") -> None:
        """End every live session once, with ``reason``; running turns store their output first."""
        self.stopping = True
        for conn in list(self.conns.values()):
            await self.disconnect(conn)
        self.run(self.registry.shutdown(reason))
        runners = [r.task for r in self.turns.values() if r.task is not None]
        if runners:
            _, late = await asyncio.wait(runners, timeout=self.config.shutdown_timeout)
            for task in late:
                log.error(
                    "a turn did not stop within %ss; cancelling it", self.config.shutdown_timeout
                )
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        # Anything still live (a turn that had to be cancelled): finalize it now.
        for sid in list(self.handles):
            if sid not in self.finalizing:
                self.run([Finalize(sid, reason, True)])
        # Ends waiting for a retry are tried now; the timers keep retrying the
        # failures until the shutdown timeout, then the store's exit path has them.
        self.run(self.registry.retry_endings())
        if self.finalizing:
            _, late_ends = await asyncio.wait(
                list(self.finalizing.values()), timeout=self.config.shutdown_timeout
            )
            for fut in late_ends:
                sid = next((k for k, v in self.finalizing.items() if v is fut), "?")
                log.error("the end of session %s is still not recorded; leaving it to exit", sid)
        self._events_stop.set()
        await asyncio.gather(*self._pending, return_exceptions=True)
        for helper in (self._timer, self._lag, self._events):
            if helper is not None:
                helper.cancel()
                await asyncio.gather(helper, return_exceptions=True)
        self._writer.shutdown()
        self._readers.shutdown(wait=True)

    async def _timers(self) -> None:
        while True:
            at = self.registry.next_deadline()
            delay = None if at is None else at - self.clock.monotonic()
            if delay is None or delay > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
            else:
                # More was due than one batch: let the loop serve the others first.
                await asyncio.sleep(0)
            try:
                self.run(self.registry.tick(TICK_BATCH))
            except Exception:  # a bug: log it, never stop the timers
                log.exception("gateway timer tick failed")

    # --- carrying out the registry's actions -------------------------------------------

    def run(self, actions: Iterable[Action]) -> None:
        """Carry out ``actions`` in order (synchronously; store work is queued, in order)."""
        for a in actions:
            if isinstance(a, Deliver):
                for cid in a.conns:
                    conn = self.conns.get(cid)
                    if conn is not None:
                        conn.send(a.frame)
            elif isinstance(a, MarkDetached):
                h = self.handles.get(a.session_id)
                if h is not None and h.persisted:
                    self._background(
                        self.write_event(self.store.mark_detached, a.session_id, a.at),
                        "mark_detached",
                    )
            elif isinstance(a, Interrupt):
                running = self.turns.get(a.session_id)
                if running is not None and running.turn_id == a.turn_id:
                    running.interrupt()
            elif isinstance(a, Finalize):
                self._finalize(a)
        self._wake_timers()

    def _wake_timers(self) -> None:
        """Wake the timer task only if a timer may now be due earlier (never per token)."""
        if self.registry.timers_changed:
            self.registry.timers_changed = False
            self._wake.set()

    def _record(self, session_id: str, kind: str, data: dict[str, Any]) -> None:
        """Log a turn's start or end in the store's events (the live view derives
        ``working`` from them), queued behind the writes before it."""
        try:
            fut = self.write_event(self.store.record_event, session_id, kind, data)
        except RuntimeError:  # the writer is shut down: the session's end follows anyway
            return
        self._background(fut, kind)

    def emit(self, session_id: str, method: str, params: dict[str, Any]) -> None:
        self.run(self.registry.emit(session_id, method, params))

    def _finalize(self, a: Finalize) -> None:
        """One attempt to record the end; a failure goes back to the registry for a retry."""
        sid = a.session_id
        ended = self.finalizing.get(sid)
        if ended is None:
            ended = asyncio.get_running_loop().create_future()
            self.finalizing[sid] = ended
        # when_ended() callers hear the outcome of this attempt (None: not recorded yet).
        first = self._waiters.pop(sid, [])
        handle = self.handles.get(sid)  # kept until the end is recorded
        try:
            attempt = self.write(self._end, handle, a)
        except RuntimeError:  # the writer is shut down: the store's exit path ends it
            self._ended(sid, ended, False, first)
            return
        self._pending.add(attempt)

        def done(f: asyncio.Future[bool]) -> None:
            self._pending.discard(f)
            exc = None if f.cancelled() else f.exception()
            if f.cancelled() or isinstance(exc, StoreError):
                error = one_line(exc) if exc else "cancelled"
                retry_at = self.registry.end_failed(sid, error)
                if retry_at is not None:
                    log.error(
                        "could not record the end of session %s (%s): %s; retrying in %.1f s",
                        sid,
                        a.reason,
                        error,
                        retry_at - self.clock.monotonic(),
                    )
                for waiter in first:
                    if not waiter.done():
                        waiter.set_result(None)
                self._wake.set()
                return
            if exc is not None:  # not the store's availability: retrying will not help
                log.error("ending session %s failed: %s", sid, one_line(exc))
            self._ended(sid, ended, bool(exc is None and f.result()), first)

        attempt.add_done_callback(done)

    def _ended(
        self,
        sid: str,
        ended: asyncio.Future[bool],
        result: bool,
        waiters: list[asyncio.Future[bool | None]],
    ) -> None:
        self.handles.pop(sid, None)
        self.untitled.discard(sid)
        self.registry.end_recorded(sid)
        if self.finalizing.get(sid) is ended:
            del self.finalizing[sid]
        futs: tuple[asyncio.Future[Any], ...] = (ended, *waiters)  # bool fits all of them
        for fut in futs:
            if not fut.done():
                fut.set_result(result)

    def when_ended(self, session_id: str) -> asyncio.Future[bool | None]:
        """Resolves once the session's next finalize attempt is over.

        True if it recorded the end, False if the session was ended otherwise
        (or had nothing to record), None if the store could not take it: the
        end is then retried in the background.
        """
        waiter: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        fut = self.finalizing.get(session_id)
        if fut is not None:
            fut.add_done_callback(functools.partial(_pass_result, waiter))
            return waiter
        self._waiters.setdefault(session_id, []).append(waiter)
        return waiter

    def _end(self, handle: SessionHandle | None, a: Finalize) -> bool:
        """On the writer thread: record the end (first reason wins). True if this ended it.

        Raises :class:`StoreError` when the store cannot take it (retried).
        A :class:`MessagesLostError` is no such failure: the end *was*
        recorded (as ``error``, counting the buffered messages that could not
        be stored), so it is logged and counts as recorded, never retried.
        """
        if handle is None:
            return False
        try:
            return handle.end(a.reason, interrupted=a.interrupted)
        except MessagesLostError as lost:
            log.error("%s", lost)  # says the session, the count and why
            return lost.ended

    # --- ends recorded elsewhere -------------------------------------------------------

    async def _watch_events(self) -> None:
        """Follow the store's events; a session of ours ended elsewhere leaves the registry."""
        if self.store.backend.dialect == "postgresql":
            await self._listen_events()
            return
        last = None
        while True:
            try:
                if last is None:
                    last = await self.read(self._max_event_id)
                else:
                    rows = await self.read(self._events_after, last)
                    for event_id, sid, kind, data in rows:
                        last = max(last, event_id)
                        self._ended_elsewhere(sid, kind, _json(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is briefly unavailable: try again later
                log.warning("could not read the store's events: %s", one_line(exc))
            await asyncio.sleep(self.config.events_poll)

    def _max_event_id(self) -> int:
        return self.store.backend.read(
            lambda c: c.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
        )

    def _events_after(self, after: int) -> list[Any]:
        kinds = ", ".join(f"'{k}'" for k in _ENDING_EVENTS)
        query = (
            "SELECT id, session_id, kind, data FROM events "
            f"WHERE id > ? AND kind IN ({kinds}) ORDER BY id LIMIT 1000"
        )
        return self.store.backend.read(lambda c: c.execute(query, (after,)).fetchall())

    async def _listen_events(self) -> None:
        """PostgreSQL: LISTEN on a thread of its own, handing events to the loop."""
        loop = asyncio.get_running_loop()

        def follow() -> None:
            while not self._events_stop.is_set():
                try:
                    with self.store.listen() as listener:
                        while not self._events_stop.is_set():
                            for ev in listener.events(timeout=self.config.events_poll):
                                if ev.kind in _ENDING_EVENTS and ev.session_id:
                                    loop.call_soon_threadsafe(
                                        self._ended_elsewhere, ev.session_id, ev.kind, ev.data
                                    )
                except Exception as exc:
                    log.warning("lost the store's event feed: %s", one_line(exc))
                    self._events_stop.wait(1.0)

        thread = threading.Thread(target=follow, name="tether-events", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                await asyncio.sleep(0.2)
        finally:
            self._events_stop.set()

    def _ended_elsewhere(self, sid: str, kind: str, data: dict[str, Any] | None) -> None:
        if sid not in self.registry:
            return  # not ours, or our own end
        data = data or {}
        detail: str | None
        if kind == "taken_over":
            if data.get("to") == self.store.owner_id:
                return  # our own takeover (a cold resume)
            reason, detail = "taken_over", f"taken over by owner {data.get('to')}"
        elif kind == "reaped":
            reason, detail = "reaped", data.get("detail")
        else:
            reason, detail = str(data.get("reason") or "ended"), data.get("detail")
        log.info("session %s ended elsewhere (%s)", sid, reason)
        self.run(self.registry.close(sid, reason, detail))

    # --- connections -------------------------------------------------------------------

    def connect(
        self,
        send: Callable[[str], Awaitable[None]],
        close: Callable[[int, str], Coroutine[Any, Any, None]],
        send_now: Callable[[str], bool] | None = None,
    ) -> Connection:
        """A new client connection; ``send_now`` writes a frame at once if it can (see
        :class:`~tether.gateway.connection.Connection`)."""
        conn = Connection(
            next(self._conn_ids),
            send,
            close,
            limit=self.config.outbox_frames,
            max_bytes=self.config.outbox_bytes,
            send_now=send_now,
        )
        self.conns[conn.id] = conn
        self.registry.connect(conn.id)
        return conn

    async def disconnect(self, conn: Connection) -> None:
        """The client is gone: its sessions are detached (and, after the grace, finalized)."""
        if self.conns.pop(conn.id, None) is None:
            return
        self.run(self.registry.disconnect(conn.id))
        await conn.aclose()

    # --- sessions: what the JSON-RPC methods (methods.py) ask of the gateway -----------

    def _refuse_if_stopping(self, code: int = rpc.GATEWAY_FULL) -> None:
        if self.stopping:
            data = {"reason": None} if code == rpc.SESSION_ENDED else None
            raise RpcError(code, "the gateway is shutting down", data)

    def live_handle(self, session_id: str) -> SessionHandle:
        """The handle of a session live here; :class:`NotLive` if there is none."""
        h = self.handles.get(session_id)
        if h is None or session_id not in self.registry:
            raise NotLive(session_id)
        return h

    async def create(
        self,
        conn: Connection,
        *,
        source: str | None,
        model: str | None,
        title: str | None,
        cwd: str | None,
        parent_id: str | None,
        metadata: dict[str, Any] | None,
    ) -> Attached:
        """Start a session attached to ``conn``; nothing is written before its first message."""
        self._refuse_if_stopping()
        source = check_source(self.config.source if source is None else source)  # tui, web...
        model = check_text(model, "model") or self.agent.model
        if parent_id is not None:
            # SessionNotFoundError if unknown; answers the tool calls the lineage
            # left dangling, so the continuation never sends an invalid history.
            await self.write(self.store.repair_lineage, parent_id)
        handle = self.store.session(  # writes nothing until the first message (no ghosts)
            source=source,
            model=model,
            title=title,
            cwd=cwd,
            parent_id=parent_id,
            metadata=metadata,
        )
        try:
            attached, actions = self.registry.open(handle.id, conn.id)
        except Full:
            handle.end()  # never written: nothing to end, just forget it
            raise
        self.handles[handle.id] = handle
        if title is None:
            self.untitled.add(handle.id)  # titled from its first prompt
        self.run(actions)
        return attached

    async def resume(
        self, conn: Connection, sid: str, *, since: int | None, stream: str | None
    ) -> tuple[Attached, list[str]]:
        """Attach ``conn`` to a session: live here, or loaded (taken over) from the store.

        Returns the attachment and the frames to replay to ``conn`` right after
        the reply (none for a session loaded from the store).
        """
        if since and stream is None:
            # A seq means nothing without the stream it counts in: replaying from
            # it could skip events, so the client reloads instead. (since=0, "I saw
            # nothing", needs no stream: the whole buffer, or reload, is right.)
            stream = ""  # names no stream
        if sid not in self.registry:
            async with self.cold_lock:
                self._refuse_ending(sid)  # its end is being recorded: -32002, never -32006
                if sid not in self.registry:
                    return await self._resume_cold(conn, sid, since), []
        attached, actions = self.registry.attach(sid, conn.id, since=since, stream=stream)
        self.run(actions)
        return attached, attached.replay

    def _refuse_ending(self, sid: str) -> None:
        """A session whose end is decided but not yet recorded cannot be resumed."""
        if self.registry.is_ending(sid):
            raise RpcError(
                rpc.SESSION_ENDED,
                f"session {sid} is ending: its end could not be recorded yet and is being retried",
                {"reason": None},
            )

    async def _resume_cold(self, conn: Connection, sid: str, since: int | None) -> Attached:
        """Load an open session from the store (after a restart, or another process's)."""
        self._refuse_if_stopping()
        session = await self.read(self.store.get_session, sid)
        if session.ended_at is not None:
            raise SessionEndedError(sid, session.end_reason)
        # Take the place in the registry first (Full, or an idle session evicted,
        # before anything is written), then take ownership: a gateway that filled
        # up meanwhile can never leave a session taken over and ended unseen.
        attached, actions = self.registry.open(sid, conn.id, since=since, reserve=True)
        self.run(actions)  # an idle session evicted to make room ends now
        try:
            # Takes ownership if the owner is dead (epoch bump: its late writes are
            # refused); OwnerAliveError if another live process holds it.
            handle = await self.write(self.store.resume, sid)
        except BaseException:
            self.registry.forget(sid)
            raise
        if sid not in self.registry:  # closed by a client while it was being taken over
            await self.write(handle.end, "completed")
            raise SessionEndedError(sid, "completed")
        self.registry.confirm(sid)
        self.handles[sid] = handle
        return attached

    async def close_session(
        self, conn: Connection, sid: str, reason: str, *, if_alone: bool
    ) -> dict[str, Any]:
        """End a session (or, ``if_alone`` with others attached, only detach ``conn``)."""
        if sid in self.registry:
            handle = self.handles.get(sid)
            others = len(self.registry.session(sid).conns - {conn.id})
            if if_alone and others:
                # Other clients still use it: only this connection lets go.
                self.run(self.registry.detach(sid, conn.id))
                return {"ended": False, "others_attached": others, "detached": True}
            ended = self.when_ended(sid)
            # A running turn is interrupted first; it stores what it had, then the end follows.
            self.run(self.registry.close(sid, reason))
            outcome = await ended
            out = {
                "ended": bool(outcome),
                "others_attached": others,
                "persisted": bool(handle and handle.persisted),
            }
            if outcome is None:  # the store could not take it: retried until it does
                out["ending"] = True
            return out
        if self.registry.is_ending(sid):  # its end is decided; recording it is being retried
            return {"ended": False, "others_attached": 0, "persisted": True, "ending": True}
        # Not live here: end it only if no live process owns it (never another
        # gateway's live session): taking it over says so (OwnerAliveError, -32006).
        try:
            handle = await self.write(self.store.resume, sid)
        except SessionEndedError:
            return {"ended": False, "others_attached": 0, "persisted": True}
        recorded = await self.write(handle.end, reason)
        return {"ended": recorded, "others_attached": 0, "persisted": True}

    def active(self) -> list[dict[str, Any]]:
        """What is live here now: attached, running, or detached within the grace window."""
        return self.registry.active()

    def unwritten(self, sid: str) -> bool:
        """Is ``sid`` live here with nothing stored yet (no history to read)?"""
        h = self.handles.get(sid)
        return h is not None and not h.persisted

    def interrupt(self, conn: Connection, sid: str) -> str | None:
        """Interrupt the running turn of ``sid``; its turn id, None if none was running."""
        if conn.id not in self.registry.session(sid).conns:
            raise NotAttached(sid)
        actions = self.registry.interrupt(sid)
        self.run(actions)
        return actions[0].turn_id if actions else None

    async def submit(
        self, conn: Connection, sid: str, text: str
    ) -> tuple[str, int, Callable[[], None] | None]:
        """Store a prompt and start its turn: turn id, the prompt's seq, and what starts it.

        The returned callable (None when no turn starts) must run right after the
        reply is sent, so that the turn's events follow the reply.
        """
        self._refuse_if_stopping(rpc.SESSION_ENDED)
        handle = self.live_handle(sid)
        turn_id = new_id()
        self.registry.begin_turn(sid, conn.id, turn_id)  # Busy if a turn runs
        running = _Running(turn_id, handle)
        self.turns[sid] = running
        if sid in self.untitled:
            self.untitled.discard(sid)
            if not handle.persisted:
                handle.set_title(title_of(text))
        # The turn starts only once the prompt is committed: the reply acknowledges
        # it (durable when acknowledged), the turn's events follow the reply and
        # carry the prompt's seq, and the agent reads the prompt back from the
        # store as its history. What waits here is one group commit, shared with
        # every prompt queued meanwhile (see .writer).
        try:
            msg = await self.append(
                handle, "user", text, idem_key=turn_key(turn_id, 0), meta=turn_meta(turn_id)
            )
        except BaseException:
            self.turns.pop(sid, None)
            self.run(self.registry.end_turn(sid, turn_id, "error", announce=False))
            raise
        if running.interrupted or self.stopping:
            # Closed (or the gateway began stopping) while the prompt was being
            # stored: the prompt is kept, but no turn starts on an ending session.
            self.turns.pop(sid, None)
            self.run(self.registry.end_turn(sid, turn_id, "interrupted"))
            return turn_id, msg.seq, None

        def start() -> None:
            self._record(sid, "turn_started", {"turn_id": turn_id})
            self.emit(sid, "turn.start", {"turn_id": turn_id})
            self.emit(sid, "message", {"turn_id": turn_id, "message": message_view(msg)})
            self.start_turn(sid, running, text)

        return turn_id, msg.seq, start

    # --- turns -------------------------------------------------------------------------

    def start_turn(self, session_id: str, running: _Running, text: str) -> None:
        """Start the turn's runner and, unless it was interrupted already, its agent.

        Both tasks take their first step in the same turn of the event loop: the
        agent does not wait for the runner to start it (one turn less before the
        first token). The runner is never cancelled before it runs (see shutdown),
        and it stops the agent whatever ends it.
        """
        sid, tid = session_id, running.turn_id
        queue: asyncio.Queue[Any] = asyncio.Queue()
        if running.interrupted:  # interrupted (or closed) before it could start
            queue.put_nowait(_Stop("interrupted"))
        else:
            turn = Turn(sid, tid, text, history=lambda: self.read(self._transcript, sid))
            pump = asyncio.create_task(
                self._pump(sid, running, turn, queue), name=f"tether-agent-{tid}"
            )
            # Cancelled before its first step (an interrupt right away), the pump
            # never reaches its own handler, which tells the runner: say it here.
            pump.add_done_callback(functools.partial(_stopped_unstarted, queue))
            running.pump = pump
        running.task = asyncio.create_task(
            self._run_turn(sid, running, queue), name=f"tether-turn-{tid}"
        )

    async def _pump(self, sid: str, r: _Running, turn: Turn, queue: asyncio.Queue[Any]) -> None:
        """Feed the agent's events to the runner; cancelling this interrupts the agent.

        A text delta with nothing before it in the queue and the runner idle
        is streamed from here: no task switch per token (the runner would
        only do the same, later). Anything else, and every delta behind it,
        goes through the queue, so the order on the wire is the agent's.
        """
        tid = r.turn_id
        try:
            async for event in self.agent.run(turn):
                if isinstance(event, TextDelta) and not r.busy and queue.empty():
                    r.parts.append(event.text)
                    self.emit(sid, "message.delta", {"turn_id": tid, "text": event.text})
                else:
                    queue.put_nowait(event)
            queue.put_nowait(_Stop("completed"))
        except asyncio.CancelledError:
            queue.put_nowait(_Stop("interrupted"))
        except AgentError as exc:
            queue.put_nowait(_Stop("error", str(exc)))
        except Exception as exc:
            log.exception("agent %s failed in turn %s", self.agent.name, turn.turn_id)
            queue.put_nowait(_Stop("error", one_line(exc)))

    def _transcript(self, session_id: str) -> list[Message]:
        """On a reader thread: the messages of the session's whole chain, oldest first.

        A session that continues an ended one (``parent_id``) carries on its
        conversation, so the agent reads from the root of the chain. Tool calls
        left unanswered before later messages (a turn interrupted mid tool, an
        imported session resumed without a result, a parent's dangling tail)
        get a synthetic result right after them, never stored: the agent never
        sends a model a history it refuses (issue 14; see store.toolrepair).
        """
        by_id = {s.id: s for s in self.store.get_chain(session_id)}
        lineage: list[str] = []
        at: str | None = session_id
        while at is not None and at in by_id:  # parent links only: not a sibling's turns
            lineage.append(at)
            at = by_id[at].parent_id
        return answered_history(
            [m for sid in reversed(lineage) for m in self.store.get_messages(sid)]
        )

    async def _store(
        self,
        session_id: str,
        r: _Running,
        role: str,
        content: str | None,
        *,
        mark: str | None = None,
        **fields: Any,
    ) -> Message:
        key = turn_key(r.turn_id, r.index)
        r.index += 1
        meta = turn_meta(r.turn_id, mark)
        msg = await self.append(r.handle, role, content, idem_key=key, meta=meta, **fields)
        self.emit(session_id, "message", {"turn_id": r.turn_id, "message": message_view(msg)})
        return msg

    async def _run_turn(self, sid: str, r: _Running, queue: asyncio.Queue[Any]) -> None:
        stop = _Stop("error", "the turn ended unexpectedly")
        parts = r.parts
        tid = r.turn_id
        try:
            while True:
                r.busy = False
                event = await queue.get()
                r.busy = True
                if isinstance(event, _Stop):
                    stop = event
                    break
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                    self.emit(sid, "message.delta", {"turn_id": tid, "text": event.text})
                elif isinstance(event, ToolCalls):
                    content = "".join(parts) or None
                    parts.clear()
                    calls = [c.to_openai() for c in event.calls]
                    await self._store(sid, r, "assistant", content, tool_calls=calls)
                    for c in event.calls:
                        self.emit(
                            sid,
                            "tool.call",
                            {
                                "turn_id": tid,
                                "call_id": c.id,
                                "name": c.name,
                                "arguments": c.arguments,
                            },
                        )
                elif isinstance(event, ToolResult):
                    await self._store(
                        sid,
                        r,
                        "tool",
                        event.content,
                        tool_call_id=event.call_id,
                        tool_name=event.name,
                    )
                    self.emit(
                        sid,
                        "tool.result",
                        {
                            "turn_id": tid,
                            "call_id": event.call_id,
                            "name": event.name,
                            "content": event.content,
                        },
                    )
            if stop.status == "completed":
                if parts:
                    await self._store(sid, r, "assistant", "".join(parts))
            else:
                # What the turn had, marked with how it ended (see messages.py).
                await self._store(sid, r, "assistant", "".join(parts), mark=stop.status)
        except (SessionEndedError, StaleOwnerError) as exc:
            # Ended or taken over elsewhere meanwhile (session.ended says so): not a fault here.
            log.info("session %s: turn %s stopped: %s", sid, tid, exc)
            stop = _Stop("interrupted")
        except TetherError as exc:
            log.error("session %s: turn %s could not store its output: %s", sid, tid, exc)
            stop = _Stop("error", f"the turn's output could not be stored: {exc}")
        except Exception as exc:
            log.exception("session %s: turn %s failed", sid, tid)
            stop = _Stop("error", one_line(exc))
        finally:
            if r.pump is not None and not r.pump.done():
                r.pump.cancel()
            if r.pump is not None:
                await asyncio.gather(r.pump, return_exceptions=True)
            self.turns.pop(sid, None)
            self._record(sid, "turn_ended", {"turn_id": tid, "status": stop.status})
            self.run(self.registry.end_turn(sid, tid, stop.status, stop.error))
            if r.handle.ended and sid in self.registry:
                # Ended or taken over elsewhere while the turn ran: forget it here.
                self.run(self.registry.close(sid, "ended_elsewhere"))

    # --- numbers for gateway.info and the tests ------------------------------------------

    def stats(self) -> dict[str, float]:
        replay_events, replay_bytes = self.registry.replay_totals()
        return {
            "replay_events": replay_events,
            "replay_bytes": replay_bytes,
            "live_sessions": len(self.registry),
            "connections": len(self.conns),
            "running_turns": len(self.turns),
            "handles": len(self.handles),
            "finalizing": len(self.finalizing),
            "ending_retries": self.registry.ending,
            "pending_writes": len(self._pending),
            "timers": self.registry.pending_timers,
            "loop_lag_max_ms": round(self.loop_lag_max * 1000, 2),
            "loop_lag_recent_ms": round(max(self._recent_lags, default=0.0) * 1000, 2),
            # Group commit (see .writer): transactions that held several writes, the
            # writes they held, and groups given up and run one by one.
            "write_groups": self._writer.groups,
            "grouped_writes": self._writer.grouped,
            "group_fallbacks": self._writer.fallbacks,
        }
