"""TetherSession's own contract on both backends: what any SDK session does, and the mapping."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from agents.memory import SessionSettings
from agents.memory.session import _session_accepts_wrapper

import tether
from tether.interop.openai_agents import CLEARED_REASON, SOURCE, TetherSession, project_item

from ..conftest import run_cli

pytestmark = pytest.mark.asyncio

# The item shapes the runner stores after a tool turn (measured with ScriptedModel),
# plus shapes tether has no column for (reasoning), and unicode.
ITEMS: list[dict[str, Any]] = [
    {"content": "count a b c", "role": "user"},
    {
        "arguments": '{"text":"a b c"}',
        "call_id": "c1",
        "name": "word_count",
        "type": "function_call",
        "id": "c1",
    },
    {"call_id": "c1", "output": "3", "type": "function_call_output"},
    {
        "id": "scripted-message",
        "content": [
            {"annotations": [], "text": "three words", "type": "output_text", "logprobs": []}
        ],
        "role": "assistant",
        "status": "completed",
        "type": "message",
    },
    {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "thinking"}]},
    {"role": "developer", "content": [{"type": "input_text", "text": "héllo ✓"}]},
]


@pytest_asyncio.fixture
async def store(db_url: str) -> AsyncIterator[tether.Store]:
    s = tether.open_store(db_url, load_plugins=False)
    try:
        yield s
    finally:
        s.close()


async def test_items_round_trip_exactly_with_a_readable_projection(
    store: tether.Store, backend: str
) -> None:
    session = TetherSession("sdk-1", store)
    await session.add_items(ITEMS)
    got = await session.get_items()
    assert got == ITEMS
    # Byte-exact as JSON, key order included, on PostgreSQL too (jsonb alone
    # would keep the values but reorder the keys).
    assert json.dumps(got) == json.dumps(ITEMS)
    assert [json.dumps(i) for i in await TetherSession("sdk-1", store).get_items(3)] == [
        json.dumps(i) for i in ITEMS[-3:]
    ]
    [segment] = store.list_sessions(source=SOURCE).items
    messages = store.get_messages(segment.session.id)
    shown = [(m.role, m.content, m.tool_call_id) for m in messages]
    assert shown == [
        ("user", "count a b c", None),
        ("assistant", None, None),
        ("tool", "3", "c1"),
        ("assistant", "three words", None),
        ("assistant", None, None),
        ("developer", "héllo ✓", None),
    ]
    assert messages[1].tool_calls == [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "word_count", "arguments": '{"text":"a b c"}'},
        }
    ]
    assert messages[4].meta == {"kind": "reasoning"}


# Shapes beyond the runner's: content as parts, outputs as parts, odd types.
ODD_ITEMS: list[dict[str, Any]] = [
    {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text"}]},
    {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}], "type": "message"},
    {"role": "system", "content": None},
    {"type": "function_call_output", "call_id": "c9", "output": [{"type": "text", "text": "x"}]},
    {"type": "function_call", "call_id": "c8", "name": "f", "arguments": "{}\\u0000"},
    {"type": "computer_call", "id": "cc"},
    {"role": "tool", "content": "not a text role"},
    {"weird": {"nested": [1, 2.5, None, True, "\x00"]}},  # NUL outside the columns: kept
]


async def test_rows_hold_the_projection_and_the_exact_json(store: tether.Store) -> None:
    """add_items builds each row without the projection's dicts: same columns."""
    session = TetherSession("sdk-rows", store)
    for item, row in zip(ITEMS + ODD_ITEMS, session._rows(ITEMS + ODD_ITEMS), strict=True):
        message = project_item(item)
        calls = message.get("tool_calls")
        meta = message.get("meta")
        assert row[:4] == (
            message["role"],
            message.get("content"),
            None if calls is None else json.dumps(calls, separators=(",", ":")),
            message.get("tool_call_id"),
        )
        assert row[7] == (None if meta is None else json.dumps(meta, separators=(",", ":")))
        assert json.loads(row[8]) == item
        assert row[8] == json.dumps(item, ensure_ascii=False, separators=(",", ":"))
    await session.add_items(ITEMS + ODD_ITEMS)
    assert await session.get_items() == ITEMS + ODD_ITEMS
    assert await session.get_items(3) == ODD_ITEMS[-3:]


@pytest.mark.parametrize(
    ("item", "where"),
    [
        ({"role": "user", "content": "a\x00b"}, "content"),
        ({"role": "user", "content": [{"type": "input_text", "text": "\x00"}]}, "content"),
        ({"type": "function_call_output", "call_id": "c\x00", "output": "x"}, "tool_call_id"),
        ({"type": "function_call_output", "call_id": 7, "output": "x"}, "tool_call_id"),
        ({"type": "function_call", "call_id": "c", "name": "f", "arguments": "\x00"}, "tool_calls"),
        ({"role": "user", "content": "\ud800"}, "surrogate"),
        ({"role": "user", "content": float("nan")}, "not valid JSON"),
        ({"role": "user", "content": {1, 2}}, "not JSON-serialisable"),
        (["not", "a", "dict"], "dict"),
    ],
)
async def test_items_that_cannot_be_stored_are_refused_before_anything_is_written(
    store: tether.Store, item: Any, where: str
) -> None:
    session = TetherSession("sdk-refused", store)
    with pytest.raises(tether.InvalidInputError, match=where):
        await session.add_items([{"role": "user", "content": "fine"}, item])
    assert await session.get_items() == []


async def test_the_tail_read_keeps_messages_without_a_payload_in_their_place(
    store: tether.Store,
) -> None:
    """chain_tip_tail (what get_items(limit) reads) on rows no TetherSession wrote:
    a message without a payload reads as None, in order, on both backends."""
    keys = iter(range(100))

    def message(payload: Any) -> dict[str, Any]:
        row = {"key": str(next(keys)), "role": "user", "created_at": 1.0, "content": "x"}
        return row if payload is None else {**row, "payload": payload}

    payloads = [{"a": 1}, None, ["b", 2.5], None, ["c"], {"d": {"e": None}}]
    store.import_session(
        "imported:tail", source="x", created_at=1.0, messages=[message(p) for p in payloads]
    )
    for n in (1, 2, 3, 6, 10):
        found = store.chain_tip_tail("imported:tail", n)
        assert found is not None
        assert found[2] == payloads[-n:]
    assert store.chain_tip_tail("imported:none", 3) is None


async def test_pop_retracts_the_newest_item_and_leaves_no_seq_gap(store: tether.Store) -> None:
    session = TetherSession("sdk-pop", store)
    await session.add_items([{"role": "user", "content": str(i)} for i in range(3)])
    assert await session.pop_item() == {"role": "user", "content": "2"}
    await session.add_items([{"role": "user", "content": "3"}])
    assert [i["content"] for i in await session.get_items()] == ["0", "1", "3"]
    # The last seqs hold a retracted one: a limited read still finds N active items.
    assert [i["content"] for i in await session.get_items(2)] == ["1", "3"]
    [listed] = store.list_sessions(source=SOURCE).items
    every = store.get_messages(listed.session.id, states=("active", "retracted"))
    assert [(m.seq, m.state) for m in every] == [
        (1, "active"),
        (2, "active"),
        (3, "retracted"),
        (4, "active"),
    ]
    for _ in range(3):
        assert await session.pop_item() is not None
    assert await session.pop_item() is None
    assert await session.get_items() == []


async def test_limit_reads_the_tail_in_order(store: tether.Store) -> None:
    session = TetherSession("sdk-limit", store, session_settings={"limit": 4})
    await session.add_items([{"role": "user", "content": str(i)} for i in range(50)])
    assert [i["content"] for i in await session.get_items()] == ["46", "47", "48", "49"]
    assert [i["content"] for i in await session.get_items(2)] == ["48", "49"]
    assert await session.get_items(0) == []
    assert len(await session.get_items(-1)) == 50
    assert isinstance(session.session_settings, SessionSettings)


async def test_clear_ends_the_segment_and_the_chain_continues_listed_once(
    store: tether.Store,
) -> None:
    session = TetherSession("sdk-clear", store)
    await session.add_items([{"role": "user", "content": "before"}])
    await session.clear_session()
    assert await session.get_items() == []
    assert await session.pop_item() is None
    await session.add_items([{"role": "user", "content": "after"}])
    assert await session.get_items() == [{"role": "user", "content": "after"}]

    [listed] = store.list_sessions(source=SOURCE).items
    chain = store.get_chain(listed.session.id)
    assert [s.origin for s in chain] == ["openai-agents:sdk-clear#1", "openai-agents:sdk-clear#2"]
    assert chain[0].end_reason == CLEARED_REASON
    assert chain[1].is_open and chain[1].parent_id == chain[0].id
    # Another instance (another worker, say) sees the same conversation.
    other = TetherSession("sdk-clear", store)
    assert await other.get_items() == [{"role": "user", "content": "after"}]


async def test_closed_session_rejects_writes_and_leaves_the_conversation_open(
    store: tether.Store,
) -> None:
    session = TetherSession("sdk-close", store)
    await session.add_items([{"role": "user", "content": "kept"}])
    session.close()
    session.close()  # idempotent
    for call in (
        session.add_items([]),
        session.add_items([{"role": "user", "content": "x"}]),
        session.pop_item(),
        session.clear_session(),
    ):
        with pytest.raises(RuntimeError, match="is closed"):
            await call
    [listed] = store.list_sessions(source=SOURCE).items
    assert listed.session.is_open
    assert await TetherSession("sdk-close", store).get_items() == [
        {"role": "user", "content": "kept"}
    ]


async def test_a_cancelled_mutation_completes_once_and_propagates_the_cancellation(
    store: tether.Store,
) -> None:
    session = TetherSession("sdk-cancel", store)
    # Hold the instance's write lock so the mutation is in flight (in its worker
    # thread) when the caller is cancelled; then let it finish.
    session._lock.acquire()
    task = asyncio.create_task(session.add_items([{"role": "user", "content": "once"}]))
    await asyncio.sleep(0)  # the task starts and hands the write to its thread
    task.cancel()
    for _ in range(3):
        await asyncio.sleep(0)
    assert not task.done()  # the cancellation waits for the write's outcome
    session._lock.release()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await session.get_items() == [{"role": "user", "content": "once"}]


async def test_every_method_accepts_the_runner_context_wrapper(store: tether.Store) -> None:
    assert _session_accepts_wrapper(TetherSession("sdk-wrap", store))


async def test_store_by_path_is_opened_and_closed_by_the_session(tmp_path: Any) -> None:
    path = tmp_path / "by-path.db"
    session = TetherSession("sdk-path", str(path))
    await session.add_items([{"role": "user", "content": "hi"}])
    session.close()
    with pytest.raises(RuntimeError, match="is closed"):
        await session.get_items()  # its own store is closed with it
    with tether.open_store(path, load_plugins=False) as reopened:
        assert TetherSession("sdk-path", reopened).store is reopened
        [listed] = reopened.list_sessions().items
        assert listed.session.source == SOURCE


class _CancelAfterCommit:
    """A plugin whose hook runs in the mutation's worker thread, after its commit:
    it cancels the caller's task and waits until the event loop delivered the
    cancellation, so the mutation is still running when the caller is cancelled."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.task: asyncio.Task[Any] | None = None
        self.fired = 0

    def _cancel(self) -> None:
        if self.task is not None and self.fired == 0:
            self.task.cancel()
        self.fired += 1

    def _cancel_and_wait(self) -> None:
        done = threading.Event()
        self.loop.call_soon_threadsafe(lambda: (self._cancel(), done.set()))
        assert done.wait(10)

    @tether.hookimpl
    def on_session_start(self, session: Any) -> None:
        self._cancel_and_wait()

    @tether.hookimpl
    def on_session_end(self, session: Any, reason: str, interrupted: bool) -> None:
        self._cancel_and_wait()


@pytest.mark.parametrize("mutation", ["add", "clear"])
async def test_a_mutation_cancelled_after_its_commit_propagates_and_lands_once(
    store: tether.Store, mutation: str
) -> None:
    """Upstream's post-commit cancellation test, without SQLite injection: the
    caller sees CancelledError, the outcome is in the store exactly once."""
    session = TetherSession("sdk-post-commit", store)
    if mutation == "clear":
        await session.add_items([{"role": "user", "content": "before"}])
    plugin = _CancelAfterCommit(asyncio.get_running_loop())
    store.plugins.register(plugin)
    try:
        call = (
            session.add_items([{"role": "user", "content": "once"}])
            if mutation == "add"
            else session.clear_session()
        )
        plugin.task = asyncio.ensure_future(call)
        with pytest.raises(asyncio.CancelledError):
            await plugin.task
        assert plugin.fired == 1  # cancelled after the commit, in the hook
    finally:
        store.plugins.unregister(plugin)
    if mutation == "add":
        assert await session.get_items() == [{"role": "user", "content": "once"}]
    else:
        assert await session.get_items() == []
        [listed] = store.list_sessions(source=SOURCE).items
        [ended] = store.get_chain(listed.session.id)
        assert ended.end_reason == CLEARED_REASON
    # The next mutation works as usual.
    await session.add_items([{"role": "user", "content": "next"}])
    assert (await session.get_items())[-1] == {"role": "user", "content": "next"}


async def test_a_cancelled_pop_completes_once_and_propagates_the_cancellation(
    store: tether.Store,
) -> None:
    session = TetherSession("sdk-cancel-pop", store)
    await session.add_items([{"role": "user", "content": str(i)} for i in range(2)])
    session._lock.acquire()  # the pop waits in its worker thread
    task = asyncio.create_task(session.pop_item())
    await asyncio.sleep(0)
    task.cancel()
    for _ in range(3):
        await asyncio.sleep(0)
    assert not task.done()
    session._lock.release()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await session.get_items() == [{"role": "user", "content": "0"}]


async def test_a_write_retried_within_its_call_never_stores_an_item_twice(
    store: tether.Store,
) -> None:
    """The keys come from the call, not from chance: writing one call's rows again
    (what the store does after a commit of unknown outcome, and what the
    session does when its segment ended under it) finds them stored."""
    session = TetherSession("sdk-retry", store)
    items = [{"role": "user", "content": "a"}, {"role": "user", "content": "a"}]
    rows = session._rows(items)
    assert len({r[6] for r in rows}) == 2  # equal items, distinct positions
    await asyncio.to_thread(session._add_items, rows)
    await asyncio.to_thread(session._add_items, rows)  # the same call, retried
    assert await session.get_items() == items
    # Another call with equal items is another write: the user said "a" again.
    await session.add_items(items[:1])
    assert len(await session.get_items()) == 3


async def test_a_retried_call_continues_in_the_next_segment_when_its_segment_ended(
    store: tether.Store,
) -> None:
    """Another process cleared (or the reaper ended) the segment this instance
    wrote to: the write is refused there and lands once in the next segment."""
    session = TetherSession("sdk-moved", store)
    await session.add_items([{"role": "user", "content": "one"}])
    other = TetherSession("sdk-moved", store)
    await other.clear_session()
    await session.add_items([{"role": "user", "content": "two"}])
    assert await other.get_items() == [{"role": "user", "content": "two"}]
    [listed] = store.list_sessions(source=SOURCE).items
    chain = store.get_chain(listed.session.id)
    assert [s.end_reason for s in chain] == [CLEARED_REASON, None]
    assert [m.content for m in store.get_messages(chain[1].id)] == ["two"]


async def test_segments_are_owned_by_the_writing_process(store: tether.Store) -> None:
    session = TetherSession("sdk-owned", store)
    await session.add_items([{"role": "user", "content": "hi"}])
    [listed] = store.list_sessions(source=SOURCE).items
    assert listed.session.owner_id == store.owner_id is not None
    assert listed.session.origin == f"{SOURCE}:sdk-owned#1"
    assert store.owner.owned >= 1  # this process heartbeats for it


async def test_get_items_reads_across_ended_segments_back_to_the_last_clear(
    store: tether.Store,
) -> None:
    session = TetherSession("sdk-across", store)
    await session.add_items([{"role": "user", "content": "gone"}])
    await session.clear_session()
    await session.add_items([{"role": "user", "content": str(i)} for i in range(3)])
    [listed] = store.list_sessions(source=SOURCE).items
    tip = store.get_chain(listed.session.id)[-1]
    store.end_session(tip.id, "process_exit", "a worker exited", interrupted=True)
    await session.add_items([{"role": "user", "content": str(i)} for i in range(3, 5)])
    assert [i["content"] for i in await session.get_items()] == ["0", "1", "2", "3", "4"]
    assert [i["content"] for i in await session.get_items(3)] == ["2", "3", "4"]
    # pop reaches back into the ended segment once the newest one is empty.
    for expected in ("4", "3", "2"):
        assert (await session.pop_item())["content"] == expected
    assert [i["content"] for i in await session.get_items()] == ["0", "1"]
    chain = store.get_chain(listed.session.id)
    assert [s.end_reason for s in chain] == [CLEARED_REASON, "process_exit", None]


class _Rollback(Exception):
    pass


def _lose_next_commit(store: tether.Store, monkeypatch: pytest.MonkeyPatch, landed: bool) -> None:
    """The next write runs for real, then its commit's outcome is lost (as when the
    connection breaks during COMMIT): it committed (``landed``) or rolled back.
    Transactions and one-statement appends (PostgreSQL's hot path) alike."""
    real = store.backend.write
    real_statement = store._append_statement
    left = [1]

    def statement(query: str, params: Any) -> int:
        assert real_statement is not None
        if not left:
            return real_statement(query, params)
        left.clear()
        if landed:
            real_statement(query, params)
        raise tether.CommitUnknownError("lost the connection while committing")

    def write(fn: Any) -> Any:
        if not left:
            return real(fn)
        left.clear()
        if landed:
            real(fn)
        else:

            def then_roll_back(c: Any) -> None:
                fn(c)
                raise _Rollback

            with pytest.raises(_Rollback):
                real(then_roll_back)
        raise tether.CommitUnknownError("lost the connection while committing")

    monkeypatch.setattr(store.backend, "write", write)
    if real_statement is not None:
        monkeypatch.setattr(store, "_append_statement", statement)


@pytest.mark.parametrize("landed", [True, False], ids=["landed", "not-landed"])
async def test_an_add_whose_commit_is_unknown_stores_its_items_once(
    store: tether.Store, monkeypatch: pytest.MonkeyPatch, landed: bool
) -> None:
    session = TetherSession("sdk-unknown", store)
    _lose_next_commit(store, monkeypatch, landed)  # the first add starts the segment
    await session.add_items([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    _lose_next_commit(store, monkeypatch, landed)  # a later add to the known segment
    await session.add_items([{"role": "user", "content": "c"}])
    _lose_next_commit(store, monkeypatch, landed)  # and one of several items
    await session.add_items([{"role": "user", "content": "d"}, {"role": "user", "content": "e"}])
    assert [i["content"] for i in await session.get_items()] == ["a", "b", "c", "d", "e"]
    [listed] = store.list_sessions(source=SOURCE).items
    assert listed.chain_message_count == 5
    assert [m.seq for m in store.get_messages(listed.session.id)] == [1, 2, 3, 4, 5]


async def test_two_instances_of_one_session_interleave_without_gaps(store: tether.Store) -> None:
    """Each instance caches the segment's state; the other's writes make it stale,
    and a stale write is refused and redone, never given a taken seq."""
    a, b = TetherSession("sdk-two", store), TetherSession("sdk-two", store)
    sizes = [2, 3, 1, 1, 4, 2, 1]
    expected: list[str] = []
    for k, size in enumerate(sizes):
        batch = [f"{k}.{i}" for i in range(size)]
        await (a if k % 2 == 0 else b).add_items([{"role": "user", "content": t} for t in batch])
        expected += batch
    assert [i["content"] for i in await b.get_items()] == expected
    [listed] = store.list_sessions(source=SOURCE).items
    assert [m.seq for m in store.get_messages(listed.session.id)] == list(
        range(1, len(expected) + 1)
    )
    assert listed.chain_message_count == len(expected)


async def test_tether_ls_lists_the_conversation_once_and_show_reads_it(tmp_path: Any) -> None:
    db = str(tmp_path / "cli.db")
    with tether.open_store(db, load_plugins=False) as store:
        session = TetherSession("sdk-cli", store)
        await session.add_items(ITEMS[:4])
        await session.clear_session()
        await session.add_items([{"role": "user", "content": "again"}])
        [listed] = store.list_sessions(source=SOURCE).items
        first, _ = store.get_chain(listed.session.id)
    listed_cli = await asyncio.to_thread(run_cli, "ls", "--db", db)
    assert listed_cli.returncode == 0, listed_cli.stderr
    assert listed_cli.stdout.count("openai-agents") == 1  # two segments, one conversation
    shown = await asyncio.to_thread(run_cli, "show", first.id, "--db", db)
    assert shown.returncode == 0, shown.stderr
    assert "count a b c" in shown.stdout and "three words" in shown.stdout
    assert "cleared" in shown.stdout
