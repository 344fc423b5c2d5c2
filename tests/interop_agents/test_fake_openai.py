"""End to end: the SDK's own OpenAI chat-completions model, a real ``AsyncOpenAI``
client, tether's local fake endpoint (tests/gateway/fake_openai.py), and TetherSession.

``Runner.run`` asks for a plain JSON completion (no streaming), as real servers
answer; ``Runner.run_streamed`` asks for SSE. The second turn's request carries
the first turn's history, read back from tether.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agents import Agent, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
from openai import AsyncOpenAI

import tether
from tether.interop.openai_agents import SOURCE, TetherSession

from ..gateway.fake_openai import FakeOpenAI


def test_runner_through_a_real_openai_client_on_the_fake_endpoint(db_url: str) -> None:
    set_tracing_disabled(True)  # nothing leaves the machine

    async def main(fake: FakeOpenAI) -> None:
        client = AsyncOpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)
        model = OpenAIChatCompletionsModel(model="fake-model", openai_client=client)
        agent = Agent(name="echo", model=model)
        with tether.open_store(db_url, load_plugins=False) as store:
            session = TetherSession("e2e", store)
            first = await Runner.run(agent, "hello there", session=session)
            assert first.final_output == "you said: hello there"
            streamed = Runner.run_streamed(agent, "and again", session=session)
            async for _ in streamed.stream_events():
                pass
            assert streamed.final_output == "you said: and again"
            await client.close()

            assert [r["body"].get("stream", False) for r in fake.requests] == [False, True]
            assert fake.requests[0]["auth"] == "Bearer sk-test"
            sent: list[dict[str, Any]] = fake.requests[1]["body"]["messages"]
            assert [(m["role"], m["content"]) for m in sent if m["role"] != "system"] == [
                ("user", "hello there"),
                ("assistant", "you said: hello there"),
                ("user", "and again"),
            ]
            items = await session.get_items()
            assert [i.get("role") for i in items] == ["user", "assistant", "user", "assistant"]
            [listed] = store.list_sessions(source=SOURCE).items
            shown = [(m.role, m.content) for m in store.get_messages(listed.session.id)]
            assert shown == [
                ("user", "hello there"),
                ("assistant", "you said: hello there"),
                ("user", "and again"),
                ("assistant", "you said: and again"),
            ]

    with FakeOpenAI() as fake:
        asyncio.run(main(fake))
