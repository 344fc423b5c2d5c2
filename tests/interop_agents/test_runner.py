"""A real Runner (run, run_sync, run_streamed) with a tool, on TetherSession, offline.

``agents.testing.ScriptedModel`` scripts the model's answers; the session
supplies the history the second turn sees, read back from tether.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, Runner, function_tool
from agents.testing import ScriptedModel, assistant_message, function_call

import tether
from tether.interop.openai_agents import SOURCE, TetherSession

ROOT = Path(__file__).resolve().parents[2]


@function_tool
def word_count(text: str) -> str:
    """Count the words of a text."""
    return str(len(text.split()))


def scripted() -> ScriptedModel:
    return ScriptedModel(
        [
            [function_call("word_count", {"text": "a b c"}, call_id="c1")],
            [assistant_message("three words")],
            [assistant_message("you asked about a b c")],
        ]
    )


async def run(method: str, agent: Agent[Any], text: str, session: TetherSession) -> Any:
    if method == "run":
        return await Runner.run(agent, text, session=session)
    if method == "run_sync":
        # run_sync needs a thread without a running loop.
        return await asyncio.to_thread(Runner.run_sync, agent, text, session=session)
    streamed = Runner.run_streamed(agent, text, session=session)
    async for _ in streamed.stream_events():
        pass
    return streamed


@pytest.mark.parametrize("method", ["run", "run_sync", "run_streamed"])
def test_a_tool_turn_and_a_follow_up_through_the_runner(method: str, db_url: str) -> None:
    async def main() -> None:
        with tether.open_store(db_url, load_plugins=False) as store:
            model = scripted()
            agent = Agent(name="counter", model=model, tools=[word_count])
            session = TetherSession("runner-1", store)
            first = await run(method, agent, "count a b c", session)
            assert first.final_output == "three words"
            items = await session.get_items()
            assert [i.get("type", "message") for i in items] == [
                "message",
                "function_call",
                "function_call_output",
                "message",
            ]
            second = await run(method, agent, "what did I ask?", session)
            assert second.final_output == "you asked about a b c"
            # The second turn's model call saw the whole stored history plus the new input.
            seen = model.calls[-1].input
            assert isinstance(seen, list) and len(seen) == 5
            assert json.loads(json.dumps(seen[:4])) == items
            assert len(await session.get_items()) == 6

            [listed] = store.list_sessions(source=SOURCE).items
            assert listed.chain_message_count == 6
            rows = store.get_messages(listed.session.id)
            assert [m.role for m in rows] == [
                "user",
                "assistant",
                "tool",
                "assistant",
                "user",
                "assistant",
            ]
            assert rows[2].content == "3" and rows[2].tool_call_id == "c1"

    asyncio.run(main())


def test_the_readme_snippet_runs(tmp_path: Path) -> None:
    """README, "OpenAI Agents SDK": the snippet runs as shown (a scripted model for a real one)."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## OpenAI Agents SDK")
    section = readme[start : readme.find("\n## ", start + 1)]
    [snippet] = [b for b in section.split("```python\n")[1:]]
    code = snippet.split("```", 1)[0]
    assert "session=TetherSession(" in code
    # The one substitution: an offline scripted model instead of OpenAI's.
    code = code.replace(
        'Agent(name="assistant", instructions="Be brief.")',
        'Agent(name="assistant", instructions="Be brief.", '
        'model=__import__("agents.testing").testing.ScriptedModel('
        '[[__import__("agents.testing").testing.assistant_message("hi!")]]))',
    )
    assert "ScriptedModel" in code
    import os
    import subprocess
    import sys

    env = dict(os.environ, TETHER_DB=str(tmp_path / "readme.db"))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "hi!"
    with tether.open_store(tmp_path / "readme.db", load_plugins=False) as store:
        [listed] = store.list_sessions(source=SOURCE).items
        assert listed.chain_message_count == 2
