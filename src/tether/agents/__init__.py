"""Agents: the turn runners the gateway drives (``echo`` and ``openai`` built in)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .base import (
    Agent,
    AgentError,
    AgentEvent,
    TextDelta,
    ToolCall,
    ToolCalls,
    ToolResult,
    Turn,
)

__all__ = [
    "AGENTS",
    "Agent",
    "AgentError",
    "AgentEvent",
    "TextDelta",
    "ToolCall",
    "ToolCalls",
    "ToolResult",
    "Turn",
    "make_agent",
]


def _echo(options: Mapping[str, str]) -> Agent:
    from .echo import EchoAgent

    kwargs: dict[str, Any] = {}
    if "delay" in options:
        kwargs["delay"] = float(options["delay"])
    if "tool" in options:
        kwargs["tool"] = options["tool"].lower() in ("1", "true", "yes", "on")
    return EchoAgent(**kwargs)


def _openai(options: Mapping[str, str]) -> Agent:
    from .openai_compat import OpenAIAgent

    kwargs: dict[str, Any] = {
        k: options[k] for k in ("base_url", "model", "api_key", "system") if k in options
    }
    if "timeout" in options:
        kwargs["timeout"] = float(options["timeout"])
    return OpenAIAgent(**kwargs)


AGENTS: dict[str, tuple[Callable[[Mapping[str, str]], Agent], frozenset[str]]] = {
    "echo": (_echo, frozenset({"delay", "tool"})),
    "openai": (_openai, frozenset({"base_url", "model", "api_key", "system", "timeout"})),
}


def make_agent(name: str, options: Mapping[str, str] | None = None) -> Agent:
    """Build a built-in agent by name; :class:`AgentError` with one line if that fails."""
    options = dict(options or {})
    try:
        factory, known = AGENTS[name]
    except KeyError:
        raise AgentError(f"unknown agent {name!r}: choose one of {', '.join(AGENTS)}") from None
    unknown = sorted(set(options) - known)
    if unknown:
        raise AgentError(
            f"agent {name!r} has no option {unknown[0]!r} (options: {', '.join(sorted(known))})"
        )
    try:
        return factory(options)
    except ValueError as exc:
        raise AgentError(f"agent {name!r}: {exc}") from None
