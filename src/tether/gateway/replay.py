"""A session's bounded replay buffer: the last events, by count and by bytes.

A client that re-attaches says which event it saw last (``since``); the buffer
either returns every later event, in order, or says it cannot (``None``)
because the oldest of them was dropped to stay within bounds. Never a silent
gap: the caller then tells the client to reload.
"""

from __future__ import annotations

from collections import deque


class ReplayBuffer:
    """Events ``(seq, frame)`` with consecutive seqs; the oldest go first past either bound."""

    __slots__ = ("_events", "_max_bytes", "_max_events", "bytes", "last_seq")

    def __init__(self, max_events: int, max_bytes: int) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError("replay buffer bounds must be positive")
        self._events: deque[tuple[int, str]] = deque()
        self._max_events = max_events
        self._max_bytes = max_bytes
        self.bytes = 0
        self.last_seq = 0  # the seq of the newest event ever added (0: none yet)

    def __len__(self) -> int:
        return len(self._events)

    @property
    def first_seq(self) -> int:
        """The oldest seq still held (``last_seq + 1`` when empty)."""
        return self._events[0][0] if self._events else self.last_seq + 1

    def add(self, seq: int, frame: str) -> None:
        if seq != self.last_seq + 1:
            raise ValueError(f"replay seqs must be consecutive: got {seq} after {self.last_seq}")
        self._events.append((seq, frame))
        self.bytes += len(frame)
        self.last_seq = seq
        while self._events and (
            len(self._events) > self._max_events or self.bytes > self._max_bytes
        ):
            _, old = self._events.popleft()
            self.bytes -= len(old)

    def since(self, seq: int) -> list[str] | None:
        """Frames of every event after ``seq``, oldest first; None if some are gone.

        A ``seq`` beyond the newest event is not from this stream: None too.
        """
        if seq < 0 or seq > self.last_seq:
            return None
        if seq + 1 < self.first_seq:
            return None
        skip = seq + 1 - self.first_seq
        if skip == 0:
            return [frame for _, frame in self._events]
        return [frame for i, (_, frame) in enumerate(self._events) if i >= skip]
