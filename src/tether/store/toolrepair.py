"""Tool-call repair: answer the tool calls a conversation left dangling.

A conversation whose last assistant message called tools that never answered
(the process died, the turn was interrupted, the session was reaped) cannot be
sent to a model as it is: providers reject a tool call without its result.
:meth:`ToolRepair.repair_tool_calls` appends one tool message per unanswered
call, with :data:`SYNTHETIC_CONTENT` and ``meta`` marking it synthetic, in one
transaction. It is idempotent: the appended results answer the calls, so a
second repair finds nothing (and each carries the idempotency key
``tether-repair:<call id>``, so not even a race can write one twice).

Which calls dangle is pure logic (:func:`unanswered`), tested on its own.
Only the tail of a conversation is repaired: results can be appended, not
inserted, so calls followed by anything but tool results are left alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import SessionNotFoundError
from ..model import Message, Session, message_from_row
from ..validate import check_id, check_int
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


@dataclass(frozen=True, slots=True)
class RepairResult:
    """What a repair found (``dangling``) and wrote (``written``, 0 in a dry run).

    ``skipped`` says why nothing could be written (``open``: an open session
    is repaired by whoever resumes it, holding its epoch).
    """

    session_id: str
    dangling: list[str]
    written: int = 0
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "dangling": list(self.dangling),
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
        row = c.execute(q.LAST_ASSISTANT, (session_id,)).fetchone()
        if row is None:
            return []
        last = message_from_row(row)
        rows = c.execute(q.AFTER_SEQ, (session_id, last.seq)).fetchall()
        after = [message_from_row(r) for r in rows]
        return unanswered(last, after)

    def dangling_tool_calls(self, session_id: str) -> list[str]:
        """The ids of the tool calls this session's conversation leaves unanswered."""
        session_id = check_id(session_id)

        def run(c: Conn) -> list[Any]:
            if c.execute(sql.SELECT_WRITE_STATE, (session_id,)).fetchone() is None:
                raise SessionNotFoundError(session_id)
            return self._dangling(c, session_id)

        return [call_id(call) or "" for call in self.backend.read(run)]

    def repair_tool_calls(
        self, session_id: str, *, epoch: int | None = None, apply: bool = True
    ) -> RepairResult:
        """Append a synthetic tool result for each dangling call; idempotent.

        With ``epoch`` (the owner's, as after a takeover) the write is fenced
        like an append. Without, only an ended session is written to: an open
        one may have a live turn whose tool is still running, so it is left
        (``skipped="open"``) for whoever resumes it. ``apply=False``: a dry run.
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
                return RepairResult(session_id, [])
            if epoch is None and ended_at is None:
                return RepairResult(session_id, ids, skipped="open")
            if not apply:
                return RepairResult(session_id, ids)
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
            return RepairResult(session_id, ids, written=n)

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
            out.append(self.repair_tool_calls(at))
            parent = self.get_session(at).parent_id
            at = parent
        return [r for r in out if r.dangling]

    def dangling_sessions(self, *, limit: int = 1000) -> list[str]:
        """Ids of sessions (outside the trash) whose conversation ends in dangling calls."""
        dialect = self.backend.dialect
        rows = self.backend.read(
            lambda c: c.execute(q.dangling_sessions(dialect), ("", limit)).fetchall()
        )
        return [r[0] for r in rows]

    def count_dangling(self) -> int:
        """How many sessions (outside the trash) end in dangling tool calls."""
        dialect = self.backend.dialect
        return int(self.backend.read(lambda c: c.execute(q.dangling_count(dialect)).fetchone()[0]))
