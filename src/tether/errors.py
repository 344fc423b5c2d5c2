"""The exceptions tether raises for foreseeable problems.

Every exception here carries a one-line, human-readable message: the CLI prints
``error: <message>`` and exits 1, and API users can catch the class they care
about. All of them derive from :class:`TetherError`; where a builtin class fits
(``LookupError``, ``ValueError``) they derive from it too, so generic handlers
keep working.
"""

from __future__ import annotations


class TetherError(Exception):
    """Base class of every error tether raises on purpose."""


# --- opening and using a store ------------------------------------------------


class StoreError(TetherError):
    """The store could not be opened or used."""


class StoreOpenError(StoreError):
    """The database could not be opened or created (bad path, permissions)."""


class NotADatabaseError(StoreOpenError):
    """The file exists but is not a database; it is left untouched."""


class ForeignDatabaseError(StoreOpenError):
    """The database belongs to another application; tether will not write to it."""


class SchemaTooNewError(StoreOpenError):
    """The database was migrated by a newer tether past what this one can use; upgrade tether.

    A newer database that is still compatible with this tether (every step since
    this tether's schema was additive) is opened as it is; this is raised only when
    its compatible-with version is newer than anything this tether knows. The
    message names both versions (see docs/data-model.md, "Upgrades").
    """


class StoreBusyError(StoreError):
    """Another writer held the database for longer than the retry budget."""


class StoreUnavailableError(StoreError):
    """The database server cannot be reached or refused the connection."""


class CommitUnknownError(StoreUnavailableError):
    """The connection broke while a write was committing: it may or may not have been applied.

    Buffered messages are safe to flush again (their idempotency keys are
    looked up); a single ``append`` resolves this itself by checking whether
    its message landed.
    """


# --- sessions -----------------------------------------------------------------


class SessionNotFoundError(TetherError, LookupError):
    """No session has this id."""

    def __init__(self, session_id: str, message: str | None = None) -> None:
        super().__init__(message or f"no session with id {session_id!r}")
        self.session_id = session_id


class SessionEndedError(TetherError):
    """The session has ended; it accepts no more messages."""

    def __init__(self, session_id: str, reason: str | None = None) -> None:
        why = f" ({reason})" if reason else ""
        super().__init__(f"session {session_id} has ended{why}")
        self.session_id = session_id
        self.reason = reason


class StaleOwnerError(TetherError):
    """Another process took the session over; this handle may no longer write.

    Raised to the previous owner after a takeover (fencing), instead of letting
    two writers interleave in one transcript.
    """

    def __init__(self, session_id: str, epoch: int, current_epoch: int) -> None:
        super().__init__(
            f"session {session_id} was taken over by another owner "
            f"(this handle holds epoch {epoch}, the session is at epoch {current_epoch})"
        )
        self.session_id = session_id
        self.epoch = epoch
        self.current_epoch = current_epoch


class MessagesLostError(TetherError):
    """Buffered messages could not be stored before the session ended.

    Raised by ``SessionHandle.end()`` (and so by leaving its ``with`` block)
    once everything else is done: the end was recorded with reason ``error``
    and a detail counting the lost messages, and the ``on_session_end`` hooks
    ran. ``lost`` is that count, ``ended`` whether this call recorded the end
    (False for a handle that ends nothing: ``store.attach``, or a session whose
    first write failed, so no row exists).
    """

    def __init__(self, session_id: str, lost: int, cause: str, *, ended: bool = True) -> None:
        noun = "message" if lost == 1 else "messages"
        what = "ended with reason 'error'" if ended else "was not ended"
        super().__init__(
            f"session {session_id} {what}: {lost} buffered {noun} could not be stored ({cause})"
        )
        self.session_id = session_id
        self.lost = lost
        self.cause = cause
        self.ended = ended
        self.reason = "error" if ended else None


class OwnerAliveError(TetherError):
    """The session's owner is alive; resuming it needs ``force=True``."""

    def __init__(self, session_id: str, owner: str) -> None:
        super().__init__(
            f"session {session_id} is owned by a live process ({owner}); "
            "pass force=True to take it over"
        )
        self.session_id = session_id
        self.owner = owner


# --- input --------------------------------------------------------------------


class InvalidInputError(TetherError, ValueError):
    """An argument was rejected before anything was written."""
