"""tether: the session layer for AI agents.

Open a store, start a session, append messages; every exit path ends it::

    import tether

    store = tether.open_store("sessions.db")
    with store.session(source="cli", model="gpt-4o") as s:
        s.append("user", "hello")
        s.append("assistant", "hi!")
"""

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from . import liveness
    from .clock import Clock, ManualClock, SystemClock
    from .compose import Store, open_store
    from .hooks import Plugins, hookimpl
    from .lifecycle import SessionHandle
    from .model import Census, ListedChain, Message, Page, Session

# The rest loads on first use (PEP 562), so that `tether --help` and other
# light imports of the package do not pay for the store and liveness layers.
_LAZY = {
    "liveness": ".liveness",
    "Clock": ".clock",
    "ManualClock": ".clock",
    "SystemClock": ".clock",
    "Plugins": ".hooks",
    "hookimpl": ".hooks",
    "SessionHandle": ".lifecycle",
    "Census": ".model",
    "ListedChain": ".model",
    "Message": ".model",
    "Page": ".model",
    "Session": ".model",
    "Store": ".compose",
    "open_store": ".compose",
}


def __getattr__(name: str) -> object:
    import importlib

    where = _LAZY.get(name)
    if where is None:  # a submodule, as `tether.ids` was once the package loaded it all
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'tether' has no attribute {name!r}") from None
        globals()[name] = value
        return value
    module = importlib.import_module(where, __name__)
    value = module if name == "liveness" else getattr(module, name)
    globals()[name] = value
    return value


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
