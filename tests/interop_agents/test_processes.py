"""Several processes on one SDK session: cooperating writers, a clean exit, a SIGKILL.

Real child processes on a real store (both backends): a worker killed with
SIGKILL leaves its segment open; the next ``add_items`` (here, in the test's
own process) has the reaper end it ``reaped`` and continues the same chain,
with every item kept exactly once. The Runner tests do the same with whole
agent turns (``ScriptedModel``, a tool call), the second turn seeing the
first one's history.
"""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import pytest
from agents import Agent, Runner, function_tool
from agents.testing import ScriptedModel, assistant_message

import tether
from tether.interop.openai_agents import SOURCE, TetherSession

from ..conftest import finish_child, spawn, wait_for_line

WRITER = """
import asyncio, sys
from tether.interop.openai_agents import TetherSession

async def main():
    store = tether.open_store(sys.argv[1], load_plugins=False)
    session = TetherSession("shared", store)
    for i in range(int(sys.argv[3])):
        await session.add_items([{"role": "user", "content": f"{sys.argv[2]}{i}"}])
    print("written", flush=True)
    if sys.argv[4] == "hang":
        time.sleep(600)  # until SIGKILL
    store.close()

asyncio.run(main())
"""


def chain_of(store: tether.Store) -> list[tether.Session]:
    [listed] = store.list_sessions(source=SOURCE).items  # the conversation, listed once
    return store.get_chain(listed.session.id)


def test_two_processes_write_one_conversation_each_item_once(db_url: str) -> None:
    writers = [spawn(WRITER, db_url, name, "25", "exit") for name in ("a", "b")]
    for proc in writers:
        code, out, err = finish_child(proc, timeout=60)
        assert code == 0 and out.strip() == "written", err

    async def read() -> list[Any]:
        with tether.open_store(db_url, load_plugins=False) as store:
            items = await TetherSession("shared", store).get_items()
            chain = chain_of(store)
        # Whichever finished first ended its segment (process_exit) and the other
        # moved on to the next one; segments this process never wrote stay as they were.
        assert all(s.end_reason == "process_exit" for s in chain)
        assert [s.origin for s in chain] == [
            f"{SOURCE}:shared#{n}" for n in range(1, len(chain) + 1)
        ]
        return items

    contents = [i["content"] for i in asyncio.run(read())]
    assert sorted(contents) == sorted(f"{w}{i}" for w in "ab" for i in range(25))
    for w in "ab":  # each writer's items in its own order
        assert [c for c in contents if c[0] == w] == [f"{w}{i}" for i in range(25)]


def test_a_sigkilled_writer_is_reaped_and_the_next_add_continues_the_chain(
    db_url: str,
) -> None:
    child = spawn(WRITER, db_url, "k", "3", "hang")
    wait_for_line(child, "written")

    async def main() -> None:
        with tether.open_store(db_url, load_plugins=False) as store:
            session = TetherSession("shared", store)
            # A cooperating writer: the child's segment is open and its owner alive.
            await session.add_items([{"role": "user", "content": "between"}])
            [segment] = chain_of(store)
            assert segment.owner_id != store.owner_id

            child.send_signal(signal.SIGKILL)
            code, _, _ = finish_child(child)
            assert code == -signal.SIGKILL
            [killed] = chain_of(store)
            assert killed.is_open  # nobody ended it: the process had no chance

            await session.add_items([{"role": "user", "content": "after"}])
            chain = chain_of(store)
            assert [s.end_reason for s in chain] == ["reaped", None]
            assert chain[1].parent_id == killed.id and chain[1].owner_id == store.owner_id
            contents = [i["content"] for i in await session.get_items()]
            assert contents == ["k0", "k1", "k2", "between", "after"]
            # Nothing doubled in the store either: each segment holds its own items.
            assert [len(store.get_messages(s.id)) for s in chain] == [4, 1]

    try:
        asyncio.run(main())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


# --- the Runner across processes --------------------------------------------------------

FIRST_TURN = """
import asyncio, sys
from agents import Agent, Runner, function_tool
from agents.testing import ScriptedModel, assistant_message, function_call
from tether.interop.openai_agents import TetherSession

@function_tool
def word_count(text: str) -> str:
    \"\"\"Count the words of a text.\"\"\"
    return str(len(text.split()))

async def main():
    store = tether.open_store(sys.argv[1], load_plugins=False)
    model = ScriptedModel([
        [function_call("word_count", {"text": "a b c"}, call_id="c1")],
        [assistant_message("three words")],
    ])
    agent = Agent(name="counter", model=model, tools=[word_count])
    result = await Runner.run(agent, "count a b c", session=TetherSession("runner", store))
    print(result.final_output, flush=True)
    if sys.argv[2] == "sigkill":
        time.sleep(600)
    store.close()

asyncio.run(main())
"""


@function_tool
def word_count(text: str) -> str:
    """Count the words of a text."""
    return str(len(text.split()))


@pytest.mark.parametrize(
    ("method", "first_ends"),
    [("run", "sigkill"), ("run_sync", "exit"), ("run_streamed", "sigkill")],
)
def test_a_second_process_continues_the_runner_conversation(
    db_url: str, method: str, first_ends: str
) -> None:
    child = spawn(FIRST_TURN, db_url, first_ends)
    wait_for_line(child, "three words", timeout=60)
    if first_ends == "sigkill":
        child.send_signal(signal.SIGKILL)
    code, _, err = finish_child(child, timeout=60)
    assert code == (-signal.SIGKILL if first_ends == "sigkill" else 0), err

    async def main() -> None:
        with tether.open_store(db_url, load_plugins=False) as store:
            model = ScriptedModel([[assistant_message("you asked about a b c")]])
            agent = Agent(name="counter", model=model, tools=[word_count])
            session = TetherSession("runner", store)
            if method == "run":
                result: Any = await Runner.run(agent, "what did I ask?", session=session)
            elif method == "run_sync":
                result = await asyncio.to_thread(
                    Runner.run_sync, agent, "what did I ask?", session=session
                )
            else:
                result = Runner.run_streamed(agent, "what did I ask?", session=session)
                async for _ in result.stream_events():
                    pass
            assert result.final_output == "you asked about a b c"
            # The model saw the first process's whole turn (user, call, output, answer).
            seen = json.loads(json.dumps(model.calls[-1].input))
            assert [i.get("type", "message") for i in seen] == [
                "message",
                "function_call",
                "function_call_output",
                "message",
                "message",
            ]
            assert seen[0]["content"] == "count a b c" and seen[2]["output"] == "3"
            items = await session.get_items()
            assert len(items) == 6 and items[:4] == seen[:4]
            chain = chain_of(store)
            first = "reaped" if first_ends == "sigkill" else "process_exit"
            assert [s.end_reason for s in chain] == [first, None]
            assert [s.message_count for s in chain] == [4, 2]

    asyncio.run(main())
