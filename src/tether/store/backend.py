"""The contract between the store's logic and a database driver.

A backend knows how to open connections, run a write transaction with retries,
run a read, and migrate its schema. Everything else (what the SQL says, what
the rows mean) lives in :mod:`tether.store.core`, shared by every backend.
SQL is written with ``?`` placeholders (a tuple) or ``:name`` ones (a dict),
never both in one statement; a backend whose driver wants another style
translates it once per statement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Conn(Protocol):
    """What a transaction function receives: ``execute`` and ``executemany``."""

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ...) -> Cursor: ...

    def executemany(
        self, sql: str, seq: Iterable[Sequence[Any]] | Iterable[Mapping[str, Any]]
    ) -> Any: ...


class Backend(Protocol):
    dialect: str  # "sqlite" or "postgresql"
    url: str  # for messages; never contains a password

    def write(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` in one write transaction; retry it whole on contention.

        ``fn`` must only touch the database, so re-running it after a rollback
        is safe.
        """
        ...

    def read(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` against a consistent snapshot."""
        ...

    def close(self) -> None: ...
