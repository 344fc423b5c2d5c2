"""Tool-call repair: answer the tool calls a conversation left dangling.

A conversation with a tool call that never answered (the process died, the
turn was interrupted, the session was reaped) cannot be sent to a model as it
is: providers reject a tool call without its result right after it. Messages
are append-only and their seqs never change, so where the answer goes depends
on where the call is:

* At the **tail** (the last assistant message's calls, followed only by tool
  results): :meth:`ToolRepair.repair_tool_calls` *stores* one tool message per
  unanswered call, with :data:`SYNTHETIC_CONTENT` and ``meta`` marking it
  synthetic, in one transaction. It is idempotent: the appended results answer
  the calls, so a second repair finds nothing (and each carries the idempotency
  key ``tether-repair:<call id>``, so not even a race can write one twice).
  Only an ended session is written to without the owner's epoch: an open one
  may have a live turn whose tool is still running (``skipped="open"``, decided
  in the transaction that would write, under the session's write lock).
* In the **middle** (calls followed by something other than their results: a
  user message after an interrupted turn, an imported Hermes session resumed
  without a result): nothing is stored, since a result cannot be inserted.
  :func:`answered_history`, applied to the history a model request is built
  from (the gateway's transcript), inserts a synthetic result right after the
  calls' run of results, marked ``"stored": false`` in its meta; the stored
  transcript stays as it was. :meth:`~ToolRepair.count_dangling_middle` counts
  such conversations and repair results list them (``middle``).

Which calls dangle is pure logic (:func:`scan`, :func:`unanswered`), tested on
its own; the census SQL (``sql_retention.dangling_count``) applies the same rule.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import SessionNotFoundError
from ..model import Message, Session, message_from_row
from ..validate import INT64_MAX, check_id, check_int
from . import sql
from . import sql_retention as q
from .backend import Conn

if TYPE_CHECKING:
    from ..clock import Clock
    from .backend import Backend

SYNTHETIC_CONTENT = "no result: the session was interrupted before the tool returned"
SYNTHETIC_META = {"synthetic": True, "repair": "dangling_tool_call"}
IDEM_PREFIX = "tether-repair:"


def call_id(call: Any) -> str | None:
    """A tool call's id (chat-completions ``id``, Responses-style ``call_id``)."""
    if isinstance(call, dict):
        value = call.get("id") or call.get("call_id")
        return value if isinstance(value, str) and value else None
    return None


def call_name(call: Any) -> str | None:
    """A tool call's function name, where it says one."""
    if not isinstance(call, dict):
        return None
    fn = call.get("function")
    name = fn.get("name") if isinstance(fn, dict) else call.get("name")
    return name if isinstance(name, str) else None


def unanswered(last_assistant: Message | None, after: Sequence[Message]) -> list[Any]:
    """The tool calls of ``last_assistant`` that no tool message in ``after`` answers.

    ``after`` holds the active messages after it. If anything but a tool
    result follows it, nothing can be repaired by appending: returns [].
    Calls without an id cannot be answered at all and are left out.
    """
    if last_assistant is None or not last_assistant.tool_calls:
        return []
    if any(m.role != "tool" for m in after):
        return []
    answered = {m.tool_call_id for m in after}
    out: list[Any] = []
    seen: set[str] = set()
    for call in last_assistant.tool_calls:
        cid = call_id(call)
        if cid is not None and cid not in answered and cid not in seen:
            seen.add(cid)
            out.append(call)
    return out


def _open_calls(tool_calls: list[Any]) -> dict[str, Any]:
    """The answerable calls of an assistant message by id (each once), in order."""
    out: dict[str, Any] = {}
    for call in tool_calls:
        cid = call_id(call)
        if cid is not None and cid not in out:
            out[cid] = call
    return out


_NONE: dict[str, Any] = {}  # no calls pending; never written to (popped only when not empty)


def _walk(messages: Iterable[Message]) -> Iterator[tuple[Message | None, Iterable[Any]]]:
    """Each message with the calls it leaves unanswered by coming before their
    results (only a message that is not a tool result can), then ``None`` with
    the calls unanswered at the tail. The one rule of what dangles."""
    pending = _NONE
    for m in messages:
        if m.role == "tool":
            if pending and m.tool_call_id is not None:
                pending.pop(m.tool_call_id, None)
            yield m, ()
        else:
            yield m, pending.values()
            calls = m.tool_calls
            pending = _open_calls(calls) if calls and m.role == "assistant" else _NONE
    yield None, pending.values()


def scan(messages: Sequence[Message]) -> tuple[list[tuple[int, Any]], list[Any]]:
    """The unanswered calls of a transcript: those in the middle, each with the
    index in ``messages`` of the last message of its run (the calls and the tool
    results right after them), and those at the tail (still answerable by
    appending, or by the owner's running turn)."""
    middle: list[tuple[int, Any]] = []
    tail: list[Any] = []
    for i, (m, left) in enumerate(_walk(messages)):
        if m is None:
            tail = list(left)
        else:
            middle.extend((i - 1, call) for call in left)
    return middle, tail


def synthetic_result(after: Message, call: Any) -> Message:
    """The read-time answer to ``call``, placed after ``after`` (its seq, its time):
    never stored, so marked ``"stored": false``."""
    return Message(
        after.session_id,
        after.seq,
        "tool",
        SYNTHETIC_CONTENT,
        None,
        call_id(call),
        call_name(call),
        after.created_at,
        None,
        {**SYNTHETIC_META, "stored": False},
    )


def answered(messages: Iterable[Message]) -> Iterator[Message]:
    """``messages`` with a synthetic result after each call left dangling in the
    middle, streamed (it holds only the calls of the last assistant message)."""
    prev: Message | None = None
    for m, left in _walk(messages):
        if m is None:
            return
        if prev is not None:
            for call in left:  # answered right after the run, before m
                yield synthetic_result(prev, call)
        yield m
        prev = m


def answered_history(messages: Sequence[Message]) -> list[Message]:
    """``messages`` with a synthetic result after each call left dangling in the middle.

    What a model request is built from: every tool call followed by other
    messages gets an answer right after its run of results. Calls at the tail
    are left as they are (a running turn's tool may still return; a stored
    repair answers them when the session is resumed). Idempotent.
    """
    return list(answered(messages))


@dataclass(frozen=True, slots=True)
class RepairResult:
    """What a repair found and wrote (``written``, 0 in a dry run).

    ``dangling``: the ids of the calls at the tail (answered by appending);
    ``middle``: those in the middle, answered when read (never stored; listed
    only by a repair without ``epoch``). ``skipped`` says why nothing could be
    written (``open``: an open session may have a turn whose tool still runs;
    it is repaired by whoever resumes it, holding its epoch).
    """

    session_id: str
    dangling: list[str]
    written: int = 0
    skipped: str | None = None
    middle: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "dangling": list(self.dangling),
            "middle": list(self.middle),
            "written": self.written,
            "skipped": self.skipped,
        }


class ToolRepair:
    """Repair of dangling tool calls (mixed into :class:`~tether.store.StoreCore`)."""

    backend: Backend
    clock: Clock
    _sql_write_state: str

    if TYPE_CHECKING:  # provided by MessageWrites

        def _event(
            self, c: Conn, session_id: str | None, kind: str, data: dict[str, Any]
        ) -> None: ...

        def _write_state_error(self, c: Conn, session_id: str, epoch: int) -> Exception: ...

        def get_session(self, session_id: str) -> Session: ...

    def _dangling(self, c: Conn, session_id: str) -> list[Any]:
        """The tail's unanswered calls: the last assistant message and what follows it."""
        row = c.execute(q.LAST_ASSISTANT, (session_id,)).fetchone()
        if row is None:
            return []
        last = message_from_row(row)
        rows = c.execute(q.AFTER_SEQ, (session_id, last.seq)).fetchall()
        after = [message_from_row(r) for r in rows]
        return unanswered(last, after)

    def _middle(self, session_id: str) -> list[str]:
        """The ids of the calls dangling in the middle: a read of the whole active
        transcript, apart from any write (nothing is stored for them)."""

        def run(c: Conn) -> list[Any]:
            query = sql.select_messages(1)
            return c.execute(query, (session_id, 0, "active", INT64_MAX)).fetchall()

        middle, _tail = scan([message_from_row(r) for r in self.backend.read(run)])
        return [call_id(call) or "" for _, call in middle]

    def dangling_tool_calls(self, session_id: str) -> list[str]:
        """The ids of the tool calls this session's conversation leaves unanswered."""
        session_id = check_id(session_id)

        def run(c: Conn) -> list[Any]:
            if c.execute(sql.SELECT_WRITE_STATE, (session_id,)).fetchone() is None:
                raise SessionNotFoundError(session_id)
            return self._dangling(c, session_id)

        return [call_id(call) or "" for call in self.backend.read(run)]

    def repair_tool_calls(
        self,
        session_id: str,
        *,
        epoch: int | None = None,
        apply: bool = True,
        middle: bool = True,
    ) -> RepairResult:
        """Append a synthetic tool result for each call dangling at the tail; idempotent.

        With ``epoch`` (the owner's, as after a takeover) the write is fenced
        like an append. Without, only an ended session is written to: an open
        one may have a live turn whose tool is still running, so it is left
        (``skipped="open"``) for whoever resumes it; the decision is taken in
        the transaction that would write, holding the session's write lock, so
        an owner appending the real result meanwhile cannot race it. Without
        ``epoch``, and unless ``middle=False``, the calls dangling in the middle
        are listed too (``middle``, read apart: nothing is stored for them,
        :func:`answered_history` answers them when read). ``apply=False``: a
        dry run.
        """
        session_id = check_id(session_id)
        if epoch is not None:
            epoch = check_int(epoch, "epoch", minimum=0)

        def tx(c: Conn) -> RepairResult:
            # The write locks the session row (PostgreSQL); a dry run only reads it.
            lock = self._sql_write_state if apply else sql.SELECT_WRITE_STATE
            state = c.execute(lock, (session_id,)).fetchone()
            if state is None:
                raise SessionNotFoundError(session_id)
            ended_at, _reason, current_epoch, count, root_id = state
            if epoch is not None and (ended_at is not None or current_epoch != epoch):
                raise self._write_state_error(c, session_id, epoch)
            calls = self._dangling(c, session_id)
            ids = [call_id(x) or "" for x in calls]
            if not calls:
                return RepairResult(session_id, [], middle=inner)
            if epoch is None and ended_at is None:
                return RepairResult(session_id, ids, skipped="open", middle=inner)
            if not apply:
                return RepairResult(session_id, ids, middle=inner)
            now = self.clock.now()
            meta = json.dumps(SYNTHETIC_META, separators=(",", ":"))
            rows = [
                (
                    session_id,
                    count + 1 + k,
                    "tool",
                    SYNTHETIC_CONTENT,
                    None,
                    call_id(call),
                    call_name(call),
                    now,
                    IDEM_PREFIX + (call_id(call) or ""),
                    meta,
                    None,
                )
                for k, call in enumerate(calls)
            ]
            c.executemany(sql.INSERT_MESSAGE, rows)
            n = len(rows)
            c.execute(q.REPAIR_BUMP, (n, now, now, session_id))
            c.execute(sql.BUMP_CHAIN, (n, root_id))
            self._event(c, session_id, "tools_repaired", {"calls": ids})
            return RepairResult(session_id, ids, written=n, middle=inner)

        inner = self._middle(session_id) if middle and epoch is None else []
        if apply:
            return self.backend.write(tx)
        return self.backend.read(tx)

    def repair_lineage(self, session_id: str) -> list[RepairResult]:
        """Repair ``session_id`` and the ancestors it continues (by parent links).

        What a continuation (a new session with ``parent_id``) needs before its
        first turn: the agent reads the whole lineage. Open members are left
        to their owners. Raises :class:`SessionNotFoundError` for an unknown id.
        """
        session_id = check_id(session_id)
        out: list[RepairResult] = []
        at: str | None = session_id
        seen: set[str] = set()
        while at is not None and at not in seen:
            seen.add(at)
            # Only the tail is stored; the middle is answered when the agent reads it.
            out.append(self.repair_tool_calls(at, middle=False))
            parent = self.get_session(at).parent_id
            at = parent
        return [r for r in out if r.dangling]

    def dangling_sessions(self, *, after: str = "", limit: int = 1000) -> list[str]:
        """Ids of sessions (outside the trash) with unanswered tool calls, at the
        tail or in the middle of their conversation, in id order after ``after``
        (a page of at most ``limit``; pass the last id to get the next)."""
        query = q.dangling_sessions(self.backend.dialect)
        limit = check_int(limit, "limit", minimum=1)
        rows = self.backend.read(lambda c: c.execute(query, (after, limit)).fetchall())
        return [r[0] for r in rows]

    def count_dangling(self) -> int:
        """How many sessions (outside the trash) end in unanswered tool calls
        (what a stored repair answers)."""
        return self._count(q.dangling_count(self.backend.dialect))

    def count_dangling_middle(self) -> int:
        """How many sessions (outside the trash) have unanswered tool calls in the
        middle of their conversation (answered when read, never stored)."""
        return self._count(q.dangling_count(self.backend.dialect, middle=True))

    def _count(self, query: str) -> int:
        return int(self.backend.read(lambda c: c.execute(query).fetchone()[0]))
