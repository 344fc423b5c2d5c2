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
- Segments are *owned* by the process that started them, like any tether
  session: several processes (web workers) write one conversation, the ones
  that find the newest segment open and its owner alive write into it as
  cooperating writers. A worker that exits ends its segments
  ``process_exit``; one killed with SIGKILL leaves them to the reaper
  (``reaped``). Either way the next ``add_items``, in any process, starts
  segment n+1 in the same chain, and the items of ended segments still belong
  to the conversation (back to the last ``cleared`` one).
- Items carry idempotency keys derived from the call (a digest of this
  instance and the call's number, and the item's position), so a write
  retried within the call (a commit of unknown outcome, a segment that ended
  meanwhile) never stores an item twice. Across calls, equal items are
  distinct items: the SDK reconciles a retried turn from the history it reads.

The SDK itself is not imported by tether; this module needs it only for
``SessionSettings`` (``pip install 'tether[openai-agents]'``).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import threading
import time
from collections.abc import Iterator
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from ..compose import Store, open_store
from ..errors import InvalidInputError, SessionEndedError, StaleOwnerError, TetherError
from ..ids import new_id
from ..lifecycle.handle import SessionHandle
from ..liveness import Reaper
from ..model import Message, Session
from ..store.owners import OwnerInfo
from ..store.writes import NewSession, Row, WriteState
from ..validate import (
    BAD_TEXT_SEARCH,
    check_metadata,
    check_payload,
    check_source,
    check_text,
    check_tool_calls,
)
from . import hop

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


def _refuse(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _dumps(value: Any) -> str:
    """JSON text as tether stores it (compact, unicode as is, no NaN).

    ``json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))``
    without building an encoder object per call (half the cost of a small item).
    """
    if c_make_encoder is None:  # pragma: no cover - CPython has the C encoder
        return _ENCODER.encode(value)
    # A new C encoder per call: its circular-reference markers are per call.
    encode = c_make_encoder({}, _refuse, encode_basestring, None, ":", ",", False, False, False)
    return "".join(encode(value, 0))


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _columns(item: Any) -> tuple[str, Any, Any, Any, str | None]:
    """:func:`project_item` as a row's columns: role, content, tool_calls (a list or
    None), tool_call_id, meta JSON text. The hot path of ``add_items``: no dicts."""
    if not isinstance(item, dict):
        raise InvalidInputError(f"an SDK item must be a dict, not {type(item).__name__}")
    kind = item.get("type")
    role = item.get("role")
    if role in _TEXT_ROLES and (kind is None or kind == "message"):
        content = item.get("content")
        return role, content if isinstance(content, str) else _text_of(content), None, None, None
    if kind == "function_call":
        call = {
            "id": item.get("call_id"),
            "type": "function",
            "function": {"name": item.get("name"), "arguments": item.get("arguments")},
        }
        return "assistant", None, [call], None, None
    if kind == "function_call_output":
        output = item.get("output")
        text = output if isinstance(output, str) else _text_of(output)
        return "tool", text, None, item.get("call_id"), None
    return "assistant", None, None, None, _dumps({"kind": str(kind or role)})


# How often one call moves on to a newer segment before giving up: each move
# means another process ended or took over the segment between two statements.
_SEGMENT_ATTEMPTS = 8

# get_items(limit) up to this many items reads SQLite on the event loop's thread.
_INLINE_READ_LIMIT = 100

# Segments this process started, with the handle that ends them on exit
# (``process_exit``) and keeps this process's heartbeat going meanwhile.
_owned: dict[tuple[int, str], SessionHandle] = {}
_owned_lock = threading.Lock()


class TetherSession:
    """The SDK's ``Session`` protocol on a tether store (one SDK session = one chain).

    ``store`` is a :class:`tether.Store`, a SQLite path or a URL (None: the
    user's default store). A store opened here from a path is closed by
    :meth:`close`; one passed in is left open. After :meth:`close`, mutations
    raise :class:`RuntimeError`; the conversation itself is not ended.

    Writes run in a worker thread (one hop, :mod:`tether.interop.hop`), so the event loop
    never waits on the database; so do reads, but a short one on SQLite (a WAL
    read never waits for writers). Mutations run to completion even
    when the caller is cancelled, then re-raise the cancellation, as the SDK's
    own sessions do.
    """

    def __init__(
        self,
        session_id: str,
        store: Store | str | os.PathLike[str] | None = None,
        *,
        session_settings: Any = None,
        source: str = SOURCE,
        model: str | None = None,
        title: str | None = None,
        cwd: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(session_id, str) or not session_id:
            raise InvalidInputError("session_id must be a non-empty string")
        self.session_id = session_id
        self.session_settings = _settings(session_settings)
        self._source = check_source(source)
        self._model = check_text(model, "model")
        self._title = check_text(title, "title")
        self._cwd = check_text(cwd, "cwd")
        self._metadata = check_metadata(
            {"openai_agents_session_id": session_id, **(metadata or {})}
        )
        self._owns_store = not isinstance(store, Store)
        self._store: Store = store if isinstance(store, Store) else open_store(store)
        self._root_origin = self._origin(1)
        # Serializes this instance's mutations: the SDK's sessions promise that
        # one instance's writes apply in call order.
        self._lock = threading.Lock()
        self._closed = False
        # The segment of this process this instance last wrote to, and what it
        # knows of it: a write goes there without a lookup; if it ended or moved
        # on meanwhile, the write is refused and the newest segment is looked up.
        self._w: WriteState | None = None
        # Idempotency keys: derived from the call (see _rows), never random.
        self._calls = itertools.count(1)
        self._instance = f"{os.getpid()}:{id(self)}:{time.time_ns()}"
        self._reaper: Reaper | None = None
        backend = self._store.backend
        self._inline_reads = backend.dialect == "sqlite" and "memory:" not in backend.url

    @property
    def store(self) -> Store:
        """The tether store this session writes to."""
        return self._store

    def _origin(self, n: int) -> str:
        return f"{self._source}:{self.session_id}#{n}"

    def _number(self, segment: Session) -> int:
        """A segment's number n, from its origin ``<source>:<session_id>#<n>``."""
        origin = segment.origin or ""
        head, _, n = origin.rpartition("#")
        if head != f"{self._source}:{self.session_id}" or not n.isdigit():
            raise TetherError(f"session {segment.id} is not a segment of {self.session_id!r}")
        return int(n)

    # --- segments ------------------------------------------------------------------

    def _tip(self) -> tuple[Session, OwnerInfo | None] | None:
        """The newest segment and its owner (None: nothing stored yet). O(1)."""
        return self._store.chain_tip_by_origin(self._root_origin)

    def _visible(self, tip: Session) -> Iterator[Session]:
        """The segments whose items make the conversation, newest first, read lazily.

        The tip and its predecessors back to (not including) the last segment
        that ``clear_session`` ended; none if that is the tip itself. A reader
        that has enough items stops early, so a limited read costs O(limit).
        """
        segment = tip
        while segment.end_reason != CLEARED_REASON:
            yield segment
            if segment.parent_id is None:
                return
            segment = self._store.get_session(segment.parent_id)

    def _owner_dead(self, owner: OwnerInfo | None, segment: Session) -> bool:
        """True when the open segment's owner is another process, and dead."""
        if segment.owner_id is None or segment.owner_id == self._store.owner_id:
            return False
        if self._reaper is None:
            self._reaper = Reaper(self._store)
        return not self._reaper.verdict(segment.owner_id, owner, time.time()).alive

    def _start_segment(self, n: int, parent: str | None, rows: list[Row]) -> WriteState | None:
        """Write segment n (owned here) with ``rows`` in one transaction.

        None if another process started segment n first (its origin is taken):
        nothing was written, and the caller looks the tip up again.
        """
        now = self._store.clock.now()
        new = NewSession(
            id=new_id(now),
            source=self._source,
            model=self._model,
            title=self._title,
            cwd=self._cwd,
            parent_id=parent,
            branch=False,
            metadata=self._metadata,
            created_at=now,
            origin=self._origin(n),
        )
        w = WriteState(new.id, 0)
        try:
            self._store.write_messages(new, w, rows).apply(w)
        except Exception:
            if self._store.find_by_origin(new.origin or "") is not None:
                return None  # lost the race for segment n: write into the winner's
            raise
        # A handle that owns the segment: this process heartbeats for it, and ends
        # it ``process_exit`` if it exits first (a SIGKILL leaves it to the reaper).
        session = self._store.get_session(new.id)
        handle = SessionHandle.existing(self._store, self._store.owner, session, owns=True)
        self._store.owner.acquire(new.id)
        with _owned_lock:
            for key in [k for k, h in _owned.items() if h.ended]:
                del _owned[key]  # ended elsewhere (store closed, reaped, cleared)
            _owned[(id(self._store), new.id)] = handle
        if self._store.plugins.implemented("on_session_start"):
            self._store.plugins.call("on_session_start", session=session)
        return w

    def _write(self, rows: list[Row]) -> None:
        """Append ``rows`` to the conversation's open segment, starting one if needed."""
        swept = False
        for attempt in range(_SEGMENT_ATTEMPTS):
            if self._w is not None:
                try:
                    # The keys are new to the store on a first attempt (derived from
                    # this call); the store still looks them up if a commit's outcome
                    # was unknown, and so does every later attempt.
                    if attempt == 0:
                        # The store's hot path: one statement on PostgreSQL (no BEGIN
                        # and COMMIT round trips); it resolves an unknown commit by
                        # finding the rows themselves.
                        if len(rows) == 1:
                            self._store.append_message(self._w, rows[0])
                        else:
                            self._store.append_messages(self._w, rows)
                    else:
                        self._store.write_messages(None, self._w, rows).apply(self._w)
                    return
                except (SessionEndedError, StaleOwnerError):
                    self._w = None  # ended or taken over meanwhile: find the newest one
                    continue
            found = self._tip()
            if found is None:
                n, parent = 1, None
            else:
                tip, owner = found
                if tip.is_open and not swept and self._owner_dead(owner, tip):
                    # Its writer was killed: end it honestly (``reaped``) before
                    # the conversation moves on to a segment of its own. (If the
                    # sweep, on the server's clock, finds it alive after all, the
                    # segment is written to like any open one.)
                    assert self._reaper is not None
                    self._reaper.sweep()
                    swept = True
                    continue
                if tip.is_open:
                    w = WriteState(tip.id, tip.epoch)
                    try:
                        self._store.write_messages(None, w, rows, check_keys=attempt > 0)
                    except (SessionEndedError, StaleOwnerError):
                        continue
                    if tip.owner_id == self._store.owner_id:
                        self._w = w  # ours: the next write goes straight there
                    # Another process's: looked up (and its owner judged) on every
                    # write, so a writer that dies is reaped on the next one.
                    return
                n, parent = self._number(tip) + 1, tip.id
            started = self._start_segment(n, parent, rows)
            if started is not None:
                self._w = started
                return
        raise TetherError(
            f"{self.session_id!r}: the conversation kept moving to newer segments "
            f"({_SEGMENT_ATTEMPTS} tries); nothing was written by the last one"
        )

    # --- blocking implementations (run in a worker thread) ---------------------------

    def _rows(self, items: list[Any]) -> list[Row]:
        """Each item as a row: readable columns, the exact item, a key derived from the call.

        The item's JSON text is made once: it is the payload as stored, and one
        scan of it vouches for every string inside (no lone surrogate; JSON
        itself escapes NUL).
        """
        # One digest per call; an item's key is that and its position. A retried
        # write of the call carries the very same rows, so the same keys.
        call = hashlib.blake2b(
            f"{self._instance}:{next(self._calls)}".encode(), digest_size=12
        ).hexdigest()
        now = time.time()
        rows: list[Row] = []
        for i, item in enumerate(items):
            role, content, tool_calls, tool_call_id, meta = _columns(item)
            try:
                text = _dumps(item)
            except (TypeError, ValueError, RecursionError):
                text = None
            if text is None or (not text.isascii() and BAD_TEXT_SEARCH(text)):
                check_payload(item)  # says what is wrong, and where
                raise InvalidInputError("an SDK item must be JSON")  # pragma: no cover
            calls_text = None if tool_calls is None else _dumps(tool_calls)
            if "\\u0000" in text or not (
                (content is None or type(content) is str)
                and (tool_call_id is None or type(tool_call_id) is str)
            ):
                # A NUL (JSON escapes it, so the scan above did not see it) or a
                # column that is not text: the checks say which and where.
                content = check_text(content, "content")
                tool_call_id = check_text(tool_call_id, "tool_call_id")
                if calls_text is not None and "\\u0000" in calls_text:
                    calls_text = check_tool_calls(tool_calls)
            rows.append(
                (role, content, calls_text, tool_call_id, None, now, f"oa:{call}:{i}", meta, text)
            )
        return rows

    def _get_items(self, limit: int | None) -> list[Any]:
        if self._closed and self._owns_store:
            # The store opened here is closed with the session: say so plainly.
            self._check_open()
        if limit is not None:
            # The common case, one read: the tip and its last `limit` items.
            found = self._store.chain_tip_tail(self._root_origin, limit)
            if found is None:
                return []
            tip, _, out = found
            if tip.end_reason == CLEARED_REASON:
                return []
            if len(out) >= limit or tip.parent_id is None:
                return out
            for segment in itertools.islice(self._visible(tip), 1, None):
                part = self._store.get_last_messages(segment.id, limit - len(out))
                out[:0] = [m.payload for m in part]
                if len(out) >= limit:
                    break
            return out
        tip_owner = self._tip()
        if tip_owner is None:
            return []
        messages: list[Message] = []
        for segment in self._visible(tip_owner[0]):
            messages[:0] = self._store.get_messages(segment.id)
        return [m.payload for m in messages]

    def _add_items(self, rows: list[Row]) -> None:
        with self._lock:
            self._check_open()
            if rows:
                self._write(rows)

    def _pop_item(self) -> Any:
        with self._lock:
            self._check_open()
            found = self._tip()
            if found is None:
                return None
            for segment in self._visible(found[0]):
                message: Message | None = self._store.retract_last(segment.id)
                if message is not None:
                    return message.payload
            return None

    def _clear_session(self) -> None:
        with self._lock:
            self._check_open()
            self._w = None
            found = self._tip()
            if found is None or not found[0].is_open:
                return
            tip = found[0]
            with _owned_lock:
                handle = _owned.pop((id(self._store), tip.id), None)
            if handle is not None and not handle.ended:
                handle.end(CLEARED_REASON, "clear_session()", interrupted=False)
            else:
                self._store.end_session(
                    tip.id, CLEARED_REASON, "clear_session()", interrupted=False
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
        if limit is not None and limit <= _INLINE_READ_LIMIT and self._inline_reads:
            # A WAL reader never waits for writers: a short read costs less than
            # the hop to a worker thread and back.
            return self._get_items(limit)
        return await hop.run(self._get_items, limit)

    async def add_items(self, items: list[Any], *, wrapper: Any = None) -> None:
        """Store ``items`` in order, in one transaction."""
        rows = self._rows(list(items))  # validated (and keyed) before anything is written
        await self._mutate(self._add_items, rows)

    async def pop_item(self, *, wrapper: Any = None) -> Any:
        """Remove and return the newest item (None if there is none)."""
        return await self._mutate(self._pop_item)

    async def clear_session(self, *, wrapper: Any = None) -> None:
        """Forget every item: the current segment ends (``cleared``); the chain goes on."""
        await self._mutate(self._clear_session)

    async def _mutate(self, fn: Any, *args: Any) -> Any:
        """Run a mutation to completion even if the caller is cancelled meanwhile.

        Its outcome is then known (committed or not) and the cancellation is
        re-raised, as the SDK's own sessions do: the write never stops half-way,
        and the caller that was cancelled can read what it did.
        """
        # One hop to a worker thread (tether.interop.hop: cheaper than an executor's);
        # the shield keeps a cancellation of the caller from cancelling the work
        # itself (even before it started), as the SDK's own sessions do with a task
        # of its own (measured: 7 us less a call).
        work = hop.run(fn, *args)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError as exc:
            cancelled = exc
        while not work.done():
            try:
                await asyncio.wait({work})
            except asyncio.CancelledError:
                pass  # the first cancellation is the one re-raised
        try:
            work.result()
        except BaseException:
            raise cancelled from None
        raise cancelled  # the outcome is in the store, whatever it was

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
