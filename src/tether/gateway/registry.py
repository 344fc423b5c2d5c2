"""The gateway's live-session registry, as a sans-IO state machine.

Like python-websockets' ``protocol.py``, this module does no I/O and never
reads the time by itself: every method takes its input, updates the state and
returns *actions* for a thin asyncio layer (:mod:`tether.gateway.runtime`) to
carry out: deliver a frame to connections, record a detachment in the
database, interrupt a turn, finalize a session. Time comes from an injected
clock, so the whole policy is tested by moving a :class:`~tether.ManualClock`.

The rules it keeps:

* A connection attaches to any number of sessions; a session has any number
  of attached connections. Dropping a connection detaches its sessions.
* Every event of a session gets the next per-session ``seq`` and goes to a
  bounded replay buffer, whoever is attached. Re-attaching with ``since``
  replays every later event exactly once, in order, or says ``reload``.
* A session that is detached and idle (no running turn) for ``detach_grace``
  seconds is finalized (``ws_disconnect``); the grace counts from the later of
  the detachment and the end of the last turn. A running turn is never cut off
  by a timer.
* ``idle_timeout`` finalizes any session idle that long (``idle_timeout``);
  ``max_live`` evicts the least recently active idle session (``lru_evict``).
* One running turn per session.
* An end that could not be recorded (the database briefly unavailable, a
  full disk) is never forgotten: the session stays here as ``finalizing``,
  the I/O layer keeps its handle, and :meth:`tick` asks for the end again
  with exponential backoff until :meth:`end_recorded` says it is stored.
* Caps: at most ``max_per_conn`` sessions per connection and ``max_live``
  live sessions in all (so one client cannot open thousands).

Each live session's :class:`Phase` is explicit and every transition is
logged (``tether.gateway`` at DEBUG), like websockets' connection state.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import secrets
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock
from .replay import ReplayBuffer
from .rpc import notification

ConnId = Hashable

log = logging.getLogger("tether.gateway")


class Phase(enum.Enum):
    """Where a session stands in this gateway (the ``state`` clients see)."""

    ATTACHED = "attached"  # idle, at least one client attached
    DETACHED = "detached"  # idle, no client: the grace counts
    RUNNING = "running"  # a turn runs
    CLOSING = "closing"  # a turn runs and the session ends once it stops
    FINALIZING = "finalizing"  # its end is being recorded (retried until it is)


# --- actions for the I/O layer --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deliver:
    """Send ``frame`` (a JSON-RPC notification) to each connection, in order."""

    conns: tuple[ConnId, ...]
    frame: str


@dataclass(frozen=True, slots=True)
class MarkDetached:
    """Record in the database that no client is attached since ``at`` (None: attached)."""

    session_id: str
    at: float | None


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Stop the running turn; it ends by itself (``end_turn``) once it has stored its output."""

    session_id: str
    turn_id: str


@dataclass(frozen=True, slots=True)
class Finalize:
    """End the session in the store with ``reason`` and release everything it holds.

    The registry has already forgotten it (and told attached clients).
    """

    session_id: str
    reason: str
    interrupted: bool


Action = Deliver | MarkDetached | Interrupt | Finalize


# --- errors ---------------------------------------------------------------------------


class RegistryError(Exception):
    """A request the registry refuses; the message is meant for the client."""


class NotLive(RegistryError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id} is not live in this gateway")
        self.session_id = session_id


class NotAttached(RegistryError):
    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"this connection is not attached to session {session_id}: call session.resume first"
        )


class Busy(RegistryError):
    def __init__(self, session_id: str, turn_id: str) -> None:
        super().__init__(
            f"busy: session {session_id} is running turn {turn_id}; "
            "wait for turn.end or call session.interrupt"
        )
        self.turn_id = turn_id


class Closing(RegistryError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id} is closing")


class TooMany(RegistryError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this connection already holds its maximum of {limit} live sessions; close one first"
        )


class Full(RegistryError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the gateway holds its maximum of {limit} live sessions and every one "
            "is running a turn; try again later"
        )


# --- state ----------------------------------------------------------------------------


class InvalidPhase(Exception):
    """A registry method was called in a phase that forbids it: a bug in the caller."""


_TURN_PHASES = frozenset({Phase.RUNNING, Phase.CLOSING})
_IDLE_PHASES = frozenset({Phase.ATTACHED, Phase.DETACHED})


@dataclass(slots=True)
class LiveSession:
    """One live session. Its :attr:`phase` is the truth; the fields below it hold that phase's data.

    ::

        open --> ATTACHED <--attach/detach--> DETACHED      (idle: the timers count)
        ATTACHED --begin_turn--> RUNNING --end_turn--> ATTACHED or DETACHED
        RUNNING --close--> CLOSING --end_turn--> FINALIZING
        ATTACHED/DETACHED --close/timer/eviction--> FINALIZING

    ``turn_id`` is set exactly in RUNNING and CLOSING; ``end_reason`` (and
    ``end_detail``) exactly in CLOSING; ``since`` is when the phase began, so
    the detach grace of a DETACHED session counts from it (the later of the
    detachment and the end of the last turn).
    """

    id: str
    stream: str
    replay: ReplayBuffer
    last_active: float  # monotonic: creation, attach, prompt, end of a turn
    idle_since: float  # monotonic: creation or the end of the last turn
    conns: set[ConnId] = field(default_factory=set)
    _phase: Phase = Phase.ATTACHED
    since: float = 0.0  # monotonic: when the phase began
    turn_id: str | None = None  # RUNNING, CLOSING: the running turn
    end_reason: str | None = None  # CLOSING: finalize with this reason once the turn ends
    end_detail: str | None = None  # CLOSING: and this detail in session.ended
    deadline: float | None = None  # the timer's key in the registry's heap (None: no timer)
    deadline_reason: str | None = None
    reserved: bool = False  # opened while the store takes it over: never an eviction victim

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def state(self) -> str:
        return self._phase.value

    def enter(
        self,
        phase: Phase,
        at: float,
        *,
        turn_id: str | None = None,
        reason: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Move to ``phase`` (logged), setting exactly the data that phase has."""
        if phase in _TURN_PHASES and turn_id is None:
            raise InvalidPhase(f"session {self.id}: {phase.value} needs a turn")
        if phase is Phase.CLOSING and reason is None:
            raise InvalidPhase(f"session {self.id}: closing needs a reason")
        if phase is not self._phase:
            log.debug("session %s: %s -> %s", self.id, self._phase.value, phase.value)
            self._phase = phase
            self.since = at
        self.turn_id = turn_id if phase in _TURN_PHASES else None
        self.end_reason = reason if phase is Phase.CLOSING else None
        self.end_detail = detail if phase is Phase.CLOSING else None

    def expect(self, *phases: Phase) -> None:
        """Guard: raise :class:`InvalidPhase` unless the session is in one of ``phases``."""
        if self._phase not in phases:
            raise InvalidPhase(f"session {self.id} is {self._phase.value}")

    def settle(self, at: float) -> None:
        """An idle session: ATTACHED if a client is attached, else DETACHED."""
        self.expect(*_IDLE_PHASES)
        self.enter(Phase.ATTACHED if self.conns else Phase.DETACHED, at)


@dataclass(slots=True)
class Ending:
    """A finalized session whose end is not recorded yet (see :meth:`Registry.end_failed`)."""

    id: str
    reason: str
    interrupted: bool
    detail: str | None
    since: float  # monotonic
    attempts: int = 0
    retry_at: float | None = None  # None: an attempt is in flight
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Attached:
    """The outcome of attaching: what to tell the client, and the frames to replay."""

    session_id: str
    stream: str
    last_seq: int
    replay: list[str]
    reload: bool
    state: str
    turn_id: str | None

    def to_result(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "stream": self.stream,
            "last_seq": self.last_seq,
            "replayed": len(self.replay),
            "reload": self.reload,
            "state": self.state,
            "turn_id": self.turn_id,
        }


class Registry:
    """Live sessions and attached connections; pure logic, see the module docstring."""

    def __init__(
        self,
        *,
        clock: Clock = SYSTEM_CLOCK,
        detach_grace: float = 120.0,
        idle_timeout: float | None = None,
        max_live: int | None = None,
        max_per_conn: int | None = None,
        end_retry: float = 0.5,
        end_retry_max: float = 30.0,
        replay_events: int = 2048,
        replay_bytes: int = 512 * 1024,
        stream_prefix: str | None = None,
    ) -> None:
        if detach_grace < 0:
            raise ValueError("detach_grace must not be negative")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if max_live is not None and max_live < 1:
            raise ValueError("max_live must be at least 1")
        if max_per_conn is not None and max_per_conn < 1:
            raise ValueError("max_per_conn must be at least 1")
        if not 0 < end_retry <= end_retry_max:
            raise ValueError("end_retry must be positive and at most end_retry_max")
        self.clock = clock
        self.detach_grace = detach_grace
        self.idle_timeout = idle_timeout
        self.max_live = max_live
        self.max_per_conn = max_per_conn
        self.end_retry = end_retry
        self.end_retry_max = end_retry_max
        self._ending: dict[str, Ending] = {}
        # The ids of _ending waiting for a retry (retry_at set): the timers look
        # at these only, not at every end in flight (a reconnect storm leaves
        # thousands in flight, and the timers run after every one).
        self._retrying: set[str] = set()
        self._replay_events = replay_events
        self._replay_bytes = replay_bytes
        # Streams name one live incarnation of a session: seqs restart after a
        # restart or a cold resume, and a client's old `since` must not match.
        self._stream_prefix = stream_prefix or secrets.token_hex(4)
        self._streams = itertools.count(1)
        self._sessions: dict[str, LiveSession] = {}
        self._conns: dict[ConnId, set[str]] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._tiebreak = itertools.count()
        # Set when a timer may now be due earlier than before: the I/O layer's
        # timer task needs waking only then (not on every streamed token).
        self.timers_changed = False

    # --- reading ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    @property
    def connections(self) -> int:
        return len(self._conns)

    @property
    def pending_timers(self) -> int:
        """Entries in the deadline heap (stale ones included; bounded by compaction)."""
        return len(self._heap)

    def session(self, session_id: str) -> LiveSession:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise NotLive(session_id) from None

    def sessions_of(self, conn: ConnId) -> frozenset[str]:
        return frozenset(self._conns.get(conn, ()))

    def running(self) -> list[tuple[str, str]]:
        """``(session_id, turn_id)`` of every running turn."""
        return [
            (s.id, s.turn_id)
            for s in self._sessions.values()
            if s.phase in _TURN_PHASES and s.turn_id is not None
        ]

    def replay_totals(self) -> tuple[int, int]:
        """Events and bytes held in every live session's replay buffer (for /metrics)."""
        events = size = 0
        for s in self._sessions.values():
            events += len(s.replay)
            size += s.replay.bytes
        return events, size

    def active(self) -> list[dict[str, Any]]:
        """What is live now: attached, running, or detached within the grace window."""
        now = self.clock.monotonic()
        out: list[dict[str, Any]] = []
        for s in self._sessions.values():
            if s.deadline is not None and s.deadline <= now:
                continue  # expired; the next tick finalizes it
            out.append(
                {
                    "session_id": s.id,
                    "state": s.state,
                    "attached": len(s.conns),
                    "turn_id": s.turn_id,
                    "last_seq": s.replay.last_seq,
                    "idle_for": None if s.phase in _TURN_PHASES else round(now - s.idle_since, 3),
                    "detached_for": round(now - s.since, 3) if s.phase is Phase.DETACHED else None,
                    "ends_in": None if s.deadline is None else round(s.deadline - now, 3),
                    "ends_as": s.deadline_reason,
                }
            )
        for e in self._ending.values():
            out.append(
                {
                    "session_id": e.id,
                    "state": Phase.FINALIZING.value,
                    "attached": 0,
                    "turn_id": None,
                    "last_seq": None,
                    "idle_for": None,
                    "detached_for": None,
                    "ends_in": None if e.retry_at is None else round(max(0.0, e.retry_at - now), 3),
                    "ends_as": e.reason,
                    "attempts": e.attempts,
                    "error": e.error,
                }
            )
        out.sort(key=lambda d: d["session_id"])
        return out

    # --- connections -----------------------------------------------------------------

    def connect(self, conn: ConnId) -> None:
        self._conns.setdefault(conn, set())

    def disconnect(self, conn: ConnId) -> list[Action]:
        """The connection is gone: detach it from every session it was attached to."""
        actions: list[Action] = []
        now = self.clock.monotonic()
        for sid in sorted(self._conns.pop(conn, ())):
            s = self._sessions.get(sid)
            if s is None:
                continue
            s.conns.discard(conn)
            if not s.conns:
                actions.append(MarkDetached(sid, self.clock.now()))
                self._left(s, now)
        return actions

    def detach(self, session_id: str, conn: ConnId) -> list[Action]:
        """Detach one connection from one session (it stays live; the grace counts if alone)."""
        s = self.session(session_id)
        if conn not in s.conns:
            return []
        s.conns.discard(conn)
        self._conns.get(conn, set()).discard(session_id)
        actions: list[Action] = []
        if not s.conns:
            actions.append(MarkDetached(session_id, self.clock.now()))
            self._left(s, self.clock.monotonic())
        return actions

    def _left(self, s: LiveSession, now: float) -> None:
        """The last client left: an idle session is DETACHED (a running turn runs on)."""
        if s.phase in _IDLE_PHASES:
            s.settle(now)
            self._schedule(s)

    # --- attaching -------------------------------------------------------------------

    def has_room(self) -> bool:
        """Whether :meth:`open` would succeed now (below the cap, or an idle session to evict)."""
        if self.max_live is None or len(self._sessions) < self.max_live:
            return True
        return any(self._evictable(s) for s in self._sessions.values())

    @staticmethod
    def _evictable(s: LiveSession) -> bool:
        return s.phase in _IDLE_PHASES and not s.reserved

    def open(
        self,
        session_id: str,
        conn: ConnId,
        *,
        since: int | None = None,
        reserve: bool = False,
    ) -> tuple[Attached, list[Action]]:
        """Make a session live (new, or loaded cold from the store) and attach ``conn``.

        Past ``max_live``, the least recently active idle session is evicted
        first; if every session is running a turn, :class:`Full` is raised and
        nothing changes. ``reserve`` holds the place while the store takes the
        session over (it cannot be evicted until :meth:`confirm`).
        """
        if session_id in self._sessions:
            raise ValueError(f"session {session_id} is already live")
        if session_id in self._ending:
            raise Closing(session_id)
        self._require_conn(conn)
        self._check_per_conn(conn)
        actions: list[Action] = []
        if self.max_live is not None and len(self._sessions) >= self.max_live:
            idle = [s for s in self._sessions.values() if self._evictable(s)]
            if not idle:
                raise Full(self.max_live)
            victim = min(idle, key=lambda s: (s.last_active, s.id))
            actions += self._finalize(victim, "lru_evict")
        now = self.clock.monotonic()
        s = LiveSession(
            id=session_id,
            stream=f"{self._stream_prefix}.{next(self._streams)}",
            replay=ReplayBuffer(self._replay_events, self._replay_bytes),
            last_active=now,
            idle_since=now,
            since=now,
            reserved=reserve,
        )
        self._sessions[session_id] = s
        s.conns.add(conn)
        self._conns[conn].add(session_id)
        self._schedule(s)
        # A new stream has no past: a client that saw events of an earlier one must reload.
        reload = since is not None and since > 0
        return Attached(session_id, s.stream, 0, [], reload, s.state, None), actions

    def attach(
        self,
        session_id: str,
        conn: ConnId,
        *,
        since: int | None = None,
        stream: str | None = None,
    ) -> tuple[Attached, list[Action]]:
        """Attach ``conn`` to a live session; with ``since``, replay what came after it.

        The replay is every event with a larger seq, in order, exactly once;
        if the buffer no longer holds all of them, or ``stream`` names another
        incarnation, ``reload`` is set and nothing is replayed. The caller must
        send the replay before anything else reaches this connection.
        """
        s = self.session(session_id)
        self._require_conn(conn)
        if s.phase is Phase.CLOSING:
            raise Closing(session_id)
        if conn not in s.conns:
            self._check_per_conn(conn)
        replay: list[str] = []
        reload = False
        if since is not None:
            frames = None if stream not in (None, s.stream) else s.replay.since(since)
            if frames is None:
                reload = True
            else:
                replay = frames
        actions: list[Action] = []
        if not s.conns:
            actions.append(MarkDetached(session_id, None))
        s.conns.add(conn)
        self._conns[conn].add(session_id)
        s.last_active = now = self.clock.monotonic()
        if s.phase is Phase.DETACHED:
            s.settle(now)
        self._schedule(s)
        attached = Attached(
            session_id, s.stream, s.replay.last_seq, replay, reload, s.state, s.turn_id
        )
        return attached, actions

    def _require_conn(self, conn: ConnId) -> None:
        if conn not in self._conns:
            raise ValueError(f"unknown connection {conn!r}: call connect() first")

    def _check_per_conn(self, conn: ConnId) -> None:
        if self.max_per_conn is not None and len(self._conns[conn]) >= self.max_per_conn:
            raise TooMany(self.max_per_conn)

    def confirm(self, session_id: str) -> None:
        """The takeover of a reserved session succeeded: it is an ordinary live session now."""
        s = self._sessions.get(session_id)
        if s is not None:
            s.reserved = False

    def forget(self, session_id: str) -> None:
        """Drop a live session without ending it (a reservation whose takeover failed)."""
        s = self._sessions.pop(session_id, None)
        if s is None:
            return
        for conn in s.conns:
            self._conns[conn].discard(session_id)
        s.conns.clear()
        s.deadline = None
        self._compact()

    # --- turns -----------------------------------------------------------------------

    def begin_turn(self, session_id: str, conn: ConnId, turn_id: str) -> None:
        """Mark a turn running; :class:`Busy` if one already is."""
        s = self.session(session_id)
        if conn not in s.conns:
            raise NotAttached(session_id)
        if s.phase is Phase.CLOSING:
            raise Closing(session_id)
        if s.phase is Phase.RUNNING and s.turn_id is not None:
            raise Busy(session_id, s.turn_id)
        s.expect(Phase.ATTACHED)  # a client is attached, so never DETACHED
        s.last_active = now = self.clock.monotonic()
        s.enter(Phase.RUNNING, now, turn_id=turn_id)
        self._schedule(s)

    def end_turn(
        self,
        session_id: str,
        turn_id: str,
        status: str,
        error: str | None = None,
        *,
        announce: bool = True,
    ) -> list[Action]:
        """The turn is over (its output is stored); timers start counting again.

        ``announce=False`` for a turn that never started (its prompt could not
        be stored): no ``turn.end`` is sent.
        """
        s = self._sessions.get(session_id)
        if s is None or s.turn_id != turn_id:
            return []  # finalized meanwhile, or not this turn: nothing to end
        s.expect(*_TURN_PHASES)
        actions: list[Action] = []
        if announce:
            params: dict[str, Any] = {"turn_id": turn_id, "status": status}
            if error is not None:
                params["error"] = error
            actions += self.emit(session_id, "turn.end", params)
        s.idle_since = s.last_active = now = self.clock.monotonic()
        if s.phase is Phase.CLOSING:
            assert s.end_reason is not None  # enter() keeps it set in CLOSING
            return actions + self._finalize(
                s, s.end_reason, interrupted=status == "interrupted", detail=s.end_detail
            )
        s.enter(Phase.ATTACHED if s.conns else Phase.DETACHED, now)
        self._schedule(s)
        return actions

    def interrupt(self, session_id: str) -> list[Interrupt]:
        s = self.session(session_id)
        return [] if s.turn_id is None else [Interrupt(session_id, s.turn_id)]

    # --- events ----------------------------------------------------------------------

    def emit(self, session_id: str, method: str, params: dict[str, Any]) -> list[Action]:
        """Number an event, keep it for replay and deliver it to whoever is attached."""
        s = self._sessions.get(session_id)
        if s is None:
            return []
        seq = s.replay.last_seq + 1
        frame = notification(method, {"session_id": session_id, "seq": seq, **params})
        s.replay.add(seq, frame)
        return [Deliver(tuple(s.conns), frame)] if s.conns else []

    # --- ending ----------------------------------------------------------------------

    def close(self, session_id: str, reason: str, detail: str | None = None) -> list[Action]:
        """Finalize now, or, with a running turn, interrupt it and finalize when it ends.

        ``detail`` goes into the ``session.ended`` event (an end recorded elsewhere).
        """
        s = self.session(session_id)
        if s.phase in _TURN_PHASES:
            assert s.turn_id is not None  # enter() keeps it set while a turn runs
            if s.phase is Phase.RUNNING:  # the first reason wins
                s.enter(
                    Phase.CLOSING,
                    self.clock.monotonic(),
                    turn_id=s.turn_id,
                    reason=reason,
                    detail=detail,
                )
            return [Interrupt(session_id, s.turn_id)]
        return self._finalize(s, reason, detail=detail)

    def shutdown(self, reason: str) -> list[Action]:
        """Close every live session (turns are interrupted first)."""
        actions: list[Action] = []
        for sid in sorted(self._sessions):
            actions += self.close(sid, reason)
        return actions

    def _finalize(
        self,
        s: LiveSession,
        reason: str,
        *,
        interrupted: bool = False,
        detail: str | None = None,
    ) -> list[Action]:
        params: dict[str, Any] = {"reason": reason}
        if detail is not None:
            params["detail"] = detail
        actions = self.emit(s.id, "session.ended", params)
        del self._sessions[s.id]
        for conn in s.conns:
            self._conns[conn].discard(s.id)
        s.conns.clear()
        s.deadline = None
        s.enter(Phase.FINALIZING, self.clock.monotonic())
        self._compact()
        self._ending[s.id] = Ending(s.id, reason, interrupted, detail, self.clock.monotonic())
        actions.append(Finalize(s.id, reason, interrupted))
        return actions

    # --- finalizing ------------------------------------------------------------------

    def is_ending(self, session_id: str) -> bool:
        """Whether the session is finalized here but its end is not recorded yet."""
        return session_id in self._ending

    @property
    def ending(self) -> int:
        return len(self._ending)

    def end_recorded(self, session_id: str) -> None:
        """The store has the end (or the session turned out ended): forget it for good."""
        e = self._ending.pop(session_id, None)
        self._retrying.discard(session_id)
        if e is not None and e.attempts:
            log.info(
                "session %s: end %s recorded after %d failed attempts",
                session_id,
                e.reason,
                e.attempts,
            )

    def end_failed(self, session_id: str, error: str) -> float | None:
        """Recording the end failed: retry after a backoff; returns the monotonic retry time."""
        e = self._ending.get(session_id)
        if e is None:
            return None
        e.attempts += 1
        e.error = error
        delay = min(self.end_retry * 2 ** min(e.attempts - 1, 32), self.end_retry_max)
        e.retry_at = self.clock.monotonic() + delay
        self._retrying.add(session_id)
        self.timers_changed = True
        return e.retry_at

    def retry_endings(self) -> list[Action]:
        """Ask now for every end waiting for its retry (at shutdown: no more waiting)."""
        actions: list[Action] = []
        for e in sorted((self._ending[i] for i in self._retrying), key=lambda e: e.id):
            e.retry_at = None
            actions.append(Finalize(e.id, e.reason, e.interrupted))
        self._retrying.clear()
        return actions

    # --- time ------------------------------------------------------------------------

    def _due(self, s: LiveSession) -> tuple[float | None, str | None]:
        if s.phase not in _IDLE_PHASES:
            return None, None  # a running turn is never cut off by a timer
        best: tuple[float | None, str | None] = (None, None)
        if s.phase is Phase.DETACHED:  # entered at the later of the detachment and the turn's end
            best = (s.since + self.detach_grace, "ws_disconnect")
        if self.idle_timeout is not None:
            at = s.last_active + self.idle_timeout
            if best[0] is None or at < best[0]:
                best = (at, "idle_timeout")
        return best

    def _schedule(self, s: LiveSession) -> None:
        at, reason = self._due(s)
        s.deadline_reason = reason
        if at == s.deadline:
            return
        s.deadline = at
        if at is not None:
            heapq.heappush(self._heap, (at, next(self._tiebreak), s.id))
            self.timers_changed = True
            self._compact()

    def _compact(self) -> None:
        # Superseded heap entries are skipped lazily; rebuild if they pile up.
        if len(self._heap) > 2 * len(self._sessions) + 64:
            self._heap = [
                (s.deadline, next(self._tiebreak), s.id)
                for s in self._sessions.values()
                if s.deadline is not None
            ]
            heapq.heapify(self._heap)

    def _live_top(self) -> tuple[float, LiveSession] | None:
        while self._heap:
            at, _, sid = self._heap[0]
            s = self._sessions.get(sid)
            if s is not None and s.deadline == at:
                return at, s
            heapq.heappop(self._heap)
        return None

    def next_deadline(self) -> float | None:
        """The monotonic time at which :meth:`tick` next has work (None: no timer set)."""
        top = self._live_top()
        at = None if top is None else top[0]
        for i in self._retrying:
            retry_at = self._ending[i].retry_at
            if retry_at is not None and (at is None or retry_at < at):
                at = retry_at
        return at

    def tick(self, limit: int | None = None) -> list[Action]:
        """Finalize the sessions whose deadline has passed, and ask again for the ends
        whose retry is due: all of them, or at most ``limit`` sessions and ``limit``
        retries, the earliest first (:meth:`next_deadline` then says the rest are due).

        A caller on an event loop takes them ``limit`` at a time, letting the
        loop run between: a reconnect storm's thousands of expiries at once
        would otherwise hold it for tens of milliseconds.
        """
        now = self.clock.monotonic()
        actions: list[Action] = []
        finalized = 0
        while (limit is None or finalized < limit) and (
            (top := self._live_top()) is not None and top[0] <= now
        ):
            heapq.heappop(self._heap)
            s = top[1]
            actions += self._finalize(s, s.deadline_reason or "ws_disconnect")
            finalized += 1
        if self._retrying:
            due = sorted(
                (
                    e
                    for e in map(self._ending.__getitem__, self._retrying)
                    if e.retry_at is not None and e.retry_at <= now
                ),
                key=lambda e: (e.retry_at, e.id),
            )
            for e in due if limit is None else due[:limit]:
                e.retry_at = None
                self._retrying.discard(e.id)
                actions.append(Finalize(e.id, e.reason, e.interrupted))
        return actions
