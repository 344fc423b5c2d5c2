"""Durable session storage: one contract (:class:`Store`), one backend per database."""

from __future__ import annotations

import os
from pathlib import Path

from ..clock import Clock
from ..errors import StoreOpenError
from ..hooks import Plugins
from ..paths import default_db, default_db_path
from ..validate import check_liveness
from .backend import Backend
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
    check_liveness(heartbeat_interval, owner_ttl)  # before any connection opens
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

        backend: Backend = PostgresBackend(target)
    else:
        backend = _sqlite_backend(target, durability)
    return Store(
        backend,
        clock=clock,
        plugins=plugins,
        kind=kind,
        heartbeat_interval=heartbeat_interval,
        owner_ttl=owner_ttl,
        startup_sweep=startup_sweep,
    )


def _sqlite_backend(target: str, durability: str) -> Backend:
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
