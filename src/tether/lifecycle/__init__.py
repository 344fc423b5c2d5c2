"""In-process session handles and the exit paths that end them."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .handle import HandleState, SessionHandle

__all__ = ["HandleState", "SessionHandle"]


def __getattr__(name: str) -> object:
    # Loaded on first use (PEP 562): every Store imports `exits` to install its
    # signal handlers, and a store that only reads (`tether ls`) never needs the
    # handle module, nor the secrets, hmac and OpenSSL modules it imports.
    if name == "SessionHandle":
        from .handle import SessionHandle

        return SessionHandle
    if name == "HandleState":
        from .handle import HandleState

        return HandleState
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
