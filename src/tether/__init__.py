"""tether: the session layer for AI agents.

Open a store, start a session, append messages; every exit path ends it::

    import tether

    store = tether.open_store("sessions.db")
    with store.session(source="cli", model="gpt-4o") as s:
        s.append("user", "hello")
        s.append("assistant", "hi!")
"""

from . import liveness
from .clock import Clock, ManualClock, SystemClock
from .errors import (
    CommitUnknownError,
    ForeignDatabaseError,
    InvalidInputError,
    MessagesLostError,
    NotADatabaseError,
    OwnerAliveError,
    SchemaTooNewError,
    SessionEndedError,
    SessionNotFoundError,
    StaleOwnerError,
    StoreBusyError,
    StoreError,
    StoreOpenError,
    StoreUnavailableError,
    TetherError,
)
from .hooks import Plugins, hookimpl
from .lifecycle import SessionHandle
from .model import Census, ListedChain, Message, Page, Session
from .store import Store, open_store

__version__ = "0.1.0"

__all__ = [
    "Census",
    "Clock",
    "CommitUnknownError",
    "ForeignDatabaseError",
    "InvalidInputError",
    "ListedChain",
    "ManualClock",
    "Message",
    "MessagesLostError",
    "NotADatabaseError",
    "OwnerAliveError",
    "Page",
    "Plugins",
    "SchemaTooNewError",
    "Session",
    "SessionEndedError",
    "SessionHandle",
    "SessionNotFoundError",
    "StaleOwnerError",
    "Store",
    "StoreBusyError",
    "StoreError",
    "StoreOpenError",
    "StoreUnavailableError",
    "SystemClock",
    "TetherError",
    "__version__",
    "hookimpl",
    "liveness",
    "open_store",
]
