"""Session handles: the in-process face of one session.

A handle writes nothing until it has content (no ghost rows), commits each
``append`` before returning, batches ``buffer``-ed messages into one
transaction per ``flush``, and ends exactly once on whatever path the process
takes out (see :mod:`tether.lifecycle.exits`).
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
import logging
import secrets
import threading
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import (
    CommitUnknownError,
    MessagesLostError,
    SessionEndedError,
    SessionNotFoundError,
    StaleOwnerError,
    TetherError,
)
from ..ids import new_id
from ..model import Message, Session
from ..store.core import INTERRUPTED_REASONS
from ..store.writes import NewSession, Row, WriteState
from ..validate import (
    BAD_TEXT_SEARCH as _BAD_TEXT,
)
from ..validate import (
    ROLES,
    check_detail,
    check_meta,
    check_metadata,
    check_origin,
    check_payload,
    check_reason,
    check_role,
    check_source,
    check_text,
    check_tool_calls,
)
from . import exits

if TYPE_CHECKING:
    from ..store import StoreCore

log = logging.getLogger("tether.lifecycle")


class HandleState(enum.IntEnum):
    """Where a handle is in its life (after python-websockets' ``protocol.State``).

    ``NEW``: nothing written yet (no row: no ghost). ``PERSISTED``: the row
    exists and this handle may write. ``ENDED``: it can write no more (it ended
    the session, found it ended, or, attached, let go of it). ``FENCED``: another
    process took the session over; this handle's epoch is stale. The last two
    are final.
    """

    NEW = 0
    PERSISTED = 1
    ENDED = 2
    FENCED = 3


NEW, PERSISTED, ENDED, FENCED = HandleState  # module constants: `is` tests on the hot path

# The transitions a handle may make; any other is a bug in this module. (NEW ->
# FENCED: a first write that finds its session owned elsewhere, as any write can.)
_TRANSITIONS = {
    NEW: (PERSISTED, ENDED, FENCED),
    PERSISTED: (ENDED, FENCED),
    ENDED: (),
    FENCED: (),
}


class InvalidHandleState(RuntimeError):
    """A handle was asked to move to a state it cannot reach from where it is (a bug)."""


class HandleOwner(Protocol):
    """What a handle asks of this process's owner (:class:`tether.liveness.ProcessOwner`,
    which sits above this layer and is handed in by :mod:`tether.compose`)."""

    def acquire(self, session_id: str, *, row_written: bool = True) -> None:
        """A handle of this process now owns ``session_id``: keep the heartbeat going
        (``row_written``: the transaction that wrote the session wrote the owner row)."""
        ...

    def release(self, session_id: str) -> None:
        """``session_id`` is no longer owned here."""
        ...

    def deliver_due_hooks_soon(self) -> None:
        """Once per store, in the background: deliver what dead processes owed."""
        ...


class SessionHandle:
    """A live session owned by this process. Get one from ``store.session(...)``.

    Use it as a context manager so every exit path ends it::

        with store.session(source="cli", model="gpt-4o") as s:
            s.append("user", "hello")
            s.append("assistant", "hi!")
        # ended with reason "completed" (or "error" if the block raised)
    """

    def __init__(
        self,
        store: StoreCore,
        owner: HandleOwner,
        new: NewSession,
        *,
        persisted: bool,
        epoch: int,
        owns: bool = True,
    ) -> None:
        self._store = store
        self._owner = owner
        self._owns = owns
        self._new_session = new  # not _new: an earlier name of the classmethod below
        self._state = PERSISTED if persisted else NEW
        self._has_row = persisted  # stays True once the row exists, whatever follows
        self._w = WriteState(new.id, epoch)
        self._pending: list[Row] = []
        self._lock = threading.RLock()
        # Buffered messages get keys unique to this handle; a flush looks them
        # up in the store only when one may already be there: after a write that
        # failed (it may have committed), or for keys the caller chose. Only a
        # write that carried the pending rows clears the need.
        # The prefix is drawn on the first buffer() (most sessions never buffer:
        # no random bytes read per session for them).
        self._key_prefix = ""
        self._key_numbers = itertools.count(1)
        self._check_keys = False
        self._now = store.clock.now

    @classmethod
    def new(
        cls,
        store: StoreCore,
        owner: HandleOwner,
        *,
        source: str,
        model: str | None,
        title: str | None,
        cwd: str | None,
        parent_id: str | None,
        metadata: dict[str, Any] | None,
        branch: bool,
        origin: str | None = None,
    ) -> SessionHandle:
        """A handle on a session not written yet (``store.session``)."""
        now = store.clock.now()
        # Most of these are None: a check is only called for a value (every session pays).
        new = NewSession(
            new_id(now),
            check_source(source),
            None if model is None else check_text(model, "model"),
            None if title is None else check_text(title, "title"),
            None if cwd is None else check_text(cwd, "cwd"),
            None if parent_id is None else check_text(parent_id, "parent_id"),
            bool(branch),
            None if metadata is None else check_metadata(metadata),
            now,
            None if origin is None else check_origin(origin),
        )  # NewSession's field order
        handle = cls(store, owner, new, persisted=False, epoch=0)
        exits.track(handle)
        return handle

    @classmethod
    def existing(
        cls, store: StoreCore, owner: HandleOwner, session: Session, *, owns: bool
    ) -> SessionHandle:
        """A handle on a session row that already exists (``store.resume``, ``attach``)."""
        new = NewSession(
            id=session.id,
            source=session.source,
            model=session.model,
            title=session.title,
            cwd=session.cwd,
            parent_id=session.parent_id,
            branch=session.root_id == session.id and session.parent_id is not None,
            metadata=None,
            created_at=session.created_at,
        )
        handle = cls(store, owner, new, persisted=True, epoch=session.epoch, owns=owns)
        exits.track(handle)
        return handle

    # --- state ---------------------------------------------------------------------

    @property
    def state(self) -> HandleState:
        """Where this handle is: new, persisted, ended or fenced (see :class:`HandleState`)."""
        return self._state

    @state.setter
    def state(self, state: HandleState) -> None:
        if state not in _TRANSITIONS[self._state]:
            raise InvalidHandleState(
                f"session {self.id}: handle cannot go from {self._state.name} to {state.name}"
            )
        if log.isEnabledFor(logging.DEBUG):  # names looked up only when logged
            log.debug("session %s: handle %s -> %s", self.id, self._state.name, state.name)
        self._state = state
        if state is PERSISTED:
            self._has_row = True

    @property
    def id(self) -> str:
        return self._new_session.id

    @property
    def store(self) -> StoreCore:
        return self._store

    @property
    def persisted(self) -> bool:
        """True once the session's row exists in the store."""
        return self._has_row

    @property
    def ended(self) -> bool:
        """True once this handle can write no more (ended, or taken over)."""
        return self._state >= ENDED

    @property
    def epoch(self) -> int:
        return self._w.epoch

    @property
    def owns(self) -> bool:
        """False for a handle from ``store.attach``: it never ends the session."""
        return self._owns

    @property
    def pending(self) -> int:
        """Buffered messages not yet flushed."""
        return len(self._pending)

    def set_title(self, title: str | None) -> bool:
        """Give a session that is not written yet the title its row will carry.

        The row is written with the first message, so a title known only then
        (a gateway titles a session from its first prompt) rides along with it.
        Returns False, changing nothing, once the row exists.
        """
        with self._lock:
            if self._state is not NEW:
                return False
            self._new_session = dataclasses.replace(
                self._new_session, title=check_text(title, "title")
            )
            return True

    def session(self) -> Session:
        """A fresh snapshot of the session row (it must be persisted)."""
        return self._store.get_session(self.id)

    def __repr__(self) -> str:
        return f"<SessionHandle {self.id} {self._state.name.lower()}>"

    # --- writing -------------------------------------------------------------------

    def _row(
        self,
        role: str,
        content: str | None,
        tool_calls: Any,
        tool_call_id: str | None,
        tool_name: str | None,
        idem_key: str | None,
        meta: Any = None,
        payload: Any = None,
    ) -> Row:
        return (
            check_role(role),
            check_text(content, "content"),
            check_tool_calls(tool_calls),
            check_text(tool_call_id, "tool_call_id"),
            check_text(tool_name, "tool_name"),
            self._now(),
            check_text(idem_key, "idem_key"),
            check_meta(meta),
            check_payload(payload),
        )

    def _check_writable(self) -> None:
        """The guard of every write: raise unless the handle is new or persisted."""
        if self._state is FENCED:
            raise StaleOwnerError(self.id, self._w.epoch, -1)
        if self._state is ENDED:
            raise SessionEndedError(self.id)

    def _close_locally(self, *, fenced: bool = False) -> None:
        """This handle can write no more: stop tracking it and release ownership."""
        self.state = FENCED if fenced else ENDED
        exits.untrack(self)
        if self._owns and self._has_row:
            self._owner.release(self.id)

    def _lost_write(self, exc: Exception) -> None:
        """The session ended elsewhere or was taken over: this handle is done."""
        self._close_locally(fenced=isinstance(exc, StaleOwnerError))

    def _write(self, rows: list[Row], *, check_keys: bool = False) -> list[int]:
        """Write ``rows`` (persisting the session first if needed); caller holds the lock."""
        new = self._new_session if self._state is NEW else None
        try:
            result = self._store.write_messages(
                new, self._w, rows, check_keys=check_keys or self._check_keys
            )
        except (StaleOwnerError, SessionEndedError) as exc:
            self._lost_write(exc)
            raise
        except BaseException:
            self._check_keys = True  # it may have committed: look before writing again
            raise
        if rows:  # persist() writes no row: the pending ones still need their lookup
            self._check_keys = False
        result.apply(self._w)
        if new is not None:
            # NEW -> PERSISTED, always allowed: set directly, not through the checking
            # setter (the first append of every session passes here).
            self._state = PERSISTED
            self._has_row = True
            if log.isEnabledFor(logging.DEBUG):
                log.debug("session %s: handle NEW -> PERSISTED", self.id)
            if self._owns:
                self._owner.acquire(self.id, row_written=result.owner_written)
            self._fire_start()
            # This process writes sessions: it can also run the hooks that dead
            # processes owed (once per store, in the background).
            self._owner.deliver_due_hooks_soon()
        return result.seqs

    def _fire_start(self) -> None:
        if not self._store.plugins.implemented("on_session_start"):
            return
        try:
            snapshot = self._store.get_session(self.id)
        except TetherError:
            log.exception("could not read session %s for on_session_start", self.id)
            return
        self._store.plugins.call("on_session_start", session=snapshot)

    def persist(self) -> None:
        """Write the session row now, even without content (on purpose, not a ghost)."""
        with self._lock:
            self._check_writable()
            if self._state is NEW:
                self._write([])

    def append(
        self,
        role: str,
        content: str | None = None,
        *,
        tool_calls: list[Any] | None = None,
        tool_call_id: str | None = None,
        tool_name: str | None = None,
        idem_key: str | None = None,
        meta: dict[str, Any] | None = None,
        payload: dict[str, Any] | list[Any] | None = None,
    ) -> Message:
        """Store one message; when this returns, it is committed.

        Buffered messages still pending are written first, in the same
        transaction, so the transcript keeps its order. With ``idem_key``, a
        repeated append of the same key returns the stored message's seq and
        writes nothing. ``meta`` (a JSON object) holds facts that are not
        columns; ``payload`` (a JSON object or array) a foreign framework's
        exact item, returned unchanged by the readers.
        """
        if (
            tool_calls is None
            and tool_call_id is None
            and tool_name is None
            and idem_key is None
            and meta is None
            and payload is None
            and role in ROLES
            and (content is None or (type(content) is str and not _BAD_TEXT(content)))
        ):
            row: Row = (role, content, None, None, None, self._now(), None, None, None)
        else:
            row = self._row(
                role, content, tool_calls, tool_call_id, tool_name, idem_key, meta, payload
            )
        with self._lock:
            state = self._state
            if state >= ENDED:
                self._check_writable()
            if state is PERSISTED and not self._pending and row[6] is None:
                # The hot path: one message, one transaction, no extra reads.
                try:
                    seq = self._store.append_message(self._w, row)
                except (StaleOwnerError, SessionEndedError) as exc:
                    self._lost_write(exc)
                    raise
            else:
                rows = [*self._pending, row] if self._pending else [row]
                seq = self._write(rows, check_keys=row[6] is not None)[-1]
                self._pending.clear()
        meta_text, payload_text = row[7], row[8]
        return Message(
            self.id,
            seq,
            role,
            content,
            tool_calls,
            row[3],
            row[4],
            row[5],
            row[6],
            None if meta_text is None else json.loads(meta_text),
            "active",
            None if payload_text is None else json.loads(payload_text),
        )

    def buffer(
        self,
        role: str,
        content: str | None = None,
        *,
        tool_calls: list[Any] | None = None,
        tool_call_id: str | None = None,
        tool_name: str | None = None,
        idem_key: str | None = None,
        meta: dict[str, Any] | None = None,
        payload: dict[str, Any] | list[Any] | None = None,
    ) -> str:
        """Queue a message for the next :meth:`flush`; return its idempotency key.

        The message is validated now, so a later flush cannot fail on it.
        Every buffered message carries an idempotency key (one is made if none
        is given): flushing again after an uncertain failure never duplicates it.
        """
        if idem_key is None:
            prefix = self._key_prefix or self._draw_key_prefix()
            key = f"{prefix}{next(self._key_numbers)}"
        else:
            key = idem_key
        if (
            tool_calls is None
            and tool_call_id is None
            and tool_name is None
            and idem_key is None  # our own key needs no check
            and meta is None
            and payload is None
            and role in ROLES
            and (content is None or (type(content) is str and not _BAD_TEXT(content)))
        ):
            row: Row = (role, content, None, None, None, self._now(), key, None, None)
        else:
            row = self._row(role, content, tool_calls, tool_call_id, tool_name, key, meta, payload)
        with self._lock:
            if self._state >= ENDED:  # the guard inlined: every buffered message passes
                self._check_writable()
            self._pending.append(row)
            if idem_key is not None:
                self._check_keys = True
        return key

    def _draw_key_prefix(self) -> str:
        """This handle's prefix for the keys of buffered messages (made once)."""
        self._key_prefix = f"b:{secrets.token_hex(4)}:"
        return self._key_prefix

    def flush(self) -> list[Message]:
        """Write every buffered message in one transaction; return them with their seqs.

        On failure nothing is lost: the messages stay buffered for the next flush.
        """
        with self._lock:
            if not self._pending:
                return []
            self._check_writable()
            rows = list(self._pending)
            seqs = self._write(rows)
            del self._pending[: len(rows)]
        sid = self.id
        return [
            Message(sid, seq, r[0], r[1], None, None, None, r[5], r[6])
            if r[2] is None and r[3] is None and r[4] is None and r[7] is None and r[8] is None
            else Message(
                sid,
                seq,
                r[0],
                r[1],
                _decode(r[2]),
                r[3],
                r[4],
                r[5],
                r[6],
                _decode(r[7]),
                "active",
                _decode(r[8]),
            )
            for seq, r in zip(seqs, rows, strict=True)
        ]

    def retract_last(self) -> Message | None:
        """Take back the newest active message (it keeps its seq); return it, or None.

        Buffered messages are flushed first (the newest message may be one of
        them). Fenced like an append: after a takeover it raises
        :class:`StaleOwnerError`, and once the session ended
        :class:`SessionEndedError`.
        """
        with self._lock:
            self._check_writable()
            if self._pending:
                rows = list(self._pending)
                self._write(rows)
                del self._pending[: len(rows)]
            if self._state is NEW:
                return None
            try:
                return self._store.retract_last(self.id, epoch=self._w.epoch)
            except (StaleOwnerError, SessionEndedError) as exc:
                self._lost_write(exc)
                raise

    # --- ending --------------------------------------------------------------------

    def end(
        self,
        reason: str = "completed",
        detail: str | None = None,
        *,
        interrupted: bool | None = None,
    ) -> bool:
        """Finalize: flush what is buffered, record the end, fire ``on_session_end``.

        Returns True if this call ended the session. Ending twice, ending a
        session someone else ended (even one purged since), or ending one that
        never had content (no row was written) returns False.

        If the final flush fails (after the store's own retries within its busy
        budget, and one more try when a commit's outcome was unknown), the
        end is still recorded, with reason ``error`` and a detail that counts
        the messages that could not be stored (and names the reason asked
        for); then the hooks run and :class:`~tether.MessagesLostError` is
        raised. The end is recorded before hooks run, so a slow or crashing
        hook can never leave the session open; the hooks see the ended row,
        and a Ctrl+C arriving meanwhile waits until they ran. If the end
        cannot be recorded (the database is unreachable), the error is raised
        and the handle stays open so a later call, at exit at the latest, can
        retry.
        """
        reason = check_reason(reason)
        detail = check_detail(detail)
        lost: tuple[int, str] | None = None
        ended: Session | None = None
        done = False
        # Signals are deferred until the end is recorded *and* its hooks ran:
        # a second Ctrl+C must not cut the hooks off (they fire exactly once).
        with exits.finalizing():
            with self._lock:
                if self._state >= ENDED:
                    return False
                if self._pending:
                    cause = self._final_flush()
                    if cause is not None:
                        if self._state >= ENDED:  # the session turned out ended or taken over
                            log.error(
                                "session %s: %d buffered messages could not be written: %s",
                                self.id,
                                len(self._pending),
                                "it was taken over"
                                if self._state is FENCED
                                else "it had already ended",
                            )
                            return False
                        lost = (len(self._pending), cause)
                if self._state is NEW or not self._owns:
                    self._close_locally()
                    if lost is not None:  # no end of ours to record: still say what was lost
                        self._pending.clear()
                        raise MessagesLostError(self.id, lost[0], lost[1], ended=False)
                    return False
                if lost is not None:
                    reason, detail = "error", _lost_detail(lost, reason, detail)
                    interrupted = True
                elif interrupted is None:
                    interrupted = reason in INTERRUPTED_REASONS
                # None when no on_session_end hook is implemented: then nothing
                # observes the end and its row need not be read back.
                due_by = self._store.hooks_due_by()
                try:
                    if due_by is None:
                        done = self._store.record_end_quietly(
                            self.id, reason, detail, epoch=self._w.epoch
                        )
                    else:
                        ended = self._store.record_end(
                            self.id,
                            reason,
                            detail,
                            epoch=self._w.epoch,
                            hooks_due_by=due_by,
                            interrupted=interrupted,
                        )
                        done = ended is not None
                except StaleOwnerError:
                    log.warning("session %s was taken over; this handle does not end it", self.id)
                    self._close_locally(fenced=True)
                    return False
                except SessionNotFoundError:
                    # Ended elsewhere and purged since: nothing is left to end, and
                    # nothing to retry at close or exit (the handle would stay open).
                    log.info("session %s is gone (ended and purged elsewhere)", self.id)
                    self._close_locally()
                    if lost is not None:
                        self._pending.clear()
                        raise MessagesLostError(self.id, lost[0], lost[1], ended=False) from None
                    return False
                self._pending.clear()  # stored, or counted as lost in the recorded end
                self._close_locally()
            if ended is not None:
                self._store.fire_end(ended, reason, interrupted)
                self._store.mark_hooks_delivered(self.id, due_by)
        if lost is not None:
            raise MessagesLostError(self.id, lost[0], lost[1], ended=done)
        return done

    def _final_flush(self) -> str | None:
        """Flush before ending; on failure, say why (the rows stay pending)."""
        for attempt in (1, 2):
            try:
                self.flush()
                return None
            except (StaleOwnerError, SessionEndedError, SessionNotFoundError) as exc:
                return _describe(exc)
            except CommitUnknownError as exc:
                # It may have committed: one more try looks the idempotency keys
                # up, so nothing doubles. (A busy store was already retried for
                # its whole busy budget by the backend: no second budget here.)
                if attempt == 2:
                    return _describe(exc)
                log.warning("session %s: final flush failed (%s); trying once more", self.id, exc)
            except Exception as exc:
                log.error("session %s: final flush failed: %s", self.id, _describe(exc))
                return _describe(exc)
        return None  # pragma: no cover - the loop always returns

    def __enter__(self) -> SessionHandle:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        reason, detail = exits.reason_for_exception(exc)
        try:
            self.end(reason, detail)
        except MessagesLostError as lost:
            if exc is None:
                raise
            log.error("%s", lost)  # the block's own exception goes on
        except Exception:
            if exc is None:
                raise
            log.exception("session %s: could not record its end", self.id)


def _describe(exc: BaseException) -> str:
    """One line naming ``exc``, safe to store (no NUL, no lone surrogate)."""
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return text.replace("\x00", "").encode("utf-8", "backslashreplace").decode("utf-8")


def _lost_detail(lost: tuple[int, str], reason: str, detail: str | None) -> str:
    count, cause = lost
    noun = "message" if count == 1 else "messages"
    asked = f"{reason} ({detail})" if detail else reason
    return (
        check_detail(f"{count} buffered {noun} could not be stored; ending as {asked}: {cause}")
        or ""
    )


def _decode(text: str | None) -> Any:
    return None if text is None else json.loads(text)
