"""In-process session handles and the exit paths that end them."""

from .handle import SessionHandle

__all__ = ["SessionHandle"]
