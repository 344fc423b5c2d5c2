"""The echo agent: deterministic replies for demos, tests and benchmarks.

It answers ``echo: <prompt>``, one word per token, waiting ``delay`` seconds
before each. With ``tool=true`` (or a prompt starting with ``/tool``) it
first calls a simulated ``word_count`` tool, so tool messages are exercised,
and adds the count to its reply.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

from .base import AgentEvent, TextDelta, ToolCall, ToolCalls, ToolResult, Turn

_TOKEN = re.compile(r"\s*\S+")


class EchoAgent:
    name = "echo"

    def __init__(self, *, delay: float = 0.02, tool: bool = False) -> None:
        if delay < 0:
            raise ValueError("delay must not be negative")
        self.delay = delay
        self.tool = tool
        self.model: str | None = "echo"

    async def run(self, turn: Turn) -> AsyncIterator[AgentEvent]:
        text = turn.text
        reply = f"echo: {text}"
        if self.tool or text.startswith("/tool"):
            call = ToolCall(
                id=f"call_{turn.turn_id[-8:]}",
                name="word_count",
                arguments=json.dumps({"text": text}),
            )
            yield ToolCalls((call,))
            await self._pause()
            words = len(text.split())
            yield ToolResult(call.id, call.name, str(words))
            reply = f"{reply} ({words} words)"
        for token in _TOKEN.findall(reply):
            await self._pause()
            yield TextDelta(token)

    async def _pause(self) -> None:
        # Even without delay, yield to the loop so a long reply cannot hog it.
        await asyncio.sleep(self.delay)
