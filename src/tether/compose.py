"""What ``tether.open_store`` returns: the store composed with lifecycle and liveness.

The layers below call only downward (``store < lifecycle < liveness``, checked
by the import-linter contract in pyproject.toml): the repository
(:class:`tether.store.StoreCore`) knows nothing of handles, threads or exit
paths. This module, above all three, wires them together: :class:`Store` is
the repository plus this process's owner (:class:`~tether.liveness.owner.
ProcessOwner`: identity, heartbeat, lease) and the entry points that hand out
:class:`~tether.lifecycle.SessionHandle` objects (``session``, ``resume``,
``attach``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

from .clock import Clock
from .errors import SessionEndedError
from .hooks import Plugins
from .lifecycle import exits
from .liveness.owner import OwnerOptions, ProcessOwner
from .liveness.policy import OwnerInfo
from .store import StoreCore, open_backend
from .store.backend import Backend

if TYPE_CHECKING:
    from .lifecycle.handle import SessionHandle

# Start-up speed: a store that only reads (`tether ls`, `tether show`) never loads the
# handle module (secrets, hmac, OpenSSL) nor the reaper; the methods that need them
# import them on first use. No cycle is dodged: both sit below this module.

__all__ = ["Store", "open_store"]

# SessionHandle once imported: an import statement costs ~0.6 us on every call even
# when the module is loaded, and store.session() runs once per session.
_handle_class: type[SessionHandle] | None = None


def _session_handle() -> type[SessionHandle]:
    global _handle_class
    if _handle_class is None:
        from .lifecycle.handle import SessionHandle  # start-up speed (see the top)

        _handle_class = SessionHandle
    return _handle_class


class Store(StoreCore):
    """A session store. Get one with :func:`tether.open_store`."""

    def __init__(
        self,
        backend: Backend,
        *,
        clock: Clock | None = None,
        plugins: Plugins | None = None,
        options: OwnerOptions | None = None,
        kind: str | None = None,
    ) -> None:
        """``options`` (frozen, already checked) says how this process owns sessions;
        ``kind``, if given, replaces its kind."""
        options = options or OwnerOptions()
        if kind is not None:
            options = dataclasses.replace(options, kind=kind)
        owners: list[ProcessOwner] = []

        def make_owner(core: StoreCore) -> ProcessOwner:
            owners.append(ProcessOwner(core, options))
            return owners[0]

        super().__init__(
            backend, owner=make_owner, clock=clock, plugins=plugins, owner_ttl=options.owner_ttl
        )
        self._process_owner = owners[0]
        # Signal handlers can only be installed from the main thread: do it now,
        # where stores are usually opened, so sessions that worker threads start
        # later still end on SIGTERM/SIGHUP (see tether.lifecycle.exits).
        exits.prepare()

    @property
    def owner(self) -> ProcessOwner:
        """This process as the owner of sessions in this store (heartbeat, lease)."""
        return self._process_owner

    @property
    def lease_ok(self) -> bool:
        """False when this process's lease in this store is at risk.

        That is: it owns open sessions here and its last successful heartbeat
        is older than half its lease (``owner_ttl``); a reaper on another host
        may soon judge it dead. An error is logged when it turns False. An
        agent can check it before a long step and stop with a reason rather
        than discover ``reaped`` on its next write. True when nothing is owned.
        """
        return self._process_owner.lease_ok

    # --- lifecycle entry points ----------------------------------------------------

    def session(
        self,
        source: str,
        model: str | None = None,
        title: str | None = None,
        cwd: str | None = None,
        parent_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        branch: bool = False,
        origin: str | None = None,
    ) -> SessionHandle:
        """Start a session and return its handle. Nothing is written yet.

        The row is written with the first message (or :meth:`SessionHandle.persist`),
        so a session that ends without content leaves no trace. ``parent_id``
        continues an earlier session (after compression, say): the two form one
        chain, listed once. With ``branch=True`` the new session starts a chain
        of its own that still points at its parent. ``origin`` names the
        session in another system (unique per store, found again with
        :meth:`find_by_origin`); unlike an import, the session is owned by this
        process like any other.
        """
        return (_handle_class or _session_handle()).new(
            self,
            self._process_owner,
            source=source,
            model=model,
            title=title,
            cwd=cwd,
            parent_id=parent_id,
            metadata=metadata,
            branch=branch,
            origin=origin,
        )

    def attach(self, session_id: str) -> SessionHandle:
        """A second writer on an open session, cooperating with its owner.

        For processes of one application that share a session (a gateway
        writing user messages while a worker writes replies, say). Writes
        through it are serialized with the owner's and get exact, gap-free
        seqs; it writes at the session's current epoch, so it is fenced out by a
        takeover like the owner. It does not own the session: ending or
        dropping it flushes its buffer but never ends the session.
        """
        from .lifecycle.handle import SessionHandle  # start-up speed (see the top)

        session = self.get_session(session_id)
        if session.ended_at is not None:
            raise SessionEndedError(session_id, session.end_reason)
        return SessionHandle.existing(self, self._process_owner, session, owns=False)

    def resume(self, session_id: str, *, force: bool = False) -> SessionHandle:
        """Take over an open session in this process and return its handle.

        If the session's owner is dead (or it has none), ownership moves here
        and the epoch goes up by one: from then on every write of the previous
        owner (or of anyone holding the old epoch) is refused with
        :class:`StaleOwnerError`, and nothing it wrote before is lost. If the
        owner is alive, :class:`OwnerAliveError` unless ``force=True``. Tool calls
        the conversation left unanswered get synthetic results first
        (:meth:`repair_tool_calls`). An ended
        session raises :class:`SessionEndedError` (continue it instead:
        ``store.session(..., parent_id=session_id)``).
        """
        from .lifecycle.handle import SessionHandle  # start-up speed (see the top)
        from .liveness.reaper import Reaper

        reaper = Reaper(self)

        def alive(info: OwnerInfo, now: float) -> bool:
            return reaper.verdict(info.id, info, now).alive

        session = self.take_over(session_id, alive, force=force)
        # A conversation left with unanswered tool calls (its process died mid
        # call) is repaired before anyone can send it to a model (issue 14).
        self.repair_tool_calls(session.id, epoch=session.epoch)
        handle = SessionHandle.existing(self, self._process_owner, session, owns=True)
        self._process_owner.acquire(session.id)
        return handle

    def end_session(
        self,
        session_id: str,
        reason: str,
        detail: str | None = None,
        *,
        interrupted: bool = True,
    ) -> bool:
        """:meth:`StoreCore.end_session`, with termination signals held until it is done.

        As in ``SessionHandle.end``: a Ctrl+C waits until the end and its hooks ran.
        """
        with exits.finalizing():
            return super().end_session(session_id, reason, detail, interrupted=interrupted)

    # --- hooks that dead processes owed ----------------------------------------------

    def deliver_due_hooks(self, limit: int = 100) -> int:
        """Run the ``on_session_end`` hooks that dead processes owed; return how many ends.

        Ends recorded (or reaped, or repaired) by a process that died before
        its hooks ran are delivered here, each with the session as it is now
        and the reason it ended with. Ends still owed by a live process, or by
        one that cannot be probed and whose lease has not passed, are left to
        it. Does nothing without ``on_session_end`` hooks. The judging is
        liveness' (:func:`tether.liveness.deliveries.deliver_due_hooks`).
        """
        return self._process_owner.deliver_due_hooks(limit)

    # --- closing ---------------------------------------------------------------------

    def close(self) -> None:
        """End this store's open handles (reason ``process_exit``) and close connections."""
        if self.closed:
            return
        exits.end_handles_of(self, "process_exit", "store closed")
        self._process_owner.close()  # a delivery under way finishes its hooks first
        super().close()

    def __enter__(self) -> Store:
        return self


def open_store(
    path_or_url: str | os.PathLike[str] | None = None,
    *,
    durability: str = "normal",
    clock: Clock | None = None,
    plugins: Plugins | None = None,
    load_plugins: bool = True,
    kind: str = "process",
    heartbeat_interval: float = 10.0,
    owner_ttl: float = 30.0,
    startup_sweep: bool = True,
) -> Store:
    """Open (creating and migrating if needed) a session store.

    ``path_or_url`` is a SQLite file path, ``sqlite:///path``, or a
    ``postgresql://`` URL. Without it, ``$TETHER_DB`` or the per-user default
    (``~/.local/share/tether/tether.db`` on Linux) is used.

    ``durability`` (SQLite): ``"normal"`` keeps every acknowledged write through
    any process crash (kill -9, OOM); ``"full"`` also through power loss or an
    OS crash, at the cost of an fsync per commit.

    Liveness: ``kind`` names this process in the ``owners`` table (``cli``,
    ``gateway``, ``cron``...). While it owns open sessions, the process
    heartbeats every ``heartbeat_interval`` seconds; an owner whose heartbeat
    is older than ``owner_ttl`` counts as dead to every reaper. The first time
    the process owns a session it runs one sweep for sessions of dead
    processes (``startup_sweep``).
    """
    # Checked before any connection opens.
    options = OwnerOptions(kind, heartbeat_interval, owner_ttl, startup_sweep)
    if plugins is None:
        plugins = Plugins(load_entrypoints=load_plugins)
    return Store(
        open_backend(path_or_url, durability=durability),
        clock=clock,
        plugins=plugins,
        options=options,
    )
