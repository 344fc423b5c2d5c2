"""An OpenAI Agents SDK ``Session`` backed by a tether store.

Change one line of an agent built on the SDK (openai-agents 0.24+)::

    from agents import Agent, Runner
    from tether.interop.openai_agents import TetherSession

    result = await Runner.run(agent, "hello", session=TetherSession("user-42"))

Mapping (see README, "OpenAI Agents SDK"):

- One SDK session id is one tether chain. Its segments are sessions of source
  ``openai-agents`` with origin ``openai-agents:<session_id>#<n>`` (n = 1, 2...);
  each continues the previous one, so ``tether ls`` lists the conversation once.
- Each item is one message: the exact item in ``payload``, a readable
  projection in ``role``/``content``/``tool_calls``/``tool_call_id``.
- ``pop_item`` retracts the newest active message (O(1), seqs stay gap-free).
- ``clear_session`` ends the current segment with reason ``cleared``; the
  next ``add_items`` starts segment n+1 in the same chain.
- Segments are *external* sessions (written through the store's import API):
  the SDK has no process that owns a conversation, so no owner is recorded
  and no reaper ends them.

The SDK itself is not imported by tether; this module needs it only for
``SessionSettings`` (``pip install 'tether[openai-agents]'``).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from typing import Any

from ..compose import Store, open_store
from ..errors import InvalidInputError
from ..model import Message, Session

__all__ = ["CLEARED_REASON", "SOURCE", "TetherSession", "project_item"]

SOURCE = "openai-agents"
#: The end reason of a segment that ``clear_session`` closed.
CLEARED_REASON = "cleared"

_TEXT_ROLES = frozenset({"user", "system", "developer", "assistant"})


def _text_of(content: Any) -> str | None:
    """Readable text of an item's content: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        ]
        if not texts:
            texts = [
                p["refusal"]
                for p in content
                if isinstance(p, dict) and isinstance(p.get("refusal"), str)
            ]
        return "\n".join(texts) if texts else None
    return None


def project_item(item: Any) -> dict[str, Any]:
    """tether's readable columns for one SDK item (the item itself goes to ``payload``).

    Messages keep their role and text; a function call becomes an assistant
    message with ``tool_calls``; its output a ``tool`` message; anything else
    (reasoning, computer calls...) an assistant message with no content and
    ``meta.kind`` naming the item type.
    """
    if not isinstance(item, dict):
        raise InvalidInputError(f"an SDK item must be a dict, not {type(item).__name__}")
    kind = item.get("type")
    role = item.get("role")
    if role in _TEXT_ROLES and kind in (None, "message"):
        return {"role": role, "content": _text_of(item.get("content"))}
    if kind == "function_call":
        call = {
            "id": item.get("call_id"),
            "type": "function",
            "function": {"name": item.get("name"), "arguments": item.get("arguments")},
        }
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    if kind == "function_call_output":
        output = item.get("output")
        return {
            "role": "tool",
            "content": output if isinstance(output, str) else _text_of(output),
            "tool_call_id": item.get("call_id"),
        }
    return {"role": "assistant", "content": None, "meta": {"kind": str(kind or role)}}


def _settings(session_settings: Any) -> Any:
    # The SDK lives in its own environment (openai>=3), not where mypy runs.
    from agents.memory import SessionSettings  # type: ignore[import-not-found, unused-ignore]

    if session_settings is None:
        return SessionSettings()
    if isinstance(session_settings, dict):
        from agents.memory.session_settings import (  # type: ignore[import-not-found, unused-ignore]
            coerce_session_settings,
        )

        return coerce_session_settings(session_settings)
    return session_settings


class TetherSession:
    """The SDK's ``Session`` protocol on a tether store (one SDK session = one chain).

    ``store`` is a :class:`tether.Store`, a SQLite path or a URL (None: the
    user's default store). A store opened here from a path is closed by
    :meth:`close`; one passed in is left open. After :meth:`close`, mutations
    raise :class:`RuntimeError`; the conversation itself is not ended.

    Every store call runs in a worker thread (``asyncio.to_thread``), so the
    event loop never waits on the database.
    """

    def __init__(
        self,
        session_id: str,
        store: Store | str | os.PathLike[str] | None = None,
        *,
        session_settings: Any = None,
        model: str | None = None,
        title: str | None = None,
        cwd: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(session_id, str) or not session_id:
            raise InvalidInputError("session_id must be a non-empty string")
        self.session_id = session_id
        self.session_settings = _settings(session_settings)
        self._owns_store = not isinstance(store, Store)
        self._store: Store = store if isinstance(store, Store) else open_store(store)
        self._model, self._title, self._cwd, self._metadata = model, title, cwd, metadata
        # Serializes this instance's mutations: the SDK's sessions promise that
        # one instance's writes apply in call order.
        self._lock = threading.Lock()
        self._closed = False

    @property
    def store(self) -> Store:
        """The tether store this session writes to."""
        return self._store

    def _origin(self, n: int) -> str:
        return f"{SOURCE}:{self.session_id}#{n}"

    # --- segments ------------------------------------------------------------------

    def _current(self) -> tuple[int, Session] | None:
        """The newest segment and its number (None: nothing stored yet)."""
        root = self._store.find_by_origin(self._origin(1))
        if root is None:
            return None
        tip = self._store.get_chain(root.id)[-1]
        n = 1
        if tip.origin is not None and tip.origin.startswith(f"{SOURCE}:{self.session_id}#"):
            n = int(tip.origin.rsplit("#", 1)[1])
        return n, tip

    def _writable(self) -> tuple[int, Session]:
        """The open segment to write to, started (as segment n+1) if the last one ended."""
        current = self._current()
        if current is not None and current[1].is_open:
            return current
        n = 1 if current is None else current[0] + 1
        parent = None if current is None else current[1].id
        result = self._store.import_session(
            self._origin(n),
            source=SOURCE,
            created_at=time.time(),
            model=self._model,
            title=self._title,
            cwd=self._cwd,
            parent_id=parent,
            metadata={"openai_agents_session_id": self.session_id, **(self._metadata or {})},
        )
        return n, result.session

    # --- blocking implementations (run in a worker thread) ---------------------------

    def _get_items(self, limit: int | None) -> list[Any]:
        if self._closed and self._owns_store:
            # The store opened here is closed with the session: say so plainly.
            self._check_open()
        current = self._current()
        if current is None or not current[1].is_open:
            return []
        sid = current[1].id
        if limit is None:
            messages = self._store.get_messages(sid)
        else:
            messages = self._store.get_last_messages(sid, limit)
        return [m.payload for m in messages]

    def _add_items(self, items: list[Any]) -> None:
        now = time.time()
        rows = []
        for item in items:
            row = project_item(item)
            row.update(key=f"oa:{uuid.uuid4().hex}", created_at=now, payload=item)
            rows.append(row)
        with self._lock:
            self._check_open()
            if not rows:
                return
            n, _ = self._writable()
            self._store.import_messages(self._origin(n), rows)

    def _pop_item(self) -> Any:
        with self._lock:
            self._check_open()
            current = self._current()
            if current is None or not current[1].is_open:
                return None
            message: Message | None = self._store.retract_last(current[1].id)
            return None if message is None else message.payload

    def _clear_session(self) -> None:
        with self._lock:
            self._check_open()
            current = self._current()
            if current is not None and current[1].is_open:
                self._store.end_session(
                    current[1].id, CLEARED_REASON, "clear_session()", interrupted=False
                )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"TetherSession {self.session_id!r} is closed")

    # --- the Session protocol ----------------------------------------------------------

    async def get_items(self, limit: int | None = None, *, wrapper: Any = None) -> list[Any]:
        """The newest ``limit`` items (None: the settings' limit, else all), oldest first."""
        if limit is None and self.session_settings is not None:
            limit = self.session_settings.limit
        if limit is not None:
            if limit == 0:
                return []
            if limit < 0:  # as SQLiteSession: a negative limit means everything
                limit = None
        return await asyncio.to_thread(self._get_items, limit)

    async def add_items(self, items: list[Any], *, wrapper: Any = None) -> None:
        """Store ``items`` in order, in one transaction."""
        await self._mutate(self._add_items, list(items))

    async def pop_item(self, *, wrapper: Any = None) -> Any:
        """Remove and return the newest item (None if there is none)."""
        return await self._mutate(self._pop_item)

    async def clear_session(self, *, wrapper: Any = None) -> None:
        """Forget every item: the current segment ends (``cleared``); the chain goes on."""
        await self._mutate(self._clear_session)

    async def _mutate(self, fn: Any, *args: Any) -> Any:
        """Run a mutation to completion even if the caller is cancelled meanwhile.

        Its outcome is then known (committed or not) and the cancellation is
        re-raised, as the SDK's own sessions do: a cancelled retry never
        writes twice because the first write never stops half-way.
        """
        task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            while not task.done():
                try:
                    await asyncio.shield(task)
                except asyncio.CancelledError:
                    continue
            task.result()  # a failure of the write itself wins over the cancellation
            raise

    def close(self) -> None:
        """Refuse later mutations and close a store opened here; the conversation stays open."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._owns_store:
                self._store.close()

    def __repr__(self) -> str:
        return f"<TetherSession {self.session_id!r} on {self._store!r}>"
