"""Durable session storage: one contract (:class:`Store`), one backend per database."""

from __future__ import annotations

import os
from pathlib import Path

from ..clock import Clock
from ..errors import StoreOpenError
from ..hooks import Plugins
from ..paths import default_db, default_db_path
from .core import Store

__all__ = ["Store", "open_store"]


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def open_store(
    path_or_url: str | os.PathLike[str] | None = None,
    *,
    durability: str = "normal",
    clock: Clock | None = None,
    plugins: Plugins | None = None,
    load_plugins: bool = True,
) -> Store:
    """Open (creating and migrating if needed) a session store.

    ``path_or_url`` is a SQLite file path, ``sqlite:///path``, or a
    ``postgresql://`` URL. Without it, ``$TETHER_DB`` or the per-user default
    (``~/.local/share/tether/tether.db`` on Linux) is used.

    ``durability`` (SQLite): ``"normal"`` keeps every acknowledged write through
    any process crash (kill -9, OOM); ``"full"`` also through power loss or an
    OS crash, at the cost of an fsync per commit.
    """
    if plugins is None:
        plugins = Plugins(load_entrypoints=load_plugins)
    target = default_db() if path_or_url is None else os.fspath(path_or_url)
    if _is_postgres(target):
        try:
            from .postgres import PostgresBackend
        except ImportError as exc:
            raise StoreOpenError(
                f"PostgreSQL support is not installed ({exc.name}): pip install 'tether[postgres]'"
            ) from None

        return Store(PostgresBackend(target), clock=clock, plugins=plugins)
    # sqlite:///abs/path.db -> /abs/path.db; sqlite://rel.db -> rel.db
    target = target.removeprefix("sqlite://")
    target = os.path.expanduser(target)
    if not target:
        raise StoreOpenError("empty database path")
    if Path(target) == default_db_path():  # the per-user default: create its directory
        default_db_path().parent.mkdir(parents=True, exist_ok=True)
    from .sqlite import SQLiteBackend

    return Store(SQLiteBackend(target, durability=durability), clock=clock, plugins=plugins)
