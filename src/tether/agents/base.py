"""The agent protocol: one turn in, a stream of events out.

An agent is stateless between turns: the transcript lives in the store, and
each turn gets the session's messages (the new prompt included) on demand.
The gateway persists what the agent yields, as it yields it, so an agent never
writes to the store itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..model import Message


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the assistant's reply, streamed as it is produced."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as chat-completions APIs carry it

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True, slots=True)
class ToolCalls:
    """The assistant asks for these tools (one assistant message, with any text so far)."""

    calls: tuple[ToolCall, ...]


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A tool's output (one ``tool`` message)."""

    call_id: str
    name: str
    content: str


AgentEvent = TextDelta | ToolCalls | ToolResult


@dataclass(frozen=True, slots=True)
class Turn:
    """What an agent gets for one turn."""

    session_id: str
    turn_id: str
    text: str
    # Every message so far (of the whole chain, for a continued session), the prompt last.
    history: Callable[[], Awaitable[list[Message]]]


class AgentError(Exception):
    """A foreseeable failure of a turn (bad endpoint, refused key); one line for the client."""


class Agent(Protocol):
    """Runs one turn and yields its events; cancelling the iteration interrupts the turn."""

    name: str

    @property
    def model(self) -> str | None:
        """The model it runs, if it names one (read-only: an agent may narrow it to str)."""
        ...

    def run(self, turn: Turn) -> AsyncIterator[AgentEvent]: ...
