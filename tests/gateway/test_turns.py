"""A turn's start: the agent runs as soon as the turn starts, and an interrupt at any
moment of the start ends the turn.

The prompt's path to its first token crosses every turn of the event loop
in between, each behind whatever else is ready (issue 15: on a busy gateway
one turn of the loop is a few hundred microseconds). The runner and the
agent are started together, so the agent's first step comes in the first
turn after the turn's start. An agent cancelled before its first step never
runs its own handler: the runner is told all the same (before, an interrupt
landing between the runner's first step and the agent's left the turn
running for ever).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from tether.agents.base import AgentEvent, Turn
from tether.agents.echo import EchoAgent
from tether.compose import Store
from tether.gateway.runtime import Gateway, GatewayConfig

from .inproc import Peer


class Recording(EchoAgent):
    """The echo agent, noting when each run takes its first step."""

    def __init__(self) -> None:
        super().__init__(delay=0)
        self.began: list[str] = []

    async def run(self, turn: Turn) -> AsyncIterator[AgentEvent]:
        self.began.append(turn.turn_id)
        async for event in super().run(turn):
            yield event


async def one_turn(
    store: Store, agent: Recording, after_start: Callable[[Any], None]
) -> tuple[str, list[str]]:
    """One prompt through a gateway whose turn start is followed by ``after_start(running)``:
    the turn's end status and the deltas streamed."""
    gw = Gateway(store, agent, GatewayConfig())
    await gw.start()
    start_turn = gw.start_turn

    def start(session_id: str, running: Any, text: str) -> None:
        start_turn(session_id, running, text)
        after_start(running)

    gw.start_turn = start  # type: ignore[method-assign]
    try:
        peer = Peer(gw)
        sid = (await peer.call("session.create"))["session_id"]
        await peer.call("prompt.submit", session_id=sid, text="one two three")
        end = await peer.event("turn.end", timeout=5)
    finally:
        await gw.shutdown()
    return end["status"], [p["text"] for m, p in peer.events if m == "message.delta"]


def test_the_agent_takes_its_first_step_in_the_first_loop_turn_after_the_start(
    sqlite_store: Store,
) -> None:
    agent = Recording()
    seen: list[bool] = []

    def look_next_turn(running: Any) -> None:
        # Runs after every step the start scheduled for the next loop turn.
        asyncio.get_running_loop().call_soon(lambda: seen.append(bool(agent.began)))

    status, _ = asyncio.run(one_turn(sqlite_store, agent, look_next_turn))
    assert status == "completed"
    assert seen == [True]


def test_a_turn_interrupted_before_its_agent_ran_still_stops_it(sqlite_store: Store) -> None:
    # Interrupted before either task took a step.
    outcome = asyncio.run(one_turn(sqlite_store, Recording(), lambda running: running.interrupt()))
    assert outcome == ("interrupted", [])


def test_an_interrupt_one_loop_turn_after_the_start_ends_the_turn(sqlite_store: Store) -> None:
    """The interrupt lands after the runner's first step, before the agent's first:
    the turn still ends (it used to wait forever for an agent that never ran)."""

    def interrupt_soon(running: Any) -> None:
        asyncio.get_running_loop().call_soon(running.interrupt)

    # The echo agent yields to the loop before its first token: none went out.
    assert asyncio.run(one_turn(sqlite_store, Recording(), interrupt_soon)) == ("interrupted", [])
