"""pytest plugin: run the OpenAI Agents SDK's own session tests against TetherSession.

Loaded with ``-p sdk_plugin`` by ``test_upstream.py``, in the SDK's extracted
test tree (``.venv-agents/sdk-tests``). Each upstream module constructs its
session class by name; an autouse fixture replaces that name in the module
with a factory of :class:`TetherSession` taking the same arguments. A
``db_path`` maps to one tether store per path (two ``SQLiteSession`` objects
on one file share data, so two ``TetherSession`` objects on one path do too);
``":memory:"`` gets a fresh store of its own.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.interop.openai_agents import TetherSession

# The upstream tests that cannot apply to a non-SQLite backend, each with why.
# Everything else in the selected modules must pass.
DESELECTED: dict[str, str] = {
    "test_sqlite_session_close_closes_worker_thread_connections": (
        "inspects SQLiteSession._connections"
    ),
    "test_sqlite_session_reaps_connections_from_exited_worker_threads": (
        "inspects SQLiteSession's per-thread sqlite3 connections"
    ),
    "test_sqlite_session_closes_retired_connections_before_the_next_allocation": (
        "inspects SQLiteSession's retired sqlite3 connections"
    ),
    "test_sqlite_session_keeps_connections_of_live_worker_threads": (
        "inspects SQLiteSession's per-thread sqlite3 connections"
    ),
    "test_sqlite_session_pop_item_skips_corrupt_most_recent": (
        "writes corrupt rows into the agent_messages table"
    ),
    "test_sqlite_session_pop_item_returns_none_after_dropping_only_corrupt_rows": (
        "writes corrupt rows into the agent_messages table"
    ),
    "test_sqlite_session_get_items_limit_skips_corrupt_newest_rows": (
        "writes corrupt rows into the agent_messages table"
    ),
    "test_sqlite_session_get_items_session_settings_limit_skips_corrupt_rows": (
        "writes corrupt rows into the agent_messages table"
    ),
    "test_sqlite_session_file_lock_is_shared_across_instances": (
        "inspects SQLiteSession._lock / _locked_connection"
    ),
    "test_sqlite_session_failed_add_items_releases_write_lock": (
        "drops the agent_messages table and inspects the write lock"
    ),
    "test_sqlite_session_failed_clear_session_rolls_back": ("injects a failing sqlite3.Connection"),
    "test_sqlite_session_failed_pop_item_releases_write_lock": (
        "drops the agent_messages table and inspects the write lock"
    ),
    "test_sqlite_session_rollback_failure_evicts_connection": (
        "injects a sqlite3.Connection whose rollback fails"
    ),
    "test_sqlite_session_close_retries_quarantined_connection": (
        "inspects SQLiteSession's quarantined connections"
    ),
    "test_sqlite_session_post_commit_cancellation_propagates_after_known_outcome": (
        "injects a sqlite3.Connection to cancel after commit; re-tested in test_contract.py"
    ),
    "test_sqlite_session_closed_rejects_empty_add_items": (
        "matches the literal message 'SQLiteSession is closed'; re-tested in test_contract.py"
    ),
}


class _Stores:
    """One tether store per upstream db_path, all closed at the end of the run."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tether-sdk-tests-"))
        self.by_path: dict[str, tether.Store] = {}
        self.numbers = itertools.count(1)

    def for_path(self, db_path: Any) -> tether.Store | str:
        if str(db_path) == ":memory:":
            # A path, not a store: the session opens it and closes it on close().
            return str(self.dir / f"memory-{len(os.listdir(self.dir))}-{id(object())}.db")
        key = os.fspath(db_path)
        if key not in self.by_path:
            # In a directory of ours: the test removes its own before teardown,
            # while the store still has sessions to end.
            name = f"path-{next(self.numbers)}-{Path(key).name}.tether.db"
            self.by_path[key] = tether.open_store(self.dir / name, load_plugins=False)
        return self.by_path[key]

    def close(self) -> None:
        # Each test's files live in its own temporary directory, removed when it
        # ends: close its stores first (their sessions end ``process_exit``).
        for store in self.by_path.values():
            store.close()
        self.by_path.clear()


_stores = _Stores()


def sqlite_session(
    session_id: str,
    db_path: Any = ":memory:",
    sessions_table: str = "agent_sessions",
    messages_table: str = "agent_messages",
    session_settings: Any = None,
    **_: Any,
) -> TetherSession:
    """``SQLiteSession``'s constructor, building a TetherSession (tables are SQLite-only)."""
    return TetherSession(session_id, _stores.for_path(db_path), session_settings=session_settings)


def simple_list_session(
    session_id: str = "test", history: list[Any] | None = None
) -> TetherSession:
    """``SimpleListSession``'s constructor: a fresh conversation holding ``history``."""
    session = TetherSession(session_id, _stores.for_path(":memory:"))
    if history:
        session._add_items(session._rows(list(history)))  # sync: the constructor cannot await
    return session


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    for item in items:
        name = item.name.split("[", 1)[0]
        (dropped if name in DESELECTED else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(autouse=True)
def _tether_session_under_test(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    module = request.module
    if hasattr(module, "SQLiteSession"):
        monkeypatch.setattr(module, "SQLiteSession", sqlite_session)
    if hasattr(module, "SimpleListSession"):
        monkeypatch.setattr(module, "SimpleListSession", simple_list_session)
    yield
    _stores.close()


def pytest_unconfigure(config: pytest.Config) -> None:
    _stores.close()
