"""The embedded SQLite backend (the default)."""

from .backend import SQLiteBackend

__all__ = ["SQLiteBackend"]
