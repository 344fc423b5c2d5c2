"""``tether hermes gc``: delete Hermes sessions that tether holds completely.

What the web UI's deleter (field report 004) wanted to be. A Hermes session is
deleted only when, checked inside the same Hermes write transaction that
deletes it (``BEGIN IMMEDIATE``, so no Hermes writer can slip in between):

* it is ended in Hermes, and ended longer than ``older_than``;
* tether has it (``hermes:<id>``, or its last continuation) ended too;
* tether holds every one of its messages (every Hermes message id but the
  rows importers skip is a key tether holds).

The delete is Hermes' own (``SessionDB.delete_session``'s statements): branch
and compression children are orphaned (``parent_session_id`` set NULL), the
messages go (Hermes' triggers update its search index) and then the row; its
transcript files under ``sessions/`` are removed after the commit. Sessions
with delegate children (which Hermes' delete would take along) are kept.
Each write transaction handles at most 50 sessions and stays well under a
second (a live Hermes waits up to about 16 s before it loses a message).
Nothing is vacuumed, checkpointed, or changed in the file's pragmas.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import StoreOpenError
from ...store import StoreCore
from .mapping import SKIPPED_ROLES, message_key, origin_of
from .store import discover, open_readonly, recognise

BATCH = 50  # sessions per Hermes write transaction
BATCH_SECONDS = 0.25  # and no longer than this

KEPT_REASONS = {
    "not_in_tether": "not imported into tether (or a ghost)",
    "open_in_tether": "still open in tether",
    "missing_messages": "tether lacks some of its messages",
    "delegate_children": "has delegate children (Hermes would delete them too)",
    "changed": "changed in Hermes since it was checked",
}


@dataclass(slots=True)
class GcResult:
    """One store's gc: what can go (or went) and what is kept, and why."""

    path: str
    considered: int = 0  # ended in Hermes longer than older_than
    eligible: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)

    def keep(self, why: str) -> None:
        self.kept[why] = self.kept.get(why, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "considered": self.considered,
            "eligible": len(self.eligible),
            "deleted": len(self.deleted),
            "kept": dict(sorted(self.kept.items())),
        }


def _skipped_roles_sql() -> str:
    return ", ".join(f"'{r}'" for r in sorted(SKIPPED_ROLES))


def _why_kept(
    store: StoreCore, conn: sqlite3.Connection, sid: str, delegates: set[str]
) -> str | None:
    """None if ``sid`` may go now; else the key of why it stays."""
    if sid in delegates:
        return "delegate_children"
    family = store.origin_family(origin_of(sid))
    if not family:
        return "not_in_tether"
    if family[-1].ended_at is None:
        return "open_in_tether"
    held: set[str] = set()
    for member in family:
        held |= store.imported_keys(member.id)
    ids = conn.execute(
        f"SELECT id FROM messages WHERE session_id = ? AND role NOT IN ({_skipped_roles_sql()})",
        (sid,),
    ).fetchall()
    if any(message_key(r[0]) not in held for r in ids):
        return "missing_messages"
    return None


def _candidates(conn: sqlite3.Connection, before: float) -> tuple[list[str], set[str]]:
    """Sessions ended before ``before``, and those with delegate children."""
    conn.execute("BEGIN")
    try:
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ? ORDER BY id",
                (before,),
            )
        ]
        delegates = {
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT parent_session_id FROM sessions "
                "WHERE parent_session_id IS NOT NULL AND model_config LIKE '%_delegate_from%'"
            )
        }
    except sqlite3.OperationalError:  # a generation without model_config: no delegates
        delegates = set()
    finally:
        conn.execute("COMMIT")
    return ids, delegates


def gc_store(
    store: StoreCore,
    path: Path,
    *,
    older_than: float = 0.0,
    yes: bool = False,
    now: float | None = None,
) -> GcResult:
    """Plan (and with ``yes`` run) the gc of one Hermes store against ``store``."""
    now = time.time() if now is None else now
    result = GcResult(str(path))
    ro = open_readonly(path)
    try:
        recognise(ro, path)
        ids, delegates = _candidates(ro, now - older_than)
        result.considered = len(ids)
        for sid in ids:
            ro.execute("BEGIN")
            try:
                why = _why_kept(store, ro, sid, delegates)
            finally:
                ro.execute("COMMIT")
            if why is None:
                result.eligible.append(sid)
            else:
                result.keep(why)
    finally:
        ro.close()
    if yes and result.eligible:
        _delete(store, path, result, now - older_than, delegates)
    return result


def _delete(
    store: StoreCore, path: Path, result: GcResult, before: float, delegates: set[str]
) -> None:
    try:
        # Read-write, but nothing about the file changes: no journal mode, no
        # checkpoint, no vacuum. foreign_keys is this connection's setting (as
        # Hermes' own connection has it), not the file's.
        conn = sqlite3.connect(str(path), timeout=5, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreOpenError(f"cannot open {str(path)!r} to delete from it: {exc}") from exc
    deleted: list[str] = []
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        todo = list(result.eligible)
        while todo:
            started = time.monotonic()
            conn.execute("BEGIN IMMEDIATE")
            try:
                done = 0
                while todo and done < BATCH and time.monotonic() - started < BATCH_SECONDS:
                    sid = todo.pop(0)
                    done += 1
                    row = conn.execute(
                        "SELECT ended_at FROM sessions WHERE id = ?", (sid,)
                    ).fetchone()
                    if row is None or row[0] is None or row[0] >= before:
                        result.keep("changed")
                        continue
                    # Re-checked under Hermes' write lock: nothing can be appended now.
                    why = _why_kept(store, conn, sid, delegates)
                    if why is not None:
                        result.keep(why)
                        continue
                    conn.execute(
                        "UPDATE sessions SET parent_session_id = NULL WHERE parent_session_id = ?",
                        (sid,),
                    )
                    conn.execute("DELETE FROM messages WHERE session_id = ?", (sid,))
                    conn.execute("DELETE FROM sessions WHERE id = ?", (sid,))
                    deleted.append(sid)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            result.deleted.extend(deleted)
            deleted = []
    finally:
        conn.close()
    _remove_files(path.parent / "sessions", result.deleted)


def _remove_files(sessions_dir: Path, ids: Sequence[str]) -> None:
    """Hermes' transcript files of deleted sessions (as its own delete does)."""
    if not sessions_dir.is_dir():
        return
    for sid in ids:
        for p in (sessions_dir / f"{sid}.json", sessions_dir / f"{sid}.jsonl"):
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass
        for p in sessions_dir.glob(f"request_dump_{sid}_*.json"):
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass


def gc_stores(
    store: StoreCore,
    paths: Sequence[str | Path] = (),
    *,
    older_than: float = 0.0,
    yes: bool = False,
) -> list[GcResult]:
    """:func:`gc_store` over every store found (see :func:`discover`)."""
    return [gc_store(store, p, older_than=older_than, yes=yes) for p in discover(paths)]
