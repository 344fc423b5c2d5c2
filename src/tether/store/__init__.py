"""Durable session storage: one contract (:class:`StoreCore`), one backend per database.

This package imports nothing above it (checked by the import-linter contract in
pyproject.toml). ``tether.open_store`` (:mod:`tether.compose`) opens a backend
with :func:`open_backend` and composes the store that sessions live in.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import StoreOpenError
from ..paths import default_db, default_db_path
from .backend import Backend
from .core import StoreCore
from .owners import OwnerInfo, OwnerPort

__all__ = ["OwnerInfo", "OwnerPort", "StoreCore", "open_backend"]


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def open_backend(
    path_or_url: str | os.PathLike[str] | None = None, *, durability: str = "normal"
) -> Backend:
    """Open (creating and migrating if needed) the database behind a store.

    ``path_or_url`` is a SQLite file path, ``sqlite:///path``, or a
    ``postgresql://`` URL; without it, ``$TETHER_DB`` or the per-user default.
    See :func:`tether.open_store` for ``durability``.
    """
    target = default_db() if path_or_url is None else os.fspath(path_or_url)
    if _is_postgres(target):
        try:
            # Here, not at the top: psycopg is an optional extra, heavy to import.
            from .postgres import PostgresBackend
        except ImportError as exc:
            raise StoreOpenError(
                f"PostgreSQL support is not installed ({exc.name}): pip install 'tether[postgres]'"
            ) from None

        return PostgresBackend(target)
    return _sqlite_backend(target, durability)


def _sqlite_backend(target: str, durability: str) -> Backend:
    # Here, not at the top: a PostgreSQL-only process never loads the SQLite backend.
    from .sqlite import SQLiteBackend

    # sqlite:///abs/path.db -> /abs/path.db; sqlite://rel.db -> rel.db
    target = os.path.expanduser(target.removeprefix("sqlite://"))
    if not target:
        raise StoreOpenError("empty database path")
    # The per-user default: create its directory, private (0700): it holds every
    # conversation. An existing one is left alone (and not compared: finding the
    # data directory costs start-up time that `tether ls` need not pay).
    if not Path(target).parent.is_dir() and Path(target) == default_db_path():
        default_db_path().parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return SQLiteBackend(target, durability=durability)
