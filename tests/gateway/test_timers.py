"""A storm of expiries never holds the event loop: it is finalized a batch per turn.

300 clients drop together; their sessions expire at the same moment. Each
finalization costs the loop some tens of microseconds (the end is handed to
the writer thread): all at once, a storm of thousands held it for 65 ms in
one step. The timer task now takes them TICK_BATCH at a time, letting
everything else run between batches, and every session still ends once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import tether
from tether.agents.echo import EchoAgent
from tether.compose import Store
from tether.gateway.registry import Finalize
from tether.gateway.runtime import TICK_BATCH, Gateway, GatewayConfig

from .inproc import Peer, until

STORM = 300


def test_a_storm_of_expiries_is_finalized_a_batch_per_loop_turn(sqlite_store: Store) -> None:
    store = sqlite_store

    async def scenario() -> tuple[list[int], int]:
        clock = tether.ManualClock()  # every session expires at the same moment
        gw = Gateway(
            store,
            EchoAgent(delay=0),
            GatewayConfig(
                detach_grace=10.0, max_live_sessions=None, max_sessions_per_connection=None
            ),
            clock=clock,
        )
        await gw.start()
        try:
            peers = [Peer(gw) for _ in range(STORM)]
            for p in peers:  # a message each: a real row to end
                sid = (await p.call("session.create"))["session_id"]
                await p.call("prompt.submit", session_id=sid, text="hello")
                await p.event("turn.end")
            for p in peers:
                await p.drop()
            batches: list[int] = []
            carry_out = gw.run

            def run(actions: Iterable[Any]) -> None:
                actions = list(actions)
                n = sum(isinstance(a, Finalize) for a in actions)
                if n:
                    batches.append(n)
                carry_out(actions)

            gw.run = run  # type: ignore[method-assign]
            clock.advance(10.0)
            gw._wake.set()  # the timer task sleeps on the real clock: tell it
            await until(lambda: gw.registry.ending == 0 and len(gw.registry) == 0)
        finally:
            await gw.shutdown()
        return batches, store.census().open

    batches, still_open = asyncio.run(scenario())
    assert sum(batches) == STORM
    assert max(batches) <= TICK_BATCH < STORM
    assert still_open == 0
