"""The ``openai`` agent: any OpenAI-compatible chat-completions endpoint, streaming.

Options (or environment): ``base_url`` (``OPENAI_BASE_URL``), ``model``
(``TETHER_OPENAI_MODEL``, else ``OPENAI_MODEL``, else ``gpt-4o-mini``),
``api_key`` (``OPENAI_API_KEY``), ``system`` (a system prompt),
``timeout`` (seconds). It sends the whole stored transcript each turn and
streams the reply as text deltas; it defines no tools.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

from ..model import Message
from .base import AgentError, AgentEvent, TextDelta, Turn

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

DEFAULT_MODEL = "gpt-4o-mini"


def to_openai(m: Message) -> dict[str, Any]:
    """A stored message in chat-completions form."""
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = m.tool_calls
    if m.role == "tool":
        out["tool_call_id"] = m.tool_call_id
    return out


class OpenAIAgent:
    name = "openai"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        system: str | None = None,
        timeout: float = 600.0,
    ) -> None:
        try:
            import openai
        except ImportError:
            raise AgentError(
                "the openai agent needs the openai package: pip install 'tether[openai]'"
            ) from None
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            if not base_url:
                raise AgentError(
                    "the openai agent needs OPENAI_API_KEY, or base_url=... for a local endpoint"
                )
            api_key = "unused"  # local servers usually ignore it; the client insists on one
        self.model = (
            model
            or os.environ.get("TETHER_OPENAI_MODEL")
            or os.environ.get("OPENAI_MODEL")
            or DEFAULT_MODEL
        )
        self.system = system
        self._errors = (openai.OpenAIError,)
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, timeout=timeout, max_retries=1
        )

    async def run(self, turn: Turn) -> AsyncIterator[AgentEvent]:
        # An empty assistant message marks a turn that failed or was interrupted
        # before saying anything: nothing for the model to read.
        messages = [
            to_openai(m)
            for m in await turn.history()
            if m.content or m.tool_calls or m.role != "assistant"
        ]
        if self.system:
            messages.insert(0, {"role": "system", "content": self.system})
        try:
            # to_openai builds each message in its role's chat-completions shape; a
            # dict built key by key cannot be matched to the SDK's TypedDicts.
            stream = await self._client.chat.completions.create(
                model=self.model,
                messages=cast("list[ChatCompletionMessageParam]", messages),
                stream=True,
            )
            async with stream:
                async for chunk in stream:
                    for choice in chunk.choices:
                        text = choice.delta.content if choice.delta else None
                        if text:
                            yield TextDelta(text)
        except self._errors as exc:
            raise AgentError(f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc
