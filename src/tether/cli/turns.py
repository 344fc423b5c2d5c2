"""The chat's view of the current turn, as an explicit state machine (no I/O, no asyncio).

A turn is seen from two directions that race: the reply to our own
``prompt.submit`` and the session's events (``turn.start`` ... ``turn.end``).
A short turn can run whole, through ``turn.end``, before the reply to
``prompt.submit`` is handled; the tracker remembers which turns ended, so a
late reply never re-arms a finished turn (that was a hang).

::

    IDLE --submitting()--> SUBMITTING --started(t)/submitted(t)--> RUNNING(t)
    RUNNING(t) --ended(t)--> IDLE          SUBMITTING --failed()--> IDLE
    submitted(t) for a t that already ended: stays IDLE
    submitting() while SUBMITTING: InvalidTurnState (the chat sends one prompt at a time)

Replies and events come from the network in any order, so every other input
is accepted in every state (a stale one changes nothing); each change of
state is logged (``tether.chat`` at DEBUG).
"""

from __future__ import annotations

import enum
import logging
from collections import deque

log = logging.getLogger("tether.chat")

_REMEMBERED = 64  # ended turn ids kept: far more than can race one reply


class TurnState(enum.Enum):
    """Where the chat is with respect to the session's turn."""

    IDLE = "idle"  # no turn: the user may type
    SUBMITTING = "submitting"  # prompt.submit sent, its turn not seen yet
    RUNNING = "running"  # a turn runs (ours, or another client's)


class InvalidTurnState(Exception):
    """The chat asked the tracker for something its state forbids: a bug in the chat."""


class TurnTracker:
    """Which turn runs, fed by replies and events in whatever order they come."""

    def __init__(self) -> None:
        self._state = TurnState.IDLE
        self.turn_id: str | None = None
        # The turn that started since the last submitting(): proof that a prompt
        # whose reply was lost to a dropped connection got through.
        self.began: str | None = None
        self._ended: deque[str] = deque(maxlen=_REMEMBERED)

    @property
    def state(self) -> TurnState:
        return self._state

    def _set(self, state: TurnState, turn_id: str | None) -> None:
        if (state, turn_id) != (self._state, self.turn_id):
            log.debug("turn %s -> %s (%s)", self._state.value, state.value, turn_id)
        self._state, self.turn_id = state, turn_id

    @property
    def done(self) -> bool:
        """True when no turn is pending or running."""
        return self._state is TurnState.IDLE

    def submitting(self) -> None:
        """A prompt is about to be sent (never while our previous one is unanswered).

        Another client's running turn does not forbid it: the gateway answers
        ``busy`` and :meth:`failed` follows.
        """
        if self._state is TurnState.SUBMITTING:
            raise InvalidTurnState("a prompt is already being submitted")
        self.began = None
        self._set(TurnState.SUBMITTING, None)

    def submitted(self, turn_id: str | None) -> None:
        """The reply to ``prompt.submit`` was handled."""
        if turn_id is None or turn_id in self._ended:
            if self._state is TurnState.SUBMITTING:
                self._set(TurnState.IDLE, None)
            return  # the whole turn ran before its reply: nothing to wait for
        self.began = turn_id
        self._set(TurnState.RUNNING, turn_id)

    def failed(self) -> None:
        """``prompt.submit`` was refused: no turn will come."""
        if self._state is TurnState.SUBMITTING:
            self._set(TurnState.IDLE, None)

    def started(self, turn_id: str) -> None:
        """``turn.start`` (or a resume that found a turn running)."""
        if turn_id in self._ended:
            return
        self.began = turn_id
        self._set(TurnState.RUNNING, turn_id)

    def ended(self, turn_id: str | None) -> None:
        """``turn.end``."""
        if turn_id is not None:
            self._ended.append(turn_id)
        if self._state is TurnState.RUNNING and turn_id in (None, self.turn_id):
            self._set(TurnState.IDLE, None)

    def reset(self) -> None:
        """Forget the running turn (the session ended, or a reload found it idle)."""
        if self.turn_id is not None:
            self._ended.append(self.turn_id)
        self._set(TurnState.IDLE, None)
