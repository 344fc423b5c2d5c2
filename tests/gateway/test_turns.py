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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
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


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = tether.open_store(str(tmp_path / "t.db"), kind="gateway", load_plugins=False)
    try:
        yield s
    finally:
        s.close()


def test_the_agent_takes_its_first_step_in_the_first_loop_turn_after_the_start(
    store: Store,
) -> None:
    async def scenario() -> list[bool]:
        agent = Recording()
        gw = Gateway(store, agent, GatewayConfig())
        await gw.start()
        seen: list[bool] = []
        start_turn = gw.start_turn

        def start_and_look(session_id: str, running: Any, text: str) -> None:
            start_turn(session_id, running, text)
            # Runs after every step the start scheduled for the next loop turn.
            asyncio.get_running_loop().call_soon(lambda: seen.append(bool(agent.began)))

        gw.start_turn = start_and_look  # type: ignore[method-assign]
        try:
            peer = Peer(gw)
            sid = (await peer.call("session.create"))["session_id"]
            await peer.call("prompt.submit", session_id=sid, text="hello there")
            end = await peer.event("turn.end")
            assert end["status"] == "completed"
        finally:
            await gw.shutdown()
        return seen

    assert asyncio.run(scenario()) == [True]


def test_a_turn_interrupted_before_its_agent_ran_still_stops_it(store: Store) -> None:
    async def scenario() -> tuple[str, list[str]]:
        agent = Recording()
        gw = Gateway(store, agent, GatewayConfig())
        await gw.start()
        start_turn = gw.start_turn

        def start_then_interrupt(session_id: str, running: Any, text: str) -> None:
            start_turn(session_id, running, text)
            running.interrupt()  # before either task took a step

        gw.start_turn = start_then_interrupt  # type: ignore[method-assign]
        try:
            peer = Peer(gw)
            sid = (await peer.call("session.create"))["session_id"]
            await peer.call("prompt.submit", session_id=sid, text="one two three")
            end = await peer.event("turn.end")
            deltas = [p["text"] for m, p in peer.events if m == "message.delta"]
        finally:
            await gw.shutdown()
        return end["status"], deltas

    assert asyncio.run(scenario()) == ("interrupted", [])


def test_an_interrupt_one_loop_turn_after_the_start_ends_the_turn(store: Store) -> None:
    """The interrupt lands after the runner's first step, before the agent's first:
    the turn still ends (it used to wait forever for an agent that never ran)."""

    async def scenario() -> tuple[str, list[str]]:
        gw = Gateway(store, Recording(), GatewayConfig())
        await gw.start()
        start_turn = gw.start_turn

        def start_then_interrupt_soon(session_id: str, running: Any, text: str) -> None:
            start_turn(session_id, running, text)
            asyncio.get_running_loop().call_soon(running.interrupt)

        gw.start_turn = start_then_interrupt_soon  # type: ignore[method-assign]
        try:
            peer = Peer(gw)
            sid = (await peer.call("session.create"))["session_id"]
            await peer.call("prompt.submit", session_id=sid, text="one two three")
            end = await peer.event("turn.end", timeout=5)
            deltas = [p["text"] for m, p in peer.events if m == "message.delta"]
        finally:
            await gw.shutdown()
        return end["status"], deltas

    # The echo agent yields to the loop before its first token: none went out.
    assert asyncio.run(scenario()) == ("interrupted", [])
