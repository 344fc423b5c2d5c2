"""Finding, recognising and opening Hermes stores, read-only."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ...errors import ForeignDatabaseError, NotADatabaseError, StoreOpenError

# What every Hermes generation has had (git main v2 to 0.19.0's v22): the probe.
REQUIRED: dict[str, frozenset[str]] = {
    "schema_version": frozenset(),
    "sessions": frozenset({"id", "source", "started_at", "ended_at", "end_reason"}),
    "messages": frozenset({"session_id", "role", "content", "timestamp"}),
}


class NotAHermesStoreError(ForeignDatabaseError):
    """The file is an SQLite database but not a Hermes ``state.db``; it is left untouched."""


@dataclass(frozen=True, slots=True)
class HermesStore:
    """A recognised store: its path and the columns its generation has."""

    path: Path
    session_columns: frozenset[str]
    message_columns: frozenset[str]


def discover(
    paths: Iterable[str | Path] = (),
    *,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> list[Path]:
    """The stores to read: ``paths`` if any, else where Hermes keeps them.

    Hermes' own places, in order: ``$HERMES_HOME/state.db``, ``~/.hermes/state.db``
    and every ``~/.hermes/profiles/*/state.db`` (each profile is its own store).
    A path given that does not exist is an error; places found empty are skipped.
    """
    given = [Path(p) for p in paths]
    if given:
        for p in given:
            if not p.is_file():
                raise StoreOpenError(f"no Hermes store at {str(p)!r}: no such file")
        return _unique(given)
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    candidates: list[Path] = []
    if env.get("HERMES_HOME"):
        candidates.append(Path(env["HERMES_HOME"]) / "state.db")
    candidates.append(home / ".hermes" / "state.db")
    candidates.extend(sorted((home / ".hermes" / "profiles").glob("*/state.db")))
    found = _unique(p for p in candidates if p.is_file())
    if not found:
        looked = ", ".join(str(p) for p in candidates[:2]) + ", ~/.hermes/profiles/*/state.db"
        raise StoreOpenError(f"no Hermes store found (looked at {looked}); give a path")
    return found


def _unique(paths: Iterable[Path]) -> list[Path]:
    seen: set[Path] = set()
    out = []
    for p in paths:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def open_readonly(path: Path, *, any_thread: bool = False) -> sqlite3.Connection:
    """A read-only connection: ``mode=ro``, autocommit, nothing set on the file.

    Autocommit (``isolation_level=None``) so that no transaction stays open by
    accident: a held reader blocks Hermes' checkpoints and grows its WAL.
    ``immutable=1`` is never used: the file may be live. ``any_thread``: the
    connection may be used by another thread than the one that opened it (one
    at a time: the mirror opens it, then follows in a thread of its own).
    """
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    try:
        return sqlite3.connect(
            uri, uri=True, timeout=5, isolation_level=None, check_same_thread=not any_thread
        )
    except sqlite3.Error as exc:
        raise StoreOpenError(f"cannot open {str(path)!r} read-only: {exc}") from exc


@contextmanager
def open_readwrite(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection that may write (repair only): autocommit, busy timeout 5 s.

    SQLite checkpoints the WAL when the last connection to a file closes, and a
    user's store is never checkpointed by tether: a read-only connection that has
    read (holding its shared lock, but no transaction) stays open until the writer
    has closed, so the writer is never the last. The read-only one cannot
    checkpoint. ``wal_autocheckpoint`` is set on this connection only (nothing is
    stored in the file), so a commit never checkpoints either. Nothing else is set.
    """
    guard = open_readonly(path)
    try:
        guard.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        uri = f"file:{quote(str(path.resolve()))}?mode=rw"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=5, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreOpenError(f"cannot open {str(path)!r} for writing: {exc}") from exc
        try:
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            yield conn
        finally:
            conn.close()
    finally:
        guard.close()


def columns(conn: sqlite3.Connection, table: str) -> frozenset[str]:
    """The columns ``table`` has in this generation (empty if it has no such table)."""
    return frozenset(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))


def recognise(conn: sqlite3.Connection, path: Path) -> HermesStore:
    """The store's shape, or :class:`NotAHermesStoreError` if it is not Hermes'."""
    try:
        found = {table: columns(conn, table) for table in REQUIRED}
    except sqlite3.DatabaseError as exc:  # "file is not a database"
        raise NotADatabaseError(f"{str(path)!r} is not an SQLite database") from exc
    for table, needed in REQUIRED.items():
        if not found[table]:
            raise NotAHermesStoreError(f"{str(path)!r} is not a Hermes state.db (no {table} table)")
        missing = needed - found[table]
        if missing:
            raise NotAHermesStoreError(
                f"{str(path)!r} is not a Hermes state.db "
                f"({table} has no {', '.join(sorted(missing))})"
            )
    return HermesStore(path, found["sessions"], found["messages"])
