"""Tool-call repair (issue 14): a conversation that died mid tool call can be resumed.

The history sent to an agent after a resume (through the API or the gateway,
cold resume or continuation) is valid: every tool call is answered exactly
once. The repair is idempotent and marks what it wrote as synthetic.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import pytest

import tether
from tether.agents.base import AgentEvent, Turn
from tether.agents.echo import EchoAgent
from tether.compose import Store
from tether.gateway.runtime import Gateway, GatewayConfig
from tether.liveness import Reaper
from tether.model import Message
from tether.store.toolrepair import SYNTHETIC_CONTENT, unanswered

from .conftest import (
    CHILD_PRELUDE,
    child_env,
    finish_child,
    run_cli,
    spawn,
    wait_for_line,
)
from .gateway.inproc import Peer, until

CALLS = [
    {"id": "call_a", "type": "function", "function": {"name": "ls", "arguments": "{}"}},
    {"id": "call_b", "type": "function", "function": {"name": "cat", "arguments": "{}"}},
]


def assert_valid_history(messages: list[Message]) -> None:
    """What a chat-completions provider checks: each assistant tool call is answered
    exactly once, by tool messages right after it, before anything else."""
    i = 0
    while i < len(messages):
        m = messages[i]
        if m.role == "assistant" and m.tool_calls:
            wanted = [c["id"] for c in m.tool_calls]
            answers = []
            j = i + 1
            while j < len(messages) and messages[j].role == "tool":
                answers.append(messages[j].tool_call_id)
                j += 1
            assert sorted(answers) == sorted(wanted), (wanted, answers)
            i = j
        else:
            assert m.role != "tool", f"a tool result without its call at {m.seq}"
            i += 1


def msg(seq: int, role: str, **kw: Any) -> Message:
    return Message("s", seq, role, kw.get("content"), kw.get("tool_calls"), kw.get("tcid"), None, 0)


# --- the pure rule ------------------------------------------------------------------


def test_unanswered_lists_only_calls_without_results() -> None:
    last = msg(2, "assistant", tool_calls=CALLS)
    assert [c["id"] for c in unanswered(last, [])] == ["call_a", "call_b"]
    assert [c["id"] for c in unanswered(last, [msg(3, "tool", tcid="call_a")])] == ["call_b"]
    both = [msg(3, "tool", tcid="call_a"), msg(4, "tool", tcid="call_b")]
    assert unanswered(last, both) == []
    # Something other than a tool result follows: appending cannot repair it.
    assert unanswered(last, [msg(3, "user", content="hi")]) == []
    assert unanswered(msg(2, "assistant", content="plain"), []) == []
    assert unanswered(None, []) == []
    # A call without an id cannot be answered; a repeated id is answered once.
    odd = msg(2, "assistant", tool_calls=[{"function": {"name": "x"}}, CALLS[0], CALLS[0]])
    assert [c["id"] for c in unanswered(odd, [])] == ["call_a"]


# --- the store ----------------------------------------------------------------------


def dangling_session(store: Store, *, end: bool = True) -> str:
    h = store.session(source="cli")
    h.append("user", "list and show")
    h.append("assistant", None, tool_calls=CALLS)
    h.append("tool", "a.txt", tool_call_id="call_a", tool_name="ls")
    if end:
        h.end("error")
    return h.id


def test_repair_appends_synthetic_results_once(store: Store) -> None:
    sid = dangling_session(store)
    assert store.dangling_tool_calls(sid) == ["call_b"]
    assert store.count_dangling() == 1
    assert sid in store.dangling_sessions()
    dry = store.repair_tool_calls(sid, apply=False)
    assert dry.dangling == ["call_b"] and dry.written == 0
    assert store.get_session(sid).message_count == 3  # the dry run wrote nothing
    done = store.repair_tool_calls(sid)
    assert done.written == 1
    messages = store.get_messages(sid)
    assert_valid_history(messages)
    last = messages[-1]
    assert (last.role, last.tool_call_id, last.tool_name) == ("tool", "call_b", "cat")
    assert last.content == SYNTHETIC_CONTENT
    assert last.meta is not None and last.meta["synthetic"] is True
    # Idempotent: nothing dangles any more, a second repair writes nothing.
    again = store.repair_tool_calls(sid)
    assert again.dangling == [] and again.written == 0
    assert store.get_session(sid).message_count == 4
    assert store.count_dangling() == 0
    chain = store.list_sessions().items[0]
    assert chain.chain_message_count == 4


def test_open_session_is_left_to_whoever_resumes_it(store: Store) -> None:
    sid = dangling_session(store, end=False)
    result = store.repair_tool_calls(sid)
    assert result.skipped == "open" and result.written == 0
    assert store.dangling_tool_calls(sid) == ["call_b"]


def test_unknown_session_is_an_error(store: Store) -> None:
    with pytest.raises(tether.SessionNotFoundError):
        store.repair_tool_calls("01NOPE")


KILLED_MID_CALL = """
db = sys.argv[1]
store = tether.open_store(db, load_plugins=False)
h = store.session(source="cli")
h.append("user", "run the tools")
h.append("assistant", None, tool_calls=[
    {"id": "call_a", "type": "function", "function": {"name": "ls", "arguments": "{}"}},
    {"id": "call_b", "type": "function", "function": {"name": "cat", "arguments": "{}"}},
])
print(h.id, flush=True)
print("calling", flush=True)
idle()  # the tool never returns: killed here
"""


def killed_mid_call(db_url: str) -> str:
    proc = spawn(KILLED_MID_CALL, db_url)
    assert proc.stdout is not None
    sid = proc.stdout.readline().strip()
    wait_for_line(proc, "calling")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    return sid


def test_resume_through_the_api_repairs_before_the_next_turn(db_url: str) -> None:
    sid = killed_mid_call(db_url)
    with tether.open_store(db_url, load_plugins=False) as store:
        assert store.count_dangling() == 1
        h = store.resume(sid)  # the owner is dead: taken over, then repaired
        history = store.get_messages(sid)
        assert_valid_history(history)
        assert [m.tool_call_id for m in history if m.role == "tool"] == ["call_a", "call_b"]
        # The handle appends after the repair: the next turn goes on normally.
        assert h.append("user", "and now?").seq == 5
        h.end("completed")
        assert store.count_dangling() == 0


class RecordingAgent(EchoAgent):
    """The echo agent, recording the history each turn is given (what a model would get)."""

    def __init__(self) -> None:
        super().__init__(delay=0)
        self.histories: list[list[Message]] = []

    async def run(self, turn: Turn) -> AsyncIterator[AgentEvent]:
        self.histories.append(await turn.history())
        async for event in super().run(turn):
            yield event


async def one_turn(store: Store, method: str, **params: Any) -> list[Message]:
    agent = RecordingAgent()
    gw = Gateway(store, agent, GatewayConfig())
    await gw.start()
    try:
        peer = Peer(gw)
        result = await peer.call(method, **params)
        await peer.call("prompt.submit", session_id=result["session_id"], text="go on")
        await until(lambda: agent.histories)
        await peer.event("turn.end")
        return agent.histories[0]
    finally:
        await gw.shutdown()


def test_gateway_cold_resume_sends_a_valid_history(db_url: str) -> None:
    sid = killed_mid_call(db_url)
    with tether.open_store(db_url, load_plugins=False) as store:
        history = asyncio.run(one_turn(store, "session.resume", session_id=sid))
    assert_valid_history(history)
    assert [m.role for m in history] == ["user", "assistant", "tool", "tool", "user"]
    assert all(m.meta and m.meta.get("synthetic") for m in history[2:4])


def test_gateway_continuation_of_a_reaped_session_sends_a_valid_history(db_url: str) -> None:
    sid = killed_mid_call(db_url)
    with tether.open_store(db_url, load_plugins=False) as store:
        Reaper(store).sweep()  # the dead owner's session ends `reaped`
        assert store.get_session(sid).end_reason == "reaped"
        history = asyncio.run(one_turn(store, "session.create", parent_id=sid))
        assert store.count_dangling() == 0
    assert_valid_history(history)
    assert [m.role for m in history] == ["user", "assistant", "tool", "tool", "user"]


def test_cli_repair_tools_dry_run_then_yes(db_path: str) -> None:
    with tether.open_store(db_path, load_plugins=False) as store:
        sid = dangling_session(store)
    shown = run_cli("--db", db_path, "repair-tools", "--all")
    assert shown.returncode == 0, shown.stderr
    assert f"{sid}: 1 unanswered tool call" in shown.stdout
    assert "--yes" in shown.stdout
    done = run_cli("--db", db_path, "repair-tools", sid[:10], "--yes")
    assert done.returncode == 0 and f"{sid}: answered 1 unanswered tool call" in done.stdout
    again = run_cli("--db", db_path, "repair-tools", "--all", "--yes")
    assert "nothing to repair" in again.stdout
    doctor = run_cli("--db", db_path, "doctor", "--json")
    assert '"dangling_tool_calls": 0' in doctor.stdout
    bad = run_cli("--db", db_path, "repair-tools")
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
    unknown = run_cli("--db", db_path, "repair-tools", "01NOPE")
    assert unknown.returncode == 1 and "01NOPE" in unknown.stderr


def import_calling(store: Store, origin: str, *after: dict[str, Any]) -> Any:
    """An imported conversation: a user message, an assistant's CALLS, then ``after``
    (a second apart each)."""
    messages: list[dict[str, Any]] = [
        {"key": "1", "role": "user", "content": "list"},
        {"key": "2", "role": "assistant", "content": None, "tool_calls": CALLS},
        *after,
    ]
    for i, m in enumerate(messages, 1):
        m["created_at"] = 1_800_000_000.0 + i
    return store.import_session(
        origin, source="hermes", created_at=1_800_000_000.0, messages=messages
    )


def test_imported_session_with_dangling_calls_is_repaired_when_resumed(store: Store) -> None:
    imported = import_calling(store, "hermes:20261130_abc")
    sid = imported.session.id
    assert store.count_dangling() == 1
    h = store.resume(sid)
    history = store.get_messages(sid)
    assert_valid_history(history)
    assert [m.tool_call_id for m in history[2:]] == ["call_a", "call_b"]
    h.end("completed")


# --- calls left dangling in the middle of a conversation ----------------------------
#
# [user, assistant(calls a, b), tool(a), user, assistant]: call b is answered by
# nothing, and a result cannot be inserted before the user message that follows
# (messages are append-only, seqs never change). The history a model is given
# answers it at read time instead; the census, doctor and repair-tools report it.


def middle_messages() -> list[Message]:
    return [
        msg(1, "user", content="list and show"),
        msg(2, "assistant", tool_calls=CALLS),
        msg(3, "tool", tcid="call_a"),
        msg(4, "user", content="still there?"),
        msg(5, "assistant", content="yes"),
    ]


def test_answered_history_inserts_a_synthetic_result_after_the_calls() -> None:
    from tether.store.toolrepair import answered_history

    history = answered_history(middle_messages())
    assert_valid_history(history)
    assert [(m.role, m.tool_call_id) for m in history] == [
        ("user", None),
        ("assistant", None),
        ("tool", "call_a"),
        ("tool", "call_b"),
        ("user", None),
        ("assistant", None),
    ]
    synthetic = history[3]
    assert synthetic.content == SYNTHETIC_CONTENT and synthetic.tool_name == "cat"
    assert synthetic.meta is not None and synthetic.meta["synthetic"] is True
    assert synthetic.meta["stored"] is False  # read-time only: never written
    # Idempotent, and a valid history is returned as it is.
    assert answered_history(history) == history
    # The tail is left alone: its tool may still return (the owner's turn runs);
    # storing a result there is resume's and repair-tools' job.
    tail = middle_messages()[:3]
    assert answered_history(tail) == tail
    # An interrupted turn's empty assistant after the calls is "something else".
    cut = [*middle_messages()[:2], msg(3, "assistant", content=""), msg(4, "user", content="?")]
    assert [m.tool_call_id for m in answered_history(cut)[2:4]] == ["call_a", "call_b"]


def middle_session(store: Store, *, end: bool = True) -> str:
    h = store.session(source="cli")
    h.append("user", "list and show")
    h.append("assistant", None, tool_calls=CALLS)
    h.append("tool", "a.txt", tool_call_id="call_a", tool_name="ls")
    h.append("user", "still there?")
    h.append("assistant", "yes")
    if end:
        h.end("error")
    return h.id


def test_census_and_repair_report_calls_dangling_in_the_middle(store: Store) -> None:
    sid = middle_session(store)
    tail = dangling_session(store)
    assert store.count_dangling() == 1  # conversations that END in unanswered calls
    assert store.count_dangling_middle() == 1
    assert set(store.dangling_sessions()) == {sid, tail}
    dry = store.repair_tool_calls(sid, apply=False)
    assert (dry.dangling, dry.middle, dry.written) == ([], ["call_b"], 0)
    done = store.repair_tool_calls(sid)
    assert (done.dangling, done.middle, done.written) == ([], ["call_b"], 0)
    # Nothing stored, seqs unchanged: the call is answered when read.
    assert [m.seq for m in store.get_messages(sid)] == [1, 2, 3, 4, 5]
    assert store.repair_tool_calls(sid) == done  # idempotent
    assert store.count_dangling_middle() == 1


def test_both_kinds_in_one_conversation(store: Store) -> None:
    h = store.session(source="cli")
    h.append("user", "list and show")
    h.append("assistant", None, tool_calls=CALLS)
    h.append("tool", "a.txt", tool_call_id="call_a", tool_name="ls")
    h.append("user", "and du?")
    h.append("assistant", None, tool_calls=[{**CALLS[0], "id": "call_c"}])
    h.end("error")
    result = store.repair_tool_calls(h.id)
    assert (result.dangling, result.middle, result.written) == (["call_c"], ["call_b"], 1)
    assert store.count_dangling() == 0 and store.count_dangling_middle() == 1
    assert store.repair_tool_calls(h.id).written == 0


class ToolThenWait(RecordingAgent):
    """Its first turn calls two tools, answers one, then waits (interrupted there);
    later turns echo. Each turn's history is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.calling = asyncio.Event()
        self.release = asyncio.Event()
        self.answer_b = False

    async def run(self, turn: Turn) -> AsyncIterator[AgentEvent]:
        from tether.agents.base import ToolCall, ToolCalls, ToolResult

        if self.histories:
            async for event in super().run(turn):
                yield event
            return
        self.histories.append(await turn.history())
        calls = (ToolCall("call_a", "ls", "{}"), ToolCall("call_b", "cat", "{}"))
        yield ToolCalls(calls)
        yield ToolResult("call_a", "ls", "a.txt")
        self.calling.set()
        await self.release.wait()  # the cat tool runs...
        if self.answer_b:
            yield ToolResult("call_b", "cat", "hello")


@contextlib.asynccontextmanager
async def turn_in_its_tool(store: Store, agent: ToolThenWait) -> AsyncIterator[tuple[Peer, str]]:
    """A started gateway with a session whose first turn is inside its tool call."""
    gw = Gateway(store, agent, GatewayConfig())
    await gw.start()
    try:
        peer = Peer(gw)
        sid = (await peer.call("session.create"))["session_id"]
        await peer.call("prompt.submit", session_id=sid, text="list and show")
        await asyncio.wait_for(agent.calling.wait(), 10)
        yield peer, sid
    finally:
        await gw.shutdown()


def test_gateway_turn_interrupted_mid_tool_then_next_turn_gets_a_valid_history(
    store: Store,
) -> None:
    async def main() -> list[Message]:
        agent = ToolThenWait()
        async with turn_in_its_tool(store, agent) as (peer, sid):
            await peer.call("session.interrupt", session_id=sid)
            await peer.event("turn.end")
            await peer.call("prompt.submit", session_id=sid, text="go on")
            await until(lambda: len(agent.histories) == 2)
            await peer.event("turn.end")
            return agent.histories[1]

    history = asyncio.run(main())
    assert_valid_history(history)
    assert [m.role for m in history][:4] == ["user", "assistant", "tool", "tool"]
    assert history[3].tool_call_id == "call_b" and history[3].content == SYNTHETIC_CONTENT
    assert history[-1].content == "go on"


def test_gateway_resume_of_an_imported_session_dangling_in_the_middle(store: Store) -> None:
    imported = import_calling(
        store,
        "hermes:20261130_mid",
        {"key": "3", "role": "tool", "content": "a.txt", "tool_call_id": "call_a"},
        {"key": "4", "role": "user", "content": "hello?"},
    )
    sid = imported.session.id
    assert store.count_dangling_middle() == 1
    history = asyncio.run(one_turn(store, "session.resume", session_id=sid))
    assert_valid_history(history)
    assert [m.tool_call_id for m in history if m.role == "tool"] == ["call_a", "call_b"]


def test_gateway_continuation_answers_the_parents_calls_in_the_middle(store: Store) -> None:
    sid = middle_session(store)
    history = asyncio.run(one_turn(store, "session.create", parent_id=sid))
    assert_valid_history(history)
    assert [m.role for m in history] == [
        "user",
        "assistant",
        "tool",
        "tool",
        "user",
        "assistant",
        "user",
    ]


def test_cli_reports_calls_dangling_in_the_middle(db_path: str) -> None:
    with tether.open_store(db_path, load_plugins=False) as store:
        sid = middle_session(store)
    shown = run_cli("--db", db_path, "repair-tools", "--all")
    assert shown.returncode == 0, shown.stderr
    assert f"{sid}: 1 unanswered tool call in the middle: answered when read" in shown.stdout
    done = run_cli("--db", db_path, "repair-tools", sid, "--yes")
    assert done.returncode == 0, done.stderr
    assert f"{sid}: 1 unanswered tool call in the middle: answered when read" in done.stdout
    with tether.open_store(db_path, load_plugins=False) as store:
        assert store.get_session(sid).message_count == 5
    doctor = run_cli("--db", db_path, "doctor", "--json")
    assert '"dangling_tool_calls": 0' in doctor.stdout
    assert '"dangling_tool_calls_middle": 1' in doctor.stdout
    text = run_cli("--db", db_path, "doctor")
    assert "1 conversation has unanswered tool calls in its middle" in text.stdout


# --- a session held live: its tool may still return ---------------------------------

HELD_MID_CALL = """
db = sys.argv[1]
store = tether.open_store(db, load_plugins=False)
h = store.session(source="cli")
h.append("user", "run the tools")
h.append("assistant", None, tool_calls=[
    {"id": "call_a", "type": "function", "function": {"name": "ls", "arguments": "{}"}},
])
print(h.id, flush=True)
print("calling", flush=True)
sys.stdin.readline()  # the tool returns when told
h.append("tool", "a.txt", tool_call_id="call_a", tool_name="ls")
h.end("completed")
print("answered", flush=True)
"""


def test_repair_tools_skips_a_session_a_live_process_holds(db_url: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(HELD_MID_CALL), db_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        sid = proc.stdout.readline().strip()
        wait_for_line(proc, "calling")
        for args in ([sid], [sid, "--yes"], ["--all"], ["--all", "--yes"]):
            got = run_cli("--db", db_url, "repair-tools", *args)
            assert got.returncode == 0, got.stderr
            assert f"{sid}: 1 unanswered tool call; skipped: open" in got.stdout, got.stdout
            assert "skipped 1 open session" in got.stdout, got.stdout
            js = run_cli("--db", db_url, "repair-tools", *args, "--json")
            assert '"skipped": 1' in js.stdout and '"written": 0' in js.stdout, js.stdout
        with tether.open_store(db_url, load_plugins=False) as store:
            assert store.get_session(sid).message_count == 2  # nothing appended
        proc.stdin.write("\n")
        proc.stdin.flush()  # the tool returns: its real result goes in, once
        code, out, err = finish_child(proc)
        assert code == 0 and "answered" in out, err
        with tether.open_store(db_url, load_plugins=False) as store:
            messages = store.get_messages(sid)
            assert_valid_history(messages)
            assert messages[-1].content == "a.txt" and not messages[-1].meta
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_repair_tools_skips_a_session_whose_gateway_turn_runs(store: Store, db_url: str) -> None:
    async def main() -> tuple[str, list[str]]:
        agent = ToolThenWait()
        agent.answer_b = True
        async with turn_in_its_tool(store, agent) as (peer, sid):
            outputs = []
            for args in ([sid, "--yes"], ["--all", "--yes"]):
                got = await asyncio.to_thread(run_cli, "--db", db_url, "repair-tools", *args)
                assert got.returncode == 0, got.stderr
                outputs.append(got.stdout)
            agent.release.set()  # the tool returns after all
            await peer.event("turn.end")
            return sid, outputs

    sid, outputs = asyncio.run(main())
    for text in outputs:
        assert f"{sid}: 1 unanswered tool call; skipped: open" in text, text
    messages = store.get_messages(sid)
    assert_valid_history(messages)
    tools = [m for m in messages if m.role == "tool"]
    assert [(m.tool_call_id, m.content) for m in tools] == [
        ("call_a", "a.txt"),
        ("call_b", "hello"),
    ]


def test_census_sql_agrees_with_the_pure_rule(store: Store) -> None:
    """Random transcripts (answers missing, out of their run, repeated, orphan, calls
    without ids): the census SQL finds exactly the sessions :func:`scan` finds."""
    import random

    from tether.store.toolrepair import scan

    rng = random.Random(14)
    want_tail, want_middle = set(), set()
    for _ in range(40):
        h = store.session(source="cli")
        pending: list[str] = []
        for k in range(rng.randint(1, 8)):
            roll = rng.random()
            if roll < 0.3:
                h.append("user", f"prompt {k}")
            elif roll < 0.6:
                ids = [f"c{k}_{j}" for j in range(rng.randint(1, 3))]
                calls = [{"id": i, "type": "function", "function": {"name": "f"}} for i in ids]
                if rng.random() < 0.2:
                    calls.append({"type": "function", "function": {"name": "no_id"}})
                if rng.random() < 0.2:
                    calls.append({"call_id": ids[0] + "r", "name": "responses_style"})
                    ids.append(ids[0] + "r")
                h.append("assistant", None, tool_calls=calls)
                pending = ids
            else:
                answer = rng.choice([*pending, "orphan"]) if pending else "orphan"
                h.append("tool", "out", tool_call_id=answer)
        h.end("completed")
        messages = store.get_messages(h.id)
        middle, tail = scan(messages)
        if middle:
            want_middle.add(h.id)
        if tail:
            want_tail.add(h.id)
    assert want_middle and want_tail  # the seed exercises both
    assert store.count_dangling() == len(want_tail)
    assert store.count_dangling_middle() == len(want_middle)
    assert store.dangling_sessions() == sorted(want_tail | want_middle)
    assert (
        store.dangling_sessions(limit=3, after=sorted(want_tail | want_middle)[0])
        == sorted(want_tail | want_middle)[1:4]
    )
