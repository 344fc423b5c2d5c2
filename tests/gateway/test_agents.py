"""The built-in agents: echo (deterministic) and openai (against a local fake endpoint)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tether.agents import AgentError, TextDelta, ToolCalls, ToolResult, Turn, make_agent
from tether.model import Message

from .conftest import next_event, run, serve
from .fake_openai import FakeOpenAI


def turn(text: str, history: list[Message] | None = None) -> Turn:
    async def load() -> list[Message]:
        return history or [Message("s", 1, "user", text, None, None, None, 0.0)]

    return Turn("s", "01TURN00000000000000000000", text, load)


async def collect(agent: Any, t: Turn) -> list[Any]:
    return [e async for e in agent.run(t)]


def test_echo_is_deterministic_and_can_call_a_tool() -> None:
    agent = make_agent("echo", {"delay": "0"})
    events = run(collect(agent, turn("hello  big world")))
    assert events == [
        TextDelta("echo:"),
        TextDelta(" hello"),
        TextDelta("  big"),
        TextDelta(" world"),
    ]
    tool = make_agent("echo", {"delay": "0", "tool": "yes"})
    events = run(collect(tool, turn("a b")))
    assert isinstance(events[0], ToolCalls) and events[0].calls[0].name == "word_count"
    assert events[1] == ToolResult(events[0].calls[0].id, "word_count", "2")
    assert "".join(e.text for e in events[2:]) == "echo: a b (2 words)"


def test_make_agent_errors_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, options, match in [
        ("nope", {}, "unknown agent 'nope'"),
        ("echo", {"colour": "red"}, "has no option 'colour'"),
        ("echo", {"delay": "soon"}, "agent 'echo'"),
        ("echo", {"delay": "-1"}, "must not be negative"),
    ]:
        with pytest.raises(AgentError, match=match):
            make_agent(name, options)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(AgentError, match="needs OPENAI_API_KEY"):
        make_agent("openai")


def test_openai_agent_streams_from_a_compatible_endpoint() -> None:
    history = [
        Message("s", 1, "user", "first", None, None, None, 0.0),
        Message("s", 2, "assistant", "ok", None, None, None, 0.0),
        Message("s", 3, "user", "second one", None, None, None, 0.0),
    ]
    with FakeOpenAI() as fake:
        agent = make_agent(
            "openai",
            {"base_url": fake.base_url, "model": "fake-1", "api_key": "k", "system": "be brief"},
        )
        events = run(collect(agent, turn("second one", history)))
    assert all(isinstance(e, TextDelta) for e in events) and len(events) == 4
    assert "".join(e.text for e in events) == "you said: second one"
    [req] = fake.requests
    assert req["auth"] == "Bearer k" and req["body"]["model"] == "fake-1"
    assert req["body"]["stream"] is True
    assert req["body"]["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second one"},
    ]


def test_openai_agent_error_is_one_line() -> None:
    with FakeOpenAI(fail_with=404) as fake:
        agent = make_agent("openai", {"base_url": fake.base_url, "model": "gone"})
        with pytest.raises(AgentError) as err:
            run(collect(agent, turn("hi")))
    assert "\n" not in str(err.value) and "NotFoundError" in str(err.value)


@pytest.mark.slow
def test_gateway_with_the_openai_agent(tmp_path: Path) -> None:
    with (
        FakeOpenAI() as fake,
        serve(
            tmp_path, "--agent", "openai", "-o", f"base_url={fake.base_url}", "-o", "model=fake-1"
        ) as served,
    ):

        async def go() -> None:
            c = await served.client()
            sid = (await c.call("session.create"))["session_id"]
            for text in ("hello", "again"):
                await c.call("prompt.submit", session_id=sid, text=text)
                assert (await next_event(c, "turn.end"))["status"] == "completed"
            history = (await c.call("session.history", session_id=sid))["messages"]
            assert [m["content"] for m in history] == [
                "hello",
                "you said: hello",
                "again",
                "you said: again",
            ]
            info = await c.call("gateway.info")
            assert info["agent"] == "openai" and info["model"] == "fake-1"
            # A continuation carries the conversation on: the model reads the chain.
            await c.call("session.close", session_id=sid)
            child = (await c.call("session.create", parent_id=sid))["session_id"]
            await c.call("prompt.submit", session_id=child, text="third")
            assert (await next_event(c, "turn.end", child))["status"] == "completed"

        run(go())
        # The second request carried the whole stored transcript.
        assert [m["content"] for m in fake.requests[1]["body"]["messages"]] == [
            "hello",
            "you said: hello",
            "again",
        ]


@pytest.mark.slow
def test_failing_agent_ends_the_turn_with_an_error_not_a_traceback(tmp_path: Path) -> None:
    with (
        FakeOpenAI(fail_with=500) as fake,
        serve(tmp_path, "--agent", "openai", "-o", f"base_url={fake.base_url}") as served,
    ):

        async def go() -> None:
            c = await served.client()
            sid = (await c.call("session.create"))["session_id"]
            await c.call("prompt.submit", session_id=sid, text="hi")
            end = await next_event(c, "turn.end", timeout=30)
            assert end["status"] == "error" and "InternalServerError" in end["error"]
            assert "Traceback" not in end["error"]
            await c.call("prompt.submit", session_id=sid, text="still usable")
            await asyncio.wait_for(next_event(c, "turn.end", timeout=30), 30)

        run(go())


def test_openai_request_answers_calls_left_unanswered_in_the_middle(tmp_path: Path) -> None:
    """What the model endpoint receives (issue 14): a conversation killed mid tool,
    then prompted again, is continued; every tool call in the request body is
    followed by its result, the missing one synthetic, before the next message."""
    import tether

    db = str(tmp_path / "killed.db")
    calls = [
        {"id": f"call_{x}", "type": "function", "function": {"name": x, "arguments": "{}"}}
        for x in ("a", "b")
    ]
    with tether.open_store(db, load_plugins=False) as store:
        h = store.session(source="cli")
        h.append("user", "list and show")
        h.append("assistant", None, tool_calls=calls)
        h.append("tool", "a.txt", tool_call_id="call_a", tool_name="a")
        h.append("user", "still there?")
        h.append("assistant", "yes")
        h.end("reaped")
        parent = h.id
    with (
        FakeOpenAI() as fake,
        serve(tmp_path, "--agent", "openai", "-o", f"base_url={fake.base_url}", db=db) as served,
    ):

        async def go() -> None:
            c = await served.client()
            child = (await c.call("session.create", parent_id=parent))["session_id"]
            await c.call("prompt.submit", session_id=child, text="go on")
            assert (await next_event(c, "turn.end", child))["status"] == "completed"

        run(go())
    [request] = fake.requests
    sent = request["body"]["messages"]
    assert [(m["role"], m.get("tool_call_id")) for m in sent] == [
        ("user", None),
        ("assistant", None),
        ("tool", "call_a"),
        ("tool", "call_b"),
        ("user", None),
        ("assistant", None),
        ("user", None),
    ]
    assert sent[3]["content"].startswith("no result: ")
    with tether.open_store(db, load_plugins=False) as store:
        assert store.get_session(parent).message_count == 5  # nothing stored for it
